#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// A quorum slot's mount taking part in the election: runs `Election` on a thread of its
/// own, with the slot's quorum block (through its `MountClaim`) as the durable term and vote,
/// and `QuorumTransport` as the network.
///
/// What leadership means is the mount's business: `onElected` and `onSteppedDown` are called
/// on a thread of their own, one at a time and in order, so that fencing and starting a server
/// (seconds) never hold up the heartbeats that keep the leadership.
public final class QuorumMember: Sendable {
    public struct Handlers: Sendable {
        /// This slot leads `term` (its elected event is durable): fence, then serve.
        public var onElected: @Sendable (UInt64) -> Void
        /// This slot's leadership of `term` ended (a newer term, a lost majority, a resignation).
        public var onSteppedDown: @Sendable (UInt64) -> Void
        /// A follower heard the leader of `term`.
        public var onLeader: @Sendable (_ slot: UInt8, _ term: UInt64) -> Void

        public init(onElected: @escaping @Sendable (UInt64) -> Void, onSteppedDown: @escaping @Sendable (UInt64) -> Void,
                    onLeader: @escaping @Sendable (UInt8, UInt64) -> Void = { _, _ in }) {
            self.onElected = onElected
            self.onSteppedDown = onSteppedDown
            self.onLeader = onLeader
        }
    }

    public let slot: UInt8
    let claim: MountClaim
    let log: @Sendable (String) -> Void
    let handlers: Handlers
    private let election: Mutex<Election>
    private let inbox = Mutex<[QuorumMessage]>([])
    private let wake = Parker()
    private let stopping = Atomic(false)
    private let thread = Mutex<JoinableThread?>(nil)
    private let transport = Mutex<QuorumTransport?>(nil)
    private let events: EventQueue

    /// Joins the election of the slots in `superblock` as `claim`'s slot, listening on its
    /// configured address and port. Nothing runs until `start`.
    public init(claim: MountClaim, superblock sb: SuperBlock, key: ClusterKey, config: Election.Config? = nil,
                bind: (host: String, port: Int)? = nil, peers: [UInt8: (host: String, port: Int)]? = nil,
                handlers: Handlers, log: @escaping @Sendable (String) -> Void) throws {
        let me = UInt8(claim.slot)
        slot = me
        self.claim = claim
        self.log = log
        self.handlers = handlers
        events = EventQueue(log: log)
        let b = claim.block
        let cfg = config ?? Election.Config(slots: sb.quorumSlots.map(\.slot), me: me)
        election = Mutex(Election(config: cfg, term: b.term, votedTerm: b.votedTerm, votedFor: b.votedFor,
                                  now: Self.now(), seed: UInt64.random(in: 0 ... .max)))
        guard let mine = sb.quorumSlots.first(where: { $0.slot == me }) else {
            throw StoreError(.invalid, "quorum slot \(me) is not configured in this filesystem")
        }
        var addresses: [UInt8: (host: String, port: Int)] = [:]
        for s in sb.quorumSlots where s.slot != me { addresses[s.slot] = (s.address, Int(s.port)) }
        let inbox = inbox, wake = wake
        let t = try QuorumTransport(host: bind?.host ?? mine.address, port: bind?.port ?? Int(mine.port), fsid: sb.fsid, key: key,
                                    peers: peers ?? addresses, log: log) { m in
            inbox.withLock { $0.append(m) }
            wake.unpark()
        }
        transport.withLock { $0 = t }
    }

    /// The UDP port the election listens on.
    public var port: Int { transport.withLock { $0?.port ?? 0 } }

    /// Datagrams the election dropped: without the cluster key's proof, of another
    /// filesystem, or unreadable.
    public var refusedMessages: Int { transport.withLock { $0?.refused ?? 0 } }

    public var role: Election.Role { election.withLock { $0.role } }
    public var term: UInt64 { election.withLock { $0.term } }
    /// The leader this slot knows of, itself included.
    public var leader: UInt8? { election.withLock { $0.leader } }

    /// As leader: the other slots heard within the last second (they are mounted and run).
    public var liveOthers: [UInt8] {
        let now = Self.now()
        return election.withLock { $0.heard(within: 1_000_000_000, now: now) }
    }

    public func start() throws {
        let t = try JoinableThread("the quorum election") { [self] in run() }
        thread.withLock { $0 = t }
    }

