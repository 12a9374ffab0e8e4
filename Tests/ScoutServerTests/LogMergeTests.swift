import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import ScoutStore
import ScoutTestSupport
import Testing

@Suite struct LogMergeTests {
    let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
    let data = MemoryBlockDevice(name: "data", size: 256 << 20)
    static let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)]

    func key(_ n: UInt64) -> Key { Key(zone: Zone.fs, first: n, type: ItemType.inode) }

    func value(_ n: UInt64, _ round: Int) -> [UInt8] {
        var w = ByteWriter()
        w.u64(n)
        w.u64(UInt64(round))
        return w.bytes
    }

    /// Random inserts and deletes through the client, commits, background merge steps at a low
    /// threshold (in small chunks, so the client commits into trees merged part way) and
    /// "crashes" (reopening from the devices) between rounds: the client's view, the fs tree
    /// after a final merge, and a reference map agree, and check finds nothing wrong.
    @Test(arguments: [1, 2, 3])
    func clientViewMatchesReferenceThroughMerges(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        var server = LocalServer(store: store, mergeThreshold: 300)
        server.backgroundChunk = 150
        var client = ClientItems(store: store, server: server, rid: 7)
        var committed: [UInt64: [UInt8]] = [:]
        var working: [UInt64: [UInt8]] = [:]
        var sawMerge = false
        for round in 0..<30 {
            for _ in 0..<200 {
                let n = rng.next() % 2000
                if rng.next() % 3 == 0 {
                    try client.delete(key(n))
                    working[n] = nil
                } else {
                    try client.insert(key(n), value(n, round))
                    working[n] = value(n, round)
                }
            }
            // Reads see the newest version: the log tree over the fs tree.
            for n in stride(from: UInt64(0), to: 2000, by: 37) {
                #expect(try client.lookup(key(n))?.value == working[n], "seed \(seed) round \(round) key \(n)")
            }
            var seen: [UInt64: [UInt8]] = [:]
            try client.forEach(from: key(0), through: key(.max)) { seen[$0.key.first] = $0.value; return true }
            #expect(seen == working, "seed \(seed) round \(round): iteration differs")

            if round % 4 == 3 {
                // Crash: drop the open transaction and reopen from what the devices hold.
                store = try Store.open(meta: meta, data: data)
                server = LocalServer(store: store, mergeThreshold: 300)
                server.backgroundChunk = 150
                try server.recoverLogTrees()
                client = ClientItems(store: store, server: server, rid: 7)
                working = committed
            } else {
                try client.commit()
                committed = working
                let before = server.merges
                switch rng.next() % 3 {
                case 0: _ = try server.mergeStep()
                case 1: while try server.mergeStep() {}
                default: break
                }
                sawMerge = sawMerge || server.merges > before
            }
        }
        try client.commit(merge: true)
        #expect(sawMerge)
        let fs = try store.tree(.fs).items(in: store)
        #expect(fs.allSatisfy { !$0.isDeletion })
        #expect(Dictionary(uniqueKeysWithValues: fs.map { ($0.key.first, $0.value) }) == working)
        // A live client keeps its pools recorded; its tree is all merged.
        let records = try store.tree(.logTrees).items(in: store).map { try LogTreeRecord(decoding: $0.value) }
        #expect(!records.isEmpty && records.allSatisfy { $0.root.isEmpty && $0.items == 0 })
        let report = Checker.check(meta: meta, data: data)
        #expect(report.isClean, "\(report.problems)")
    }

    /// A committed but unmerged log tree is part of the filesystem: check walks it, and its
    /// tombstones hide fs tree items from a new reader.
    @Test func unmergedLogTreeIsVisibleAndChecked() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store, mergeThreshold: .max)
        let client = ClientItems(store: store, server: server, rid: 9)
        for n in 0..<500 as Range<UInt64> { try client.insert(key(n), value(n, 0)) }
        try client.commit(merge: true)
        let before = try store.tree(.fs).items(in: store).count
        #expect(before == 500)
        for n in 0..<100 as Range<UInt64> { try client.delete(key(n)) }
        try client.insert(key(1000), value(1000, 1))
        try client.commit()

        let report = Checker.check(meta: meta, data: data)
        #expect(report.isClean, "\(report.problems)")
        #expect(report.logTrees.count == 1)
        #expect(report.logTrees.first?.1.items == 101)

        let reopened = try Store.open(meta: meta, data: data)
        let server2 = LocalServer(store: reopened)
        #expect(try server2.recordedLogTree(rid: 9)?.items == 101)
        let c2 = ClientItems(store: reopened, server: server2, rid: 10)
        // The new client has an empty log tree; the unmerged one is not in its forest until
        // the server merges it, which recovery does.
        #expect(try server2.recoverLogTrees() == 1)
        #expect(try c2.lookup(key(50)) == nil)
        #expect(try c2.lookup(key(1000))?.value == value(1000, 1))
        #expect(try reopened.tree(.fs).items(in: reopened).count == 401)
        #expect(Checker.check(meta: meta, data: data).isClean)
    }

    /// Deleting an item that only the log tree holds leaves no tombstone behind.
    @Test func deleteOfLogOnlyItemLeavesNoTombstone() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store, mergeThreshold: .max)
        let client = ClientItems(store: store, server: server, rid: 3)
        try client.insert(key(1), value(1, 0))
        try client.delete(key(1))
        try client.commit()
        #expect(Checker.check(meta: meta, data: data).logTrees.first?.1.items ?? 0 == 0)
        #expect(try client.lookup(key(1)) == nil)
    }

    func fields(_ v: [UInt8]?) -> [Int64]? {
        guard let v else { return nil }
        var r = ByteReader(v, what: "test")
        return (0..<v.count / 8).map { _ in try! r.i64() }
    }

    func bytes(_ f: [Int64]) -> [UInt8] {
        var w = ByteWriter()
        for x in f { w.i64(x) }
        return w.bytes
    }

    /// Delta items mixed with plain inserts and deletes of the same keys, through commits,
    /// merges and crashes: every read equals a model that adds each delta once.
    @Test(arguments: [11, 12])
    func deltasAddUpThroughMergesAndCrashes(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        var server = LocalServer(store: store, mergeThreshold: 300)
        var client = ClientItems(store: store, server: server, rid: 4)
        var committed: [UInt64: [Int64]] = [:]
        var working: [UInt64: [Int64]] = [:]
        for round in 0..<24 {
            for _ in 0..<150 {
                let n = rng.next() % 200
                switch rng.next() % 10 {
                case 0:
                    try client.delete(key(n))
                    working[n] = nil
                case 1:
                    let v: [Int64] = [Int64(n), 100]
                    try client.insert(key(n), bytes(v))
                    working[n] = v
                default:
                    let d: [Int64] = [Int64(rng.next() % 1000) - 500, rng.next() % 2 == 0 ? 1 : -1]
                    try client.addDelta(key(n), d)
                    working[n] = zip(working[n] ?? [0, 0], d).map { $0 &+ $1 }
                }
            }
            for n in 0..<200 as Range<UInt64> {
                #expect(fields(try client.lookup(key(n))?.value) == working[n], "seed \(seed) round \(round) key \(n)")
            }
            var seen: [UInt64: [Int64]] = [:]
            try client.forEach(from: key(0), through: key(.max)) { seen[$0.key.first] = fields($0.value); return true }
            #expect(seen == working, "seed \(seed) round \(round): iteration differs")
            if round % 5 == 4 {
                store = try Store.open(meta: meta, data: data)
                server = LocalServer(store: store, mergeThreshold: 300)
                try server.recoverLogTrees()
                client = ClientItems(store: store, server: server, rid: 4)
                working = committed
            } else {
                try client.commit(merge: round % 3 == 0)
                committed = working
            }
        }
        try client.commit(merge: true)
        let fs = try store.tree(.fs).items(in: store)
        #expect(fs.allSatisfy { !$0.isDeletion && !$0.isDelta })
        #expect(Dictionary(uniqueKeysWithValues: fs.map { ($0.key.first, fields($0.value)!) }) == working)
        #expect(Checker.check(meta: meta, data: data).isClean)
    }

    /// A merge that a crash cuts short has written part of the sums into the fs tree and taken
    /// the same items out of the recorded log tree in each chunk's commit. Readers and the merge
    /// that recovery runs again must count each delta once.
    @Test func deltaMergeCutShortCountsEachDeltaOnce() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store, mergeThreshold: .max)
        let client = ClientItems(store: store, server: server, rid: 5)
        let keys = 0..<UInt64(5000)
        for n in keys { try client.addDelta(key(n), [Int64(n), 1]) }
        try client.commit(merge: true)
        for n in keys {
            try client.addDelta(key(n), [10, 1])
            if n % 2 == 0 { try client.addDelta(key(n), [1, 0]) }
        }
        try client.commit()
        func expected(_ n: UInt64) -> [Int64] { [Int64(n) + 10 + (n % 2 == 0 ? 1 : 0), 2] }

        struct Crash: Error {}
        server.commitMergeChunk = { s in
            try s.commit()
            throw Crash()
        }
        #expect(throws: Crash.self) { try client.commit(merge: true) }
        let reopened = try Store.open(meta: meta, data: data)
        let fsTree = reopened.tree(.fs)
        // Cut short: the first keys hold their sums, the last ones do not yet.
        #expect(fields(try fsTree.lookup(key(0), in: reopened)?.value) == expected(0))
        #expect(fields(try fsTree.lookup(key(keys.last!), in: reopened)?.value) == [Int64(keys.last!), 1])
        let left = try LogTreeRecord(item: #require(try reopened.lookup(LogTreeRecord.key(rid: 5), in: .logTrees)))
        #expect(try BTree(root: left.root, name: "log").items(in: reopened).count < keys.count)
        let forest = Forest(trees: [BTree(root: left.root, name: "log"), fsTree], mergedIndex: 1)
        for n in keys { #expect(fields(try forest.lookup(key(n), in: reopened)?.value) == expected(n), "key \(n) before recovery") }

        let server2 = LocalServer(store: reopened)
        #expect(try server2.recoverLogTrees() == 1)
        let c2 = ClientItems(store: reopened, server: server2, rid: 6)
        for n in keys { #expect(fields(try c2.lookup(key(n))?.value) == expected(n), "key \(n) after recovery") }
        #expect(Checker.check(meta: meta, data: data).isClean)
    }

    /// A merge that runs out of space keeps what it did not merge in the log tree, and the mount
    /// keeps writing into it: a delta changed after the cut counts once, whether its key was
    /// merged before the cut or not.
    @Test func deltaMergeCutShortByENOSPCCountsEachDeltaOnce() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store, mergeThreshold: .max)
        let client = ClientItems(store: store, server: server, rid: 7)
        let keys = 0..<UInt64(5000)
        for n in keys { try client.addDelta(key(n), [Int64(n), 1]) }
        try client.commit(merge: true)
        for n in keys { try client.addDelta(key(n), [10, 1]) }
        var chunks = 0
        server.commitMergeChunk = { s in
            try s.commit()
            chunks += 1
            throw StoreError(.noSpace, "metadata device is full (test)")
        }
        try client.commit(merge: true)
        #expect(chunks == 1)
        #expect(server.merges == 1)  // the first one; the cut one did not finish
        #expect(try server.recordedLogTree(rid: 7) != nil)
        server.commitMergeChunk = { try $0.commit() }
        // The first chunk's keys hold their new sums in the fs tree; the last ones do not.
        #expect(fields(try store.tree(.fs).lookup(key(0), in: store)?.value) == [10, 2])
        #expect(fields(try store.tree(.fs).lookup(key(keys.last!), in: store)?.value) == [Int64(keys.last!), 1])
        for n in keys { try client.addDelta(key(n), [100, 1]) }
        func expected(_ n: UInt64) -> [Int64] { [Int64(n) + 110, 3] }
        for n in keys { #expect(fields(try client.lookup(key(n))?.value) == expected(n), "key \(n) before the merge") }
        try client.commit(merge: true)
        let fs = try store.tree(.fs).items(in: store)
        #expect(fs.count == keys.count)
        for it in fs { #expect(fields(it.value) == expected(it.key.first), "key \(it.key.first) after the merge") }
        #expect(Checker.check(meta: meta, data: data).isClean)
    }

    /// Refills between commits append extents to the recorded pool, used up or not; once the
    /// record has no room the client is told to commit, not that the device is full.
    @Test func aPoolRecordFullOfRefillsIsNotAFullDevice() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store, poolRefill: 1)
        let client = ClientItems(store: store, server: server, rid: 1)
        var allocated = 0
        var shortage: DataSpaceShortage?
        while allocated < 200 {
            do {
                _ = try client.allocateData(1)
                allocated += 1
            } catch let e as DataSpaceShortage {
                shortage = e
                break
            }
        }
        let short = try #require(shortage, "200 one-block refills never filled the record")
        #expect(short.commitMayHelp)
        #expect(allocated == LogTreeRecord.maxPoolExtents)
        #expect(store.allocatableDataBlocks > 1000)
        _ = try client.commit()
        #expect(try client.allocateData(1).count == 1, "the commit recorded the pool the client holds, and the record has room again")
    }

    /// Copy-on-write leaves single free blocks all over the device. A client's metadata pool
    /// must still come in runs: a record of a few dozen extents filled with single blocks
    /// left commits of more than that many blocks failing with ENOSPC on a device mostly free.
    @Test func metadataPoolsComeInRunsFromFragmentedFreeSpace() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store)
        let taken = try store.allocMetaExtents(1200, maxExtents: 8).flatMap { $0.start..<$0.end }
        #expect(taken.count == 1200)
        for b in taken where b % 2 == 0 { store.freeMeta(Extent(start: b, length: 1)) }
        try store.commit()

        let got = try server.refillMetaPool(rid: 1, atLeast: 300)
        #expect(got.count >= 300)
        let pool = try #require(try server.recordedLogTree(rid: 1)).metaPool
        #expect(pool.count <= 2, "pool of \(got.count) blocks took \(pool.count) extents")

        // A commit that writes far more blocks than the record has extents.
        let client = ClientItems(store: store, server: server, rid: 2)
        #expect(throws: StoreError.self) { try client.insert(key(0), [UInt8](repeating: 7, count: Item.maxValueLength + 1)) }
        let bulky = [UInt8](repeating: 7, count: Item.maxValueLength)
        for n in 0..<8000 as Range<UInt64> { try client.insert(key(n), bulky) }
        _ = try client.commit()
        #expect(try client.lookup(key(7999))?.value == bulky)
        #expect(try store.tree(.logTrees).lookup(LogTreeRecord.key(rid: 2), in: store) != nil)

        for b in taken where b % 2 == 1 { store.freeMeta(Extent(start: b, length: 1)) }
        try server.recoverLogTree(rid: 1)
        try store.commit()
        #expect(Checker.check(meta: meta, data: data).isClean)
    }

    @Test func inodeNumbersComeInBatchesAndNeverRepeat() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store)
        let a = ClientItems(store: store, server: server, rid: 1)
        let b = ClientItems(store: store, server: server, rid: 2)
        let fromA = try (0..<3).map { _ in try a.allocateInode(parent: 1, directory: false) }
        let fromB = try b.allocateInode(parent: 1, directory: false)
        #expect(fromA == [fromA[0], fromA[0] + 1, fromA[0] + 2])
        // Batches end on inode group boundaries: B's starts a group, and every number of A's
        // batches stays in A's groups, for files and directories alike.
        #expect(fromB % LockRange.groupSize == 0 && fromB > fromA[2])
        var more = fromA
        for i in 0..<3000 { more.append(try a.allocateInode(parent: 1, directory: i % 100 == 0)) }
        #expect(Set(more).count == more.count && !more.contains(fromB))
        #expect(!more.contains { $0 / LockRange.groupSize == fromB / LockRange.groupSize })
    }

    /// Every batch ends on a group boundary, holding at least what was asked; the first one
    /// starts after the root inode.
    @Test func inodeBatchesEndOnInodeGroupBoundaries() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store)
        store.nextIno = 2
        #expect(server.allocateInodes(1024) == 2..<2048)
        #expect(server.allocateInodes(1024) == 2048..<3072)
        #expect(server.allocateInodes(100) == 3072..<4096)
        #expect(server.allocateInodes(3 * 1024) == 4096..<7168)
        #expect(server.allocateInodes(0) == 7168..<8192)
    }
}

