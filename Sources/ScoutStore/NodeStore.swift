public import ScoutFormat
import Synchronization

/// The store as a client on another node than the server sees it: it reads committed blocks
/// from the shared metadata device through its own cache, writes its log tree's blocks into
/// the metadata pool the server gave it, and learns the committed roots, the open seq and the
/// space left only from the server (`update`, with what a call answered). It never writes the
/// superblock nor edits the free trees: only the server does.
///
/// Thread-safe.
public final class NodeStore: ClientStore, Sendable {
    // nonisolated(unsafe): the devices' reads and writes are safe from any thread (BlockDevice).
    public nonisolated(unsafe) let meta: any BlockDevice
    public nonisolated(unsafe) let data: any BlockDevice
    public let fsid: UInt64
    public let nodeCapacity: Int
    public let committed: CommittedBlocks
    /// The superblock as it was when the node started (its layout: device sizes, slots).
    public let superblock: SuperBlock
    private let state: Mutex<ServerRoots>
    /// Asks the server for its newest roots (and `update`s with them); set by the link.
    /// Behind a reference: a closure kept in a mutex grows a thunk at every read (`Callback`).
    private let refresher = Mutex<Refresher?>(nil)

    private final class Refresher: Sendable {
        let call: @Sendable () throws -> Void
        init(_ call: @escaping @Sendable () throws -> Void) { self.call = call }
    }
    private let stale = Atomic<Bool>(false)
    private let dataTotal: Atomic<UInt64>

    /// Opens the node's view of the filesystem on `meta` and `data`, as of the newest
    /// superblock there; the server's answers move it on.
    public init(meta: any BlockDevice, data: any BlockDevice, options: StoreOptions = StoreOptions()) throws {
        let sb = try Store.readSuperblock(meta)
        self.meta = meta
        self.data = data
        superblock = sb
        fsid = sb.fsid
        dataTotal = Atomic(sb.dataTotalBlocks)
        nodeCapacity = options.nodeCapacity
        committed = CommittedBlocks(cache: BlockCache(capacity: options.cacheBlocks), meta: meta, fsid: sb.fsid,
                                    metaTotalBlocks: sb.metaTotalBlocks,
                                    roots: CommittedRoots(seq: sb.seq, fs: sb.root(.fs), records: .success([])))
        state = Mutex(ServerRoots(seq: sb.seq, fs: sb.root(.fs), logTrees: sb.root(.logTrees), transactionSeq: sb.seq + 1,
                                  stableSeq: sb.seq, metaAllocatable: sb.metaFreeBlocks, dataFree: sb.dataFreeBlocks, dataPendingFree: 0,
                                  metaTotalBlocks: sb.metaTotalBlocks, dataTotalBlocks: sb.dataTotalBlocks))
        try update(state.withLock { $0 }, force: true)
    }

    /// What the server said as of its commit `roots.seq`: reads go through those roots from now
    /// on, unless newer ones came first. The log-tree records are `records` when the server
    /// sent them, else read here from the device; blocks a later commit already reused make
    /// that throw stale, and the caller asks again.
    public func update(_ roots: ServerRoots, records: [UInt64: LogTreeRecord]? = nil) throws {
        try update(roots, force: false, records: records)
    }

    private func update(_ roots: ServerRoots, force: Bool, records given: [UInt64: LogTreeRecord]? = nil) throws {
        // Totals only grow (an online resize), whichever order answers arrive in; raised
        // before the roots move on, so nothing read through them is checked against less.
        committed.raiseMetaTotal(to: roots.metaTotalBlocks)
        _ = dataTotal.max(roots.dataTotalBlocks, ordering: .acquiringAndReleasing)
        let current = state.withLock { $0 }
        guard force || roots.seq >= current.seq else { return }
        if !force, roots.seq == current.seq, roots.fs == current.fs, roots.logTrees == current.logTrees {
            // The commit the node reads through already (a grant's refresh with nothing
            // committed since): only the figures may have moved.
            state.withLock { s in if roots.seq == s.seq { s = roots } }
            return
        }
        let records = try given.map { $0.sorted { $0.key < $1.key }.map { (rid: $0.key, record: $0.value) } }
            ?? LogTreeRecord.all(in: BTree(root: roots.logTrees, name: TreeID.logTrees.description), from: committed)
        let newer = state.withLock { s in
            guard force || roots.seq >= s.seq else { return false }
            s = roots
            return true
        }
        if newer { committed.publish(CommittedRoots(seq: roots.seq, fs: roots.fs, records: .success(records))) }
    }

    /// Sets how the store asks the server for newer roots.
    public func setRefresher(_ refresh: @escaping @Sendable () throws -> Void) {
        refresher.withLock { $0 = Refresher(refresh) }
    }

    /// Another node may have committed what this one is about to read: the next read asks for
    /// newer roots first.
    public func markStale() {
        stale.store(true, ordering: .releasing)
    }

    public func refreshIfStale() throws {
        guard stale.exchange(false, ordering: .acquiringAndReleasing), let refresh = refresher.withLock({ $0 }) else { return }
        do {
            try refresh.call()
            // What the other node committed is in these roots: a read that must see it may
            // not go through older ones (`CommittedForest`'s pin while this node's commit lands).
            committed.raiseReadFloor(to: roots.seq)
        } catch {
            stale.store(true, ordering: .releasing)
            throw error
        }
    }

    public func refreshAfterStaleRead() throws -> Bool {
        let before = committed.roots.seq
        markStale()
        try refreshIfStale()
        return committed.roots.seq > before
    }

    /// Roots the server sent with a lock grant: read through from now on, as after a refresh.
    /// `records`, when it came along, is what the roots' log-trees tree holds, and spares
    /// reading it from the device.
    public func advance(to r: ServerRoots, records: [UInt64: LogTreeRecord]? = nil) throws {
        try update(r, force: false, records: records)
        committed.raiseReadFloor(to: roots.seq)
    }

    /// The server on another machine reads the log tree's blocks past its page cache once it
    /// has recorded them, so they must leave this machine's; they need not be durable yet:
    /// the server flushes the metadata device before its superblock names them, and a flush
    /// makes every write the device completed before it durable, whichever machine made it.
    /// That flush skips the data device, so file data is flushed here.
    public func readyWritesForRecord() throws {
        try data.flush()
        try meta.writeBack()
    }

    /// The last roots and figures the server gave.
    public var roots: ServerRoots { state.withLock { $0 } }

    public var txnSeq: UInt64 { state.withLock { $0.transactionSeq } }
    public var stableSeq: UInt64 { state.withLock { $0.stableSeq } }
    /// A node has no store transaction of its own: what it changes is in its log tree.
    public var hasChanges: Bool { false }
    public var dirtyBlocks: Int { 0 }
    public var allocatableMetaBlocks: UInt64 { state.withLock { $0.metaAllocatable } }
    /// A node's own commits free metadata only at the server.
    public var pendingFreeMetaBlocks: UInt64 { 0 }
    public var freeMetaBlocks: UInt64 { state.withLock { $0.metaAllocatable } }
    public var allocatableDataBlocks: UInt64 { state.withLock { $0.dataFree } }
    public var metaTotalBlocks: UInt64 { committed.metaTotalBlocks }
    public var dataTotalBlocks: UInt64 { dataTotal.load(ordering: .acquiring) }
    public var pendingFreeDataBlocks: UInt64 { state.withLock { $0.dataPendingFree } }
}
