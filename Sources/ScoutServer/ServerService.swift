#if canImport(Glibc)
import Glibc
#endif
import Dispatch
public import ScoutFormat
public import ScoutNet
import ScoutStore
import Synchronization

/// The server's side of the network: what nodes send reaches the lock server (lock messages)
/// and the local server (calls). Calls run one at a time per node on the node's queue
/// (`NetServerHandler`), each inside `serialize`, which the server's owner makes take the store
/// lock its in-process clients take; the store and `LocalServer` are not thread-safe.
///
/// The client a call acts for is the one the connection proved itself to be, never a field of
/// the call.
public final class ServerService: NetServerHandler {
    // nonisolated(unsafe): the local server and its store are only touched inside `serialize`,
    // which holds the store lock.
    nonisolated(unsafe) let server: LocalServer
    let serialize: @Sendable (() throws -> ServerAnswer) throws -> ServerAnswer
    let locks = Mutex<LockServer?>(nil)
    let log: @Sendable (String) -> Void
    /// Who holds which unlinked inode, asked for every node (and by the server's own clients).
    public let openInodes: OpenInodeMap
    /// The cluster's flock and POSIX record locks.
    public let recordLocks: RecordLockTable
    /// Settles with nodes that were lost or that an earlier server had: nil, and a node
    /// that comes back after its server changed is told to remount, and a lost node's locks
    /// go when its session ends, unfenced.
    let recovery: ClientRecovery?

    public init(server: LocalServer, serialize: @escaping @Sendable (() throws -> ServerAnswer) throws -> ServerAnswer,
                openInodes: OpenInodeMap = OpenInodeMap(), recordLocks: RecordLockTable = RecordLockTable(),
                recovery: ClientRecovery? = nil, log: @escaping @Sendable (String) -> Void) {
        self.server = server
        self.serialize = serialize
        self.openInodes = openInodes
        self.recordLocks = recordLocks
        self.recovery = recovery
        self.log = log
    }

    /// What the service asks of the network server's sessions.
    public struct Sessions: Sendable {
        /// The node said farewell: its session ends with its connection.
        public var leaving: @Sendable (ClientID) -> Void
        /// Ends a node's session now.
        public var forget: @Sendable (ClientID) -> Void
        /// Whether a recorded node is gone for certain (its process on this machine ended):
        /// its session then ends as soon as its connection does, not after the linger.
        public var isGone: @Sendable (MountedClient) -> Bool

        public init(leaving: @escaping @Sendable (ClientID) -> Void, forget: @escaping @Sendable (ClientID) -> Void,
                    isGone: @escaping @Sendable (MountedClient) -> Bool) {
            self.leaving = leaving
            self.forget = forget
            self.isGone = isGone
        }
    }

    let sessions = Mutex<Sessions?>(nil)

    public func setSessions(_ s: Sessions) {
        sessions.withLock { $0 = s }
    }

    public func connectionLost(_ client: ClientID) {
        guard recovery != nil, let control = sessions.withLock({ $0 }) else { return }
        // Off the event loop: the record is read under the store lock.
        DispatchQueue.global().async { [self] in
            guard let mounted = try? mountedRecord(client) else { return }
            // A dying process closes its sockets before it is gone from the process table:
            // look for a moment.
            var gone = false
            for _ in 0..<40 where !gone {
                gone = control.isGone(mounted)
                if !gone { usleep(50_000) }
            }
            guard gone else { return }
            log("server: client \(String(client, radix: 16))'s process (pid \(mounted.pid) on this host) has ended; not waiting for it to reconnect")
            control.forget(client)
        }
    }

    /// The lock server that lock messages go to (made after the network server it sends on).
    public func serveLocks(_ lockServer: LockServer) {
        locks.withLock { $0 = lockServer }
    }

    /// A node joined: if the lock server is recovering (it restarted), the node is asked for
    /// the locks it holds, now that something can carry the question.
    public func connected(_ client: ClientID) {
        log("server: client \(String(client, radix: 16)) joined")
        locks.withLock { $0 }?.startRecovery(of: client)
    }

    /// The node's session is over (it left, or did not come back in time): its locks go, so
    /// the others stop waiting for it. What it committed stays in its log tree.
    ///
    /// A node recorded as mounted that ends this way is lost, not gone: it may still be
    /// writing (cut off, or hung), so with `recovery` its locks stay held until it is fenced,
    /// and then its log tree is merged and its pools taken back.
    public func disconnected(_ client: ClientID) {
        if let recovery, let mounted = try? mountedRecord(client) {
            if recovery.lost(mounted) {
                log("server: client \(String(client, radix: 16)) was lost (its session ended without a farewell); fencing it before its locks go")
            }
            return
        }
        log("server: client \(String(client, radix: 16)) left")
        dropLocks(of: client)
    }

    private func mountedRecord(_ client: ClientID) throws -> MountedClient? {
        var found: MountedClient?
        _ = try serialize {
            if let it = try self.server.store.lookup(MountedClient.key(rid: client), in: .mountedClients) {
                found = try MountedClient(item: it)
            }
            return .left
        }
        return found
    }

    /// The client's cluster locks and record locks go, so that others stop waiting for them.
    private func dropLocks(of client: ClientID) {
        locks.withLock { $0 }?.clientGone(client)
        recordLocks.clientGone(client)
    }

