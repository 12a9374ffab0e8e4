public import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// The lock that the clients of one store in one process hold around every use of it (the
/// store and the server in front of it are not thread-safe).
public typealias StoreLock = BlockingMutex<Void>

/// The committed items a client reads through: its own log tree (as of its last commit) over
/// the fs tree. The item cache fills from it, from any operation's thread: every read takes
/// the store lock (`ClientItems.withStore`), and `log` changes only in a commit, which no
/// operation runs beside.
final class CommittedForest: ItemSource, @unchecked Sendable {
    // @unchecked: `log` is written only with the transaction held exclusively (no reader
    // runs then); the store is reached only through `storeLock`.
    let store: Store
    let rid: UInt64
    /// One lock for every client of the store in this process: the store is not thread-safe.
    let storeLock: StoreLock
    var log: BTree
    /// Read the log trees other clients recorded too (clients sharing one store); a lone
    /// mount has none beside its own once recovery merged what earlier mounts left.
    let readsOtherLogTrees: Bool

    init(store: Store, storeLock: StoreLock, rid: UInt64, log: BTree, readsOtherLogTrees: Bool) {
        self.store = store
        self.storeLock = storeLock
        self.rid = rid
        self.log = log
        self.readsOtherLogTrees = readsOtherLogTrees
    }

    /// Own log tree first (ties in seq go to it), then the others as recorded now, then the fs
    /// tree.
    private func trees() throws -> [BTree] {
        var out: [BTree] = log.root.isEmpty ? [] : [log]
        if readsOtherLogTrees {
            try store.tree(.logTrees).forEach(in: store) { it in
                guard it.key.zone == Zone.logTrees, it.key.first != rid, !it.isDeletion else { return true }
                let rec: LogTreeRecord
                do {
                    rec = try LogTreeRecord(decoding: it.value)
                } catch {
                    throw StoreError(.corrupt, "log-trees item of client \(String(it.key.first, radix: 16)): \(error); run `scoutfs check`")
                }
                if !rec.root.isEmpty { out.append(BTree(root: rec.root, name: "log tree of client \(String(it.key.first, radix: 16))")) }
                return true
            }
        }
        out.append(store.tree(.fs))
        return out
    }

    func committedItem(_ key: Key) throws -> Item? {
        try storeLock.withLock { _ in try committedItemLocked(key) }
    }

    private func committedItemLocked(_ key: Key) throws -> Item? {
        let t = try trees()
        if t.count == 1 {
            guard let it = try t[0].lookup(key, in: store), !it.isDeletion else { return nil }
            return it
        }
        return try Forest(trees: t).lookup(key, in: store)
    }

    func committedItems(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        try storeLock.withLock { _ in try Forest(trees: trees()).forEach(from: start, through: end, in: store, body) }
    }
}

/// The items a mount reads and writes. Changes stay in the item cache until a commit writes
/// them, in one pass in key order, into this client's own **log tree**; reads see the cache
/// over the forest of that log tree and the fs tree, so a change is visible the moment it is
/// made and durable once the server records the log tree at a commit. The server later merges
/// the log tree into the fs tree and the client starts a new one.
///
/// Reads and changes may come from many threads at once (the cache is thread-safe, and fills
/// and inode batches take the store lock); `commit` runs alone (the caller holds the
/// transaction exclusively).
public final class ClientItems: @unchecked Sendable {
    // @unchecked: `inodes` and `pool` are guarded by the store lock; `logWrites` and `partlyMerged` are
    // touched only by `commit`, which runs alone.
    public let store: Store
    public let server: any ServerLink
    /// This mount's id among the server's clients.
    public let rid: UInt64
    public let cache: ItemCache
    private let committed: CommittedForest
    private var log: BTree {
        get { committed.log }
        set { committed.log = newValue }
    }
    /// Items written into the log tree since it was started (rewrites count again).
    private var logWrites: UInt64 = 0
    /// A merge of this log tree stopped part way (see `writeDelta`); cleared with a new log tree.
    private var partlyMerged = false
    /// Inode numbers granted by the server and not yet used.
    private var inodes: Range<UInt64> = 0..<0
    /// Data blocks to allocate from (under the store lock).
    private var pool = DataPool()
    /// How many inode numbers to ask for at a time: one inode group, so one mount's files
    /// share lock ranges and different mounts' files do not.
    public static let inodeBatch: UInt64 = 1024

