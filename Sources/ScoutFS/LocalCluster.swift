#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
import ScoutFormat
public import ScoutNet
public import ScoutServer
public import ScoutStore
import Synchronization

/// The server side of a filesystem and the clients that run in its process: one store, the
/// server in front of it (log trees, merges, inode batches, data pools), a lock server, and
/// the in-memory network between it and each client's lock client. Tests join several
/// `Filesystem` clients to one cluster, each with its own lock client, item cache, log tree,
/// transaction and pool; a mount that serves the network (`serve`) takes nodes in too, whose
/// lock messages and calls arrive over TCP (`NodeCluster` is their side).
///
/// Every use of the store or the server, by any client, holds `storeLock`.
public final class LocalCluster: ClusterHost, Sendable {
    // nonisolated(unsafe): both are reached only with `storeLock` held (or before any client
    // joins).
    nonisolated(unsafe) let store: Store
    nonisolated(unsafe) let server: LocalServer
    let storeLock = StoreLock()
    let lockServer: LockServer
    let lockNetwork: InMemoryLockNetwork
    /// The lock server's links to nodes on the network, once it serves one.
    private let remoteLinks = Mutex<NetLockClientLinks?>(nil)
    /// The server's roots as of its last commit, which go to a node before each grant.
    private let committedRoots: RootsBoard

    final class RootsBoard: Sendable {
        private let notice: Mutex<NetNotice>
        init(_ r: ServerRoots) { notice = Mutex(.roots(r, records: nil)) }
        /// The roots, and the log-tree records of the same commit while they are few.
        func set(_ r: ServerRoots, _ records: Result<[(rid: UInt64, record: LogTreeRecord)], StoreError>) {
            notice.withLock { $0 = .roots(r, records: LogTreeRecord.sendable(records)) }
        }
        var current: NetNotice { notice.withLock { $0 } }
    }
    /// Asked before any client frees an unlinked inode: the clients here and the nodes.
    let openInodes = OpenInodeMap()
    /// The cluster's flock and POSIX record locks, for the clients here and the nodes.
    let recordLocks = RecordLockTable()
    private let network = Mutex<NetServer?>(nil)
    let layout: SuperBlock
    var dataDevice: any BlockDevice { store.data }
    /// Clients may be more than one (a mount that serves nodes, tests): each reads the
    /// others' log trees, tracks what its kernel caches and asks the others before freeing an
    /// inode. A cluster of one (tests of a lone client) skips all that.
    let several: Bool
    private let members = Members()
    /// Runs the server's merges of log trees past the threshold, beside the clients.
    let merger: LogMerger
    /// Where the merge thread reports failures: the log of the first client that joined.
    let mergeReports = Hook<String>()
    /// Told, with its id, of each node given up and reclaimed (`whenNodeReclaimed`).
    private let reclaimed = Hook<UInt64>()

    /// One target for news, set at any time; news before it is set goes nowhere.
    public final class Hook<Argument>: Sendable {
        private let target = Mutex<Callback<Argument, Void>?>(nil)
        public init() {}
        public func set(_ body: @escaping @Sendable (Argument) -> Void) { target.withLock { $0 = Callback(body) } }
        func setIfUnset(_ body: @escaping @Sendable (Argument) -> Void) { target.withLock { if $0 == nil { $0 = Callback(body) } } }
        public func call(_ news: Argument) { target.withLock { $0 }?.call(news) }
    }

    /// What the merge thread reaches: only ever with the store lock held.
    private struct MergeWork: @unchecked Sendable {
        let store: Store
        let server: LocalServer
        let storeLock: StoreLock
    }

    final class WeakMember: @unchecked Sendable {
        // @unchecked: set once; `FSShared` is Sendable.
        weak var shared: FSShared?
        init(_ s: FSShared) { shared = s }
    }

