import ScoutClient
import ScoutFormat
import ScoutStore
import ScoutTestSupport
import Testing

/// Committed items kept in a sorted map, counting what the cache reads.
final class MapSource: ItemSource {
    var items = SortedKeyMap<Item>()
    var pointReads = 0
    var walks = 0
    var walkedItems = 0

    func committedItem(_ key: Key) throws -> Item? {
        pointReads += 1
        return items[key]
    }

    func committedItems(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        walks += 1
        var stop = false
        var batch: [Item] = []
        items.forEach(from: start, through: end) { _, it in
            batch.append(it)
            return true
        }
        for it in batch where !stop {
            walkedItems += 1
            stop = try !body(it)
        }
    }

    /// What a commit does to the committed forest: newest versions win, deletions remove,
    /// deltas add.
    func apply(_ snap: ItemCache.DirtySnapshot) {
        for it in snap.items {
            if it.isDeletion {
                items.remove(it.key)
            } else if it.isDelta {
                var sum = Forest.resolve([it] + (items[it.key].map { [$0] } ?? []))!
                sum.flags = []
                items[it.key] = sum
            } else {
                items[it.key] = it
            }
        }
    }
}

private func key(_ ino: UInt64, _ type: UInt8 = ItemType.inode, _ second: UInt64 = 0) -> Key {
    Key(zone: Zone.fs, first: ino, type: type, second: second)
}

private func value(_ n: Int) -> [UInt8] { Array("v\(n)".utf8) }

@Suite struct ItemCacheTests {
    @Test func aMissCachesTheKeyAndTheEmptyKeysUpToTheNextCommittedOne() throws {
        let src = MapSource()
        src.items[key(5)] = Item(key: key(5), seq: 1, value: value(5))
        src.items[key(9)] = Item(key: key(9), seq: 1, value: value(9))
        let cache = ItemCache(source: src)
        #expect(try cache.lookup(key(5))?.value == value(5))
        #expect(src.walks == 1 && src.walkedItems == 2, "the read goes on to the next committed item, 9")
        #expect(try cache.lookup(key(6)) == nil)
        #expect(try cache.lookup(key(8)) == nil)
        #expect(src.walks == 1, "6 and 8 lie in the span the first miss cached")
        #expect(try cache.lookup(key(9))?.value == value(9))
        #expect(try cache.lookup(key(1000)) == nil)
        #expect(src.walks == 2, "past 9 nothing is committed up to the group's end")
        #expect(try cache.lookup(key(3)) == nil)
        #expect(try cache.lookup(key(4)) == nil)
        #expect(try cache.lookup(key(5))?.value == value(5))
        #expect(src.walks == 3, "3 read up to the span at 5, no further")
        #expect(try cache.lookup(key(2)) == nil)
        #expect(src.walks == 4, "what lies before a miss is not known from it")
        #expect(try cache.lookup(key(1024)) == nil)
        #expect(src.walks == 5, "the next inode group is a range of its own")
        #expect(src.pointReads == 0)
        // Something committed behind the cache's back is not seen until the range is dropped:
        // the lock that covers it is what makes that safe.
        src.items[key(6)] = Item(key: key(6), seq: 2, value: value(6))
        #expect(try cache.lookup(key(6)) == nil)
        #expect(try cache.invalidate(LockRange.inodeGroup(6)) == 2)
        #expect(try cache.lookup(key(6))?.value == value(6))
        #expect(src.walks == 6)
    }

    @Test func walksCacheTheSpanTheyReadAndChangesWinOverIt() throws {
        let src = MapSource()
        for i in 1...40 { src.items[key(UInt64(i) * 100)] = Item(key: key(UInt64(i) * 100), seq: 1, value: value(i)) }
        let cache = ItemCache(source: src)
        try cache.insert(key(150), value(-1), seq: 2)
        try cache.delete(key(200), seq: 2)
        try cache.addDelta(key(300), [5], seq: 2)
        var seen: [Key] = []
        // Crosses the boundary between inode groups 0 and 1 (inode 1024).
        try cache.forEach(from: key(100), through: key(1500)) { seen.append($0.key); return true }
        var want = [key(100), key(150)] + (3...15).map { key(UInt64($0) * 100) }
        want.sort()
        #expect(seen == want)
        let read = src.walkedItems
        seen = []
        try cache.forEach(from: key(100), through: key(1500)) { seen.append($0.key); return true }
        #expect(seen == want)
        #expect(src.walkedItems == read, "a second walk of a cached span reads nothing")
        // A key inside a cached span with no entry is known absent without a read.
        #expect(try cache.lookup(key(101)) == nil)
        #expect(src.pointReads == 0)
        // The sum found its committed value when the walk read it: "v3" is not a number, so
        // check the shape instead: a whole item, no longer a delta.
        let sum = try #require(try cache.lookup(key(300)))
        #expect(!sum.isDelta)
    }

