import ScoutClient
public import ScoutFormat
public import ScoutNet
import ScoutServer
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
    /// The record locks the server granted this node, as its table holds them: a new server
    /// learns them from here (`reclaimRecordLocks`).
    let heldRecordLocks: RecordLockTable
    let layout: SuperBlock
    var dataDevice: any BlockDevice { store.data }
    /// Other nodes change what this one reads, always.
    var several: Bool { true }
    var recovered: Int { 0 }
    private let inbox = Inbox()
    private let left = Atomic<Bool>(false)
    /// What the server records of this node.
    let mounted: MountedClient

    /// What the connection's handlers reach. Messages may arrive as soon as the server
    /// welcomes the node, before these exist; the server sends nothing unasked before the node
    /// has asked for a lock, so none is lost. Cleared when the node leaves: the connection
    /// holds the handlers, and through them would keep itself and the lock client alive.
    final class Inbox: Sendable {
        let net = Mutex<NetClient?>(nil)
        let link = Mutex<NetServerLink?>(nil)
        let locks = Mutex<LockClient?>(nil)
        /// The node's filesystem client, which the server's open-inode questions are about.
        let member = Mutex<LocalCluster.WeakMember?>(nil)

        func clear() {
            net.withLock { $0 = nil }
            link.withLock { $0 = nil }
            locks.withLock { $0 = nil }
            member.withLock { $0 = nil }
        }
    }

    /// Connects to the server at `host:port` as client `id` of the filesystem on `meta` and
    /// `data`, proving it holds `key`; a server not listening yet is tried again for
    /// `waitForServer`. `cacheBlocks` bounds the node's cache of metadata blocks, `cacheBytes`
    /// its item cache.
    public convenience init(meta: any BlockDevice, data: any BlockDevice, server host: String, port: Int, key: ClusterKey, id: ClientID,
                            cacheBlocks: Int = StoreOptions().cacheBlocks, cacheBytes: Int = 256 << 20,
                            waitForServer: Duration = .zero, log: @escaping @Sendable (String) -> Void) throws {
        try self.init(meta: meta, data: data, server: { (host, port) }, key: key, id: id, cacheBlocks: cacheBlocks,
                      cacheBytes: cacheBytes, waitForServer: waitForServer, log: log)
    }

    /// Connects to the server wherever `server` says it is at each connection attempt (the
    /// quorum's leader: a server that moves is found again). `mounted` is what the server
    /// records of this node, to fence it should it be lost (this process on this machine by
    /// default).
    public init(meta: any BlockDevice, data: any BlockDevice, server resolve: @escaping @Sendable () -> (host: String, port: Int)?,
                key: ClusterKey, id: ClientID, mounted: MountedClient? = nil,
                cacheBlocks: Int = StoreOptions().cacheBlocks, cacheBytes: Int = 256 << 20,
                waitForServer: Duration = .zero, log: @escaping @Sendable (String) -> Void) throws {
        let store = try NodeStore(meta: meta, data: data, options: StoreOptions(cacheBlocks: cacheBlocks))
        self.id = id
        self.store = store
        self.cacheBytes = cacheBytes
        layout = store.superblock
        let me = mounted.map { m -> MountedClient in
            var m = m
            m.rid = id
            return m
        } ?? MountClaim.Identity.current.mounted(rid: id, slot: nil, address: "")
        self.mounted = me
        let held = RecordLockTable()
        heldRecordLocks = held
        let inbox = inbox
        let conn = try NetClient.connect(resolve: resolve, fsid: store.fsid, client: id, key: key, waitForServer: waitForServer,
                                         onMessage: { kind, body in
            switch kind {
            case .notice:
                switch try NetNotice(decoding: body) {
                case .openQuery(let qid, let ino):
                    let held = inbox.member.withLock { $0?.shared }?.refs.withLock(ino) { $0.takeUnlinked(ino) } ?? false
                    inbox.net.withLock { $0 }?.send(.notice, NetNotice.openReply(id: qid, held: held).encoded)
                case .recordLocksChanged(let ino):
                    inbox.member.withLock { $0?.shared }?.recordWaits.changed(ino)
                case .roots(let r, let records):
                    // Before the grant it comes with, on this same queue.
                    inbox.link.withLock { $0 }?.serverSent(r, records: records)
                case .openReply:
                    throw NetError("the server sent a notice only nodes send")
                }
            default:
                inbox.locks.withLock { $0 }?.receive(try LockServerMessage(fromNetwork: body))
            }
        }, onReset: {
            // A new server (a takeover, or this one's session was given up): it kept this
            // node's log tree and pools if it says so, and then recovers its locks (it asks for
            // them; requests still waiting are sent again). Otherwise blocks this node
            // allocated and has not committed may be someone else's now: writing on would
            // corrupt them, so the node stops and must remount.
            guard let link = inbox.link.withLock({ $0 }) else { return }
            let kept: Bool
            do {
                kept = try link.join(me, rejoin: true)
            } catch {
                log("error: telling the new server this node is back failed: \(error)")
                kept = false
            }
            if kept {
                log("the server changed; it kept this node's log tree and pools, and its locks are being recovered")
                inbox.locks.withLock { $0 }?.resendRequests()
                link.store.markStale()
                let mine = held.all
                do {
                    try link.reclaimRecordLocks(mine)
                    if !mine.isEmpty { log("the new server keeps this node's \(mine.count) record lock(s)") }
                } catch {
                    log("error: telling the new server this node's \(mine.count) record lock(s) failed: \(error); they are lost unless the node reconnects")
                }
                return
            }
            let why = "the server gave this node up (it changed, or lost this node for too long) and took its log tree and pools back; what it had not committed is lost. Unmount and mount again"
            log("error: \(why)")
            link.fence(why)
        }, log: log)
        net = conn
        inbox.net.withLock { $0 = conn }
        do {
            link = try NetServerLink(net: conn, store: store)
            guard try link.join(me, rejoin: false) else {
                throw StoreError(.exists, "the server refused client \(String(id, radix: 16)): an earlier mount of it is still being fenced; try again")
            }
        } catch {
            conn.close()
            throw error
        }
        inbox.link.withLock { [link] in $0 = link }
        locks = LockClient(id: id, link: NetLockServerLink(conn), options: .mount)
        link.follow(locks)
        inbox.locks.withLock { [locks] in $0 = locks }
    }

    deinit {
        guard !left.load(ordering: .acquiring) else { return }
        net.close()
        inbox.clear()
    }

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
        try inbox.member.withLock { m in
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
        inbox.clear()
    }

    func heldElsewhere(_ ino: UInt64, by id: UInt64) throws -> Bool {
        try link.openElsewhere(ino)
    }

    func setRecordLock(_ lock: RecordLock, wait: Bool) throws -> RecordLock? {
        let conflict = try link.setRecordLock(lock, wait: wait)
        // Answers of one owner's requests on one file that cross (threads of one process)
        // may land here in another order than at the server; nothing else can differ.
        if conflict == nil { heldRecordLocks.install(lock) }
        return conflict
    }

    func testRecordLock(_ lock: RecordLock) throws -> RecordLock? {
        try link.testRecordLock(lock)
    }

    func committedSeq(_ items: ClientItems) -> UInt64 { link.committedSeq }

    func refreshServerFigures() throws { try link.refreshRoots() }

    func resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64) throws {
        try link.resizeDevices(metaTotalBlocks: metaTotalBlocks, dataTotalBlocks: dataTotalBlocks)
    }

    func merges(_ items: ClientItems) -> Int { 0 }

    func reserveRootInode(_ items: ClientItems) {}

    func checkNextInode(log: (String) -> Void) throws {}

    func setReports(_ sink: @escaping @Sendable (String) -> Void) {}

    var fenced: String? { link.fencedReason }

    var place: (isServer: Bool, connected: Bool, nodes: [ClientID]) { (false, net.isConnected, []) }
}
