public import ScoutFormat

/// What a client asks of the server. In a single-node mount the server runs in the same
/// process and these are plain calls; the cluster carries them over the network.
public protocol ServerLink: AnyObject {
    /// The seq that items written in the open transaction carry.
    var transactionSeq: UInt64 { get }
    /// The seq of the last commit the server made durable.
    var committedSeq: UInt64 { get }
    /// A batch of inode numbers for this client alone.
    func allocateInodes(_ count: UInt64) throws -> Range<UInt64>
    /// Records the client's log tree and makes it durable; with `merge` (or when the tree has
    /// grown past the server's threshold) the server also merges it into the fs tree.
    func commitLogTree(rid: UInt64, _ record: LogTreeRecord, merge: Bool) throws -> LogCommit
}
