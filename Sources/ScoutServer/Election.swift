public import ScoutFormat

/// The election among a filesystem's quorum slots: raft's leader election without a log, as
/// the original's `quorum.c`. Terms only go up; a slot votes once a term (the vote and the
/// term are persisted before anything that depends on them is sent); a candidate with a
/// majority of the configured slots leads; the leader sends heartbeats, and followers that
/// hear none for `heartbeatTimeout` stand for a new term.
///
/// A pure state machine: it never sleeps or does I/O. The driver (`QuorumMember`) feeds it
/// messages and the time, and carries out the actions it returns, in order: a `persist`
/// must be durable before the sends after it.
///
/// Beyond raft:
/// - With one or two slots a single vote leads (a majority of two is both, and a cluster of
///   two must survive either's death). Two candidates of one term then could both lead: a
///   candidate waits its whole election timeout for the other's vote before leading on its
///   own, and between two of one term the lower slot wins (the other yields its vote, and a
///   leader that hears the lower slot's heartbeat in its own term steps down).
/// - A leader that has not heard a majority (itself included) within `heartbeatTimeout`
///   steps down: a partition must not leave a minority server writing. (The new leader fences
///   it anyway; this only makes it stop sooner.)
/// - A message of an older term is answered with the current term, so a leader that was cut
///   off learns at once that it is not one.
/// - With three slots or more, a follower asks first whether it would get votes (raft's
///   pre-vote): only with a majority of slots that have not heard a leader within their
///   heartbeat timeout does it raise its term and stand. A slot whose link was down keeps its
///   term meanwhile, and back, it follows the leader rather than deposing it with a term
///   nobody else had.
public struct Election: Sendable {
    public struct Config: Sendable {
        /// Every configured slot, this one's included.
        public var slots: [UInt8]
        public var me: UInt8
        public var heartbeatInterval: Duration
        /// Silence from the leader after which a follower stands for election; also how
        /// long a leader goes without hearing a majority before it steps down.
        public var heartbeatTimeout: Duration
        /// A candidate's wait for votes: `electionMin` plus a random part up to
        /// `electionSpread` for each configured slot, so more slots spread wider and split
        /// votes stay rare.
        public var electionMin: Duration
        public var electionSpread: Duration

        public init(slots: [UInt8], me: UInt8, heartbeatInterval: Duration = .milliseconds(100),
                    heartbeatTimeout: Duration = .seconds(2), electionMin: Duration = .milliseconds(250),
                    electionSpread: Duration = .milliseconds(50)) {
            self.slots = slots.sorted()
            self.me = me
            self.heartbeatInterval = heartbeatInterval
            self.heartbeatTimeout = heartbeatTimeout
            self.electionMin = electionMin
            self.electionSpread = electionSpread
        }

        /// Votes that elect: a strict majority, or one with one or two slots.
        public var needed: Int { slots.count <= 2 ? 1 : slots.count / 2 + 1 }
    }

    public enum Role: String, Sendable {
        case follower, candidate, leader
    }

    public enum Action: Equatable, Sendable {
        /// Make the term and the vote durable before anything after this.
        case persist(term: UInt64, votedTerm: UInt64, votedFor: UInt8)
        case send(QuorumMessage, to: UInt8)
        /// This slot leads `term`: fence, then serve.
        case elected(term: UInt64)
        /// This slot no longer leads `term`: stop serving.
        case steppedDown(term: UInt64)
        /// The leader of `term` is `slot` (a follower heard its heartbeat).
        case leaderIs(slot: UInt8, term: UInt64)
    }

    public let config: Config
    public private(set) var term: UInt64
    public private(set) var votedTerm: UInt64
    public private(set) var votedFor: UInt8
    public private(set) var role: Role = .follower
    /// The leader of the current term as far as this slot knows.
    public private(set) var leader: UInt8?
    private var votes: Set<UInt8> = []
    /// While asking for pre-votes (for `term + 1`): the slots that would vote.
    private var preVotes: Set<UInt8>?
    /// When this slot last heard its leader's heartbeat.
    private var leaderHeardAt: UInt64 = 0
    /// When a follower stands, a candidate gives up on its term, or a leader next beats.
    private var deadline: UInt64
    /// When the leader last heard each slot in its term.
    private var heard: [UInt8: UInt64] = [:]
    private var rng: UInt64