/// A server whose log tree commits fail on demand: the client has built and written its tree
/// into its metadata pool by then, and nothing records it.
final class CommitFailingServer: ServerLink {
    let inner: LocalServer
    var failCommits = false
    init(_ inner: LocalServer) { self.inner = inner }
    var transactionSeq: UInt64 { inner.transactionSeq }
    var committedSeq: UInt64 { inner.committedSeq }
    var stableSeq: UInt64 { inner.stableSeq }
    func allocateInodes(_ count: UInt64) throws -> Range<UInt64> { inner.allocateInodes(count) }
    func refillDataPool(rid: UInt64, atLeast count: UInt64) throws -> [Extent] {
        try inner.refillDataPool(rid: rid, atLeast: count)
    }
    func refillMetaPool(rid: UInt64, atLeast count: Int) throws -> [UInt64] {
        try inner.refillMetaPool(rid: rid, atLeast: count)
    }
    var dataSpace: (free: UInt64, pendingFree: UInt64) { inner.dataSpace }
    func recordedLogTree(rid: UInt64) throws -> LogTreeRecord? { try inner.recordedLogTree(rid: rid) }
    func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool) throws -> LogCommit {
        if failCommits { throw StoreError(.io, "test: the server's commit failed") }
        return try inner.commitLogTree(rid: rid, record, freed: freed, freedMeta: freedMeta, merge: merge)
    }
}

