import Foundation
import ScoutFormat
@testable import ScoutServer
import ScoutTestSupport
import Synchronization
import Testing

/// What a server does with the nodes it must settle with: those that come back keep
/// everything, those that do not are fenced before anything of theirs is reclaimed.
@Suite struct ClientRecoveryTests {
    final class Agent: FenceAgent {
        let fenced = Mutex<[UInt64]>([])
        let failing = Mutex<Set<UInt64>>([])
        func fence(_ r: FenceRequest) throws(FenceError) {
            if failing.withLock({ $0.contains(r.rid) }) { throw FenceError("cannot reach \(r.rid)") }
            fenced.withLock { $0.append(r.rid) }
        }
    }

    func node(_ rid: UInt64) -> MountedClient {
        MountedClient(rid: rid, slot: nil, pid: 100 + UInt32(rid), mountedAt: 1, host: "h", bootID: "b", address: "")
    }

    func make(_ agent: Agent, timeout: Duration = .milliseconds(300)) -> (ClientRecovery, Mutex<[UInt64]>) {
        let reclaimed = Mutex<[UInt64]>([])
        let r = ClientRecovery(fencer: Fencer(agent: agent, attempts: 1, retryDelay: .milliseconds(1), log: { _ in }), timeout: timeout,
                               retryInterval: .milliseconds(100), reclaim: { c in reclaimed.withLock { $0.append(c.rid) } }, log: { _ in })
        return (r, reclaimed)
    }

    @Test func nodesThatComeBackAreKeptAndTheOthersFencedThenReclaimed() throws {
        let agent = Agent()
        let (r, reclaimed) = make(agent)
        try r.start()
        defer { r.stop() }
        r.expect([node(1), node(2), node(3)]) { $0.rid == 3 }
        #expect(r.join(node(1), rejoin: true))
        // Gone for certain: given up at once, without waiting out the timeout.
        #expect(eventually(within: 0.2) { reclaimed.withLock { $0 } == [3] })
        #expect(eventually(within: 1) { r.refuses(3) } && !r.refuses(1))
        #expect(eventually(within: 3) { reclaimed.withLock { $0 }.sorted() == [2, 3] })
        #expect(agent.fenced.withLock { $0 }.sorted() == [2, 3])
        #expect(r.pending.isEmpty)
        // Too late: told to remount, and nothing it sends is taken.
        #expect(!r.join(node(2), rejoin: true))
        #expect(r.refuses(2))
        // A new mount of that id starts afresh.
        #expect(r.join(node(2), rejoin: false))
        #expect(!r.refuses(2))
    }

    @Test func aFailedFenceReclaimsNothingAndIsTriedAgain() throws {
        let agent = Agent()
        agent.failing.withLock { $0 = [5] }
        let (r, reclaimed) = make(agent, timeout: .milliseconds(50))
        try r.start()
        defer { r.stop() }
        r.lost(node(5))
        usleep(400_000)
        #expect(reclaimed.withLock { $0 }.isEmpty)
        #expect(r.pending == [5])
        #expect(r.statistics.fenceFailures >= 2)
        agent.failing.withLock { $0 = [] }
        #expect(eventually(within: 3) { reclaimed.withLock { $0 } == [5] })
    }

    @Test func aNodeThatLeavesIsNotWaitedFor() throws {
        let agent = Agent()
        let (r, reclaimed) = make(agent, timeout: .milliseconds(100))
        try r.start()
        defer { r.stop() }
        r.expect([node(7)])
        r.left(7)
        usleep(300_000)
        #expect(reclaimed.withLock { $0 }.isEmpty && agent.fenced.withLock { $0 }.isEmpty)
        // Once stopped (its server ends), nothing more is given up.
        r.stop()
        #expect(!r.lost(node(8)))
    }
}