    /// Starts as a follower with what the slot's quorum block holds. It stands soon (one
    /// election timeout) rather than after a whole heartbeat timeout: a running leader's
    /// heartbeat arrives well before.
    public init(config: Config, term: UInt64, votedTerm: UInt64, votedFor: UInt8, now: UInt64, seed: UInt64) {
        self.config = config
        self.term = term
        self.votedTerm = votedTerm
        self.votedFor = votedFor
        rng = seed
        deadline = 0
        deadline = now + electionTimeout()
    }

    private static func nanos(_ d: Duration) -> UInt64 {
        UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
    }

    private mutating func random(below n: UInt64) -> UInt64 {
        guard n > 0 else { return 0 }
        // splitmix64
        rng &+= 0x9e37_79b9_7f4a_7c15
        var z = rng
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return (z ^ (z >> 31)) % n
    }

    private mutating func electionTimeout() -> UInt64 {
        Self.nanos(config.electionMin) + random(below: Self.nanos(config.electionSpread) * UInt64(max(config.slots.count, 1)))
    }

    private var others: [UInt8] { config.slots.filter { $0 != config.me } }

    /// As leader: the other slots heard from within `window` of `now` (each answers every
    /// heartbeat while it runs).
    public func heard(within window: UInt64, now: UInt64) -> [UInt8] {
        guard role == .leader else { return [] }
        return others.filter { (heard[$0] ?? 0) + window >= now }
    }

    /// When `tick` next has something to do.
    public var nextDeadline: UInt64 { deadline }

    /// Runs what is due at `now`.
    public mutating func tick(now: UInt64) -> [Action] {
        guard now >= deadline else { return [] }
        switch role {
        case .follower:
            // One or two slots: a single vote leads anyway, so asking first gains nothing.
            guard config.slots.count >= 3 else { return stand(now: now) }
            return askForPreVotes(now: now)
        case .candidate:
            // With two slots the other may be down: one vote leads once the wait is over.
            if config.slots.count == 2 && votes.count >= config.needed { return lead(now: now) }
            return stand(now: now)
        case .leader:
            var out: [Action] = []
            let window = Self.nanos(config.heartbeatTimeout)
            let alive = 1 + others.filter { (heard[$0] ?? 0) + window >= now }.count
            if alive < config.needed {
                out.append(.steppedDown(term: term))
                role = .follower
                leader = nil
                deadline = now + Self.nanos(config.heartbeatTimeout)
                return out
            }
            for s in others { out.append(.send(QuorumMessage(.heartbeat, term: term, from: config.me), to: s)) }
            deadline = now + Self.nanos(config.heartbeatInterval)
            return out
        }
    }

    private mutating func askForPreVotes(now: UInt64) -> [Action] {
        preVotes = [config.me]
        leader = nil
        deadline = now + electionTimeout()
        return others.map { .send(QuorumMessage(.preVote, term: term + 1, from: config.me), to: $0) }
    }

    /// Whether this slot follows a leader it heard within its heartbeat timeout (or leads).
    private func hasLeader(now: UInt64) -> Bool {
        role == .leader || (leader != nil && leaderHeardAt + Self.nanos(config.heartbeatTimeout) > now)
    }

    private mutating func stand(now: UInt64) -> [Action] {
        preVotes = nil
        term += 1
        votedTerm = term
        votedFor = config.me
        role = .candidate
        leader = nil
        votes = [config.me]
        deadline = now + electionTimeout()
        var out: [Action] = [.persist(term: term, votedTerm: votedTerm, votedFor: votedFor)]
        // A single slot leads on its own vote.
        if config.slots.count == 1 { return out + lead(now: now) }
        for s in others { out.append(.send(QuorumMessage(.requestVote, term: term, from: config.me), to: s)) }
        return out
    }