    @Test func aWalkStopsWhenTheCallerStopsAndCachesOnlyWhatItRead() throws {
        let src = MapSource()
        for i in 0..<2000 { src.items[key(1, ItemType.dirent, UInt64(i))] = Item(key: key(1, ItemType.dirent, UInt64(i)), seq: 1) }
        let cache = ItemCache(source: src)
        var n = 0
        try cache.forEach(from: key(1, ItemType.dirent, 0), through: key(1, ItemType.dirent, .max)) { _ in
            n += 1
            return n < 10
        }
        #expect(n == 10)
        #expect(src.walkedItems <= ItemCache.fillBatch)
        // Far past what was read the cache knows nothing yet and reads.
        #expect(try cache.lookup(key(1, ItemType.dirent, 1999)) != nil)
        #expect(src.walks == 2)
    }

    @Test func madeAndUnmadeInOneTransactionLeavesNothingToWrite() throws {
        let src = MapSource()
        src.items[key(9)] = Item(key: key(9), seq: 1, value: value(9))
        let cache = ItemCache(source: src)
        #expect(try cache.lookup(key(8)) == nil)
        try cache.insert(key(8), value(8), seq: 2)
        try cache.delete(key(8), seq: 2)
        #expect(!cache.hasDirty)
        #expect(cache.commitBlockEstimate == 0)
        let walks = src.walks
        #expect(try cache.lookup(key(8)) == nil)
        #expect(src.walks == walks, "8 is still known absent, with no entry left for it")
        // Deleting what is committed must write a deletion, known or not.
        try cache.delete(key(9), seq: 2)
        try cache.delete(key(10), seq: 2)
        let snap = cache.dirtySnapshot()
        #expect(snap.items.map(\.key) == [key(9), key(10)])
        #expect(snap.items.allSatisfy { $0.isDeletion })
        #expect(try cache.lookup(key(9)) == nil)
    }

    @Test func aSnapshotIsInKeyOrderAndCommitCleansOnlyWhatItWrote() throws {
        let src = MapSource()
        let cache = ItemCache(source: src)
        for ino: UInt64 in [5000, 3, 2100, 7, 1030] { try cache.insert(key(ino), value(Int(ino)), seq: 2) }
        try cache.insert(Key(zone: Zone.orphan, type: ItemType.orphan, second: 7), [], seq: 2)
        #expect(cache.commitBlockEstimate > 0)
        let snap = cache.dirtySnapshot()
        #expect(snap.items.map(\.key) == snap.items.map(\.key).sorted())
        #expect(snap.items.count == 6)
        // Changed again after the snapshot (the next transaction): stays dirty.
        try cache.insert(key(7), value(77), seq: 3)
        src.apply(snap)
        cache.committed(snap)
        let next = cache.dirtySnapshot()
        #expect(next.items.map(\.key) == [key(7)])
        #expect(next.items[0].value == value(77))
        #expect(next.items[0].seq == 3)
        #expect(throws: ItemCacheError.self) { _ = try cache.invalidate(LockRange.inodeGroup(7)) }
        src.apply(next)
        cache.committed(next)
        #expect(!cache.hasDirty)
        #expect(cache.commitBlockEstimate == 0)
        #expect(try cache.invalidate(LockRange.inodeGroup(7)) == 2)
        #expect(try cache.lookup(key(7))?.value == value(77))
    }

