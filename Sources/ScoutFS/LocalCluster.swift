import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
public import ScoutStore

/// The server side of a filesystem and the clients that run in its process: one store, the
/// server in front of it (log trees, merges, inode batches, data pools), a lock server, and
/// the in-memory network between it and each client's lock client. A mount is a cluster of
/// one; tests join several `Filesystem` clients to one cluster, each with its own lock client,
/// item cache, log tree, transaction and pool: the shape the network goes under next.
///
/// Every use of the store or the server, by any client, holds `storeLock`.
public final class LocalCluster: Sendable {
    // nonisolated(unsafe): both are reached only with `storeLock` held (or before any client
    // joins).
    nonisolated(unsafe) let store: Store
    nonisolated(unsafe) let server: LocalServer
    let storeLock = StoreLock()
    let lockServer: LockServer
    let lockNetwork: InMemoryLockNetwork
    /// Clients may be more than one: each reads the others' log trees and writes deletions as
    /// tombstones. A cluster of one (the mount today) skips both.
    let several: Bool
    private let members = Members()
    /// Runs the server's merges of log trees past the threshold, beside the clients.
    let merger: LogMerger
    /// Where the merge thread reports failures: the log of the first client that joined.
    let mergeReports = ReportSink()

    final class ReportSink: Sendable {
        private let target = Mutex<Callback<String, Void>?>(nil)
        func setIfUnset(_ t: @escaping @Sendable (String) -> Void) { target.withLock { if $0 == nil { $0 = Callback(t) } } }
        func report(_ message: String) { target.withLock { $0 }?.call(message) }
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

    /// Opens the cluster on a store no client uses yet: log trees that clients of an earlier
    /// mount left behind are merged (their pools go back to the free tree) before anyone joins.
    public init(store: Store, mergeThreshold: UInt64 = 100_000, several: Bool = false) throws {
        self.store = store
        server = LocalServer(store: store, mergeThreshold: mergeThreshold)
        self.several = several
        let net = InMemoryLockNetwork(immediate: true)
        let ls = LockServer(links: net.clientLinks)
        net.attachServer { client, m in ls.receive(from: client, m) }
        lockNetwork = net
        lockServer = ls
        recovered = try server.recoverLogTrees()
        let work = MergeWork(store: store, server: server, storeLock: storeLock)
        let sink = mergeReports
        let members = members
        merger = LogMerger(step: {
            guard let rid = work.storeLock.withLock(work.store, { work.server.nextMergeWanted }) else { return false }
            let step = { try work.storeLock.withLock(work.store) { try work.server.mergeStep(rid: rid) } }
            // A client that left has no commits to keep out; a live one's wait for the step.
            guard let client = members.items(rid) else { return try step() }
            return try client.withLogTurn(step)
        }, report: { sink.report($0) })
        // Weak: the merge thread's work holds the server, which holds this closure.
        server.onMergeWanted = { [weak merger] in merger?.wakeUp() }
        try merger.start()
    }

    deinit {
        merger.stop()
    }

    /// Log trees merged when the cluster opened.
    let recovered: Int

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
        members.withLock { _ = $0.removeValue(forKey: id) }
    }

    /// A client dies between commits (tests): it leaves with its locks gone, what it had not
    /// committed lost, and its committed log tree merged and pool taken back by the server.
    /// The `Filesystem` object must not be used again.
    public func crash(_ fs: Filesystem) throws {
        fs.leaveCluster()
        try storeLock.withLock(store) { try server.recoverLogTree(rid: fs.cluster.id) }
    }

    /// Whether a client other than `id` holds `ino` open or cached in its kernel (the
    /// original's open map). A holder learns here that the inode has lost its last link, so
    /// its own last close or forget frees it: the unlinking client does not.
    func heldElsewhere(_ ino: UInt64, by id: UInt64) -> Bool {
        let others = members.withLock { m in m.filter { $0.key != id }.compactMap(\.value.shared) }
        var held = false
        for s in others where s.refs.withLock(ino, { r in r.takeUnlinked(ino) }) { held = true }
        return held
    }
}