extension LogMergeTests {
    /// A crash after a client wrote its log tree blocks but before the server recorded them
    /// loses only that commit: the committed tree still reads whole (the build wrote only pool
    /// blocks), check counts the written blocks as the client's pool, and recovery frees them.
    @Test func logTreeWrittenButNotRecordedIsLostCleanly() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = CommitFailingServer(LocalServer(store: store, mergeThreshold: .max))
        let client = ClientItems(store: store, server: server, rid: 7)
        for n in 0..<3000 as Range<UInt64> { try client.insert(key(n), value(n, 0)) }
        try client.commit()
        let first = try #require(try server.recordedLogTree(rid: 7))
        #expect(!first.root.isEmpty && first.metaPoolBlocks > 0, "the commit left no metadata pool: \(first)")

        // Rewrites of every key copy every leaf of the committed tree into pool blocks.
        for n in 0..<3000 as Range<UInt64> { try client.insert(key(n), value(n, 1)) }
        server.failCommits = true
        #expect(throws: StoreError.self) { try client.commit() }

        let reopened = try Store.open(meta: meta, data: data)
        let crashed = Checker.check(meta: meta, data: data)
        #expect(crashed.isClean, "\(crashed.problems)")
        #expect(crashed.logTreeMetaPools[7] == first.metaPoolBlocks)
        let again = LocalServer(store: reopened, mergeThreshold: .max)
        #expect(try again.recoverLogTrees() == 1)
        let fs = try reopened.tree(.fs).items(in: reopened)
        #expect(fs.count == 3000)
        #expect(fs.allSatisfy { $0.value == value($0.key.first, 0) })
        let recovered = Checker.check(meta: meta, data: data)
        #expect(recovered.isClean, "\(recovered.problems)")
        #expect(recovered.metaPooled == 0)
        #expect(try reopened.tree(.logTrees).items(in: reopened).isEmpty)
    }
}

