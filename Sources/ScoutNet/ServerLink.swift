public import ScoutFormat

/// What a client asks of the server: the calls the network will carry between nodes. Clients
/// in the server's own process make them as plain calls (`LocalServer` answers them), one at
/// a time per store (the caller holds the store lock).
public protocol ServerLink: AnyObject {
    /// The seq that items written in the open transaction carry.
    var transactionSeq: UInt64 { get }
    /// The seq of the last commit the server made durable.
    var committedSeq: UInt64 { get }
    /// The last seq below every client's open transaction: no client can write an item at or
    /// below it any more, so index entries up to it are final (walk-inodes stops there). A
    /// client's own seq is no guide: its commit in flight raises it past seqs that other
    /// clients' open transactions still write. Read without the store lock.
    var stableSeq: UInt64 { get }
    /// A batch of inode numbers for this client alone.
    func allocateInodes(_ count: UInt64) throws -> Range<UInt64>
    /// At least `count` data blocks (in a few extents) for `rid`'s pool, recorded as its pool
    /// in the same commit that takes them from the free tree; fewer only when the device has
    /// fewer. Only the server takes blocks from the free tree, so clients never edit it.
    func refillDataPool(rid: UInt64, atLeast count: UInt64) throws -> [Extent]
    /// At least `count` metadata blocks for `rid`'s log tree, recorded as its metadata pool in
    /// the same commit that takes them from the free tree: the client writes its log tree
    /// blocks into them itself.
    func refillMetaPool(rid: UInt64, atLeast count: Int) throws -> [UInt64]
    /// Data blocks outside every pool: free now, and freed by commits not yet made durable.
    var dataSpace: (free: UInt64, pendingFree: UInt64) { get }
    /// `rid`'s log tree as last recorded: what its commits wrote, less what the server's
    /// merges have moved into the fs tree since. A client starts each commit from it.
    func recordedLogTree(rid: UInt64) throws -> LogTreeRecord?
    /// The record as the server holds it now, asked of it (not a copy the client read): after
    /// a server change, whether a commit in flight landed.
    func recordedLogTreeNow(rid: UInt64) throws -> LogTreeRecord?
    /// Records the client's log tree (and the pools it has left) and makes it durable, taking
    /// back the data blocks it freed since its last commit and the metadata blocks its new
    /// tree no longer uses (`freedMeta`); the tree's new blocks must be written before the
    /// call. With `merge` the server also merges it into the fs tree before it answers (past
    /// its threshold, it merges it later, between the client's commits).
    func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool) throws -> LogCommit
}

extension ServerLink {
    public func recordedLogTreeNow(rid: UInt64) throws -> LogTreeRecord? { try recordedLogTree(rid: rid) }
}