    public func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws {
        if kind == .notice { return try openInodes.received(NetNotice(decoding: body), from: client) }
        let m = try LockClientMessage(fromNetwork: body)
        guard let lockServer = locks.withLock({ $0 }) else {
            throw NetError("lock message from client \(String(client, radix: 16)) before the lock server started")
        }
        lockServer.receive(from: client, m)
    }

    public func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8] {
        let call = try ServerCall(decoding: body)
        switch call {
        case .openElsewhere(let ino):
            // Not under the store lock: the answers take a round trip to every node.
            return ServerAnswer.held(openInodes.heldElsewhere(ino, by: client)).encoded
        case .leave:
            sessions.withLock { $0 }?.leaving(client)
            recovery?.left(client)
            dropLocks(of: client)
            log("server: client \(String(client, radix: 16)) is leaving")
            _ = try serialize {
                try self.server.forget(rid: client)
                return .left
            }
            return ServerAnswer.left.encoded
        case .setRecordLock(var lock, let wait):
            lock.holder.client = client
            // Letting go never waits for the recovery: it can only leave more free.
            if lock.type != .unlock, recordLocks.recovering { return ServerAnswer.recordLocksRecovering.encoded }
            return ServerAnswer.recordLock(conflict: recordLocks.set(lock, wait: wait)).encoded
        case .testRecordLock(var lock):
            lock.holder.client = client
            if recordLocks.recovering { return ServerAnswer.recordLocksRecovering.encoded }
            return ServerAnswer.recordLock(conflict: recordLocks.test(lock)).encoded
        case .reclaimRecordLocks(let locks, let last):
            if recovery?.refuses(client) == true {
                throw NetError("client \(String(client, radix: 16)) was given up by the server (fenced, its locks dropped); it must remount")
            }
            recordLocks.reclaim(client, locks, last: last)
            if last { log("server: client \(String(client, radix: 16)) reclaimed its record locks") }
            return ServerAnswer.reclaimed.encoded
        case .join(var mounted, let rejoin):
            mounted.rid = client
            // Without recovery this server merged every log tree it found when it started:
            // a node of an earlier server has nothing left to go on with.
            guard recovery?.join(mounted, rejoin: rejoin) ?? !rejoin else {
                // Nothing of it is kept: its session ends with its connection, not after a linger.
                sessions.withLock { $0 }?.leaving(client)
                log("server: client \(String(client, radix: 16)) came back after this server gave it up; it must remount")
                return ServerAnswer.joined(false).encoded
            }
            _ = try serialize {
                try self.server.recordMounted(mounted)
                return .left
            }
            if rejoin { log("server: client \(String(client, radix: 16)) is back; its log tree and pools are kept") }
            return ServerAnswer.joined(true).encoded
        default:
            return try serialize {
                // Reads change nothing (a new mount of the id reads the roots before it joins).
                let writes: Bool = switch call {
                case .roots, .dataSpace: false
                default: true
                }
                if writes, self.recovery?.refuses(client) == true {
                    throw NetError("client \(String(client, radix: 16)) was given up by the server (fenced, its log tree and pools reclaimed); it must remount")
                }
                return try self.answer(call, for: client)
            }.encoded
        }
    }

    /// The answer to `call` for `rid`; the store lock is held.
    func answer(_ call: ServerCall, for rid: ClientID) throws -> ServerAnswer {
        switch call {
        case .roots:
            return .roots(server.roots)
        // What a node is given is durable before it hears of it: a node outlives its server,
        // and a server that takes over after a crash must not hand the same inode numbers or
        // blocks out again (the server's own clients die with it, so theirs ride on the next
        // commit).
        case .allocateInodes(let count):
            let got = server.allocateInodes(count)
            try server.store.commit()
            return .inodes(got)
        case .refillDataPool(let n):
            let got = try server.refillDataPool(rid: rid, atLeast: n)
            try server.store.commit()
            return .dataPool(got)
        case .refillMetaPool(let n):
            guard n <= UInt64(ServerCall.maxExtents) else {
                throw NetError("client \(rid) asked for \(n) metadata blocks at once; at most \(ServerCall.maxExtents)")
            }
            let got = try server.refillMetaPool(rid: rid, atLeast: Int(n))
            try server.store.commit()
            return .metaPool(LogTreeBuilder.extents(got))
        case .dataSpace:
            let s = server.dataSpace
            return .dataSpace(free: s.free, pendingFree: s.pendingFree)
        case .recordedLogTree:
            return .recordedLogTree(try server.recordedLogTree(rid: rid))
        case .commitLogTree(let record, let freed, let freedMeta, let merge):
            // A node builds its next commit on its recorded tree between calls, where no
            // merge step of the server's may edit it: its merges run inside its commits.
            let c = try server.commitLogTree(rid: rid, record, freed: freed, freedMeta: freedMeta, merge: merge,
                                             mergesInBackground: false)
            // With the records of the commit while few: the node would otherwise read the
            // roots' log-trees tree from the device, a cold read in every commit it answers.
            return .committed(c, server.roots, records: LogTreeRecord.sendable(server.store.committed.roots.records))
        case .resizeDevices(let meta, let data):
            do {
                try server.resizeDevices(metaTotalBlocks: meta, dataTotalBlocks: data)
            } catch let e as StoreError where e.code == .invalid {
                return .resized(errno: e.errno, reason: e.message)
            }
            return .resized(errno: 0, reason: "")
        case .openElsewhere, .leave, .setRecordLock, .testRecordLock, .join, .reclaimRecordLocks:
            throw NetError("\(call) is answered outside the store lock")
        }
    }
}
