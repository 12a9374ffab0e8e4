public import ScoutFormat
public import ScoutNet
import Synchronization

/// Settings of the lock server.
public struct LockServerOptions: Sendable {
    /// How long a client listed at startup has to report its locks before it is declared gone
    /// (the original's `SERVER_RECOV_TIMEOUT_MS`).
    public var recoveryTimeoutNanoseconds: UInt64

    public init(recoveryTimeoutNanoseconds: UInt64 = 30_000_000_000) {
        self.recoveryTimeoutNanoseconds = recoveryTimeoutNanoseconds
    }
}

/// One client's place in a lock's lists.
struct LockEntry: Equatable {
    var client: ClientID
    var mode: LockMode
    /// For an invalidated entry: the id of the invalidation its answer must repeat.
    var id: UInt64 = 0
}

/// What the server knows of one lock: who holds it, who asked (first come, first served) and
/// who was asked to give way and has not answered. A client appears at most once per list.
struct ServerLockState {
    var granted: [LockEntry] = []
    var requested: [LockEntry] = []
    /// Entries moved here from `granted` when an invalidation was sent; the mode is the target.
    var invalidated: [LockEntry] = []
    /// Messages decided under the mutex, sent in order by one drainer at a time.
    var outbox: [(ClientID, LockServerMessage)] = []
    var draining = false

    var isEmpty: Bool { granted.isEmpty && requested.isEmpty && invalidated.isEmpty && outbox.isEmpty && !draining }
}

/// A lock's node in the server's map, with its own mutex and a count of references: one for
/// being in the map plus one per thread using it. Users are only added under the map's mutex,
/// so a count of 1 seen under that mutex means nobody can reach the node but the map.
final class ServerLockNode: Sendable {
    let key: Key
    let state = Mutex(ServerLockState())
    let refs = Atomic<Int>(0)
    init(key: Key) { self.key = key }
}

/// The server side of the cluster locks (DESIGN.md §3). Requests are served in arrival order:
/// for a request that conflicts with grants, each conflicting holder gets one invalidation and
/// the server waits for every answer before granting; write and write-only grants carry a seq
/// from the server's counter. Nothing is granted while a lock has invalidations out or while
/// recovery is pending.
///
/// **Recovery.** A new server starts with the clients that were mounted: it asks each for its
/// locks from the zero key, in batches, until an empty answer; rebuilds its grants from the
/// answers; raises its seq above every recovered write seq; and only then serves the requests
/// that queued meanwhile. A client that has not finished within the timeout is declared gone.
public final class LockServer: Sendable {
    struct Recovery {
        var pending: Set<ClientID>
        var deadline: UInt64
    }

    struct Counters {
        var requests = 0
        var grants = 0
        var invalidations = 0
        var recoveredLocks = 0
        var clientsTimedOut = 0
    }

    let links: any LockClientLinks
    let options: LockServerOptions
    private let nodes = Mutex<[Key: ServerLockNode]>([:])
    private let seq: Atomic<UInt64>
    private let recovery: Mutex<Recovery>
    private let recovering: Atomic<Bool>
    private let counters = Mutex(Counters())
    private let invalidationIDs: Atomic<UInt64>

    /// A server whose seq counter starts after `startSeq` (the last seq the previous server
    /// made durable). `recovering` lists the clients that held locks under the previous server;
    /// `now` is the clock the recovery deadline is measured on (`tick(now:)` uses the same).
    /// `term` numbers this server among the servers of the filesystem (the election term): it
    /// keeps its invalidation ids apart from a previous server's.
    public init(links: any LockClientLinks, term: UInt64 = 1, startSeq: UInt64 = 0, recovering clients: Set<ClientID> = [],
                now: UInt64 = 0, options: LockServerOptions = LockServerOptions()) {
        self.links = links
        invalidationIDs = Atomic(term << 40)
        self.options = options
        seq = Atomic(startSeq)
        recovery = Mutex(Recovery(pending: clients, deadline: now &+ options.recoveryTimeoutNanoseconds))
        recovering = Atomic(!clients.isEmpty)
    }

    /// Sends the first recovery request to every client being recovered. Separate from `init`
    /// so the caller can attach the server to its transport first.
    public func startRecovery() {
        let clients = recovery.withLock { $0.pending }
        for c in clients.sorted() { links.send(.recover(.min), to: c) }
    }

    /// Sends the first recovery request to `client` if it is being recovered: over a network,
    /// when it connects (a request sent before is dropped with no one to take it).
    public func startRecovery(of client: ClientID) {
        guard recovery.withLock({ $0.pending.contains(client) }) else { return }
        links.send(.recover(.min), to: client)
    }

    public var isRecovering: Bool { recovering.load(ordering: .acquiring) }

