public import ScoutFormat

/// A client's commit building its log tree outside the store's transaction and lock: copies
/// and new blocks come from the client's own pool of metadata blocks (which the server took
/// out of the free tree for it), committed blocks are read without the lock, and the result
/// is written to the device by the client itself. The server then only records the new root
/// and frees the blocks the edit copied (`freed`). This is how a client on another node
/// writes its log tree too; in one process it lets clients build their commits at once.
///
/// Not thread-safe: one commit of one client uses it.
public final class LogTreeBuilder: NodeWriter {
    private let store: any ClientStore
    private let committed: CommittedBlocks
    private let meta: any BlockDevice
    private let fsid: UInt64
    public let nodeCapacity: Int
    /// Stamped on every block written: the store's open seq when the build began (or when it
    /// last refilled), above the seq of every earlier version of the blocks it takes, so no
    /// stale ref to one matches.
    private(set) var seq: UInt64
    /// Pool blocks not used yet.
    public private(set) var pool: [UInt64]
    private var written: [UInt64: CachedNode] = [:]
    /// Committed blocks the edit copied or dropped: free once the new root is recorded.
    public private(set) var freed: [UInt64] = []
    /// Asks the server for at least this many more pool blocks, should the pool run dry.
    private let refill: (Int) throws -> [UInt64]

    public init(store: any ClientStore, pool: [UInt64], refill: @escaping (Int) throws -> [UInt64]) {
        self.store = store
        committed = store.committed
        meta = store.meta
        fsid = store.fsid
        nodeCapacity = store.nodeCapacity
        seq = store.txnSeq
        // Lowest blocks first (taken from the end): the tree's blocks land in runs.
        self.pool = pool.sorted(by: >)
        self.refill = refill
    }

    public func readNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode {
        try committed.readNode(ref, level: level, tree: tree, over: written)
    }

    public func dirtyNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode {
        let n = try readNode(ref, level: level, tree: tree)
        if written[n.blkno] === n { return n }
        let copy = CachedNode(blkno: try take(), seq: seq, block: n.block, dirty: true)
        written[copy.blkno] = copy
        freed.append(n.blkno)
        return copy
    }

    public func newNode(level: UInt8) throws -> CachedNode {
        let n = CachedNode(blkno: try take(), seq: seq, block: BTreeBlock(level: level), dirty: true)
        written[n.blkno] = n
        return n
    }

    public func freeNode(_ n: CachedNode) {
        if written[n.blkno] === n {
            written.removeValue(forKey: n.blkno)
            pool.append(n.blkno)
        } else {
            freed.append(n.blkno)
        }
    }

    private func take() throws -> UInt64 {
        if pool.isEmpty {
            // A leaf or so per refill would be a store lock per block: ask for a batch.
            pool = try refill(64).sorted(by: >)
            guard !pool.isEmpty else {
                throw StoreError(.noSpace, "metadata device is full: no blocks left for a client's log tree; free space or grow the device")
            }
            // A refilled block may have held a version written in the transaction this build
            // began in and freed since.
            seq = max(seq, store.txnSeq)
        }
        return pool.removeLast()
    }

    /// Blocks the build wrote into.
    public var blocksWritten: Int { written.count }

    /// Writes the built blocks to the metadata device. They are reachable only once the
    /// server records the root (after its flush), so a crash before that loses nothing.
    public func write() throws {
        try Store.write(written.values.sorted { $0.blkno < $1.blkno }, to: meta, fsid: fsid)
    }

    /// The commit recording the root is durable: the blocks become clean cached blocks that
    /// any reader may share.
    public func committedBlocks() {
        committed.adopt(Array(written.values))
        written.removeAll()
    }

    /// Block numbers as the fewest extents.
    public static func extents(_ blocks: [UInt64]) -> [Extent] {
        ExtentAllocator.coalesce(blocks.map { Extent(start: $0, length: 1) })
    }
}
