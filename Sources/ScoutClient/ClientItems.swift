#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// The lock that the clients of one store in one process hold around every use of it (the
/// store and the server in front of it are not thread-safe), and the store's space figures as
/// they stood when it was last let go: every operation checks them, and must not wait for a
/// commit that holds the lock to do so.
public final class StoreLock: Sendable {
    private let mutex = Mutex(())
    private let metaAllocatable = Atomic<UInt64>(0)
    private let dataFree = Atomic<UInt64>(0)
    private let dataPendingFree = Atomic<UInt64>(0)
    private let dirty = Atomic<Int>(0)

    public init() {}

    public func withLock<T>(_ store: any ClientStore, _ body: () throws -> T) rethrows -> T {
        try mutex.withLock { _ in
            defer {
                metaAllocatable.store(store.allocatableMetaBlocks, ordering: .relaxed)
                dataFree.store(store.allocatableDataBlocks, ordering: .relaxed)
                dataPendingFree.store(store.pendingFreeDataBlocks, ordering: .relaxed)
                dirty.store(store.dirtyBlocks, ordering: .relaxed)
            }
            return try body()
        }
    }

    /// The figures as of the last release of the lock.
    var space: StoreSpace {
        StoreSpace(metaAllocatable: metaAllocatable.load(ordering: .relaxed), dataFree: dataFree.load(ordering: .relaxed), dataPendingFree: dataPendingFree.load(ordering: .relaxed),
                   dirtyBlocks: dirty.load(ordering: .relaxed))
    }
}

/// A store's space, as `StoreLock` last saw it.
public struct StoreSpace: Sendable {
    public var metaAllocatable: UInt64
    public var dataFree: UInt64
    public var dataPendingFree: UInt64
    public var dirtyBlocks: Int
}

/// `blocks.reading` over the roots `pick` gives, and on a node, again over newer roots asked
/// of the server when the newest it had met a block since reused: another node's commit may
/// have freed it after the roots this node last heard of.
func readingCommitted<T>(_ blocks: CommittedBlocks, of store: any ClientStore, _ pick: () -> CommittedRoots,
                         _ body: (CommittedRoots) throws -> T) throws -> T {
    while true {
        do {
            return try blocks.reading(pick, body)
        } catch let e as StoreError where e.code == .stale || e.code == .corrupt {
            guard try store.refreshAfterStaleRead() else { throw e }
        }
    }
}

/// The committed items a client reads through: its own log tree (as recorded at its last
/// commit, less what the server's background merges moved on since) over the others' (clients
/// sharing the store) over the fs tree, all as of the last commit. The item cache fills from
/// it from any operation's thread without the store lock: a fill never waits for a commit in
/// flight, whoever makes it.
///
/// While this client's own commit lands, reads keep to the roots from before it (`pin`): the
/// cache still holds that commit's changes as dirty until it has marked them written, and a
/// read of roots that already hold them would count them twice (a delta) or bring back what
/// they deleted.
final class CommittedForest: ItemSource, Sendable {
    let blocks: CommittedBlocks
    // nonisolated(unsafe): only `refreshIfStale` and `refreshAfterStaleRead` are called on it
    // here, which are thread-safe (no-ops for the Store; NodeStore's are locked).
    nonisolated(unsafe) let store: any ClientStore
    let rid: UInt64
    /// Read the log trees other clients recorded too (clients sharing one store); a lone
    /// mount has none beside its own once recovery merged what earlier mounts left.
    let readsOtherLogTrees: Bool

    private struct View {
        var pinned: CommittedRoots?
        /// The trees of the roots last read, built once per commit.
        var trees: (seq: UInt64, trees: [BTree])?
    }
    private let view = Mutex(View())

    init(store: any ClientStore, rid: UInt64, readsOtherLogTrees: Bool) {
        blocks = store.committed
        self.store = store
        self.rid = rid
        self.readsOtherLogTrees = readsOtherLogTrees
    }

    /// Holds reads to the roots as they are now, until `unpin`: the caller (holding the store
    /// lock) is about to commit this client's changes.
    func pin() {
        let now = blocks.roots
        view.withLock { $0.pinned = now }
    }