    /// The last seq handed out.
    public var currentSeq: UInt64 { seq.load(ordering: .relaxed) }

    private func nextSeq() -> UInt64 { seq.add(1, ordering: .relaxed).newValue }

    private func raiseSeq(above s: UInt64) {
        var cur = seq.load(ordering: .relaxed)
        while cur < s {
            let (done, now) = seq.compareExchange(expected: cur, desired: s, ordering: .relaxed)
            if done { return }
            cur = now
        }
    }

    // MARK: nodes

    private func node(_ key: Key, create: Bool) -> ServerLockNode? {
        nodes.withLock { m in
            if let n = m[key] {
                n.refs.add(1, ordering: .relaxed)
                return n
            }
            guard create else { return nil }
            let n = ServerLockNode(key: key)
            n.refs.store(2, ordering: .relaxed)
            m[key] = n
            return n
        }
    }

    /// Drops a use of a node. The map's mutex is taken only when the node looks unused and
    /// empty, to take it out; lock order there is map mutex → node mutex (nothing takes the
    /// map while holding a node). The check is repeated under the map's mutex because another
    /// thread may have found the node in between.
    private func put(_ n: ServerLockNode) {
        guard n.refs.subtract(1, ordering: .acquiringAndReleasing).newValue == 1,
              n.state.withLock({ $0.isEmpty }) else { return }
        nodes.withLock { m in
            if n.refs.load(ordering: .acquiring) == 1, m[n.key] === n, n.state.withLock({ $0.isEmpty }) {
                n.refs.store(0, ordering: .releasing)
                m[n.key] = nil
            }
        }
    }

    /// Runs `body` on a node's state, then sends what it queued, in order, outside the mutex
    /// (a transport may deliver on this thread and call straight back into the server).
    private func update(_ n: ServerLockNode, _ body: (inout ServerLockState) -> Void) {
        var drain = false
        n.state.withLock { s in
            body(&s)
            if !s.draining && !s.outbox.isEmpty {
                s.draining = true
                drain = true
            }
        }
        while drain {
            let batch: [(ClientID, LockServerMessage)] = n.state.withLock { s in
                let b = s.outbox
                s.outbox = []
                if b.isEmpty { s.draining = false; drain = false }
                return b
            }
            for (c, m) in batch { links.send(m, to: c) }
        }
    }

    // MARK: messages

    /// Handles one message from a client.
    public func receive(from client: ClientID, _ message: LockClientMessage) {
        switch message {
        case .request(let m):
            counters.withLock { $0.requests += 1 }
            raiseSeq(above: m.writeSeq)
            guard let n = node(m.key, create: true) else { return }
            update(n) { s in
                // One request per client per lock; a resend after reconnecting replaces it.
                if let i = s.requested.firstIndex(where: { $0.client == client }) {
                    s.requested[i].mode = m.newMode
                } else {
                    s.requested.append(LockEntry(client: client, mode: m.newMode))
                }
                process(n.key, &s)
            }
            put(n)
        case .invalidated(let m):
            // A client giving back a write lock may have written under a seq this server never
            // handed out (a previous server did, and the client recovered nothing once it gave
            // the lock back): later grants must still be above it.
            raiseSeq(above: m.writeSeq)
            guard let n = node(m.key, create: false) else { return }
            update(n) { s in
                // Only the answer to the invalidation out counts. Any other (a previous
                // server's, a duplicate) may be older than a grant still on its way to the
                // client; ignoring it leaves the server believing the client holds more than it
                // does, which costs at most one more invalidation, answered at once.
                guard let i = s.invalidated.firstIndex(where: { $0.client == client && $0.id == m.id }) else { return }
                s.invalidated.remove(at: i)
                setGranted(&s, client, m.newMode)
                process(n.key, &s)
            }
            put(n)
        case .recoverReply(let r):
            recovered(client, r)
        }
    }

    private func setGranted(_ s: inout ServerLockState, _ client: ClientID, _ mode: LockMode) {
        s.granted.removeAll { $0.client == client }
        if mode != .null { s.granted.append(LockEntry(client: client, mode: mode)) }
    }

    /// Whether a grant and a request conflict. A client's own grant is replaced by its request,
    /// which needs no invalidation only for a read → write upgrade (or a repeat); a request for
    /// null, a switch between write and write-only, and anything else go through an
    /// invalidation of the client's own grant.
    private func conflicts(_ g: LockEntry, _ r: LockEntry) -> Bool {
        if g.client == r.client {
            return !(r.mode != .null && (g.mode == r.mode || (g.mode == .read && r.mode == .write)))
        }
        return !LockMode.compatibleAcrossClients(g.mode, r.mode)
    }

