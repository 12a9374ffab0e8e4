import ScoutClient
import ScoutFormat
import ScoutTestSupport
import Testing

@Suite struct SortedKeyMapTests {
    private func key(_ n: UInt64) -> Key { Key(zone: Zone.fs, first: n, type: ItemType.inode) }

    /// Writes through positions (found once, then read, changed, filled or emptied) must leave
    /// the map as a dictionary of the same writes, across chunk splits and emptied chunks.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func positionsActAsKeyedWrites(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var map = SortedKeyMap<Int>()
        var model: [UInt64: Int] = [:]
        for step in 0..<20_000 {
            // A narrow key space early (many hits), wide later (chunks split).
            let n = rng.next() % (step < 5_000 ? 300 : 3_000)
            let k = key(n)
            let at = map.position(of: k)
            #expect(at.found == (model[n] != nil), "step \(step): position of \(n)")
            switch rng.next() % 4 {
            case 0 where at.found:
                #expect(map.remove(at: at) == model.removeValue(forKey: n))
            case 1 where at.found:
                map[at: at] += 1
                model[n]! += 1
            default:
                if at.found {
                    #expect(map[at: at] == model[n])
                } else {
                    map.insert(k, step, at: at)
                    model[n] = step
                }
            }
            #expect(map.count == model.count)
        }
        var seen: [(UInt64, Int)] = []
        map.forEach(from: .min, through: .max) { k, v in seen.append((k.first, v)); return true }
        #expect(seen.map(\.0) == model.keys.sorted())
        #expect(seen.map(\.1) == model.keys.sorted().map { model[$0]! })
        for n in 0..<3_000 as Range<UInt64> { #expect(map[key(n)] == model[n]) }
    }

    @Test func forEachMutatingChangesOnlyItsRangeAndStopsWhenAsked() {
        var map = SortedKeyMap<Int>()
        for n in 0..<1_000 as Range<UInt64> { map.insert(key(n), 0) }
        var visited = 0
        map.forEachMutating(from: key(100), through: key(700)) { k, v in
            v = Int(k.first)
            visited += 1
            return k.first < 599
        }
        #expect(visited == 500)
        for n in 0..<1_000 as Range<UInt64> {
            #expect(map[key(n)] == ((100...599).contains(n) ? Int(n) : 0), "key \(n)")
        }
    }
}