    /// Lets reads see the newest roots again: the cache has marked the commit's changes written.
    func unpin() {
        view.withLock { $0.pinned = nil }
    }

    /// The pinned roots, unless a lock granted since needs newer ones (another node
    /// committed under it after the pin): then the commit in flight is waited for, and the
    /// newest roots read.
    private func pick() -> CommittedRoots {
        var waits = 0
        while true {
            guard let pinned = view.withLock({ $0.pinned }) else { return blocks.roots }
            if pinned.seq >= blocks.readFloor { return pinned }
            // The pin ends with the commit's answer (a round trip; seconds while a new server
            // takes over).
            waits += 1
            usleep(waits < 100 ? 50 : 1000)
        }
    }

    /// Whether a client other than this one has a log tree holding items, as of the newest
    /// roots. A key this client deletes is under its write lock, so any older version in
    /// another client's tree was committed before this client got the lock, and is in the
    /// roots it read then: when no other tree holds anything, the key is in this client's
    /// tree or the fs tree only.
    func othersHoldLogTrees() throws -> Bool {
        guard readsOtherLogTrees else { return false }
        return try blocks.roots.records.get().contains { other, rec in other != rid && !rec.root.isEmpty }
    }

    /// Own log tree first (ties in seq go to it), then the others, then the fs tree.
    private func trees(_ roots: CommittedRoots) throws -> [BTree] {
        if let t = view.withLock({ v in v.trees.flatMap { $0.seq == roots.seq ? $0.trees : nil } }) { return t }
        let records = try roots.records.get()
        var out: [BTree] = []
        for (other, rec) in records where other == rid && !rec.root.isEmpty {
            out.append(BTree(root: rec.root, name: "log tree of client \(String(other, radix: 16))"))
        }
        if readsOtherLogTrees {
            for (other, rec) in records where other != rid && !rec.root.isEmpty {
                out.append(BTree(root: rec.root, name: "log tree of client \(String(other, radix: 16))"))
            }
        }
        out.append(BTree(root: roots.fs, name: TreeID.fs.description))
        view.withLock { $0.trees = (roots.seq, out) }
        return out
    }

    private func reading<T>(_ pick: () -> CommittedRoots, _ body: (CommittedRoots) throws -> T) throws -> T {
        try readingCommitted(blocks, of: store, pick, body)
    }

    func committedItem(_ key: Key) throws -> Item? {
        try store.refreshIfStale()
        return try reading(pick) { roots in
            let t = try trees(roots)
            if t.count == 1 {
                guard let it = try t[0].lookup(key, in: blocks), !it.isDeletion else { return nil }
                return it
            }
            return try Forest(trees: t, mergedIndex: t.count - 1).lookup(key, in: blocks)
        }
    }

    /// A read that meets a reused block goes on from the key after the last one delivered,
    /// over newer roots: what this client's locks cover is the same in both.
    func committedItems(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        try store.refreshIfStale()
        var pos: Key? = start
        var bodyError: (any Error)?
        try reading(pick) { roots in
            guard let from = pos else { return }
            let t = try trees(roots)
            try Forest(trees: t, mergedIndex: t.count - 1).forEach(from: from, through: end, in: blocks) { it in
                let more: Bool
                do {
                    more = try body(it)
                } catch {
                    bodyError = error
                    more = false
                }
                pos = more ? it.key.successor : nil
                return more
            }
            pos = nil
        }
        if let bodyError { throw bodyError }
    }
}

