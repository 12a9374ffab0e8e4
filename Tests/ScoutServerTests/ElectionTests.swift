import Testing
import ScoutFormat
@testable import ScoutServer

/// Slots of one election on a simulated network: messages take `delay`, links can be cut,
/// slots can die (they stop and lose nothing persisted). Checks raft's safety on every step:
/// at most one slot elected per term, and a slot never votes twice in a term.
private struct Cluster {
    var slots: [UInt8: Election] = [:]
    var persisted: [UInt8: (term: UInt64, votedTerm: UInt64, votedFor: UInt8)] = [:]
    var dead: Set<UInt8> = []
    var cut: Set<UInt8> = []  // slots whose every link is down
    var now: UInt64 = 0
    var inFlight: [(at: UInt64, to: UInt8, m: QuorumMessage)] = []
    var electedIn: [UInt64: UInt8] = [:]
    var leading: Set<UInt8> = []
    var votesGiven: [UInt64: [UInt8: UInt8]] = [:]
    let delay: UInt64 = 1_000_000  // 1 ms
    let config: (UInt8) -> Election.Config

    init(_ n: Int, timeout: Duration = .seconds(2)) {
        let all = (0..<UInt8(n)).map { $0 }
        config = { Election.Config(slots: all, me: $0, heartbeatTimeout: timeout) }
        for s in all { start(s) }
    }

    mutating func start(_ s: UInt8) {
        let p = persisted[s] ?? (0, 0, 0)
        slots[s] = Election(config: config(s), term: p.term, votedTerm: p.votedTerm, votedFor: p.votedFor, now: now, seed: UInt64(s) &* 7919 &+ now)
        dead.remove(s)
    }

    mutating func kill(_ s: UInt8) {
        dead.insert(s)
        leading.remove(s)
        slots[s] = nil
    }

    mutating func apply(_ s: UInt8, _ actions: [Election.Action]) {
        for a in actions {
            switch a {
            case .persist(let t, let vt, let vf):
                let old = persisted[s]
                #expect(old == nil || old!.term <= t, "slot \(s)'s term went back")
                persisted[s] = (t, vt, vf)
            case .send(let m, let to):
                if m.kind == .vote {
                    let prior = votesGiven[m.term, default: [:]][s]
                    #expect(prior == nil || prior == to, "slot \(s) voted twice in term \(m.term)")
                    votesGiven[m.term, default: [:]][s] = to
                    #expect(persisted[s]?.votedTerm == m.term && persisted[s]?.votedFor == to, "vote sent before it was persisted")
                }
                if !cut.contains(s) && !cut.contains(to) { inFlight.append((now + delay, to, m)) }
            case .elected(let t):
                #expect(electedIn[t] == nil || electedIn[t] == s, "two leaders in term \(t)")
                electedIn[t] = s
                leading.insert(s)
            case .steppedDown:
                leading.remove(s)
            case .leaderIs:
                break
            }
        }
    }

    /// Runs the cluster for `duration` in steps of 1 ms.
    mutating func run(_ duration: Duration) {
        let end = now + UInt64(duration.components.seconds) * 1_000_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000)
        while now < end {
            now += 1_000_000
            let due = inFlight.filter { $0.at <= now }
            inFlight.removeAll { $0.at <= now }
            for d in due where !dead.contains(d.to) {
                apply(d.to, slots[d.to]!.receive(d.m, now: now))
            }
            for s in slots.keys.sorted() where !dead.contains(s) {
                apply(s, slots[s]!.tick(now: now))
            }
        }
    }

    /// The single leader that every live, connected slot follows, if there is one.
    var agreedLeader: UInt8? {
        let live = slots.keys.filter { !dead.contains($0) && !cut.contains($0) }
        let leaders = live.filter { slots[$0]!.role == .leader }
        guard leaders.count == 1, let l = leaders.first else { return nil }
        return live.allSatisfy { slots[$0]!.leader == l } ? l : nil
    }
}

@Suite struct ElectionTests {
    @Test(arguments: [1, 2, 3, 5])
    func slotsElectOneLeaderWithinASecond(n: Int) {
        var c = Cluster(n)
        c.run(.seconds(1))
        #expect(c.agreedLeader != nil)
        #expect(c.leading.count == 1)
    }

    @Test func theLeadersDeathElectsAnotherInANewTerm() {
        var c = Cluster(3)
        c.run(.seconds(1))
        let first = try! #require(c.agreedLeader)
        let term = c.slots[first]!.term
        c.kill(first)
        c.run(.seconds(3))
        let second = try! #require(c.agreedLeader)
        #expect(second != first)
        #expect(c.slots[second]!.term > term)
        // Back again, it follows and leaves the new leader be.
        c.start(first)
        c.run(.seconds(2))
        #expect(c.agreedLeader == second)
        #expect(c.slots[first]!.leader == second)
    }

