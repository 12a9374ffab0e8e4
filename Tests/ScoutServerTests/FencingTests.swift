import Foundation
import ScoutFormat
@testable import ScoutServer
import ScoutStore
import Synchronization
import Testing

@Suite struct FencingTests {
    let here = MountClaim.Identity.current

    func request(pid: Int32, mountedAt: Int64 = Int64(Date().timeIntervalSince1970), host: String? = nil, bootID: String? = nil) -> FenceRequest {
        FenceRequest(rid: 0x2a, slot: 1, host: host ?? here.host, bootID: bootID ?? here.bootID, pid: UInt32(pid),
                     mountedAt: mountedAt, address: "127.0.0.1", reason: .quorumLeader)
    }

    func sleeper() throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sleep")
        p.arguments = ["60"]
        try p.run()
        return p
    }

    @Test func theLocalAgentStopsTheRecordedProcessAndWaitsForIt() throws {
        let p = try sleeper()
        try LocalFenceAgent().fence(request(pid: p.processIdentifier))
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal)
        #expect(p.terminationStatus == SIGKILL)
    }

    @Test func aPidThatStartedAfterTheMountIsAnotherProcessAndIsLeftAlone() throws {
        let p = try sleeper()
        defer { p.terminate() }
        // The mount began an hour ago: whatever runs under its pid now is not it.
        try LocalFenceAgent().fence(request(pid: p.processIdentifier, mountedAt: Int64(Date().timeIntervalSince1970) - 3600))
        #expect(p.isRunning)
    }

    @Test func theLocalAgentCannotFenceAnotherMachineButKnowsARebootDid() throws {
        let e = #expect(throws: FenceError.self) { try LocalFenceAgent().fence(request(pid: 1, host: "elsewhere", bootID: "x")) }
        #expect(e?.description.contains("--fence-agent") == true)
        // This host under another boot id: it rebooted, so that process is gone.
        try LocalFenceAgent().fence(request(pid: 1, bootID: "an-earlier-boot"))
    }

    func script(_ body: String) throws -> String {
        let path = NSTemporaryDirectory() + "fence-\(UInt32.random(in: 0 ... .max)).sh"
        try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    @Test func aScriptAgentGetsTheRequestAndItsStatusDecides() throws {
        let out = NSTemporaryDirectory() + "fence-out-\(UInt32.random(in: 0 ... .max))"
        defer { unlink(out) }
        let ok = try script("env | grep ^SCOUTFS_FENCED_ | sort > \(out)")
        defer { unlink(ok) }
        try ScriptFenceAgent(path: ok).fence(request(pid: 4242))
        let env = try String(contentsOfFile: out, encoding: .utf8)
        #expect(env.contains("SCOUTFS_FENCED_REQ_RID=2a"))
        #expect(env.contains("SCOUTFS_FENCED_REQ_PID=4242"))
        #expect(env.contains("SCOUTFS_FENCED_REQ_IP=127.0.0.1"))
        #expect(env.contains("SCOUTFS_FENCED_REQ_SLOT=1"))
        #expect(env.contains("SCOUTFS_FENCED_REQ_REASON=quorum_block_leader"))

        let fails = try script("exit 3")
        defer { unlink(fails) }
        let e = #expect(throws: FenceError.self) { try ScriptFenceAgent(path: fails).fence(request(pid: 1)) }
        #expect(e?.description.contains("exit status 3") == true)

        let missing = #expect(throws: FenceError.self) { try ScriptFenceAgent(path: "/nonexistent/agent").fence(request(pid: 1)) }
        #expect(missing?.description.contains("did not start") == true)
    }

    @Test func aHangingScriptIsKilledAtItsBound() throws {
        let hangs = try script("exec sleep 30")
        defer { unlink(hangs) }
        let began = ContinuousClock.now
        let e = #expect(throws: FenceError.self) { try ScriptFenceAgent(path: hangs, timeout: .milliseconds(300)).fence(request(pid: 1)) }
        #expect(e?.description.contains("did not finish within") == true)
        #expect(ContinuousClock.now - began < .seconds(5))
    }

    final class Flaky: FenceAgent {
        let failures: Int
        let calls = Atomic<Int>(0)
        init(failures: Int) { self.failures = failures }
        func fence(_ request: FenceRequest) throws(FenceError) {
            if calls.add(1, ordering: .relaxed).newValue <= failures { throw FenceError("not yet") }
        }
    }

    @Test func theFencerTriesAgainAndReportsOnlyWhatWasFenced() {
        let lines = Mutex<[String]>([])
        let log: @Sendable (String) -> Void = { l in lines.withLock { $0.append(l) } }
        let r = request(pid: 1)
        #expect(Fencer(agent: Flaky(failures: 2), attempts: 3, retryDelay: .milliseconds(1), log: log).fence([r]) == [r])
        #expect(Fencer(agent: Flaky(failures: 5), attempts: 3, retryDelay: .milliseconds(1), log: log).fence([r]) == [])
        #expect(lines.withLock { $0 }.contains { $0.contains("nothing of it is reclaimed") })
    }
}