/// The items a mount reads and writes. Changes stay in the item cache until a commit writes
/// them, in one pass in key order, into this client's own **log tree**; reads see the cache
/// over the forest of that log tree and the fs tree, so a change is visible the moment it is
/// made and durable once the server records the log tree at a commit. The server later merges
/// the log tree into the fs tree and the client starts a new one.
///
/// Reads and changes may come from many threads at once (the cache is thread-safe, fills take
/// the store lock, the pool and inode batch their own mutexes); a commit's switch
/// (`beginCommit`) runs with the caller's transaction held alone, its write (`finishCommit`)
/// one at a time beside operations.
public final class ClientItems: @unchecked Sendable {
    // @unchecked: `log`, `logWrites` and `metaPool` are touched only with `logTurn` held.
    public let store: any ClientStore
    public let server: any ServerLink
    /// This mount's id among the server's clients.
    public let rid: UInt64
    public let cache: ItemCache
    private let committed: CommittedForest
    /// One lock for every client of the store in this process: the store is not thread-safe.
    private let storeLock: StoreLock
    /// This client's log tree as its commits write it; the record is the truth between
    /// commits (the server's background merges shrink the tree), and each commit starts from
    /// it (`followRecord`).
    private var log: BTree
    /// Items written into the log tree since it was started (rewrites count again).
    private var logWrites: UInt64 = 0
    /// Commits recorded by the server (`LogTreeRecord.commits`); logTurn held.
    private var commitCount: UInt64 = 0
    /// Metadata blocks the server gave this client for its log tree and it has not used.
    private var metaPool: [UInt64] = []
    /// Held while a commit builds the log tree outside the store lock, and by the server's
    /// merge steps on this tree: they must not edit it under a commit being built on it.
    /// Comes before the store lock. Held for a whole build, so a waiter sleeps rather than
    /// spins (`BlockingMutex`).
    private let logTurn = BlockingMutex(())
    /// Inode numbers granted by the server and not yet used; its lock comes before the store
    /// lock.
    private let inodes = Mutex(InodeNumbers())
    /// Data blocks to allocate from; its lock comes before the store lock.
    private let pool = Mutex(DataPool())
    /// Changes made after a commit's switch carry at least this seq, one above the seq the
    /// committing transaction's changes carry.
    private let seqFloor = Atomic<UInt64>(0)
    /// The commit estimate of the changes a commit in flight took at its switch: they stay
    /// dirty in the cache until it ends, but the next commit's trigger counts only what came
    /// after them.
    private let inFlightEstimate = Atomic<Int>(0)
    /// The lowest seq a change made since the last switch carries (`.max`: none), and the
    /// lowest of the changes a commit in flight writes: no change at or above the lower of
    /// the two is durable yet, however far the server's seqs have moved (a node's inode batch
    /// or pool refill commits the server between its own commits), so index walks never call
    /// them final (`uncommittedSeqFloor`).
    private let uncommittedFloor = Atomic<UInt64>(.max)
    private let inFlightFloor = Atomic<UInt64>(.max)
    /// `sharesStore`: other clients record log trees in the same store, and reads see them;
    /// they must then share `storeLock` too.
    public init(store: any ClientStore, server: any ServerLink, rid: UInt64, cacheBytes: Int = 256 << 20, sharesStore: Bool = false,
                storeLock: StoreLock = StoreLock()) {
        self.store = store
        self.server = server
        self.rid = rid
        log = BTree(root: .empty, name: "log tree of client \(String(rid, radix: 16))")
        committed = CommittedForest(store: store, rid: rid, readsOtherLogTrees: sharesStore)
        self.storeLock = storeLock
        cache = ItemCache(source: committed, blockCapacity: store.nodeCapacity, cleanByteLimit: cacheBytes)
    }

    /// The seq items written now carry.
    public var seq: UInt64 { max(server.transactionSeq, seqFloor.load(ordering: .acquiring)) }

    // MARK: reading

    /// The visible item for `key`, or nil.
    public func lookup(_ key: Key) throws -> Item? {
        try cache.lookup(key)
    }

    /// Calls `body` with each visible item in `[start, end]` in key order until it returns false.
    public func forEach(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        try cache.forEach(from: start, through: end, body)
    }

    // MARK: writing

    /// Changes carry `minSeq` when it is above the open transaction's seq: the write seq of
    /// the cluster lock they are made under, so a change made after another client's always
    /// wins in the forest, whatever the two clients' transaction seqs.
    public func insert(_ key: Key, _ value: [UInt8], minSeq: UInt64 = 0) throws {
        try cache.insert(key, value, seq: stamp(minSeq))
    }

    /// Makes `key` invisible.
    public func delete(_ key: Key, minSeq: UInt64 = 0) throws {
        try cache.delete(key, seq: stamp(minSeq))
    }

