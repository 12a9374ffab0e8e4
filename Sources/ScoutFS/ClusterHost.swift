import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutStore

/// What a client's filesystem needs of the cluster it belongs to, beyond its own cluster
/// client: the devices, how its lock client and server link are made, who else may hold an
/// inode, and the server's figures. Two kinds: `LocalCluster`, the server's process, whose
/// clients share its store; and `NodeCluster`, a node of its own that reaches the server over
/// the network.
protocol ClusterHost: AnyObject, Sendable {
    /// Other clients may change what this one reads: they are asked before an unlinked inode
    /// is freed, and the kernel's caches are tracked so that losing a lock can drop them.
    var several: Bool { get }
    /// The superblock as the client started: device sizes, fsid.
    var layout: SuperBlock { get }
    /// File data, read and written by the client directly.
    var dataDevice: any BlockDevice { get }
    /// Merges of log trees that the cluster made when it opened (a server's recovery).
    var recovered: Int { get }
    /// The id a new client gets: the one asked for, or one the host decides.
    func clientID(asked: UInt64?) -> UInt64
    /// The client's lock client and cluster client, not yet taking messages.
    func makeClient(id: UInt64) throws -> ClusterClient
    /// Takes `shared` in as client `id`; refused if `id` is a member already.
    func join(_ id: UInt64, _ shared: FSShared) throws
    /// Lock messages reach the client from now on.
    func attach(_ client: ClusterClient)
    /// Takes client `id` out of the cluster (its locks go).
    func leave(_ id: UInt64)
    /// Whether a client other than `id` holds `ino` open or cached by its kernel; a holder
    /// marks it unlinked, so its own last close or forget frees it.
    func heldElsewhere(_ ino: UInt64, by id: UInt64) throws -> Bool
    /// Takes, changes or lets go of a record lock (`lock.holder.client` is this client);
    /// the lock of another owner in the way, if any. With `wait`, this client's
    /// `RecordLockWaits` hears when locks on the inode change.
    func setRecordLock(_ lock: RecordLock, wait: Bool) throws -> RecordLock?
    /// The lock of another owner that would keep `lock` from being taken now (F_GETLK).
    func testRecordLock(_ lock: RecordLock) throws -> RecordLock?
    /// The seq of the server's last commit.
    func committedSeq(_ items: ClientItems) -> UInt64
    /// Brings the server's figures (committed roots, stable seq) up to date where they can
    /// lag (a node learns them from answers and grants); a no-op beside the server.
    func refreshServerFigures() throws
    /// Grows the filesystem onto more of its devices, through the server (0 or the current
    /// total: that device stays); `.invalid` for a smaller total or one past a device's end.
    /// This client knows the new totals when it returns.
    func resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64) throws
    /// Log tree merges the server made since it started (0 where the server is elsewhere).
    func merges(_ items: ClientItems) -> Int
    /// Makes the inode numbers of the root's lock group never handed out (the server's counter).
    func reserveRootInode(_ items: ClientItems)
    /// Refuses a store whose next inode number is not above every inode it holds (the
    /// server's check; a node trusts the server's).
    func checkNextInode(log: (String) -> Void) throws
    /// Why this client may not go on (a node whose server restarted and took its log tree and
    /// pools back); nil while it may. Every operation fails with EIO once it is set.
    var fenced: String? { get }
    /// Whether this host runs the server, whether its connection to the server is up, and
    /// the nodes the server has sessions with (`scoutfs status`).
    var place: (isServer: Bool, connected: Bool, nodes: [ClientID]) { get }
    /// Where the host reports failures of work it runs beside the clients.
    func setReports(_ sink: @escaping @Sendable (String) -> Void)
}