/// A server link whose commit answers can go missing the way they do when the server ends
/// and another takes over: after the server applied the commit, or before.
final class LosingLink: ServerLink {
    enum Mode { case answers, appliesThenLoses, losesBeforeApplying }
    let server: LocalServer
    var mode = Mode.answers
    init(_ server: LocalServer) { self.server = server }
    var transactionSeq: UInt64 { server.transactionSeq }
    var committedSeq: UInt64 { server.committedSeq }
    var stableSeq: UInt64 { server.stableSeq }
    func allocateInodes(_ count: UInt64) throws -> Range<UInt64> { server.allocateInodes(count) }
    func refillDataPool(rid: UInt64, atLeast count: UInt64) throws -> [Extent] { try server.refillDataPool(rid: rid, atLeast: count) }
    func refillMetaPool(rid: UInt64, atLeast count: Int) throws -> [UInt64] { try server.refillMetaPool(rid: rid, atLeast: count) }
    var dataSpace: (free: UInt64, pendingFree: UInt64) { server.dataSpace }
    func recordedLogTree(rid: UInt64) throws -> LogTreeRecord? { try server.recordedLogTree(rid: rid) }
    func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool) throws -> LogCommit {
        switch mode {
        case .answers:
            return try server.commitLogTree(rid: rid, record, freed: freed, freedMeta: freedMeta, merge: merge)
        case .appliesThenLoses:
            _ = try server.commitLogTree(rid: rid, record, freed: freed, freedMeta: freedMeta, merge: merge)
            throw NetError.serverRestarted
        case .losesBeforeApplying:
            throw NetError.serverRestarted
        }
    }
}