    @Test func changesSpreadOverManyRangesAreBoundByTheWholeTreeNotARangeAtATime() throws {
        let src = MapSource()
        let cache = ItemCache(source: src)
        let groups = 3000
        for g in 0..<groups { try cache.insert(key(UInt64(g) * LockRange.groupSize + 1), value(g), seq: 2) }
        // One small item in each of 3,000 ranges fills a handful of leaves: the commit dirties
        // those and their parents, not a path of parents per range (which the dirty limit
        // of 1,024 blocks would take for a full transaction every 85 creates).
        let snap = cache.dirtySnapshot()
        let bytes = snap.items.reduce(0) { $0 + BTreeBlock.leafEntrySize($1.value.count) }
        let leaves = bytes / (BTreeBlock.capacity / 4) + 2
        #expect(cache.commitBlockEstimate == 2 * leaves + 2 + 8)
        #expect(cache.commitBlockEstimate < 64)
        // Many items in one range are still bound by the range's own figure, as before.
        let one = ItemCache(source: MapSource())
        for i in 0..<3 { try one.insert(key(UInt64(i) + 1), value(i), seq: 2) }
        #expect(one.commitBlockEstimate == 2 * min(3, 0 + 2) + 2 + 8)

        // What a commit wrote counts until the log tree restarts (a merge took it).
        src.apply(snap)
        cache.committed(snap)
        #expect(cache.commitBlockEstimate == 0)
        try cache.insert(key(1), value(1), seq: 3)
        let afterCommit = cache.commitBlockEstimate
        cache.logTreeRestarted()
        #expect(cache.commitBlockEstimate == 2 * 1 + 2 + 8)
        #expect(afterCommit >= cache.commitBlockEstimate)
    }

    /// Creates spread over many directories leave one index entry in each (seq, inode group)
    /// piece. Once a piece's entries are dropped and the log tree that held them is merged,
    /// nothing of it is left: the piece must go, or a million creates keep hundreds of
    /// thousands of empty ones.
    @Test func emptiedPartitionsGoOnceTheLogTreeNoLongerHoldsThem() throws {
        let src = MapSource()
        let cache = ItemCache(source: src, cleanByteLimit: 64 * 1024)
        func k(_ seq: UInt64, _ ino: UInt64) -> Key { Key(zone: Zone.inodeIndex, type: ItemType.metaSeq, second: seq, third: ino) }
        func commit() {
            let snap = cache.dirtySnapshot()
            src.apply(snap)
            cache.committed(snap)
        }
        for seq: UInt64 in 1...4000 {
            try cache.insert(k(seq, seq * LockRange.groupSize), [], seq: seq)
            if seq % 100 == 0 {
                commit()
                cache.logTreeRestarted()
            }
        }
        // Dropping every clean entry leaves no piece behind, and what went is read again.
        #expect(cache.rangeCount < 2000)
        cache.shrink(to: 0)
        #expect(cache.rangeCount == 0)
        #expect(cache.cachedBytes == 0)
        #expect(try cache.lookup(k(17, 17 * LockRange.groupSize)) != nil)

        // A piece whose entries were dropped while the log tree still held its items stays
        // (the commit estimate counts its leaves) until the tree restarts, then goes.
        let other = ItemCache(source: MapSource())
        try other.insert(key(5), value(5), seq: 2)
        other.committed(other.dirtySnapshot())
        other.shrink(to: 0)
        #expect(other.rangeCount == 1)
        other.logTreeRestarted()
        #expect(other.rangeCount == 0)
        #expect(other.cachedBytes == 0)
    }

    @Test func sumsOverAnUnknownValueStayDeltasUntilTheValueIsRead() throws {
        let src = MapSource()
        let k = Key(zone: Zone.xattrTotl, first: 1, second: 2, third: 3)
        var w = ByteWriter(capacity: 16)
        w.i64(100)
        w.i64(2)
        src.items[k] = Item(key: k, seq: 1, value: w.bytes)
        let cache = ItemCache(source: src)
        try cache.addDelta(k, [10, 1], seq: 2)
        try cache.addDelta(k, [5, 1], seq: 2)
        let snap = cache.dirtySnapshot()
        #expect(snap.items.count == 1)
        #expect(snap.items[0].isDelta)
        #expect(try fields(cache.lookup(k)) == [115, 4])
        src.apply(snap)
        cache.committed(snap)
        #expect(try fields(cache.lookup(k)) == [115, 4])
        // Now the value is cached: a further change is a whole item.
        try cache.addDelta(k, [-15, -1], seq: 3)
        let whole = cache.dirtySnapshot()
        #expect(!whole.items[0].isDelta)
        #expect(try fields(cache.lookup(k)) == [100, 3])
    }