    /// `sharesStore`: other clients record log trees in the same store, and reads see them;
    /// they must then share `storeLock` too.
    public init(store: Store, server: any ServerLink, rid: UInt64, cacheBytes: Int = 256 << 20, sharesStore: Bool = false,
                storeLock: StoreLock = StoreLock(())) {
        self.store = store
        self.server = server
        self.rid = rid
        committed = CommittedForest(store: store, storeLock: storeLock, rid: rid, log: BTree(root: .empty, name: "log tree of client \(String(rid, radix: 16))"),
                                    readsOtherLogTrees: sharesStore)
        cache = ItemCache(source: committed, blockCapacity: store.options.nodeCapacity, cleanByteLimit: cacheBytes)
    }

    /// The seq items written now carry.
    public var seq: UInt64 { server.transactionSeq }

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
        try cache.insert(key, value, seq: max(seq, minSeq))
    }

    /// Makes `key` invisible.
    public func delete(_ key: Key, minSeq: UInt64 = 0) throws {
        try cache.delete(key, seq: max(seq, minSeq))
    }

    /// Adds `fields` (little-endian Int64s) to the item at `key` without reading the forest, so
    /// many writers can change one total at once.
    public func addDelta(_ key: Key, _ fields: [Int64], minSeq: UInt64 = 0) throws {
        try cache.addDelta(key, fields, seq: max(seq, minSeq))
    }

    /// The fs tree holds a visible item at `key`. (With one client the fs tree and this log
    /// tree are the whole forest; once other clients' log trees join it, a deletion must
    /// always be written.)
    private func fsTreeHolds(_ key: Key) throws -> Bool {
        guard let below = try store.tree(.fs).lookup(key, in: store) else { return false }
        return !below.isDeletion
    }

    /// Puts a delta into the log tree, which keeps one version per key: a second change folds
    /// into the first.
    private func writeDelta(_ mine: Item) throws {
        let key = mine.key
        var next = mine
        if let have = try log.lookup(key, in: store) {
            if have.isDelta, partlyMerged, let below = try store.tree(.fs).lookup(key, in: store), below.seq >= have.seq {
                // A merge cut short already added `have` into the fs tree's sum (its seq says
                // so). Folding into it would make the next merge add it again: the new delta
                // replaces it instead, and counts once.
                try log.insert(next, in: store)
                return
            }
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
        try log.insert(next, in: store)
    }

    /// An inode number never used before.
    public func allocateInode() throws -> UInt64 {
        try withStore {
            if inodes.isEmpty { inodes = try server.allocateInodes(Self.inodeBatch) }
            return inodes.popFirst()!
        }
    }

    /// Runs `body` with the store to itself among this client's threads: operations running
    /// in parallel allocate and free data blocks and read the store's counters through here
    /// (never calling back into the cache inside, which may need the lock to fill).
    public func withStore<T>(_ body: () throws -> T) rethrows -> T {
        try committed.storeLock.withLock { _ in try body() }
    }

    // MARK: data blocks

    /// `blocks` data blocks, all or none, from this client's pool, which asks the server for
    /// more when it runs short. Short even then, it throws `DataSpaceShortage` (saying whether
    /// a commit would help: blocks this client freed come back with its next commit).
    public func allocateData(_ blocks: UInt64) throws -> [Extent] {
        guard blocks > 0 else { return [] }
        return try withStore {
            try refill(toHold: blocks)
            var got: [Extent] = []
            var left = blocks
            while left > 0, let e = pool.take(left) {
                got.append(e)
                left -= e.length
            }
            return got
        }
    }

    /// Up to `count` contiguous data blocks (fewer when free space is fragmented).
    public func allocateDataRun(upTo count: UInt64) throws -> Extent {
        try withStore {
            if pool.availBlocks == 0 { try refill(toHold: 1) }
            guard let e = pool.take(count) else { throw DataSpaceShortage(commitMayHelp: false) }
            return e
        }
    }

    /// Frees data blocks: the next commit hands them back to the server, and they become
    /// allocatable once that commit is durable.
    public func freeData(_ extent: Extent) {
        withStore { pool.free(extent) }
    }

    /// Data blocks this client can allocate now (its pool and what the server has outside
    /// every pool), and those it freed, which a commit makes allocatable.
    public var dataSpace: (allocatable: UInt64, pendingFree: UInt64) {
        withStore {
            let server = server.dataSpace
            return (pool.availBlocks + server.free, pool.freedBlocks + server.pendingFree)
        }
    }

    /// Tops the pool up to at least `blocks` (store lock held).
    private func refill(toHold blocks: UInt64) throws {
        guard pool.availBlocks < blocks else { return }
        if server.dataSpace.free > 0 {
            pool.add(try server.refillDataPool(rid: rid, atLeast: blocks - pool.availBlocks))
        }
        guard pool.availBlocks >= blocks else {
            let pending = pool.freedBlocks + server.dataSpace.pendingFree
            throw DataSpaceShortage(commitMayHelp: pool.availBlocks + server.dataSpace.free + pending >= blocks)
        }
    }

    // MARK: transactions

    /// The log tree holds items, or the cache holds changes for it (a merge would move them
    /// into the fs tree).
    public var hasLogItems: Bool { !log.root.isEmpty || cache.hasDirty }

    /// True when the open transaction holds anything a commit would write.
    public var hasChanges: Bool { withStore { store.hasChanges || pool.freedBlocks > 0 } || cache.hasDirty }

    /// Blocks the next commit may dirty: those the transaction has dirtied already (data
    /// allocations) and an upper bound for writing the cached changes into the log tree.
    public var dirtyBlocks: Int { commitPressure.dirty }

    /// `dirtyBlocks` and the metadata blocks left to allocate, read in one hold of the store
    /// lock (the dirty limit checks both after every operation).
    public var commitPressure: (dirty: Int, allocatableMeta: UInt64) {
        let (dirty, free) = withStore { (store.dirtyBlocks, store.allocatableMetaBlocks) }
        return (dirty + cache.commitBlockEstimate, free)
    }

    /// Makes every change so far durable: writes the cached changes into the log tree in key
    /// order, then the server records the log tree and commits. If the server merged the tree
    /// (asked to with `merge`, or because it grew big), a new empty one starts. `returnPool`
    /// (a client leaving) hands the unused pool back too.
    @discardableResult
    public func commit(merge: Bool = false, returnPool: Bool = false) throws -> UInt64 {
        try withStore { try commitLocked(merge: merge, returnPool: returnPool) }
    }

    private func commitLocked(merge: Bool, returnPool: Bool) throws -> UInt64 {
        if returnPool { pool.returnAvail() }
        let snap = cache.dirtySnapshot()
        guard store.hasChanges || !snap.isEmpty || pool.freedBlocks > 0 || (merge && !log.root.isEmpty) else {
            return server.committedSeq
        }
        for it in snap.items {
            if it.isDelta {
                try writeDelta(it)
            } else if it.isDeletion, !committed.readsOtherLogTrees, try !fsTreeHolds(it.key) {
                // Only this log tree can hold the key: removing it there hides it, and the
                // log tree does not carry a tombstone to the merge.
                _ = try log.delete(it.key, in: store)
            } else {
                try log.insert(it, in: store)
            }
        }
        logWrites += UInt64(snap.items.count)
        let record = LogTreeRecord(root: log.root, items: logWrites, dataPool: pool.avail)
        let reply = try server.commitLogTree(rid: rid, record, freed: pool.takeFreed(), merge: merge)
        cache.committed(snap)
        if reply.merged {
            log = BTree(root: .empty, name: log.name)
            logWrites = 0
            partlyMerged = false
            cache.logTreeRestarted()
        } else if reply.partlyMerged {
            partlyMerged = true
        }
        return reply.seq
    }

    /// Blocks in this client's pool (tests).
    public var poolBlocks: UInt64 { withStore { pool.availBlocks } }

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