    @Test func noLeaderWithoutAMajorityAndACutOffLeaderStepsDown() {
        var c = Cluster(3)
        c.run(.seconds(1))
        let first = try! #require(c.agreedLeader)
        // Cut the leader off: the other two elect one of them; the old leader, hearing no
        // majority, stops leading within its heartbeat timeout.
        c.cut.insert(first)
        c.run(.seconds(5))
        #expect(c.slots[first]!.role != .leader)
        let second = try! #require(c.agreedLeader)
        #expect(second != first)
        // Of the two left, one dies: one slot of three elects nobody.
        c.kill(second)
        c.run(.seconds(5))
        #expect(c.leading.isEmpty)
        // The cut slot comes back: two of three elect again, in a higher term.
        let before = c.electedIn.keys.max()!
        c.cut.remove(first)
        c.run(.seconds(5))
        #expect(c.agreedLeader != nil)
        #expect(c.electedIn.keys.max()! > before)
    }

    /// A follower cut off for a while asks for pre-votes it never gets, so its term stays;
    /// back, it follows the leader: no new election, no server change.
    @Test(arguments: [3, 5])
    func aFollowerCutOffAndBackLeavesTheLeaderBe(n: Int) {
        var c = Cluster(n)
        c.run(.seconds(1))
        let leader = try! #require(c.agreedLeader)
        let term = c.slots[leader]!.term
        let follower = c.slots.keys.sorted().first { $0 != leader }!
        c.cut.insert(follower)
        c.run(.seconds(10))
        #expect(c.slots[follower]!.term == term, "the cut-off follower raised its term while it could reach no one")
        c.cut.remove(follower)
        c.run(.seconds(3))
        #expect(c.agreedLeader == leader)
        #expect(c.electedIn.keys.max() == term, "an election was held after the follower came back")
        #expect(c.slots[follower]!.leader == leader)
    }

    @Test func twoSlotsSurviveEitherDeathAndSettleOnOneLeader() {
        var c = Cluster(2)
        c.run(.seconds(1))
        let first = try! #require(c.agreedLeader)
        c.kill(first)
        c.run(.seconds(3))
        let other: UInt8 = first == 0 ? 1 : 0
        #expect(c.agreedLeader == other)
        c.start(first)
        c.run(.seconds(3))
        #expect(c.agreedLeader == other)
        #expect(c.leading == [other])
    }

    @Test func aResignationElectsAnotherAtOnce() {
        var c = Cluster(3)
        c.run(.seconds(1))
        let first = try! #require(c.agreedLeader)
        c.apply(first, c.slots[first]!.resign(now: c.now))
        c.kill(first)
        // Well within the 2 s heartbeat timeout.
        c.run(.milliseconds(800))
        let second = try! #require(c.agreedLeader)
        #expect(second != first)
    }

    @Test func aRestartedSlotKeepsItsTermAndVote() {
        var e = Election(config: .init(slots: [0, 1, 2], me: 1), term: 7, votedTerm: 7, votedFor: 2, now: 0, seed: 1)
        // It voted for 2 in term 7 before it restarted: 0 gets nothing in term 7.
        #expect(e.receive(QuorumMessage(.requestVote, term: 7, from: 0), now: 1).isEmpty)
        // A stale candidate hears the current term.
        #expect(e.receive(QuorumMessage(.requestVote, term: 5, from: 0), now: 2) == [.send(QuorumMessage(.heartbeatReply, term: 7, from: 1), to: 0)])
        // Messages from slots that are not configured, or claiming to be this one, are dropped.
        #expect(e.receive(QuorumMessage(.requestVote, term: 9, from: 4), now: 3).isEmpty)
        #expect(e.receive(QuorumMessage(.heartbeat, term: 9, from: 1), now: 3).isEmpty)
        #expect(e.term == 7)
    }

    @Test(arguments: 0..<20)
    func randomDeathsAndCutsNeverElectTwoLeadersInATerm(seed: UInt64) {
        var c = Cluster(5, timeout: .milliseconds(500))
        var rng = seed &+ 1
        func next(_ n: UInt64) -> UInt64 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            return (rng >> 33) % n
        }
        for _ in 0..<20 {
            let s = UInt8(next(5))
            switch next(4) {
            case 0: if !c.dead.contains(s) { c.kill(s) } else { c.start(s) }
            case 1: if c.cut.contains(s) { c.cut.remove(s) } else { c.cut.insert(s) }
            default: break
            }
            c.run(.milliseconds(Int64(100 + next(900))))
        }
        // Everyone back: one leader again.
        for s in c.dead { c.start(s) }
        c.cut = []
        c.run(.seconds(3))
        #expect(c.agreedLeader != nil)
    }
}