    /// Operations go on after a commit's switch: a sum added to while its commit writes keeps
    /// only the new part dirty, so each part is written once.
    @Test func aSumAddedToWhileItsCommitWritesCountsEachPartOnce() throws {
        let src = MapSource()
        let k = Key(zone: Zone.xattrTotl, first: 4, second: 5, third: 6)
        var w = ByteWriter(capacity: 16)
        w.i64(100)
        w.i64(2)
        src.items[k] = Item(key: k, seq: 1, value: w.bytes)
        let cache = ItemCache(source: src)
        try cache.addDelta(k, [10, 1], seq: 2)
        let snap = cache.dirtySnapshot()
        try cache.addDelta(k, [5, 1], seq: 3)
        src.apply(snap)
        cache.committed(snap)
        let next = cache.dirtySnapshot()
        #expect(next.items.count == 1)
        #expect(next.items.first?.isDelta == true)
        #expect(try fields(next.items.first) == [5, 1])
        src.apply(next)
        cache.committed(next)
        #expect(!cache.hasDirty)
        #expect(try fields(cache.lookup(k)) == [115, 4])
    }

    @Test func shrinkingDropsCleanRangesAndKeepsChanges() throws {
        let src = MapSource()
        for g in 0..<50 { src.items[key(UInt64(g) * 1024)] = Item(key: key(UInt64(g) * 1024), seq: 1, value: [UInt8](repeating: 1, count: 800)) }
        let cache = ItemCache(source: src, cleanByteLimit: 20 * 900)
        try cache.insert(key(5 * 1024 + 1), value(1), seq: 2)
        for g in 0..<50 { _ = try cache.lookup(key(UInt64(g) * 1024)) }
        #expect(cache.cachedBytes <= 20 * 900)
        #expect(cache.rangeCount < 50)
        #expect(try cache.lookup(key(5 * 1024 + 1))?.value == value(1))
        #expect(cache.dirtySnapshot().items.count == 1)
    }

    /// One seq's index entries are cached in a piece per inode group, so threads writing
    /// inodes of their own groups share no mutex; the lock range still acts as one.
    @Test func indexRangesAreCachedInPiecesThatActAsOne() throws {
        let src = MapSource()
        let cache = ItemCache(source: src)
        let inos: [UInt64] = [5000, 10, 2000]
        func k(_ ino: UInt64) -> Key { Key(zone: Zone.inodeIndex, type: ItemType.metaSeq, second: 7, third: ino) }
        for ino in inos { try cache.insert(k(ino), [], seq: 2) }
        #expect(cache.rangeCount == 3)
        let range = LockRange.index(ItemType.metaSeq, seq: 7)
        var seen: [UInt64] = []
        try cache.forEach(from: range.start, through: range.end) { seen.append($0.key.third); return true }
        #expect(seen == [10, 2000, 5000])
        #expect(cache.hasDirty(in: range))
        #expect(!cache.hasDirty(in: LockRange.index(ItemType.dataSeq, seq: 7)))
        #expect(throws: ItemCacheError.self) { try cache.invalidate(range) }
        let snap = cache.dirtySnapshot()
        #expect(snap.items.map(\.key.third) == [10, 2000, 5000])
        src.apply(snap)
        cache.committed(snap)
        #expect(!cache.hasDirty(in: range))
        #expect(try cache.invalidate(range) == 3)
        #expect(cache.rangeCount == 0)
        // Read back from the source, across the pieces again.
        seen = []
        try cache.forEach(from: range.start, through: range.end) { seen.append($0.key.third); return true }
        #expect(seen == [10, 2000, 5000])
    }

    /// A committed deletion inside a cached span leaves no entry behind: the span says the
    /// key is absent, and a walk would only step over it (an overwritten file's extents).
    @Test func committedDeletionsInsideASpanLeaveNoEntries() throws {
        let src = MapSource()
        for i in 0..<100 { src.items[key(1, ItemType.dirent, UInt64(i))] = Item(key: key(1, ItemType.dirent, UInt64(i)), seq: 1) }
        let cache = ItemCache(source: src)
        var n = 0
        try cache.forEach(from: key(1, ItemType.dirent, 0), through: key(1, ItemType.dirent, .max)) { _ in n += 1; return true }
        #expect(n == 100)
        for i in stride(from: 0, to: 100, by: 2) { try cache.delete(key(1, ItemType.dirent, UInt64(i)), seq: 2) }
        let snap = cache.dirtySnapshot()
        #expect(snap.items.count == 50 && snap.items.allSatisfy(\.isDeletion))
        src.apply(snap)
        cache.committed(snap)
        var seen: [UInt64] = []
        try cache.forEach(from: key(1, ItemType.dirent, 0), through: key(1, ItemType.dirent, .max)) { seen.append($0.key.second); return true }
        #expect(seen == Array(stride(from: 1, to: 100, by: 2)))
        #expect(try cache.lookup(key(1, ItemType.dirent, 4)) == nil)
        #expect(src.walks == 1, "still all cached")
        #expect(try cache.invalidate(LockRange.inodeGroup(1)) == 50, "only the live entries remain")
    }