    /// The clients that joined, shared with the merge thread (which must keep a client's
    /// commits off the log tree it merges).
    final class Members: Sendable {
        private let table = Mutex<[UInt64: WeakMember]>([:])
        func withLock<T>(_ body: (inout [UInt64: WeakMember]) throws -> T) rethrows -> T {
            try table.withLock { try body(&$0) }
        }
        func items(_ id: UInt64) -> ClientItems? { table.withLock { $0[id]?.shared?.cluster.items } }
    }

    /// How a server that starts while nodes may be mounted settles with them (§15): the
    /// nodes the mounted-clients tree records keep their log trees and are waited for; those
    /// that do not come back within `timeout` are fenced by `fencer`, then reclaimed.
    public struct Takeover: Sendable {
        /// The election term this server serves in (keeps its lock invalidation ids apart).
        public var term: UInt64
        public var fencer: Fencer
        public var timeout: Duration
        /// How long a node that lost its connection to this server is waited for before it is
        /// given up (its session's linger).
        public var linger: Duration
        /// Whether a recorded node is gone for certain now (its process on this machine is
        /// not running): such a node is fenced and reclaimed without waiting out the timeout.
        public var isGone: @Sendable (FenceRequest) -> Bool

        public init(term: UInt64, fencer: Fencer, timeout: Duration = .seconds(30), linger: Duration? = nil,
                    isGone: @escaping @Sendable (FenceRequest) -> Bool = { _ in false }) {
            self.term = term
            self.fencer = fencer
            self.timeout = timeout
            self.linger = linger ?? timeout
            self.isGone = isGone
        }
    }

    /// The nodes this server settles with before reclaiming anything of theirs (with
    /// `Takeover`); nil: every log tree was merged at the start, and a node whose server
    /// changed must remount.
    let recovery: ClientRecovery?
    /// The takeover settings this server started with.
    let takeover: Takeover?
    let itemCacheBytes: Int

    /// Opens the cluster on a store no client uses yet. Without `takeover`, log trees that
    /// clients of an earlier mount left behind are merged (their pools go back to the free
    /// tree) before anyone joins. With it, only those of clients that were in an earlier
    /// server's process are; nodes recorded as mounted are waited for (`Takeover`).
    /// `itemCacheBytes` bounds each client's item cache (its clean items).
    public init(store: Store, mergeThreshold: UInt64 = 100_000, several: Bool = false, takeover: Takeover? = nil,
                itemCacheBytes: Int = 256 << 20) throws {
        self.store = store
        self.itemCacheBytes = itemCacheBytes
        self.takeover = takeover
        server = LocalServer(store: store, mergeThreshold: mergeThreshold)
        let reports = mergeReports
        server.report = { reports.call($0) }
        self.several = several
        layout = store.superblock
        let net = InMemoryLockNetwork(immediate: true)
        var nodes: [MountedClient] = []
        if takeover != nil {
            let found = try server.recoverForTakeover()
            recovered = found.merged
            nodes = found.nodes
        } else {
            recovered = try server.recoverLogTrees()
        }
        // Kept by the committing thread, under the store lock: a grant that follows a commit
        // (the holder before committed, then let the lock go) sends roots that hold it.
        let board = RootsBoard(server.roots)
        committedRoots = board
        store.afterCommit = { [weak server] in
            if let server { board.set(server.roots, server.store.committed.roots.records) }
        }
        // Recovery of the nodes' locks ends when each has reported them or was fenced
        // (`ClientRecovery`), never on a clock of the lock server's own: a node not heard
        // from may still hold locks that only its fence ends.
        let ls = LockServer(links: RoutedLockLinks(local: net, remote: remoteLinks), term: takeover?.term ?? 1,
                            recovering: Set(nodes.map(\.rid)), options: LockServerOptions(recoveryTimeoutNanoseconds: .max / 2))
        net.attachServer { client, m in ls.receive(from: client, m) }
        lockNetwork = net
        lockServer = ls
        recordLocks.awaitReclaim(from: nodes.map(\.rid))
        if let takeover {
            let work = MergeWork(store: store, server: server, storeLock: storeLock)
            let recordLocks = recordLocks
            let sink = mergeReports
            let told = reclaimed
            let r = ClientRecovery(fencer: takeover.fencer, timeout: takeover.timeout, reclaim: { c in
                ls.clientGone(c.rid)
                recordLocks.clientGone(c.rid)
                try work.storeLock.withLock(work.store) { try work.server.recoverLogTree(rid: c.rid) }
                told.call(c.rid)
            }, log: { sink.call($0) })
            r.expect(nodes) { takeover.isGone(FenceRequest(recovering: $0)) }
            try r.start()
            recovery = r
        } else {
            recovery = nil
        }
        let work = MergeWork(store: store, server: server, storeLock: storeLock)
        let sink = mergeReports
        let members = members
        merger = LogMerger(step: {
            guard let rid = work.storeLock.withLock(work.store, { work.server.nextMergeWanted }) else { return false }
            let step = { try work.storeLock.withLock(work.store) { try work.server.mergeStep(rid: rid) } }
            // A client that left has no commits to keep out; a live one's wait for the step.
            guard let client = members.items(rid) else { return try step() }
            return try client.withLogTurn(step)
        }, report: { sink.call($0) })
        // Weak: the merge thread's work holds the server, which holds this closure.
        server.onMergeWanted = { [weak merger] in merger?.wakeUp() }
        try merger.start()
        openInodes.setLocal { [members] ino, asker in Self.heldHere(members, ino, by: asker) }
        recordLocks.setNotifier { [members, network] client, ino in
            if let here = members.withLock({ $0[client]?.shared }) {
                here.recordWaits.changed(ino)
            } else {
                _ = network.withLock { $0 }?.send(.notice, NetNotice.recordLocksChanged(ino: ino).encoded, to: client)
            }
        }
    }

