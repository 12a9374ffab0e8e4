import Testing
import ScoutFormat
@testable import ScoutStore

@Suite struct ForestTests {
    func delta(_ total: Int64, _ count: Int64) -> [UInt8] {
        var w = ByteWriter()
        w.i64(total)
        w.i64(count)
        return w.bytes
    }

    /// Three trees hold overlapping versions; the forest shows the newest, hides deletions, and
    /// sums deltas onto their base.
    @Test func newestWinsTombstonesHideAndDeltasCombine() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        var a = BTree(root: .empty, name: "a")
        var b = BTree(root: .empty, name: "b")
        var c = BTree(root: .empty, name: "c")
        let k = (0..<8).map { Fixture.key(UInt64($0)) }
        // key 0: only in a
        try a.insert(Item(key: k[0], seq: 1, value: [0xa0]), in: s)
        // key 1: a old, b newer, c older still
        try a.insert(Item(key: k[1], seq: 5, value: [0xa1]), in: s)
        try b.insert(Item(key: k[1], seq: 9, value: [0xb1]), in: s)
        try c.insert(Item(key: k[1], seq: 2, value: [0xc1]), in: s)
        // key 2: deleted in c after being written in a
        try a.insert(Item(key: k[2], seq: 3, value: [0xa2]), in: s)
        try c.insert(Item(key: k[2], seq: 4, flags: .deletion), in: s)
        // key 3: deletion in b is older than a rewrite in c
        try b.insert(Item(key: k[3], seq: 4, flags: .deletion), in: s)
        try c.insert(Item(key: k[3], seq: 6, value: [0xc3]), in: s)
        // key 4: base in a plus deltas in b and c
        try a.insert(Item(key: k[4], seq: 1, value: delta(100, 1)), in: s)
        try b.insert(Item(key: k[4], seq: 2, flags: .delta, value: delta(5, 1)), in: s)
        try c.insert(Item(key: k[4], seq: 3, flags: .delta, value: delta(-20, -1)), in: s)
        // key 5: deltas only
        try b.insert(Item(key: k[5], seq: 2, flags: .delta, value: delta(7, 1)), in: s)
        try c.insert(Item(key: k[5], seq: 3, flags: .delta, value: delta(8, 1)), in: s)
        // key 6: a delta above a deletion starts from zero
        try a.insert(Item(key: k[6], seq: 1, value: delta(50, 5)), in: s)
        try b.insert(Item(key: k[6], seq: 2, flags: .deletion), in: s)
        try c.insert(Item(key: k[6], seq: 3, flags: .delta, value: delta(1, 1)), in: s)
        // key 7: only a deletion
        try b.insert(Item(key: k[7], seq: 2, flags: .deletion), in: s)

        let forest = Forest(trees: [c, b, a])
        #expect(try forest.lookup(k[0], in: s)?.value == [0xa0])
        #expect(try forest.lookup(k[1], in: s)?.value == [0xb1])
        #expect(try forest.lookup(k[2], in: s) == nil)
        #expect(try forest.lookup(k[3], in: s)?.value == [0xc3])
        #expect(try forest.lookup(k[4], in: s)?.value == delta(85, 1))
        #expect(try forest.lookup(k[5], in: s)?.value == delta(15, 2))
        #expect(try forest.lookup(k[6], in: s)?.value == delta(1, 1))
        #expect(try forest.lookup(k[7], in: s) == nil)
        let all = try forest.items(in: s)
        #expect(all.map(\.key) == [k[0], k[1], k[3], k[4], k[5], k[6]])
        #expect(try forest.next(from: k[2], in: s)?.key == k[3])
        // Tree order only breaks seq ties.
        var x = BTree(root: .empty, name: "x")
        var y = BTree(root: .empty, name: "y")
        try x.insert(Item(key: k[0], seq: 4, value: [1]), in: s)
        try y.insert(Item(key: k[0], seq: 4, value: [2]), in: s)
        #expect(try Forest(trees: [x, y]).lookup(k[0], in: s)?.value == [1])
        #expect(try Forest(trees: [y, x]).lookup(k[0], in: s)?.value == [2])
    }

    /// Reading through roots whose blocks a later commit freed and reused gives a stale
    /// block; the reader takes the newest roots and succeeds. Stale on the newest roots is
    /// thrown, not retried.
    @Test func staleReadsRetryWithNewRootsThenFail() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for i in 0..<500 as Range<UInt64> { try s.insert(Item(key: Fixture.key(i), seq: 1, value: [1]), into: .fs) }
        try s.commit()
        let old = s.committed.roots
        #expect(old.fs == s.superblock.root(.fs))
        // Rewrite everything until the old root's block has been freed and reused.
        var round: UInt64 = 1
        repeat {
            round += 1
            for i in 0..<500 as Range<UInt64> { try s.insert(Item(key: Fixture.key(i), seq: round, value: [UInt8(round)]), into: .fs) }
            try s.commit()
        } while round < 100 && (try? s.readBlock(old.fs.ref, tree: "fs")) != nil
        #expect(round < 100, "the old root block was never reused")
        #expect { try BTree(root: old.fs, name: "fs").lookup(Fixture.key(250), in: s.committed) } throws: {
            ($0 as? StoreError)?.code == .stale
        }
        var picks = 0
        let value = try s.committed.reading({
            picks += 1
            return picks == 1 ? old : s.committed.roots
        }) { r in try BTree(root: r.fs, name: "fs").lookup(Fixture.key(250), in: s.committed)?.value }
        #expect(value == [UInt8(round)])
        #expect(picks >= 2)
        #expect { try s.committed.reading({ s.committed.roots }) { _ in throw StoreError(.stale, "test") } } throws: {
            ($0 as? StoreError)?.code == .stale
        }
    }
}
