import ScoutTestSupport
import Testing
import ScoutFormat
@testable import ScoutStore

@Suite struct BTreeTests {
    @Test func emptyTreeReadsNothing() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        #expect(try s.lookup(Fixture.key(1), in: .fs) == nil)
        #expect(try s.tree(.fs).next(from: .min, in: s) == nil)
        #expect(try s.tree(.fs).prev(from: .max, in: s) == nil)
        #expect(try s.delete(Fixture.key(1), from: .fs) == nil)
        #expect(s.dirtyBlocks == 0)
    }

    @Test func insertReplaceDeleteOneItem() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        try s.insert(Item(key: Fixture.key(7), seq: 3, value: [1, 2, 3]), into: .fs)
        try s.insert(Item(key: Fixture.key(7), seq: 4, value: [9]), into: .fs)
        #expect(try s.lookup(Fixture.key(7), in: .fs) == Item(key: Fixture.key(7), seq: 4, value: [9]))
        try s.commit()
        let reopened = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        #expect(try reopened.lookup(Fixture.key(7), in: .fs)?.value == [9])
        #expect(try reopened.delete(Fixture.key(7), from: .fs)?.value == [9])
        #expect(reopened.tree(.fs).root.isEmpty)
        try reopened.commit()
        #expect(Checker.check(meta: m, data: d).problems == [])
    }

    /// Commits and merges insert in key order: the blocks that fills must end up nearly full,
    /// not halved at each split (which left them half empty for good), and inserts in random
    /// order must still split evenly.
    @Test func inOrderInsertsFillTheirBlocks() throws {
        func fill(order: [UInt64]) throws -> Double {
            let (m, d) = Fixture.devices()
            let s = try Fixture.format(m, d)
            for n in order { try s.insert(Item(key: Fixture.key(n), seq: 1, value: [UInt8](repeating: UInt8(n & 0xff), count: 100)), into: .fs) }
            try s.commit()
            for n in order.prefix(50) { #expect(try s.lookup(Fixture.key(n), in: .fs)?.value.first == UInt8(n & 0xff)) }
            #expect(Checker.check(meta: m, data: d).problems == [])
            let bytes = Double(order.count * BTreeBlock.leafEntrySize(100))
            return bytes / Double(try s.tree(.fs).blockCount(in: s) * Fixture.smallNodes.nodeCapacity)
        }
        let inOrder = try fill(order: Array(1...5000))
        #expect(inOrder > 0.9, "in-order inserts filled blocks to \(inOrder)")
        var g = SplitMix64(seed: 7)
        let random = try fill(order: Array(1...5000).shuffled(using: &g))
        #expect(random > 0.55 && random < 0.9, "random inserts filled blocks to \(random)")
    }

    /// A merge takes its log tree's items from the front a leaf at a time: what `body` took is
    /// gone, what it stopped before or threw on stays, and the tree stays sound throughout.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func takingFirstLeavesLeavesTheRestInOrder(seed: UInt64) throws {
        struct Refused: Error {}
        var rng = SplitMix64(seed: seed)
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for n in (0..<6000 as Range<UInt64>).shuffled(using: &rng) {
            let len = Int.random(in: 0..<20, using: &rng) == 0 ? Item.maxValueLength : Int.random(in: 0...60, using: &rng)
            try s.insert(Item(key: Fixture.key(n), seq: n, value: [UInt8](repeating: UInt8(n & 0xff), count: len)), into: .fs)
        }
        try s.commit()
        var left = try Fixture.contents(s)
        var tree = s.tree(.fs)
        var round = 0
        while !left.isEmpty {
            round += 1
            let limit = Int.random(in: 1...400, using: &rng)
            let stopAt = Int.random(in: 0..<4, using: &rng) == 0 ? Int.random(in: 0..<limit, using: &rng) : Int.max
            let throwAt = Int.random(in: 0..<4, using: &rng) == 0 ? Int.random(in: 0..<limit, using: &rng) : Int.max
            var seen: [Item] = []
            var threw = false
            var taken = 0
            do {
                taken = try tree.takeFirstLeaf(limit: limit, in: s) { it in
                    if seen.count == stopAt { return false }
                    if seen.count == throwAt { throw Refused() }
                    seen.append(it)
                    return true
                }
            } catch is Refused {
                threw = true
                taken = seen.count
            }
            if threw { #expect(taken == throwAt) }
            #expect(taken == seen.count && taken <= min(limit, stopAt, throwAt))
            #expect(seen == Array(left.prefix(taken)), "seed \(seed) round \(round): took items out of order")
            left.removeFirst(taken)
            s.setTree(.fs, tree)
            if round % 7 == 0 {
                #expect(try Fixture.contents(s) == left, "seed \(seed) round \(round): the rest differs")
                try s.commit()
                tree = s.tree(.fs)
            }
            if taken == 0 && !threw && stopAt != 0 { Issue.record("nothing taken from a non-empty tree"); break }
        }
        s.setTree(.fs, tree)
        #expect(tree.root.isEmpty)
        try s.commit()
        #expect(Checker.check(meta: m, data: d).problems == [])
    }

    @Test func valueLongerThanTheLimitIsRefused() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        let big = Item(key: Fixture.key(1), seq: 1, value: [UInt8](repeating: 0, count: Item.maxValueLength + 1))
        #expect(throws: StoreError.self) { try s.insert(big, into: .fs) }
        #expect(s.tree(.fs).root.isEmpty)
    }

    /// Random inserts, updates, deletes, commits and reopens checked against a sorted map.
    /// A commit puts its sorted items a leaf's share at a time: the tree must end the same as
    /// inserting them one by one, block for block (same leaves, same fill), with replaced
    /// values, new keys between old ones, values that overflow a leaf, and commits between.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func sortedInsertsLeaveTheTreeOneByOneInsertsLeave(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let (m1, d1) = Fixture.devices()
        let (m2, d2) = Fixture.devices()
        let one = try Fixture.format(m1, d1)
        let batched = try Fixture.format(m2, d2)
        var model = ReferenceMap()
        func leafShape(_ s: Store) throws -> [[Key]] {
            let tree = s.tree(.fs)
            guard !tree.root.isEmpty else { return [] }
            var leaves: [[Key]] = []
            func walk(_ ref: BlockRef, _ level: UInt8) throws {
                let n = try s.readNode(ref, level: level, tree: "fs")
                if level == 0 { leaves.append(n.block.keys); return }
                for c in n.block.children { try walk(c, level - 1) }
            }
            try walk(tree.root.ref, tree.root.height - 1)
            return leaves
        }
        var seq: UInt64 = 0
        for round in 0..<40 {
            var keys = Set<Key>()
            let size = Int.random(in: 1...(round < 5 ? 3000 : 800), using: &rng)
            while keys.count < size {
                if Int.random(in: 0..<3, using: &rng) == 0, let k = model.randomKey(using: &rng) {
                    keys.insert(k)
                } else {
                    keys.insert(Fixture.key(UInt64.random(in: 0..<50_000, using: &rng), UInt64.random(in: 0..<3, using: &rng)))
                }
            }
            seq += 1
            let batch = keys.sorted().map { k in
                let len = Int.random(in: 0..<200, using: &rng) == 0 ? Item.maxValueLength : Int.random(in: 0...90, using: &rng)
                return Item(key: k, seq: seq, value: [UInt8](repeating: UInt8(truncatingIfNeeded: k.first), count: len))
            }
            for it in batch {
                try one.insert(it, into: .fs)
                model.set(it)
            }
            var tree = batched.tree(.fs)
            var applied = 0
            try tree.apply(sorted: batch.map { TreeEdit.put($0) }[...], in: batched, applied: &applied) { _ in }
            batched.setTree(.fs, tree)
            #expect(applied == batch.count)
            #expect(try Fixture.contents(batched) == model.sorted, "seed \(seed) round \(round): contents differ")
            #expect(try leafShape(batched) == leafShape(one), "seed \(seed) round \(round): leaves differ")
            if round % 4 == 3 {
                try one.commit()
                try batched.commit()
            }
        }
        try batched.commit()
        #expect(batched.tree(.fs).root.height >= 3, "seed \(seed): parents never split")
        #expect(Checker.check(meta: m2, data: d2).problems == [])
    }

    /// A merge's puts and removals go into the fs tree a leaf's share at a time: the contents
    /// must be what one edit at a time gives, the tree sound (leaves that lost most of their
    /// entries joined), a room check that throws part way must leave exactly the edits it
    /// counted, and a tree emptied by removals must end empty.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func batchedEditsMatchOneAtATime(seed: UInt64) throws {
        struct NoRoom: Error {}
        var rng = SplitMix64(seed: seed)
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        var model = ReferenceMap()
        var seq: UInt64 = 0
        for round in 0..<40 {
            seq += 1
            var keys = Set<Key>()
            let size = Int.random(in: 1...(round < 4 ? 4000 : 1500), using: &rng)
            let removing = round >= 20 ? 70 : 30
            while keys.count < size {
                if Int.random(in: 0..<100, using: &rng) < removing, let k = model.randomKey(using: &rng) {
                    keys.insert(k)
                } else {
                    keys.insert(Fixture.key(UInt64.random(in: 0..<40_000, using: &rng), UInt64.random(in: 0..<3, using: &rng)))
                }
            }
            let edits: [TreeEdit] = keys.sorted().map { k in
                if Int.random(in: 0..<100, using: &rng) < removing { return .remove(k) }
                let len = Int.random(in: 0..<150, using: &rng) == 0 ? Item.maxValueLength : Int.random(in: 0...90, using: &rng)
                return .put(Item(key: k, seq: seq, value: [UInt8](repeating: UInt8(truncatingIfNeeded: k.first), count: len)))
            }
            // Now and then the room check gives out part way.
            let failAt = Int.random(in: 0..<5, using: &rng) == 0 ? Int.random(in: 0..<8, using: &rng) : Int.max
            var checks = 0
            var applied = 0
            var tree = s.tree(.fs)
            do {
                try tree.apply(sorted: edits[...], in: s, applied: &applied) { _ in
                    if checks == failAt { throw NoRoom() }
                    checks += 1
                }
                #expect(applied == edits.count)
            } catch is NoRoom {
                #expect(applied < edits.count)
            }
            s.setTree(.fs, tree)
            for e in edits.prefix(applied) {
                switch e {
                case .put(let it): model.set(it)
                case .remove(let k): model.remove(k)
                }
            }
            #expect(try Fixture.contents(s) == model.sorted, "seed \(seed) round \(round): contents differ after \(applied) of \(edits.count) edits")
            if round % 5 == 4 {
                try s.commit()
                #expect(Checker.check(meta: m, data: d).problems == [], "seed \(seed) round \(round)")
            }
        }
        var applied = 0
        var tree = s.tree(.fs)
        let all = model.sorted.map { TreeEdit.remove($0.key) }
        try tree.apply(sorted: all[...], in: s, applied: &applied) { _ in }
        s.setTree(.fs, tree)
        #expect(applied == all.count && tree.root.isEmpty)
        try s.commit()
        #expect(Checker.check(meta: m, data: d).problems == [])
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomOperationsMatchAReferenceMap(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let (m, d) = Fixture.devices()
        var s = try Fixture.format(m, d)
        var live = ReferenceMap()
        var committed = live
        var maxHeight: UInt8 = 0
        var seq: UInt64 = 1
        let keySpace: UInt64 = 20000

        func randomKey() -> Key { Fixture.key(UInt64.random(in: 0..<keySpace, using: &rng), UInt64.random(in: 0..<3, using: &rng)) }
        func randomValue() -> [UInt8] {
            let len = Int.random(in: 0..<100, using: &rng) < 3 ? Item.maxValueLength : Int.random(in: 0...48, using: &rng)
            return (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        func verify() throws {
            #expect(try Fixture.contents(s) == live.sorted, "seed \(seed): tree differs from the reference")
        }

        // Phase 1 grows the tree; phase 2 mostly deletes, so blocks join and the tree shrinks.
        for phase in 0..<2 {
            for _ in 0..<15000 {
                seq += 1
                let roll = Int.random(in: 0..<1000, using: &rng)
                let deleteBias = phase == 0 ? 100 : 700
                if roll < deleteBias {
                    let victim = live.randomKey(using: &rng) ?? randomKey()
                    let got = try s.delete(victim, from: .fs)
                    #expect(got == live.remove(victim))
                } else if roll < 990 {
                    let k = roll % 5 == 0 ? (live.randomKey(using: &rng) ?? randomKey()) : randomKey()
                    let item = Item(key: k, seq: seq, value: randomValue())
                    try s.insert(item, into: .fs)
                    live.set(item)
                } else if roll < 994 {
                    let k = randomKey()
                    #expect(try s.lookup(k, in: .fs) == live[k])
                    #expect(try s.tree(.fs).next(from: k, in: s) == live.next(from: k))
                    #expect(try s.tree(.fs).prev(from: k, in: s) == live.prev(from: k))
                } else if roll < 998 {
                    try s.commit()
                    committed = live
                    try verify()
                } else {
                    // Reopen from the devices: uncommitted changes are gone.
                    if roll == 998 { try s.commit(); committed = live }
                    s = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
                    live = committed
                    try verify()
                }
                maxHeight = max(maxHeight, s.tree(.fs).root.height)
            }
            try s.commit()
            try verify()
            let report = Checker.check(meta: m, data: d)
            #expect(report.problems == [], "seed \(seed) phase \(phase)")
        }
        #expect(maxHeight >= 3, "seed \(seed): the tree only reached height \(maxHeight); splits and joins of parents went untested")
        // Emptying the tree returns every block to the allocator.
        for k in live.allKeys { try s.delete(k, from: .fs) }
        try s.commit()
        #expect(s.tree(.fs).root.isEmpty)
        let report = Checker.check(meta: m, data: d)
        #expect(report.problems == [])
        #expect(report.trees.first { $0.0 == .fs }?.1 == TreeSummary())
    }

    @Test func rangeIterationStopsAtTheEndKey() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for i in 0..<3000 as Range<UInt64> {
            try s.insert(Item(key: Fixture.key(i), seq: 1, value: [UInt8](repeating: UInt8(i & 0xff), count: 40)), into: .fs)
        }
        #expect(s.tree(.fs).root.height >= 2)
        let got = try s.tree(.fs).items(from: Fixture.key(1000), through: Fixture.key(1999), in: s)
        #expect(got.map(\.key.first) == Array(1000..<2000))
        var seen: [UInt64] = []
        try s.tree(.fs).forEach(from: Fixture.key(10), in: s) { seen.append($0.key.first); return seen.count < 5 }
        #expect(seen == [10, 11, 12, 13, 14])
    }

    /// A commit looks up its deletions in order and reuses a leaf while the next key falls in
    /// it: every answer must be what a lookup of that key alone gives, at leaf edges too.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func sortedLookupsAnswerAsSingleOnes(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        // Even keys only, so that half the probes miss, inside leaves and past their edges.
        for i in stride(from: 0, to: 6000, by: 2) as StrideTo<UInt64> {
            try s.insert(Item(key: Fixture.key(i), seq: 1, value: [UInt8(i & 0xff)]), into: .fs)
        }
        try s.commit()
        #expect(s.tree(.fs).root.height >= 2)
        var probes = (0..<400).map { _ in Fixture.key(rng.next() % 6100) }
        probes += [Fixture.key(0), Fixture.key(5998), Fixture.key(5999), .min, .max]
        probes.sort()
        var got: [(Key, Item?)] = []
        try s.tree(.fs).lookup(sorted: probes, in: s) { got.append(($0, $1)) }
        #expect(got.map(\.0) == probes)
        for (k, item) in got {
            #expect(item == (try s.lookup(k, in: .fs)), "key \(k)")
        }
        #expect(got.filter { $0.1 != nil }.count == probes.filter { $0 != .min && $0 != .max && $0.first % 2 == 0 && $0.first < 6000 }.count)
        // An empty tree answers every key with nothing.
        var empty = 0
        try BTree(root: .empty, name: "empty").lookup(sorted: probes, in: s) { _, item in if item == nil { empty += 1 } }
        #expect(empty == probes.count)
    }

    @Test func committedBlocksAreNeverOverwrittenInTheNextTransaction() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for i in 0..<2000 as Range<UInt64> { try s.insert(Item(key: Fixture.key(i), seq: 1, value: [1]), into: .fs) }
        try s.commit()
        var committedBlocks = Set<UInt64>()
        let snapshot = m.snapshot()
        let old = try Store.open(meta: snapshot, data: d, options: Fixture.smallNodes)
        try old.tree(.fs).forEach(in: old) { _ in true }
        for (blkno, n) in old.cacheSnapshot() where !n.dirty { committedBlocks.insert(blkno) }
        #expect(committedBlocks.count > 10)
        for i in 0..<2000 as Range<UInt64> where i % 3 == 0 { try s.delete(Fixture.key(i), from: .fs) }
        let dirty = Set(s.cacheSnapshot().filter { $0.value.dirty }.map(\.key))
        #expect(dirty.isDisjoint(with: committedBlocks))
    }
}