extension LogMergeTests {
    /// A commit in flight when the server ends: the new server's record tells the client
    /// whether it landed. Taken as landed when it did not, changes would be lost; sent again
    /// when it did, the blocks it freed would be freed twice (check finds blocks both free
    /// and in a tree).
    @Test func aCommitWhoseAnswerWasLostIsNeitherLostNorAppliedTwice() throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let server = LocalServer(store: store)
        let link = LosingLink(server)
        let client = ClientItems(store: store, server: link, rid: 7)
        for n in 0..<300 as Range<UInt64> { try client.insert(key(n), value(n, 0)) }
        try client.commit()
        #expect(try server.recordedLogTree(rid: 7)?.commits == 1)

        // Rewrites copy the tree's leaves: the commit frees the old ones.
        for n in 0..<300 as Range<UInt64> { try client.insert(key(n), value(n, 1)) }
        link.mode = .appliesThenLoses
        try client.commit()
        #expect(try server.recordedLogTree(rid: 7)?.commits == 2)
        #expect(!client.hasChanges)

        for n in 0..<300 as Range<UInt64> { try client.insert(key(n), value(n, 2)) }
        link.mode = .losesBeforeApplying
        let e = #expect(throws: NetError.self) { try client.commit() }
        #expect(e?.serverRestarted == true)
        #expect(try server.recordedLogTree(rid: 7)?.commits == 2)

        link.mode = .answers
        try client.commit()
        #expect(try server.recordedLogTree(rid: 7)?.commits == 3)
        for n in stride(from: UInt64(0), to: 300, by: 7) { #expect(try client.lookup(key(n))?.value == value(n, 2)) }
        _ = try server.commitLogTree(rid: 7, server.recordedLogTree(rid: 7)!, merge: true)
        // A live client's count outlives the merge of its tree.
        #expect(try server.recordedLogTree(rid: 7)?.commits == 3)
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }
}