    /// Adds `fields` (little-endian Int64s) to the item at `key` without reading the forest, so
    /// many writers can change one total at once.
    public func addDelta(_ key: Key, _ fields: [Int64], minSeq: UInt64 = 0) throws {
        try cache.addDelta(key, fields, seq: stamp(minSeq))
    }

    /// The seq a change made now carries, kept in the uncommitted floor.
    private func stamp(_ minSeq: UInt64) -> UInt64 {
        let s = max(seq, minSeq)
        lower(uncommittedFloor, to: s)
        return s
    }

    private func lower(_ floor: borrowing Atomic<UInt64>, to s: UInt64) {
        var cur = floor.load(ordering: .relaxed)
        while s < cur {
            let (done, now) = floor.compareExchange(expected: cur, desired: s, ordering: .acquiringAndReleasing)
            if done { return }
            cur = now
        }
    }

    /// The lowest seq a change not yet durable may carry, `.max` when none is pending.
    public var uncommittedSeqFloor: UInt64 {
        min(inFlightFloor.load(ordering: .acquiring), uncommittedFloor.load(ordering: .acquiring))
    }

    /// Whether the fs tree holds a visible item at each of `keys` (ascending), in one ordered
    /// pass. (With one client the fs tree and this log tree are the whole forest; once other
    /// clients' log trees join it, a deletion must always be written.) Only this client's own
    /// commits and the merges of its tree, which its log turn keeps out, change the fs tree:
    /// the last commit's is current.
    private func fsTreeHolds(sorted keys: [Key]) throws -> [Bool] {
        guard !keys.isEmpty else { return [] }
        let blocks = store.committed
        return try readingCommitted(blocks, of: store, { blocks.roots }) { r in
            var holds: [Bool] = []
            holds.reserveCapacity(keys.count)
            try BTree(root: r.fs, name: TreeID.fs.description).lookup(sorted: keys, in: blocks) { _, below in
                holds.append(below.map { !$0.isDeletion } ?? false)
            }
            return holds
        }
    }

    /// Puts a delta into the log tree, which keeps one version per key: a second change folds
    /// into the first.
    private func writeDelta(_ mine: Item, into tree: inout BTree, _ builder: LogTreeBuilder) throws {
        let key = mine.key
        var next = mine
        if let have = try tree.lookup(key, in: builder) {
            if have.isDeletion {
                // Nothing below the tombstone counts any more: the sum starts again from zero.
                next.flags = []
            } else if have.isDelta {
                next = Forest.combine(base: nil, deltas: [mine, have])
                next.flags = .delta
            } else {
                next = Forest.combine(base: have, deltas: [mine])
            }
            next.seq = mine.seq
        }
        try tree.insert(next, in: builder)
    }

    /// An inode number never used before, for a new entry of `parent` (see `InodeNumbers`).
    public func allocateInode(parent: UInt64, directory: Bool) throws -> UInt64 {
        // Only a new batch takes the store lock (which a commit may hold while it writes).
        try inodes.withLock { numbers in
            try numbers.take(parent: parent, directory: directory) {
                try withStore { try server.allocateInodes(InodeNumbers.batch) }
            }
        }
    }

    /// Runs `body` with the store to itself among this client's threads: operations running
    /// in parallel allocate and free data blocks and read the store's counters through here
    /// (never calling back into the cache inside, which may need the lock to fill).
    public func withStore<T>(_ body: () throws -> T) rethrows -> T {
        try storeLock.withLock(store, body)
    }

    /// The store's space as of the last release of the store lock: what operations check
    /// before they start, without waiting for a commit in progress.
    public var space: StoreSpace { storeLock.space }

    // MARK: data blocks

    /// `blocks` data blocks, all or none, from this client's pool, which asks the server for
    /// more when it runs short. Short even then, it throws `DataSpaceShortage` (saying whether
    /// a commit would help: blocks this client freed come back with its next commit). Only a
    /// refill takes the store lock, so writes go on while a commit writes.
    public func allocateData(_ blocks: UInt64) throws -> [Extent] {
        guard blocks > 0 else { return [] }
        return try pool.withLock { pool in
            try refill(&pool, toHold: blocks)
            var got: [Extent] = []
            var left = blocks
            while left > 0, let e = pool.take(left) {
                got.append(e)
                left -= e.length
            }
            return got
        }
    }

