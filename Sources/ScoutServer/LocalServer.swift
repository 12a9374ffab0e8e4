public import ScoutFormat
public import ScoutNet
public import ScoutStore

/// The server side of a mount, running in the mount's own process: it records each client's
/// committed log tree, hands out inode numbers and transaction seqs, and merges log trees into
/// the fs tree. Only the server writes the superblock.
///
/// It is also the only editor of the free trees: each client allocates file data from a pool
/// of blocks the server gave it (recorded in its log-trees item) and hands back what it freed
/// at each commit, so clients in one process, and later on other nodes, never edit the
/// allocator's trees themselves.
///
/// Not thread-safe: the caller serializes calls (clients in one process hold their store
/// lock). The cluster puts the network between clients and this type; the calls stay the same.
public final class LocalServer: ServerLink {
    public let store: Store
    /// A client's log tree is merged at the commit that finds it holding at least this many
    /// items (an upper bound: rewrites of one key count each time).
    public var mergeThreshold: UInt64
    public private(set) var merges = 0
    /// The commit between two chunks of a merge. Tests replace it to cut a merge short the
    /// way a device running out of space does.
    public var commitMergeChunk: (Store) throws -> Void = { try $0.commit() }

    /// Blocks a pool refill hands out beyond what was asked for, so a client writing a large
    /// file asks once per this many blocks.
    public var poolRefill: UInt64
    /// Items one background merge step moves (one store commit, with the store lock held):
    /// small, so clients' commits and cache fills wait little for it.
    public var backgroundChunk = 2000
    /// Clients whose log trees passed the merge threshold, merged a chunk at a time by
    /// `mergeStep` between their commits.
    public private(set) var mergesWanted: Set<UInt64> = []
    /// Told when a log tree is wanted for merging (with the store lock held: must not block);
    /// the cluster wakes its merge thread.
    public var onMergeWanted: (() -> Void)?

    /// Where the server tells of long work (a merge in chunks), or nil.
    public var report: ((String) -> Void)?

    /// Metadata blocks a metadata pool refill hands out at least.
    public var metaPoolRefill = 64

    public init(store: Store, mergeThreshold: UInt64 = 100_000, poolRefill: UInt64 = 8192) {
        self.store = store
        self.mergeThreshold = mergeThreshold
        self.poolRefill = poolRefill
    }

    /// The seq that items written in the open transaction carry.
    public var transactionSeq: UInt64 { store.txnSeq }

    public var committedSeq: UInt64 { store.superblock.seq }

    /// Clients of one store stamp their changes with at least its open transaction's seq (a
    /// client's own floor only goes above it), and that seq never goes back.
    public var stableSeq: UInt64 { store.txnSeq - 1 }

    /// At least `count` inode numbers never handed out before, ending on an inode group
    /// boundary: clients give whole groups to directories, so one client's directories
    /// share no group with another's. Numbers a crashed client did not use are lost, never
    /// reused.
    public func allocateInodes(_ count: UInt64) -> Range<UInt64> {
        let first = store.nextIno
        let mask = LockRange.groupSize - 1
        store.nextIno = (first + max(count, 1) + mask) & ~mask
        return first..<store.nextIno
    }

    /// The log tree recorded for `rid`, or nil.
    public func recordedLogTree(rid: UInt64) throws -> LogTreeRecord? {
        guard let it = try store.lookup(LogTreeRecord.key(rid: rid), in: .logTrees) else { return nil }
        return try LogTreeRecord(item: it)
    }

