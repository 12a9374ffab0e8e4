/// What a client's items need of the store they read and commit through: the committed
/// blocks, where the client writes its log tree's blocks, the open transaction's seq, and
/// the space figures its operations check. A client in the server's process uses the `Store`
/// itself; a client on another node uses a `NodeStore`, whose figures come from the server.
/// Read under the caller's store lock, except `committed`, which is safe from any thread.
public protocol ClientStore: AnyObject {
    var committed: CommittedBlocks { get }
    var meta: any BlockDevice { get }
    var fsid: UInt64 { get }
    var nodeCapacity: Int { get }
    /// The seq that items written in the open transaction carry.
    var txnSeq: UInt64 { get }
    /// The store's own transaction holds changes (a client on another node has none).
    var hasChanges: Bool { get }
    var allocatableMetaBlocks: UInt64 { get }
    /// Metadata blocks freed by changes not yet committed: a commit makes them allocatable.
    var pendingFreeMetaBlocks: UInt64 { get }
    /// Metadata blocks free on the device, for statfs.
    var freeMetaBlocks: UInt64 { get }
    var allocatableDataBlocks: UInt64 { get }
    var pendingFreeDataBlocks: UInt64 { get }
    var dirtyBlocks: Int { get }
    /// The devices' blocks the filesystem spans now (64 KiB metadata, 4 KiB data): an online
    /// resize raises them while clients run.
    var metaTotalBlocks: UInt64 { get }
    var dataTotalBlocks: UInt64 { get }
    /// Brings the committed roots up to date if they may be behind (another node changed
    /// something this client is about to read); a no-op where the roots are always current.
    func refreshIfStale() throws
    /// A read through the newest roots this client has met a block that a later commit freed
    /// and a writer reused: asks for newer roots. True if the roots moved on (read again);
    /// false if there are none newer to ask for (the block is damaged, or the store's roots
    /// are always the newest).
    func refreshAfterStaleRead() throws -> Bool
    /// Readies what this client wrote to the devices itself (its log tree's blocks, file data)
    /// for the server to record it: file data durable, the blocks on the device, which the
    /// server's own flush before its superblock makes durable. The `Store` does it all in its
    /// own commit.
    func readyWritesForRecord() throws
}

extension ClientStore {
    public func refreshIfStale() throws {}
    public func refreshAfterStaleRead() throws -> Bool { false }
}

extension Store {
    public func readyWritesForRecord() throws {}
}

extension Store: ClientStore {}