    @Test func keysNoLockCoversAreRefused() throws {
        let cache = ItemCache(source: MapSource())
        #expect(throws: ItemCacheError.self) { try cache.lookup(Key(zone: Zone.logTrees, first: 1)) }
        #expect(throws: ItemCacheError.self) { try cache.insert(Key(zone: Zone.logTrees, first: 1), [], seq: 1) }
    }

    /// Random changes, reads, commits, shrinks and drops against a plain dictionary: what the
    /// cache shows must always be what the model holds.
    @Test(arguments: [1, 2, 3, 4])
    func agreesWithAModel(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let src = MapSource()
        let cache = ItemCache(source: src, cleanByteLimit: 64 * 1024)
        var model: [Key: [UInt8]] = [:]
        var seq: UInt64 = 1
        func randomKey() -> Key {
            if UInt64.random(in: 0..<3, using: &rng) == 0 {
                // Index entries: pieces by inode group inside index lock ranges.
                let seq = UInt64.random(in: 0..<4, using: &rng) * 700
                let ino = UInt64.random(in: 0..<5, using: &rng) * 900 + UInt64.random(in: 0..<3, using: &rng)
                return Key(zone: Zone.inodeIndex, type: ItemType.metaSeq, second: seq, third: ino)
            }
            let ino = UInt64.random(in: 0..<6, using: &rng) * 700 + UInt64.random(in: 0..<3, using: &rng)
            return key(ino, ItemType.dirent, UInt64.random(in: 0..<40, using: &rng))
        }
        for step in 0..<20_000 {
            let k = randomKey()
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<30:
                let v = value(step)
                try cache.insert(k, v, seq: seq)
                model[k] = v
            case 30..<45:
                try cache.delete(k, seq: seq)
                model[k] = nil
            case 45..<70:
                #expect(try cache.lookup(k)?.value == model[k], "seed \(seed) step \(step) lookup \(k)")
            case 70..<85:
                let end = k.zone == Zone.inodeIndex
                    ? Key(zone: k.zone, type: k.type, second: k.second + UInt64.random(in: 0..<1500, using: &rng), third: .max, fourth: .max)
                    : Key(zone: k.zone, first: k.first + UInt64.random(in: 0..<1500, using: &rng), type: .max)
                var got: [Key] = []
                try cache.forEach(from: k, through: end) { it in
                    got.append(it.key)
                    return got.count < 200
                }
                let want = model.keys.filter { $0 >= k && $0 <= end }.sorted().prefix(200)
                let same = got == Array(want)
                #expect(same, "seed \(seed) step \(step) walk from \(k): \(got.count) keys, the model has \(want.count); first difference at \(Array(zip(got, want)).firstIndex { $0.0 != $0.1 } ?? min(got.count, want.count))")
            case 85..<93:
                let snap = cache.dirtySnapshot()
                src.apply(snap)
                cache.committed(snap)
                seq += 1
            case 93..<97:
                cache.shrink(to: Int.random(in: 0..<32 * 1024, using: &rng))
            default:
                let snap = cache.dirtySnapshot()
                src.apply(snap)
                cache.committed(snap)
                seq += 1
                try cache.invalidate(try #require(LockRange.covering(k)))
            }
        }
        let snap = cache.dirtySnapshot()
        src.apply(snap)
        cache.committed(snap)
        var committed: [Key: [UInt8]] = [:]
        src.items.forEach(from: .min, through: .max) { k, it in
            committed[k] = it.value
            return true
        }
        #expect(committed == model)
    }
}

private func fields(_ it: Item?) throws -> [Int64] {
    let it = try #require(it)
    var r = ByteReader(it.value, what: "total")
    return try (0..<it.value.count / 8).map { _ in try r.i64() }
}