    deinit {
        stopServing()
        recovery?.stop()
        merger.stop()
    }

    /// Lock messages to a client in this process go through the in-memory network; to any
    /// other, over TCP.
    struct RoutedLockLinks: LockClientLinks {
        let local: InMemoryLockNetwork
        let remote: Mutex<NetLockClientLinks?>
        func send(_ message: LockServerMessage, to client: ClientID) {
            if local.isAttached(client) {
                local.clientLinks.send(message, to: client)
            } else {
                remote.withLock { $0 }?.send(message, to: client)
            }
        }
    }

    /// Starts serving nodes on `host:port` (0: any free port), admitting those that prove
    /// they hold `key`; returns the port. Their calls run under the store lock beside this
    /// process's clients, their lock messages reach the same lock server.
    public func serve(host: String, port: Int, key: ClusterKey, log: @escaping @Sendable (String) -> Void) throws -> Int {
        let work = MergeWork(store: store, server: server, storeLock: storeLock)
        let service = ServerService(server: server, serialize: { body in try work.storeLock.withLock(work.store, body) },
                                    openInodes: openInodes, recordLocks: recordLocks, recovery: recovery, log: log)
        // A node that lost its connection is waited for as long as a node of an earlier
        // server is: one setting says how long the cluster waits before fencing a node.
        var timers = NetTimers()
        if let takeover { timers.sessionLinger = takeover.linger }
        let net = NetServer(fsid: store.fsid, key: key, handler: service, timers: timers, log: log)
        // A server with no client of its own (a node's takeover) reports into its log.
        mergeReports.setIfUnset(log)
        let isGone = takeover?.isGone
        service.setSessions(ServerService.Sessions(leaving: { [weak net] c in net?.leaving(c) }, forget: { [weak net] c in net?.forget(c) },
                                                   isGone: { isGone?(FenceRequest(recovering: $0)) ?? false }))
        let board = committedRoots
        remoteLinks.withLock { $0 = NetLockClientLinks(net, beforeGrant: { board.current }) }
        service.serveLocks(lockServer)
        openInodes.setNetwork(net)
        network.withLock { $0 = net }
        do {
            return try net.start(host: host, port: port)
        } catch {
            stopServing()
            throw error
        }
    }