    /// Frees data blocks: the next commit hands them back to the server, and they become
    /// allocatable once that commit is durable.
    public func freeData(_ extent: Extent) {
        pool.withLock { $0.free(extent) }
    }

    /// Data blocks this client can allocate now (its pool and what the server has outside
    /// every pool), and those it freed, which a commit makes allocatable.
    public var dataSpace: (allocatable: UInt64, pendingFree: UInt64) {
        let server = space
        return pool.withLock { pool in (pool.availBlocks + server.dataFree, pool.freedBlocks + server.dataPendingFree) }
    }

    /// Free data blocks as statfs counts them: this client's pool, what it freed, and what the
    /// server has outside every pool.
    public var freeDataBlocks: UInt64 {
        let (allocatable, pending) = dataSpace
        return allocatable + pending
    }

    /// Tops the pool up to at least `blocks` (pool lock held; takes the store lock).
    private func refill(_ pool: inout DataPool, toHold blocks: UInt64) throws {
        guard pool.availBlocks < blocks else { return }
        let have = pool.availBlocks
        let (got, left) = try withStore {
            let got = server.dataSpace.free > 0 ? try server.refillDataPool(rid: rid, atLeast: blocks - have) : []
            return (got, server.dataSpace)
        }
        pool.add(got)
        guard pool.availBlocks >= blocks else {
            throw DataSpaceShortage(commitMayHelp: pool.availBlocks + left.free + pool.freedBlocks + left.pendingFree >= blocks)
        }
    }

    // MARK: transactions

    /// The log tree holds items, or the cache holds changes for it (a merge would move them
    /// into the fs tree).
    public var hasLogItems: Bool { withStore { (try? recordedRoot().isEmpty == false) ?? true } || cache.hasDirty }

    /// The root of this client's log tree as the server records it (store lock held).
    private func recordedRoot() throws -> BTreeRoot {
        try server.recordedLogTree(rid: rid)?.root ?? .empty
    }

    /// Starts from the log tree as recorded (store lock held): the server's merges may have
    /// moved some or all of it into the fs tree since this client last wrote it.
    private func followRecord() throws {
        let rec = try server.recordedLogTree(rid: rid)
        commitCount = max(commitCount, rec?.commits ?? 0)
        let root = rec?.root ?? .empty
        guard root != log.root else { return }
        log = BTree(root: root, name: log.name)
        logWrites = rec?.items ?? 0
        // Fewer leaves to copy at the next commit than the estimates assumed.
        cache.logTreeRestarted()
    }

    /// True when the open transaction holds anything a commit would write.
    public var hasChanges: Bool { pool.withLock { $0.freedBlocks > 0 } || withStore { store.hasChanges } || cache.hasDirty }

    /// Blocks the next commit may dirty: those the transaction has dirtied already (data
    /// allocations) and an upper bound for writing the cached changes into the log tree.
    public var dirtyBlocks: Int { commitPressure.dirty }

    /// `dirtyBlocks` and the metadata blocks left to allocate, as of the last release of the
    /// store lock (the dirty limit checks both after every operation). Changes a commit in
    /// flight writes do not count: were they to, every operation while it writes would find
    /// the limit passed and start (or wait to start) another commit at once.
    public var commitPressure: (dirty: Int, allocatableMeta: UInt64) {
        let s = space
        return (s.dirtyBlocks + max(0, cache.commitBlockEstimate - inFlightEstimate.load(ordering: .relaxed)), s.metaAllocatable)
    }

    /// A whole commit, switch and write, for a caller with nothing running beside it.
    @discardableResult
    public func commit(merge: Bool = false, returnPool: Bool = false) throws -> UInt64 {
        try finishCommit(beginCommit(returnPool: returnPool), merge: merge)
    }

    /// What a commit took at its switch: the changes it writes and the pool it records.
    public struct PendingCommit {
        let snap: ItemCache.DirtySnapshot
        let freed: [Extent]
        let pool: [Extent]
        /// The client is leaving: its metadata pool goes back too.
        let returnPool: Bool
        public var itemCount: Int { snap.items.count }
    }

