import ScoutClient
import ScoutFormat
import ScoutTestSupport
import Testing

@Suite struct RangeTreeTests {
    /// Against a plain sorted array, through enough inserts and removals to split and merge chunks.
    @Test func agreesWithASortedArray() {
        var rng = SplitMix64(seed: 7)
        var tree = RangeTree<Int>()
        var model: [(LockRange, Int)] = []
        for step in 0..<20_000 {
            let a = UInt64.random(in: 0..<5000, using: &rng)
            let r = testRange(a * 4, a * 4 + UInt64.random(in: 0..<8, using: &rng))
            let hit = model.first { $0.0.overlaps(r) }
            #expect((tree.overlapping(r) != nil) == (hit != nil))
            if let hit, Bool.random(using: &rng) {
                #expect(tree.remove(start: hit.0.start) == hit.1)
                model.removeAll { $0.0 == hit.0 }
            } else if hit == nil {
                tree.insert(r, step)
                model.append((r, step))
                model.sort { $0.0.start < $1.0.start }
            }
            #expect(tree.count == model.count)
        }
        let from = testRange(8000, 8000).start
        let want = model.filter { $0.0.start >= from }.prefix(50).map(\.1)
        #expect(tree.entries(from: from, limit: 50).map(\.value) == Array(want))
        #expect(tree.entries(from: .min, limit: .max).map(\.value) == model.map(\.1))
        if let mid = model.dropFirst(model.count / 2).first {
            #expect(tree.containing(mid.0.end)?.value == mid.1)
        }
    }
}