    /// Calls `body` (on the recovery thread: it must not wait long) after each node given up
    /// has been reclaimed: inodes it held open after their last unlink are orphans nobody
    /// holds now, for some client to free (`Filesystem.reclaimOrphans`).
    public func whenNodeReclaimed(_ body: @escaping @Sendable (UInt64) -> Void) {
        reclaimed.set(body)
    }

    private let fencedWhy = Mutex<String?>(nil)
    /// Why this server ended (`close`), or nil while it serves.
    public var closedReason: String? { fencedWhy.withLock { $0 } }

    /// Ends this server for good (its leadership ended, or its mount unmounts): nodes' sessions
    /// end, recovery and merges stop, and the store refuses any write from now on, so that once
    /// this returns nothing of this process writes the metadata device through it again (a
    /// commit under way finishes first: it holds the store lock). The clients here fail every
    /// operation with EIO and `why` (they shared the store); a mount's must remount.
    public func close(_ why: String) {
        fencedWhy.withLock { if $0 == nil { $0 = why } }
        // Recovery first: the nodes' sessions that end with the server are not lost nodes.
        recovery?.stop()
        stopServing()
        merger.stop()
        storeLock.withLock(store) { store.abandon(StoreError(.failed, why)) }
    }

    /// Stops serving nodes (their sessions end); the clients here go on.
    public func stopServing() {
        guard let net = network.withLock({ n -> NetServer? in defer { n = nil }; return n }) else { return }
        openInodes.setNetwork(nil)
        net.stop()
        remoteLinks.withLock { $0 = nil }
    }

    /// What was found wrong with the superblock when the store opened (the mount warns).
    public var superblockProblems: [String] { store.superblockProblems }

    /// Nodes with a session now.
    public var nodes: [ClientID] { network.withLock { $0 }?.connectedClients ?? [] }

    /// Closes a node's connection as a network fault would; its session stays and it
    /// reconnects (tests).
    public func dropConnection(of node: ClientID) {
        network.withLock { $0 }?.dropConnection(node)
    }

    /// Log trees merged when the cluster opened.
    let recovered: Int

    /// Nodes this server still waits for or has given up and not yet reclaimed (takeover).
    public var nodesInRecovery: [ClientID] { recovery?.pending ?? [] }
    /// Whether the lock server still waits for nodes' locks before granting anything new.
    public var locksRecovering: Bool { lockServer.isRecovering }

    func join(_ id: UInt64, _ shared: FSShared) throws {
        try members.withLock { m in
            if let have = m[id], have.shared != nil {
                throw StoreError(.invalid, "client \(String(id, radix: 16)) is already a member of this cluster; give each client its own id")
            }
            m[id] = WeakMember(shared)
        }
    }

    /// Takes a client out: its locks are dropped from the lock server, so others stop waiting
    /// for it. What it committed stays; the caller decides whether its log tree is merged now
    /// (`crash`) or was merged already (a clean leave).
    func leave(_ id: UInt64) {
        lockNetwork.detachClient(id)
        lockServer.clientGone(id)
        recordLocks.clientGone(id)
        members.withLock { _ = $0.removeValue(forKey: id) }
        do {
            try storeLock.withLock(store) { try server.forget(rid: id) }
        } catch {
            mergeReports.call("warning: removing the empty log tree record of client \(String(id, radix: 16)), which left, failed: \(error); the next server start removes it")
        }
    }

    /// A client dies between commits (tests): it leaves with its locks gone, what it had not
    /// committed lost, and its committed log tree merged and pool taken back by the server.
    /// The `Filesystem` object must not be used again.
    public func crash(_ fs: Filesystem) throws {
        fs.leaveCluster()
        try storeLock.withLock(store) { try server.recoverLogTree(rid: fs.cluster.id) }
    }