    /// A commit's switch (the caller holds the transaction alone): takes the cached changes
    /// and the pool as they stand, and makes changes from now on carry the next seq, so that
    /// operations can go on while the commit writes. `returnPool` (a client leaving) hands
    /// the unused pool back too.
    public func beginCommit(returnPool: Bool = false) -> PendingCommit {
        let (freed, avail) = pool.withLock { pool in
            if returnPool { pool.returnAvail() }
            return (pool.takeFreed(), pool.avail)
        }
        let snap = cache.dirtySnapshot()
        // The transaction is held alone: no change is being made.
        inFlightFloor.store(uncommittedFloor.load(ordering: .acquiring), ordering: .releasing)
        uncommittedFloor.store(.max, ordering: .releasing)
        inFlightEstimate.store(cache.commitBlockEstimate, ordering: .relaxed)
        if !snap.isEmpty || !freed.isEmpty { seqFloor.store(server.transactionSeq + 1, ordering: .releasing) }
        return PendingCommit(snap: snap, freed: freed, pool: avail, returnPool: returnPool)
    }

    /// Makes a begun commit durable: writes its changes into the log tree in key order, then
    /// the server records the log tree and commits. The tree is built and written outside the
    /// store lock, in blocks of this client's metadata pool, so clients sharing the store build
    /// their commits at once and readers never wait for it; the store lock covers only the
    /// server's record and commit. If the server merged the tree (asked to with `merge`, or
    /// because it grew past what the free space can merge later), what is left of it is
    /// followed. One commit at a time (the caller's commit turn); operations may run meanwhile.
    @discardableResult
    public func finishCommit(_ p: PendingCommit, merge: Bool = false) throws -> UInt64 {
        // Written or not, its changes count again: what failed stays dirty for the next one.
        var durable = false
        defer {
            inFlightEstimate.store(0, ordering: .relaxed)
            if !durable { lower(uncommittedFloor, to: inFlightFloor.load(ordering: .acquiring)) }
            inFlightFloor.store(.max, ordering: .releasing)
        }
        return try logTurn.withLock { _ in
            let needed = try withStore {
                try followRecord()
                guard store.hasChanges || !p.snap.isEmpty || !p.freed.isEmpty || (merge && !log.root.isEmpty) || p.returnPool else {
                    return false
                }
                // Enough for the estimate up front: a refill in the middle takes the lock again.
                let want = cache.commitBlockEstimate + 8
                if metaPool.count < want && !p.snap.isEmpty {
                    metaPool += try server.refillMetaPool(rid: rid, atLeast: want - metaPool.count)
                }
                return true
            }
            guard needed else {
                durable = true
                return withStore { server.committedSeq }
            }
            let builder = LogTreeBuilder(store: store, pool: metaPool) { [self] n in
                // The pool owns what a refill brings whether or not this build lands.
                let got = try withStore { try server.refillMetaPool(rid: rid, atLeast: n) }
                metaPool += got
                return got
            }
            var tree = log
            // Items, tombstones and removals go in by runs, a leaf's share at a time.
            var run: [TreeEdit] = []
            // A deletion of a key only this log tree can hold removes it there; looked up
            // before the build, in the snapshot's order, so the fs tree is descended once a leaf.
            let soleLog = try !committed.othersHoldLogTrees()
            let holds = soleLog ? try fsTreeHolds(sorted: p.snap.items.compactMap { $0.isDelta || !$0.isDeletion ? nil : $0.key }) : []
            var nextHold = 0
            func flushRun() throws {
                guard !run.isEmpty else { return }
                var applied = 0
                try tree.apply(sorted: run[...], in: builder, applied: &applied) { _ in }
                run.removeAll(keepingCapacity: true)
            }
            for var it in p.snap.items {
                if it.isDelta {
                    try flushRun()
                    // A delta counts in a sum whose seq is below its own (Forest.resolve), and
                    // another client may have merged a sum at this transaction's seq while
                    // this delta waited: restamped with the store's open seq now, it is above
                    // every sum committed before this client got the lock it was made under.
                    it.seq = max(it.seq, store.txnSeq)
                    try writeDelta(it, into: &tree, builder)
                } else if it.isDeletion, soleLog, !holds[nextHold] {
                    // Only this log tree can hold the key: removing it there hides it, and the
                    // log tree does not carry a tombstone to the merge.
                    nextHold += 1
                    run.append(.remove(it.key))
                } else {
                    if it.isDeletion, soleLog { nextHold += 1 }
                    // Items, and tombstones the merge carries on.
                    run.append(.put(it))
                }
            }
            try flushRun()
            try builder.write()
            // The server's commit makes the record durable and visible to every node: the
            // blocks it names, and the file data this transaction wrote, must be on the
            // devices first.
            try store.readyWritesForRecord()
            return try withStore {
                let writes = logWrites + UInt64(p.snap.items.count)
                // A pool the record cannot hold (blocks the build freed scatter it) gives the
                // rest back.
                let (metaExtents, left, extra) = p.returnPool ? ([], [], builder.pool)
                    : LogTreeRecord.fit(builder.pool, into: [], beside: p.pool.count)
                let freedMeta = LogTreeBuilder.extents(builder.freed + extra)
                var record = LogTreeRecord(root: tree.root, items: writes, dataPool: p.pool, metaPool: metaExtents, commits: commitCount + 1)
                committed.pin()
                defer { committed.unpin() }
                var reply: LogCommit?
                var (freed, mergeNow) = ((data: p.freed, meta: freedMeta), merge)
                // A server change per try; past a few in one commit, the commit fails and its
                // changes stay dirty for the next.
                var tries = 0
                while reply == nil {
                    tries += 1
                    do {
                        reply = try server.commitLogTree(rid: rid, record, freed: freed.data, freedMeta: freed.meta, merge: mergeNow)
                    } catch let e as NetError where e.serverRestarted {
                        // The server that had the call ended and another took over. Sent again,
                        // a commit the old one made would free its blocks twice; given up, one
                        // it made would be lost. The new server's record says which: made, or
                        // still one behind (then it is sent again, as it stands: nothing of it
                        // was applied).
                        guard tries < 4, let now = try server.recordedLogTreeNow(rid: rid) else { throw e }
                        if now.commits == record.commits {
                            guard now.root.isEmpty || now.root == record.root else {
                                // Made, and the server ended in the middle of merging the tree
                                // (it merges a node's tree inside the commit that passes its
                                // threshold): what it moved is in the fs tree, the rest is still
                                // the tree's. Committed again as it stands, asking for the
                                // merge, the new server finishes it.
                                record = LogTreeRecord(root: now.root, items: now.items, dataPool: now.dataPool, metaPool: now.metaPool,
                                                       commits: now.commits + 1)
                                (freed, mergeNow) = ((data: [], meta: []), true)
                                continue
                            }
                            reply = LogCommit(seq: server.committedSeq, merged: now.root != record.root)
                        } else if now.commits + 1 != record.commits {
                            throw e
                        }
                    }
                }
                guard let reply else { throw NetError.serverRestarted }
                commitCount = record.commits
                durable = true
                builder.committedBlocks()
                metaPool = left
                log = tree
                logWrites = writes
                cache.committed(p.snap)
                // Merged now, whole or in part (a merge short of space leaves the rest).
                try followRecord()
                return reply.seq
            }
        }
    }

    /// Runs `body` (a server merge step on this client's log tree) while no commit of this
    /// client builds on the tree.
    public func withLogTurn<T>(_ body: () throws -> T) rethrows -> T {
        try logTurn.withLock { _ in try body() }
    }

    /// Blocks in this client's pool (tests).
    public var poolBlocks: UInt64 { pool.withLock { $0.availBlocks } }

    /// Items written since the log tree started; tests and `status` read it.
    public var logTreeWrites: UInt64 { logWrites }
}

/// Not enough data blocks for an allocation now.
public struct DataSpaceShortage: Error, CustomStringConvertible {
    /// Blocks this client freed would cover it once a commit hands them back.
    public var commitMayHelp: Bool

    public init(commitMayHelp: Bool) {
        self.commitMayHelp = commitMayHelp
    }

    public var description: String {
        "data device is full: no free 4 KiB blocks left\(commitMayHelp ? " until the next commit" : ""); free space or grow the device"
    }
}
