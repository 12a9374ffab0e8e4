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

    public init(server: LocalServer, serialize: @escaping @Sendable (() throws -> ServerAnswer) throws -> ServerAnswer,
                openInodes: OpenInodeMap = OpenInodeMap(), recordLocks: RecordLockTable = RecordLockTable(),
                log: @escaping @Sendable (String) -> Void) {
        self.server = server
        self.serialize = serialize
        self.openInodes = openInodes
        self.recordLocks = recordLocks
        self.log = log
    }

    /// The lock server that lock messages go to (made after the network server it sends on).
    public func serveLocks(_ lockServer: LockServer) {
        locks.withLock { $0 = lockServer }
    }

    /// A node joined: if the lock server is recovering (it restarted), the node is asked for
    /// the locks it holds, now that something can carry the question.
    public func connected(_ client: ClientID) {
        log("server: client \(client) joined")
        locks.withLock { $0 }?.startRecovery(of: client)
    }

    /// The node's session is over (it left, or did not come back in time): its locks go, so
    /// the others stop waiting for it. What it committed stays in its log tree.
    public func disconnected(_ client: ClientID) {
        log("server: client \(client) left")
        dropLocks(of: client)
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
            throw NetError("lock message from client \(client) before the lock server started")
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
            dropLocks(of: client)
            log("server: client \(client) is leaving")
            _ = try serialize {
                try self.server.forget(rid: client)
                return .left
            }
            return ServerAnswer.left.encoded
        case .setRecordLock(var lock, let wait):
            lock.holder.client = client
            return ServerAnswer.recordLock(conflict: recordLocks.set(lock, wait: wait)).encoded
        case .testRecordLock(var lock):
            lock.holder.client = client
            return ServerAnswer.recordLock(conflict: recordLocks.test(lock)).encoded
        default:
            return try serialize { try self.answer(call, for: client) }.encoded
        }
    }

    /// The answer to `call` for `rid`; the store lock is held.
    func answer(_ call: ServerCall, for rid: ClientID) throws -> ServerAnswer {
        switch call {
        case .roots:
            return .roots(roots)
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
            return .committed(c, roots)
        case .openElsewhere, .leave, .setRecordLock, .testRecordLock:
            throw NetError("\(call) is answered outside the store lock")
        }
    }

    private var roots: ServerRoots {
        let sb = server.store.superblock
        let space = server.dataSpace
        return ServerRoots(seq: sb.seq, fs: sb.root(.fs), logTrees: sb.root(.logTrees),
                           transactionSeq: server.transactionSeq, stableSeq: server.stableSeq,
                           metaAllocatable: server.store.allocatableMetaBlocks, dataFree: space.free, dataPendingFree: space.pendingFree)
    }
}