    /// Whether a client other than `id` holds `ino` open or cached in its kernel (the
    /// original's open map): the clients here and every node. A holder learns here that the
    /// inode has lost its last link, so its own last close or forget frees it: the unlinking
    /// client does not.
    func heldElsewhere(_ ino: UInt64, by id: UInt64) throws -> Bool {
        openInodes.heldElsewhere(ino, by: id)
    }

    private static func heldHere(_ members: Members, _ ino: UInt64, by id: UInt64) -> Bool {
        let others = members.withLock { m in m.filter { $0.key != id }.compactMap(\.value.shared) }
        var held = false
        for s in others where s.refs.withLock(ino, { r in r.takeUnlinked(ino) }) { held = true }
        return held
    }

    // MARK: ClusterHost

    func clientID(asked: UInt64?) -> UInt64 {
        var id = asked ?? 0
        while id == 0 { id = UInt64.random(in: 1...UInt64.max) }
        return id
    }

    func makeClient(id: UInt64) throws -> ClusterClient {
        let locks = LockClient(id: id, link: lockNetwork.serverLink(for: id), options: .mount)
        // The store's transaction seq orders every change: whoever hands a lock over commits
        // first, which advances it (see `ClusterClient.ordersByLockSeq`).
        return ClusterClient(id: id, locks: locks, store: store, server: server, cacheBytes: itemCacheBytes,
                             sharesStore: several, ordersByLockSeq: false, storeLock: storeLock)
    }

    func attach(_ client: ClusterClient) {
        let locks = client.locks
        lockNetwork.attachClient(client.id) { m in locks.receive(m) }
    }

    func setRecordLock(_ lock: RecordLock, wait: Bool) throws -> RecordLock? {
        if lock.type != .unlock { waitForRecordLockRecovery() }
        return recordLocks.set(lock, wait: wait)
    }

    func testRecordLock(_ lock: RecordLock) throws -> RecordLock? {
        waitForRecordLockRecovery()
        return recordLocks.test(lock)
    }

    /// Until the nodes of an earlier server have said which record locks they hold (or were
    /// given up, bounded by the recovery timeout and their fences), no answer is sure.
    private func waitForRecordLockRecovery() {
        while recordLocks.recovering && closedReason == nil { usleep(20_000) }
    }

    func committedSeq(_ items: ClientItems) -> UInt64 { items.withStore { store.superblock.seq } }

    func refreshServerFigures() throws {}

    func resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64) throws {
        try storeLock.withLock(store) { try server.resizeDevices(metaTotalBlocks: metaTotalBlocks, dataTotalBlocks: dataTotalBlocks) }
    }

    func merges(_ items: ClientItems) -> Int { items.withStore { server.merges } }

    /// The root's whole inode group: every node walks the root on its way to anything, so
    /// an inode beside it (a first directory, its files) would make every change there take
    /// the lock that every path lookup needs.
    func reserveRootInode(_ items: ClientItems) {
        items.withStore { if store.nextIno < LockRange.groupSize { store.nextIno = LockRange.groupSize } }
    }

    func checkNextInode(log: (String) -> Void) throws {
        let store = store
        let last: Item? = try storeLock.withLock(store) {
            do {
                return try store.tree(.fs).prev(from: Key.last(in: Zone.fs), in: store)
            } catch let e as StoreError where e.code == .corrupt || e.code == .stale {
                log("cannot verify the superblock's next inode number against the fs tree: \(e.message)")
                return nil
            }
        }
        let next = storeLock.withLock(store) { store.nextIno }
        if let last, last.key.zone == Zone.fs, last.key.first >= next {
            throw StoreError(.corrupt, "the superblock's next inode number \(next) is not above inode \(last.key.first), which the fs tree holds: new files would overwrite existing ones. The superblock is damaged; run `scoutfs check`")
        }
    }

    func setReports(_ sink: @escaping @Sendable (String) -> Void) { mergeReports.setIfUnset(sink) }

    var fenced: String? { fencedWhy.withLock { $0 } }

    var place: (isServer: Bool, connected: Bool, nodes: [ClientID]) { (true, true, nodes) }
}