    /// Serves queued requests in order until one has to wait; queues the messages.
    private func process(_ key: Key, _ s: inout ServerLockState) {
        guard !isRecovering, s.invalidated.isEmpty else { return }
        while let r = s.requested.first {
            var keep: [LockEntry] = []
            for g in s.granted {
                if conflicts(g, r) {
                    let to: LockMode = g.client == r.client ? .null : LockMode.invalidationTarget(held: g.mode, wanted: r.mode)
                    let id = invalidationIDs.add(1, ordering: .relaxed).newValue
                    s.invalidated.append(LockEntry(client: g.client, mode: to, id: id))
                    s.outbox.append((g.client, .invalidate(LockMessage(key: key, oldMode: g.mode, newMode: to, id: id))))
                } else {
                    keep.append(g)
                }
            }
            if !s.invalidated.isEmpty {
                s.granted = keep
                counters.withLock { $0.invalidations += s.invalidated.count }
                return
            }
            s.requested.removeFirst()
            let old = s.granted.first(where: { $0.client == r.client })?.mode ?? .null
            setGranted(&s, r.client, r.mode)
            let writeSeq = r.mode.canWrite ? nextSeq() : 0
            s.outbox.append((r.client, .grant(LockMessage(key: key, writeSeq: writeSeq, oldMode: old, newMode: r.mode))))
            counters.withLock { $0.grants += 1 }
        }
    }

    // MARK: recovery and departures

    private func recovered(_ client: ClientID, _ reply: LockRecoverReply) {
        guard recovery.withLock({ $0.pending.contains(client) }) else { return }
        for e in reply.entries {
            raiseSeq(above: e.writeSeq)
            guard let n = node(e.key, create: true) else { continue }
            update(n) { s in setGranted(&s, client, e.mode) }
            put(n)
        }
        counters.withLock { $0.recoveredLocks += reply.entries.count }
        if let last = reply.entries.last, let next = last.key.successor {
            links.send(.recover(next), to: client)
            return
        }
        let finished = recovery.withLock { r in
            r.pending.remove(client)
            return r.pending.isEmpty
        }
        if finished { finishRecovery() }
    }

    private func finishRecovery() {
        guard recovering.exchange(false, ordering: .acquiringAndReleasing) else { return }
        forEachNode { n in update(n) { s in process(n.key, &s) } }
    }

    private func forEachNode(_ body: (ServerLockNode) -> Void) {
        let all: [ServerLockNode] = nodes.withLock { m in
            m.values.sorted { $0.key < $1.key }.map { n in
                n.refs.add(1, ordering: .relaxed)
                return n
            }
        }
        for n in all {
            body(n)
            put(n)
        }
    }

    /// A client left (farewell, fenced, or timed out): its grants, requests and unanswered
    /// invalidations are dropped and whatever waited on them is served.
    public func clientGone(_ client: ClientID) {
        let finished = recovery.withLock { r -> Bool in
            guard r.pending.remove(client) != nil else { return false }
            return r.pending.isEmpty
        }
        forEachNode { n in
            update(n) { s in
                s.granted.removeAll { $0.client == client }
                s.requested.removeAll { $0.client == client }
                s.invalidated.removeAll { $0.client == client }
                process(n.key, &s)
            }
        }
        if finished { finishRecovery() }
    }

    /// Declares gone every client that has not finished recovery by the deadline.
    public func tick(now: UInt64) {
        let late: [ClientID] = recovery.withLock { r in
            guard !r.pending.isEmpty, now >= r.deadline else { return [] }
            return r.pending.sorted()
        }
        guard !late.isEmpty else { return }
        counters.withLock { $0.clientsTimedOut += late.count }
        for c in late { clientGone(c) }
    }

    // MARK: inspection

    /// The grants the server records for a lock (tests).
    public func grants(_ key: Key) -> [(client: ClientID, mode: LockMode)] {
        guard let n = node(key, create: false) else { return [] }
        defer { put(n) }
        return n.state.withLock { s in s.granted.map { ($0.client, $0.mode) } }
    }

    /// Locks the server tracks, requests queued, invalidations out.
    public var queueStatistics: (locks: Int, queuedRequests: Int, outstandingInvalidations: Int) {
        var requests = 0
        var invalidations = 0
        let locks = nodes.withLock { $0.count }
        forEachNode { n in
            n.state.withLock { s in
                requests += s.requested.count
                invalidations += s.invalidated.count
            }
        }
        return (locks, requests, invalidations)
    }

    public var statistics: (requests: Int, grants: Int, invalidations: Int, recoveredLocks: Int, clientsTimedOut: Int) {
        counters.withLock { ($0.requests, $0.grants, $0.invalidations, $0.recoveredLocks, $0.clientsTimedOut) }
    }
}