    /// Records `record` as `rid`'s log tree (with the pool it has left) and commits; the blocks
    /// it `freed` become free with that commit. A tree past the threshold is merged later, in
    /// the background (`mergeStep`), never inside the client's commit; one the client asks to
    /// have merged (`merge`: an unmount, an operation short of space), or that grew past what
    /// the free space can merge, is merged now, and a second commit makes that durable.
    public func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool) throws -> LogCommit {
        try commitLogTree(rid: rid, record, freed: freed, freedMeta: freedMeta, merge: merge, mergesInBackground: true)
    }

    /// `mergesInBackground` false (a client on another node, which builds its commits on the
    /// recorded tree where a background step could not keep out): a tree past the threshold
    /// is merged inside this commit instead.
    public func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent] = [], freedMeta: [Extent] = [],
                              merge: Bool = false, mergesInBackground: Bool = true) throws -> LogCommit {
        // A node wrote the tree's blocks without flushing them (`readyWritesForRecord`):
        // the flush before the superblock makes them durable, whatever the server wrote.
        store.meta.noteWritesElsewhere()
        try setRecord(rid: rid, record)
        for e in freed { store.freeData(e) }
        for e in freedMeta { store.freeMeta(e) }
        try store.commit()
        let seq = store.superblock.seq
        guard !record.root.isEmpty else { return LogCommit(seq: seq, merged: false) }
        let pastThreshold = record.items >= mergeThreshold
        guard try merge || mergeNeededForSpace(record) || (pastThreshold && !mergesInBackground) else {
            if pastThreshold, mergesWanted.insert(rid).inserted { onMergeWanted?() }
            return LogCommit(seq: seq, merged: false)
        }
        do {
            try mergeAndCommit(rid: rid, clientGone: false)
        } catch let e as StoreError where e.code == .noSpace {
            // The log tree is durable; what the merge did not move stays in it (the record
            // names what is left), and the background merges take it up again (or the
            // node's next commit).
            if mergesInBackground, mergesWanted.insert(rid).inserted { onMergeWanted?() }
            return LogCommit(seq: store.superblock.seq, merged: false)
        }
        return LogCommit(seq: store.superblock.seq, merged: true)
    }

    /// One step of the background merges: up to `backgroundChunk` items of a wanted log tree
    /// move into the fs tree and leave the log tree, and a commit makes both durable. The
    /// client goes on committing into what is left (it reads its tree from the record). True
    /// while more is wanted. Throws ENOSPC with nothing half done.
    public func mergeStep() throws -> Bool {
        guard let rid = mergesWanted.min() else { return false }
        return try mergeStep(rid: rid)
    }

    /// The client whose log tree the next merge step takes, if any is wanted. Its caller
    /// keeps that client's commits out while the step edits the tree (`mergeStep(rid:)`).
    public var nextMergeWanted: UInt64? { mergesWanted.min() }

    /// One merge step on `rid`'s log tree, which its client must not be building a commit on.
    public func mergeStep(rid: UInt64) throws -> Bool {
        guard mergesWanted.contains(rid) else { return !mergesWanted.isEmpty }
        guard let rec = try recordedLogTree(rid: rid), !rec.root.isEmpty else {
            mergesWanted.remove(rid)
            return !mergesWanted.isEmpty
        }
        var log = BTree(root: rec.root, name: "log tree of client \(String(rid, radix: 16))")
        let others = try othersHoldItems(besides: rid)
        var out = LogMerge.Outcome()
        let done: Bool
        do {
            done = try LogMerge.mergeSome(&log, into: store, keepTombstones: others, limit: backgroundChunk, &out)
        } catch let e as StoreError where e.code == .noSpace {
            try recordLeft(rid: rid, rec, log, moved: out.items + out.deletions)
            throw e
        }
        if done {
            _ = try log.destroy(in: store)
            mergesWanted.remove(rid)
            merges += 1
        }
        try recordLeft(rid: rid, rec, log, moved: out.items + out.deletions)
        try commitMergeChunk(store)
        return !mergesWanted.isEmpty
    }

    /// Records what a merge left of `rid`'s log tree, in the transaction that moved the rest:
    /// should that fail, nothing of the transaction may be committed (items would be in both
    /// trees), so the store gives it up.
    private func recordLeft(rid: UInt64, _ rec: LogTreeRecord, _ log: BTree, moved: Int = 0) throws {
        let n = UInt64(moved)
        do {
            try setRecord(rid: rid, LogTreeRecord(root: log.root, items: log.root.isEmpty ? 0 : rec.items - min(rec.items, n),
                                                  dataPool: rec.dataPool, metaPool: rec.metaPool, commits: rec.commits))
        } catch let e as StoreError {
            store.abandon(e)
            throw e
        }
    }

    private func othersHoldItems(besides rid: UInt64) throws -> Bool {
        try store.logTreeRecords().contains { $0.rid != rid && !$0.record.root.isEmpty }
    }

    /// Takes at least `count` data blocks (more, up to `poolRefill`, while the device has
    /// them) from the free tree into `rid`'s recorded pool. Nothing is committed here: the
    /// next commit, whoever makes it, records the blocks as taken and as the pool's together,
    /// so a crash before it loses neither.
    public func refillDataPool(rid: UInt64, atLeast count: UInt64) throws -> [Extent] {
        let want = max(count, poolRefill)
        var got: [Extent] = []
        var have: UInt64 = 0
        var rec = try recordedLogTree(rid: rid) ?? LogTreeRecord(root: .empty, items: 0)
        // Fragmented free space comes in many small extents; a pool takes a bounded number.
        let room = LogTreeRecord.maxPoolExtents - rec.dataPool.count - rec.metaPool.count
        // Refills append to what the last commit recorded, though the client may have used
        // those extents up since: a record full of them is not a full device. Nothing is
        // given, and the client commits (recording the pool it really holds) and asks again.
        if room <= 0 { return [] }
        let zones = try dataZones(for: rid)
        while have < want, got.count < min(room, 64), store.allocatableDataBlocks > 0 {
            let n = want - have
            var e: Extent?
            if let zones { e = try store.allocData(n, inZones: zones.exclusive) ?? store.allocData(n, inZones: zones.vacant) }
            let taken = try e ?? store.allocData(n)
            got.append(taken)
            have += taken.length
        }
        guard !got.isEmpty else {
            throw StoreError(.noSpace, "data device is full: no free 4 KiB blocks left; free space or grow the device")
        }
        rec.dataPool.append(contentsOf: got)
        try setRecord(rid: rid, rec)
        return got
    }

    /// With data allocation zones (mkfs -z), where a refill for `rid` looks first: the zones
    /// only its own pool holds blocks of, then the zones no pool holds blocks of, each in
    /// ascending order (the original's exclusive and vacant zones); past both, anywhere. So
    /// mounts writing at once each fill their own zones, and their files' extents stay apart.
    /// nil without zones.
    func dataZones(for rid: UInt64) throws -> (exclusive: [UInt64], vacant: [UInt64])? {
        let size = store.superblock.dataAllocZoneBlocks
        guard size > 0 else { return nil }
        let count = (store.superblock.dataTotalBlocks + size - 1) / size
        var mine = Set<UInt64>(), theirs = Set<UInt64>()
        for (r, rec) in try store.logTreeRecords() {
            for e in rec.dataPool where e.length > 0 {
                for z in (e.start / size)...((e.end - 1) / size) {
                    if r == rid { mine.insert(z) } else { theirs.insert(z) }
                }
            }
        }
        return (mine.subtracting(theirs).sorted(), (0..<count).filter { !mine.contains($0) && !theirs.contains($0) })
    }

    /// Takes at least `count` metadata blocks (at least `metaPoolRefill`) out of the free
    /// space into `rid`'s recorded metadata pool; like data refills, the next commit makes
    /// both durable together. The blocks come in as few runs as the free space allows: the
    /// record holds a bounded number of extents, and blocks taken one by one from fragmented
    /// free space once filled it with a few dozen blocks, which no commit could live on.
    public func refillMetaPool(rid: UInt64, atLeast count: Int) throws -> [UInt64] {
        var rec = try recordedLogTree(rid: rid) ?? LogTreeRecord(root: .empty, items: 0)
        let room = LogTreeRecord.maxPoolExtents - rec.dataPool.count - rec.metaPool.count
        let runs = room > 0 ? try store.allocMetaExtents(max(count, metaPoolRefill), maxExtents: room) : []
        let taken = runs.flatMap { $0.start..<$0.end }
        let (pool, got, left) = LogTreeRecord.fit(taken, into: rec.metaPool, beside: rec.dataPool.count)
        // No more runs than the record has room for were taken, so none should be left over.
        for b in left { store.freeMeta(Extent(start: b, length: 1)) }
        guard !got.isEmpty else {
            throw StoreError(.noSpace, "metadata free space is too fragmented to give client \(String(rid, radix: 16)) more pool blocks: its record already holds \(rec.metaPool.count + rec.dataPool.count) of at most \(LogTreeRecord.maxPoolExtents) extents, and no free run is left; free space or run `scoutfs check`")
        }
        rec.metaPool = pool
        try setRecord(rid: rid, rec)
        return got
    }

    /// Grows the filesystem onto more of its devices (`scoutfs resize-devices`) and commits:
    /// the new totals in 64 KiB metadata and 4 KiB data blocks, 0 or the current total leaving
    /// a device as it is. Clients learn the totals with the roots of this commit. Refused with
    /// `.invalid`, nothing changed, for a smaller total or one past the device's end.
    public func resizeDevices(metaTotalBlocks meta: UInt64, dataTotalBlocks data: UInt64) throws {
        let sb = store.superblock
        let m = meta == 0 || meta == sb.metaTotalBlocks ? nil : meta
        let d = data == 0 || data == sb.dataTotalBlocks ? nil : data
        guard m != nil || d != nil else { return }
        try store.grow(metaTotalBlocks: m, dataTotalBlocks: d)
        try store.commit()
        report?("server: the filesystem grew to \(store.superblock.metaTotalBlocks) metadata blocks of 64 KiB and \(store.superblock.dataTotalBlocks) data blocks of 4 KiB")
    }

    /// What a node reads through and counts with, as of the last commit.
    public var roots: ServerRoots {
        let sb = store.superblock
        let space = dataSpace
        return ServerRoots(seq: sb.seq, fs: sb.root(.fs), logTrees: sb.root(.logTrees),
                           transactionSeq: transactionSeq, stableSeq: stableSeq,
                           metaAllocatable: store.allocatableMetaBlocks, dataFree: space.free, dataPendingFree: space.pendingFree,
                           metaTotalBlocks: sb.metaTotalBlocks, dataTotalBlocks: sb.dataTotalBlocks)
    }

    public var dataSpace: (free: UInt64, pendingFree: UInt64) {
        (store.allocatableDataBlocks, store.pendingFreeDataBlocks)
    }

    /// A merge writes about as many fs tree blocks as the log tree holds before the log tree's
    /// own blocks come free, so a log tree may grow to a third of the free space at most: past
    /// that it is merged while it still fits, however full the device gets.
    ///
    /// The record's item count bounds the tree's blocks (each leaf holds an item, and there
    /// are fewer parents than leaves), so a small tree is let through without reading its
    /// blocks: the walk read the client's freshly written parents, cold in the server's cache,
    /// in every commit a lock hand-over waits for.
    func mergeNeededForSpace(_ record: LogTreeRecord) throws -> Bool {
        let most = (record.items * 2 + UInt64(record.root.height)).multipliedReportingOverflow(by: 3)
        if !most.overflow && most.partialValue <= store.allocatableMetaBlocks { return false }
        let blocks = try BTree(root: record.root, name: "log tree").blockCount(in: store)
        return UInt64(blocks) * 3 > store.allocatableMetaBlocks
    }

    /// Merges every recorded log tree: at mount, the trees that clients of an earlier mount left
    /// behind. Call it only while no client is writing. (With one node nothing else is mounted;
    /// the cluster will merge only trees of departed clients.)
    @discardableResult
    public func recoverLogTrees() throws -> Int {
        let rids = try recordedRids()
        for rid in rids { try mergeAndCommit(rid: rid, clientGone: true) }
        return rids.count
    }

    /// The clients with a log-tree record.
    private func recordedRids() throws -> [UInt64] {
        var rids: [UInt64] = []
        try store.tree(.logTrees).forEach(in: store) { it in
            if it.key.zone == Zone.logTrees { rids.append(it.key.first) }
            return true
        }
        return rids
    }

    /// Merges the log tree of a client that is gone (crashed or unmounted) while others keep
    /// running and takes back its pool: its committed changes stay, what it had not committed
    /// is lost, and the blocks it allocated for that are free again.
    public func recoverLogTree(rid: UInt64) throws {
        try mergeAndCommit(rid: rid, clientGone: true)
        // A node whose tree was merged before (or that never committed) has only its record.
        if try removeMounted(rid: rid) { try store.commit() }
    }

    /// At a server's start: merges the log trees (and takes back the pools) of every client
    /// that is not a node recorded as mounted — clients in the process of an earlier server,
    /// which ended with it — and returns the recorded nodes, which keep their trees: they may
    /// come back to this server, and one that does not is fenced before anything of it is
    /// reclaimed (`recoverLogTree`).
    public func recoverForTakeover() throws -> (merged: Int, nodes: [MountedClient]) {
        let nodes = try store.mountedClients()
        let keep = Set(nodes.map(\.rid))
        let rids = try recordedRids().filter { !keep.contains($0) }
        for rid in rids { try mergeAndCommit(rid: rid, clientGone: true) }
        return (rids.count, nodes)
    }

    /// A client that leaves cleanly (its tree merged, its pools given back) leaves no record:
    /// what is left of a live client's record then is only its commit count. A record still
    /// holding a tree or a pool stays, for recovery to merge and reclaim.
    public func forget(rid: UInt64) throws {
        if try removeMounted(rid: rid) { try store.commit() }
        guard let rec = try recordedLogTree(rid: rid), rec.root.isEmpty, rec.dataPool.isEmpty, rec.metaPool.isEmpty else { return }
        try store.delete(LogTreeRecord.key(rid: rid), from: .logTrees)
        try store.commit()
    }

    /// Deletes `rid`'s mounted-clients record, if it has one, in the open transaction;
    /// whether it had.
    private func removeMounted(rid: UInt64) throws -> Bool {
        guard try store.lookup(MountedClient.key(rid: rid), in: .mountedClients) != nil else { return false }
        try store.delete(MountedClient.key(rid: rid), from: .mountedClients)
        return true
    }

    /// Records `client` as mounted and commits: a server that takes over after this one waits
    /// for it to come back, and fences it if it does not, before reclaiming its log tree.
    public func recordMounted(_ client: MountedClient) throws {
        try store.insert(Item(key: MountedClient.key(rid: client.rid), seq: store.txnSeq, value: client.encoded),
                         into: .mountedClients, forCommit: true)
        try store.commit()
    }

    /// Merges `rid`'s log tree into the fs tree. A live client keeps its pool in a record with
    /// an empty tree; a departed one's pool goes back to the free tree.
    func mergeAndCommit(rid: UInt64, clientGone: Bool) throws {
        guard let rec = try recordedLogTree(rid: rid) else { return }
        var log = BTree(root: rec.root, name: "log tree of client \(String(rid, radix: 16))")
        // Other clients' trees may hold older versions of what this one deletes.
        let others = try othersHoldItems(besides: rid)
        let started = ContinuousClock.now
        var chunks = 0
        let out: LogMerge.Outcome
        do {
            // The record keeps the item count of the whole tree while the merge goes on: a
            // merge cut short (its server ended) is taken up again at the client's next commit.
            out = try LogMerge.merge(&log, into: store, keepTombstones: others) { left in
                try recordLeft(rid: rid, rec, left)
                try commitMergeChunk(store)
                chunks += 1
                report?("merging the log tree of client \(String(rid, radix: 16)): chunk \(chunks) committed")
            }
        } catch let e as StoreError where e.code == .noSpace {
            try recordLeft(rid: rid, rec, log)
            throw e
        }
        if chunks > 0 {
            report?("merged the log tree of client \(String(rid, radix: 16)): \(out.items + out.deletions) items in \(chunks + 1) chunks in \(started.duration(to: .now))")
        }
        mergesWanted.remove(rid)
        if clientGone {
            for e in rec.dataPool { store.freeData(e) }
            for e in rec.metaPool { store.freeMeta(e) }
            try store.delete(LogTreeRecord.key(rid: rid), from: .logTrees)
            _ = try removeMounted(rid: rid)
        } else {
            try setRecord(rid: rid, LogTreeRecord(root: .empty, items: 0, dataPool: rec.dataPool, metaPool: rec.metaPool, commits: rec.commits))
        }
        try store.commit()
        merges += 1
    }

    private func setRecord(rid: UInt64, _ record: LogTreeRecord) throws {
        let key = LogTreeRecord.key(rid: rid)
        // A live client's commit count stays while it lives (a departed one's record goes
        // in `mergeAndCommit`).
        if record.root.isEmpty && record.dataPool.isEmpty && record.metaPool.isEmpty && record.commits == 0 {
            try store.delete(key, from: .logTrees)
        } else {
            try store.insert(Item(key: key, seq: store.txnSeq, value: record.encoded), into: .logTrees, forCommit: true)
        }
    }
}