    /// Leaves the election: a leader resigns (the others elect at once without waiting out a
    /// heartbeat timeout), and its stepping down is handled before this returns.
    public func stop() {
        let actions = election.withLock { $0.resign(now: Self.now()) }
        carry(actions)
        stopping.store(true, ordering: .releasing)
        wake.unpark()
        thread.withLock { t -> JoinableThread? in defer { t = nil }; return t }?.join()
        events.finish()
        transport.withLock { t -> QuorumTransport? in defer { t = nil }; return t }?.close()
    }

    /// Gives up a leadership this mount cannot use (its server could not start): the others
    /// elect at once, and this slot stays a follower — it votes but does not stand again —
    /// until it is mounted again.
    public func resign() {
        carry(election.withLock { $0.resign(now: Self.now()) })
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let messages = inbox.withLock { m -> [QuorumMessage] in defer { m = [] }; return m }
            var actions: [Election.Action] = []
            let now = Self.now()
            election.withLock { e in
                for m in messages { actions += e.receive(m, now: now) }
                actions += e.tick(now: now)
            }
            carry(actions)
            let next = election.withLock { $0.nextDeadline }
            let current = Self.now()
            if inbox.withLock({ $0.isEmpty }) && next > current {
                _ = wake.park(seconds: Double(min(next - current, 50_000_000)) / 1e9)
            }
        }
    }

    /// Carries actions out in order. A persist that fails leaves out every send after it (a
    /// vote or candidacy that is not durable must not be sent); the election goes on and
    /// the next round persists again.
    private func carry(_ actions: [Election.Action]) {
        let t = transport.withLock { $0 }
        for a in actions {
            switch a {
            case .persist(let term, let votedTerm, let votedFor):
                do {
                    try claim.update {
                        $0.term = max($0.term, term)
                        $0.votedTerm = votedTerm
                        $0.votedFor = votedFor
                    }
                } catch {
                    log("error: election: writing term \(term) to quorum slot \(slot)'s block failed: \(error); this slot sends nothing until a write succeeds")
                    return
                }
            case .send(let m, let to):
                t?.send(m, to: to)
            case .elected(let term):
                do {
                    try claim.update { $0.elected = .init(term: term, atNanos: MountClaim.unixNanos()) }
                } catch {
                    log("error: election: recording slot \(slot)'s election in term \(term) failed: \(error); it cannot lead")
                    let down = election.withLock { $0.resign(now: Self.now()) }
                    carry(down.filter { if case .steppedDown = $0 { false } else { true } })
                    return
                }
                log("election: quorum slot \(slot) leads in term \(term)")
                events.post { [handlers] in handlers.onElected(term) }
            case .steppedDown(let term):
                log("election: quorum slot \(slot) no longer leads (term \(term))")
                events.post { [handlers] in handlers.onSteppedDown(term) }
            case .leaderIs(let s, let term):
                log("election: quorum slot \(s) leads in term \(term)")
                events.post { [handlers] in handlers.onLeader(s, term) }
            }
        }
    }

    /// Runs posted closures one at a time on a thread of its own.
    final class EventQueue: Sendable {
        private let queue = Mutex<(items: [Callback<Void, Void>], finished: Bool)>(([], false))
        private let wake = Parker()
        private let thread = Mutex<JoinableThread?>(nil)
        let log: @Sendable (String) -> Void

        init(log: @escaping @Sendable (String) -> Void) {
            self.log = log
        }

        func post(_ body: @escaping @Sendable () -> Void) {
            queue.withLock { $0.items.append(Callback { _ in body() }) }
            thread.withLock { t in
                if t == nil {
                    t = try? JoinableThread("the quorum leadership") { [self] in run() }
                    if t == nil { log("error: election: cannot start the leadership thread") }
                }
            }
            wake.unpark()
        }

        private func run() {
            while true {
                let (items, finished) = queue.withLock { q -> ([Callback<Void, Void>], Bool) in
                    defer { q.items = [] }
                    return (q.items, q.finished)
                }
                for c in items { c.call(()) }
                if finished && items.isEmpty { return }
                if items.isEmpty { _ = wake.park(seconds: 0.1) }
            }
        }

        /// Runs what was posted, then ends the thread.
        func finish() {
            queue.withLock { $0.finished = true }
            wake.unpark()
            thread.withLock { t -> JoinableThread? in defer { t = nil }; return t }?.join()
        }
    }
}