    private mutating func lead(now: UInt64) -> [Action] {
        role = .leader
        leader = config.me
        heard = [:]
        for s in others { heard[s] = now }
        var out: [Action] = [.elected(term: term)]
        for s in others { out.append(.send(QuorumMessage(.heartbeat, term: term, from: config.me), to: s)) }
        deadline = now + Self.nanos(config.heartbeatInterval)
        return out
    }

    /// Leaves the election (an unmount): a leader resigns, so the others elect at once.
    public mutating func resign(now: UInt64) -> [Action] {
        guard role == .leader else { return [] }
        role = .follower
        leader = nil
        deadline = UInt64.max
        return [.steppedDown(term: term)] + others.map { .send(QuorumMessage(.resignation, term: term, from: config.me), to: $0) }
    }

    public mutating func receive(_ m: QuorumMessage, now: UInt64) -> [Action] {
        guard m.from != config.me, config.slots.contains(m.from) else { return [] }
        // Pre-votes change no term.
        switch m.kind {
        case .preVote:
            if m.term <= term {
                // It missed a term: tell it, as any message of an older term is told.
                return [.send(QuorumMessage(.heartbeatReply, term: term, from: config.me), to: m.from)]
            }
            guard !hasLeader(now: now) else { return [] }
            return [.send(QuorumMessage(.preVoteGranted, term: m.term, from: config.me), to: m.from)]
        case .preVoteGranted:
            guard role == .follower, m.term == term + 1, preVotes != nil else { return [] }
            preVotes!.insert(m.from)
            return preVotes!.count >= config.needed ? stand(now: now) : []
        default:
            break
        }
        var out: [Action] = []
        if m.term < term {
            // A stale leader or candidate: tell it the term it missed.
            if m.kind != .heartbeatReply && m.kind != .vote {
                out.append(.send(QuorumMessage(.heartbeatReply, term: term, from: config.me), to: m.from))
            }
            return out
        }
        if m.term > term {
            if role == .leader { out.append(.steppedDown(term: term)) }
            term = m.term
            role = .follower
            leader = nil
            votes = []
            preVotes = nil
            out.append(.persist(term: term, votedTerm: votedTerm, votedFor: votedFor))
            deadline = now + Self.nanos(config.heartbeatTimeout)
        }
        switch m.kind {
        case .requestVote:
            let free = votedTerm < term || votedFor == m.from
            // Two slots, two candidates of one term: the higher slot gives its vote up.
            let yields = config.slots.count == 2 && role == .candidate && m.from < config.me
            guard role != .leader, free || yields else { return out }
            role = .follower
            votes = []
            votedTerm = term
            votedFor = m.from
            out.append(.persist(term: term, votedTerm: votedTerm, votedFor: votedFor))
            out.append(.send(QuorumMessage(.vote, term: term, from: config.me), to: m.from))
            deadline = now + Self.nanos(config.heartbeatTimeout)
        case .vote:
            guard role == .candidate else { return out }
            votes.insert(m.from)
            if votes.count >= config.needed && (config.slots.count != 2 || votes.count == 2) {
                out += lead(now: now)
            }
        case .heartbeat:
            if role == .leader {
                // Two leaders of one term (two slots, each on its own vote): the lower stays.
                guard m.from < config.me else { return out }
                out.append(.steppedDown(term: term))
            }
            role = .follower
            votes = []
            preVotes = nil
            if leader != m.from { out.append(.leaderIs(slot: m.from, term: term)) }
            leader = m.from
            leaderHeardAt = now
            deadline = now + Self.nanos(config.heartbeatTimeout)
            out.append(.send(QuorumMessage(.heartbeatReply, term: term, from: config.me), to: m.from))
        case .heartbeatReply:
            if role == .leader { heard[m.from] = now }
        case .resignation:
            guard leader == m.from else { return out }
            leader = nil
            role = .follower
            deadline = now + electionTimeout()
        case .preVote, .preVoteGranted:
            break
        }
        return out
    }
}
