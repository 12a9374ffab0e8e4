import Foundation
import ScoutFormat
import ScoutNet
@testable import ScoutServer
import ScoutStore
import ScoutTestSupport
import Synchronization
import Testing

/// The election over real UDP on loopback, with the slots' quorum blocks on one device.
@Suite(.serialized) struct QuorumMemberTests {
    final class Seen: Sendable {
        let events = BlockingMutex<[String]>([])
        var all: [String] { events.withLock { $0 } }
        func add(_ s: String) { events.withLock { $0.append(s) } }
    }

    struct Slots {
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        let sb: SuperBlock
        let key = ClusterKey.generate()
        var claims: [MountClaim] = []
        var members: [QuorumMember] = []
        let seen = Seen()

        init(_ n: Int) throws {
            let first = try TestPorts.block(n)
            let slots = (0..<n).map { QuorumSlot(slot: UInt8($0), address: "127.0.0.1", port: UInt16(first + $0)) }
            _ = try Store.format(meta: meta, data: MemoryBlockDevice(name: "data", size: 256 << 20), quorumSlots: slots)
            sb = try Store.readSuperblock(meta)
            for s in 0..<n {
                let claim = try MountClaim(meta: meta, superblock: sb, slot: s, identity: .init(host: "h\(s)", bootID: "b\(s)", pid: UInt32(100 + s)),
                                           interval: .milliseconds(200), log: { _ in })
                claims.append(claim)
                let seen = seen
                let m = try QuorumMember(claim: claim, superblock: sb, key: key,
                                         config: Election.Config(slots: slots.map(\.slot), me: UInt8(s), heartbeatTimeout: .milliseconds(800)),
                                         handlers: .init(onElected: { seen.add("elected \(s) \($0)") },
                                                         onSteppedDown: { seen.add("down \(s) \($0)") }),
                                         log: { _ in })
                members.append(m)
            }
        }

        func start() throws { for m in members { try m.start() } }
        func stop() { for m in members { m.stop() } }

        /// The slot every running member agrees leads, if they do.
        func agreed(among live: [Int]) -> Int? {
            let leaders = live.filter { members[$0].role == .leader }
            guard leaders.count == 1, let l = leaders.first else { return nil }
            return live.allSatisfy({ members[$0].leader == UInt8(l) }) ? l : nil
        }
    }

    @Test func threeSlotsElectOneLeaderThatTheirBlocksName() throws {
        let s = try Slots(3)
        try s.start()
        defer { s.stop() }
        #expect(eventually(within: 5) { s.agreed(among: [0, 1, 2]) != nil })
        let leader = try #require(s.agreed(among: [0, 1, 2]))
        let term = s.members[leader].term
        let blocks = MountClaim.readAll(s.meta, superblock: s.sb)
        #expect(QuorumBlock.leader(of: blocks)?.slot == leader)
        #expect(QuorumBlock.leader(of: blocks)?.term == term)
        // Every slot recorded the term it reached; no slot voted beyond it.
        for b in blocks { #expect(b.block.term <= term && b.block.votedTerm <= b.block.term) }
        #expect(s.seen.all.contains("elected \(leader) \(term)"))
    }

    @Test func aLeaderThatLeavesIsFollowedAtOnceInANewTerm() throws {
        let s = try Slots(3)
        try s.start()
        #expect(eventually(within: 5) { s.agreed(among: [0, 1, 2]) != nil })
        let first = try #require(s.agreed(among: [0, 1, 2]))
        let term = s.members[first].term
        let began = ContinuousClock.now
        s.members[first].stop()
        #expect(s.seen.all.contains("down \(first) \(term)"))
        let rest = [0, 1, 2].filter { $0 != first }
        #expect(eventually(within: 5) { s.agreed(among: rest) != nil })
        // A resignation does not wait out the 800 ms heartbeat timeout.
        #expect(ContinuousClock.now - began < .milliseconds(800) + .milliseconds(400))
        let second = try #require(s.agreed(among: rest))
        #expect(s.members[second].term > term)
        for m in rest { s.members[m].stop() }
    }

    @Test func messagesWithoutTheClusterKeyAreDroppedAndChangeNothing() throws {
        let s = try Slots(1)
        try s.start()
        defer { s.stop() }
        #expect(eventually(within: 5) { s.members[0].role == .leader })
        let term = s.members[0].term
        // A host without the key stands in a far higher term, as slot 0's only other peer.
        let stranger = try QuorumTransport(host: "127.0.0.1", port: 0, fsid: s.sb.fsid, key: .generate(),
                                           peers: [0: ("127.0.0.1", s.members[0].port)], log: { _ in }) { _ in }
        defer { stranger.close() }
        for _ in 0..<5 { stranger.send(QuorumMessage(.requestVote, term: term + 100, from: 3), to: 0) }
        #expect(eventually(within: 5) { s.members[0].refusedMessages >= 5 })
        #expect(s.members[0].term == term)
        #expect(s.members[0].role == .leader)
        #expect(MountClaim.readAll(s.meta, superblock: s.sb)[0].block.votedTerm == term)
    }
}
