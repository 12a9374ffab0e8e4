import Foundation
import ScoutFormat
@testable import ScoutStore
import Synchronization
import Testing

/// The claim that keeps a second host off a quorum slot (the same-machine locks are tested
/// through real mounts in the CLI tests).
@Suite struct MountClaimTests {
    let hostA = MountClaim.Identity(host: "host-a", bootID: "boot-a", pid: 100)
    let hostB = MountClaim.Identity(host: "host-b", bootID: "boot-b", pid: 200)

    func formatted() throws -> (MemoryBlockDevice, SuperBlock) {
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100), QuorumSlot(slot: 1, address: "127.0.0.2", port: 7100)]
        _ = try Store.format(meta: meta, data: data, quorumSlots: slots)
        return (meta, try Store.readSuperblock(meta))
    }

    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
        var sink: @Sendable (String) -> Void { { line in self.lines.withLock { $0.append(line) } } }
    }

    @Test func aLiveClaimOfAnotherHostRefusesAndNamesIt() throws {
        let (meta, sb) = try formatted()
        let a = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .milliseconds(100), log: { _ in })
        try a.start()
        defer { try? a.release() }
        let e = #expect(throws: StoreError.self) {
            _ = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostB, interval: .milliseconds(100), log: { _ in })
        }
        #expect(e?.code == .exists)
        #expect(e?.message.contains("host host-a (pid 100, quorum slot 0") == true)
        #expect(e?.message.contains("Unmount it there first") == true)
        #expect(try MountClaim.read(meta, fsid: sb.fsid, slot: 0).host == "host-a")
        // Another slot is another node of the cluster: it mounts beside the live claim.
        let b = try MountClaim(meta: meta, superblock: sb, slot: 1, identity: hostB, interval: .milliseconds(100), log: { _ in })
        #expect(try MountClaim.read(meta, fsid: sb.fsid, slot: 1).host == "host-b")
        try b.release()
    }

    @Test func aLiveClaimKeepsMkfsOff() throws {
        let (meta, sb) = try formatted()
        let a = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .milliseconds(100), log: { _ in })
        try a.start()
        defer { try? a.release() }
        #expect(throws: StoreError.self) { try MountClaim.refuseWhileClaimed(meta: meta, superblock: sb, identity: hostB) { _ in } }
        try a.release()
        try MountClaim.refuseWhileClaimed(meta: meta, superblock: sb, identity: hostB) { _ in }
    }

    @Test func anUnreadableQuorumBlockThatNobodyRewritesDoesNotBlockTheMount() throws {
        let (meta, sb) = try formatted()
        let off = Layout.quorumSmallBlkno(slot: 1) * UInt64(Layout.smallBlockSize) + 200
        try meta.write(at: off, [0xde, 0xad])
        let log = Lines()
        let c = try MountClaim(meta: meta, superblock: sb, slot: 1, identity: hostB, interval: .milliseconds(100), log: log.sink)
        #expect(log.all.contains { $0.contains("quorum block of slot 1") && $0.contains("no mount holds that slot") }, "\(log.all)")
        try c.release()
    }

    @Test func aClaimWhoseHeartbeatStoppedIsTakenOver() throws {
        let (meta, sb) = try formatted()
        // Written but never beating: its host died right after mounting.
        _ = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .milliseconds(100), log: { _ in })
        let log = Lines()
        let b = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostB, interval: .milliseconds(100), log: log.sink)
        #expect(log.all.contains { $0.contains("host-a") && $0.contains("stale") })
        #expect(try MountClaim.read(meta, fsid: sb.fsid, slot: 0).host == "host-b")
        try b.release()
    }

    @Test func aClaimOfThisHostIsStaleAtOnce() throws {
        let (meta, sb) = try formatted()
        _ = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .seconds(10), log: { _ in })
        let log = Lines()
        let start = Date()
        let again = MountClaim.Identity(host: "host-a", bootID: "boot-a", pid: 101)
        let c = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: again, interval: .seconds(10), log: log.sink)
        // No wait for a 10 s heartbeat: the machine lock already says nobody here holds it.
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(log.all.contains { $0.contains("pid 100 on this host is stale") })
        #expect(c.block.pid == 101)
    }

    @Test func aReleasedClaimLetsTheNextHostInWithoutWaiting() throws {
        let (meta, sb) = try formatted()
        let a = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .seconds(10), log: { _ in })
        try a.start()
        try a.release()
        #expect(try MountClaim.read(meta, fsid: sb.fsid, slot: 0).state == .unclaimed)
        let start = Date()
        _ = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostB, interval: .seconds(10), log: { _ in })
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test func theHeartbeatAdvances() throws {
        let (meta, sb) = try formatted()
        let a = try MountClaim(meta: meta, superblock: sb, slot: 0, identity: hostA, interval: .milliseconds(50), log: { _ in })
        let first = try MountClaim.read(meta, fsid: sb.fsid, slot: 0).heartbeat
        try a.start()
        usleep(400_000)
        let later = try MountClaim.read(meta, fsid: sb.fsid, slot: 0).heartbeat
        try a.release()
        #expect(later >= first + 3)
    }
}

extension MountClaimTests {
    /// A remount keeps the slot's term, vote and elected event; a leadership the last mount
    /// left unstopped ended with that mount's process (the new mount holds the slot), so it
    /// is recorded as stopped: the next leader must not fence the slot by the pid recorded
    /// now, the new mount's.
    @Test func aRemountKeepsTheSlotsTermVoteAndLeadership() throws {
        let (meta, sb) = try formatted()
        let a = try MountClaim(meta: meta, superblock: sb, slot: 1, identity: hostA, interval: .milliseconds(100), log: { _ in })
        try a.update {
            $0.term = 6
            $0.votedTerm = 6
            $0.votedFor = 1
            $0.elected = .init(term: 6, atNanos: 1)
        }
        // A heartbeat after the update writes the updated block, never an older copy.
        try a.start()
        Thread.sleep(forTimeInterval: 0.25)
        #expect(try MountClaim.read(meta, fsid: sb.fsid, slot: 1).term == 6)
        try a.release()
        let said = BlockingMutex<[String]>([])
        let again = try MountClaim(meta: meta, superblock: sb, slot: 1, identity: hostB, interval: .milliseconds(100),
                                   log: { line in said.withLock { $0.append(line) } })
        let b = again.block
        #expect(b.term == 6 && b.votedTerm == 6 && b.votedFor == 1 && b.elected.term == 6)
        #expect(b.stopped.term == 6 && !b.mayServe)
        #expect(said.withLock { $0 }.contains { $0.contains("led in term 6") && $0.contains("recorded as stopped") })
        #expect(b.host == "host-b" && b.state == .mounted)
        try again.release()
    }
}
