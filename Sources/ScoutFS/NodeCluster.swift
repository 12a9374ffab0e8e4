import ScoutClient
import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// A node of the cluster: one client on a machine (or process) of its own, reaching the
/// server over the network. It reads the shared metadata device through its own block cache
/// (`NodeStore`, roots from the server), writes its log tree into the metadata pool the
/// server gave it, its file data into its data pool, and makes every other call — commits,
/// inode batches, pool refills, the open-inode map — to the server (`NetServerLink`). Lock
/// messages and the server's open-inode questions arrive on the same connection.
public final class NodeCluster: ClusterHost, Sendable {
    public let id: ClientID
    let store: NodeStore
    let net: NetClient
    let link: NetServerLink
    let locks: LockClient
    let storeLock = StoreLock()
    let cacheBytes: Int
    let layout: SuperBlock
    var dataDevice: any BlockDevice { store.data }
    /// Other nodes change what this one reads, always.
    var several: Bool { true }
    var recovered: Int { 0 }
    private let member: MemberBox
    private let left = Atomic<Bool>(false)
    private let fence: Mutex<String?>

    /// Connects to the server at `host:port` as client `id` of the filesystem on `meta` and
    /// `data`, proving it holds `key`; a server not listening yet is tried again for
    /// `waitForServer`. `cacheBlocks` bounds the node's cache of metadata blocks, `cacheBytes`
    /// its item cache.
    public init(meta: any BlockDevice, data: any BlockDevice, server host: String, port: Int, key: ClusterKey, id: ClientID,
                cacheBlocks: Int = StoreOptions().cacheBlocks, cacheBytes: Int = 256 << 20,
                waitForServer: Duration = .zero, log: @escaping @Sendable (String) -> Void) throws {
        let store = try NodeStore(meta: meta, data: data, options: StoreOptions(cacheBlocks: cacheBlocks))
        self.id = id
        self.store = store
        self.cacheBytes = cacheBytes
        layout = store.superblock
        // Messages may arrive as soon as the server welcomes the node, before the lock client
        // and the client's references exist: they wait in the boxes' absence for nothing, as
        // the server sends nothing unasked before the node has asked for a lock.
        let lockBox = Mutex<LockClient?>(nil)
        let member = MemberBox()
        self.member = member
        let netBox = Mutex<NetClient?>(nil)
        let fence = Mutex<String?>(nil)
        self.fence = fence
        let linkBox = Mutex<NetServerLink?>(nil)
        let conn = try NetClient.connect(host: host, port: port, fsid: store.fsid, client: id, key: key, waitForServer: waitForServer,
                                    onMessage: { kind, body in
            switch kind {
            case .notice:
                guard case .openQuery(let qid, let ino) = try NetNotice(decoding: body) else {
                    throw NetError("the server sent a notice only nodes send")
                }
                let held = member.slot.withLock { $0?.shared }?.refs.withLock(ino) { $0.takeUnlinked(ino) } ?? false
                netBox.withLock { $0 }?.send(.notice, NetNotice.openReply(id: qid, held: held).encoded)
            default:
                lockBox.withLock { $0 }?.receive(try LockServerMessage(fromNetwork: body))
            }
        }, onReset: {
            // A server that starts merges every log tree it finds and takes their pools back:
            // blocks this node allocated and has not committed may be someone else's now.
            // Writing on would corrupt them, so the node stops; a remount starts it afresh.
            let why = "the server restarted and took this node's log tree and pools back; what it had not committed is lost. Unmount and mount again"
            log("error: \(why)")
            fence.withLock { $0 = why }
            linkBox.withLock { $0 }?.fence(why)
        }, log: log)
        net = conn
        netBox.withLock { $0 = conn }
        let serverLink: NetServerLink
        do {
            serverLink = try NetServerLink(net: conn, store: store)
        } catch {
            conn.close()
            throw error
        }
        link = serverLink
        linkBox.withLock { $0 = serverLink }
        let lockClient = LockClient(id: id, link: NetLockServerLink(conn))
        locks = lockClient
        serverLink.follow(lockClient)
        lockBox.withLock { $0 = lockClient }
    }

    /// The node's filesystem client, which the server's open-inode questions are about.
    final class MemberBox: Sendable {
        let slot = Mutex<LocalCluster.WeakMember?>(nil)
    }

    deinit {
        if !left.load(ordering: .acquiring) { net.close() }
    }

    /// Whether the connection to the server is up now.
    public var isConnected: Bool { net.isConnected }

    // MARK: ClusterHost

    func clientID(asked: UInt64?) -> UInt64 { id }

    func makeClient(id: UInt64) throws -> ClusterClient {
        guard id == self.id else {
            throw StoreError(.invalid, "a node's filesystem is its connection's client \(self.id), not \(id)")
        }
        return ClusterClient(id: id, locks: locks, store: store, server: link, cacheBytes: cacheBytes,
                             sharesStore: true, ordersByLockSeq: false, storeLock: storeLock)
    }

    func join(_ id: UInt64, _ shared: FSShared) throws {
        try member.slot.withLock { m in
            if m?.shared != nil { throw StoreError(.invalid, "node \(String(id, radix: 16)) has a filesystem client already") }
            m = LocalCluster.WeakMember(shared)
        }
    }

    func attach(_ client: ClusterClient) {}

    /// Tells the server this node is done (its locks go at once, not when its session runs
    /// out) and closes the connection.
    func leave(_ id: UInt64) {
        guard !left.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = try? link.leave()
        net.close()
        member.slot.withLock { $0 = nil }
    }

    func heldElsewhere(_ ino: UInt64, by id: UInt64) throws -> Bool {
        try link.openElsewhere(ino)
    }

    func committedSeq(_ items: ClientItems) -> UInt64 { link.committedSeq }

    func refreshServerFigures() throws { try link.refreshRoots() }

    func merges(_ items: ClientItems) -> Int { 0 }

    func reserveRootInode(_ items: ClientItems) {}

    func checkNextInode(log: (String) -> Void) throws {}

    func setReports(_ sink: @escaping @Sendable (String) -> Void) {}

    var fenced: String? { fence.withLock { $0 } }
}
