#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
public import ScoutStore

/// Fencing: before a new server reclaims anything of a mount the cluster lost — a previous
/// leader, a client that did not come back — that mount must be known to write the shared
/// devices no more. An agent does it and reports success; without success nothing of the
/// mount is reclaimed, and the server says so and tries again (the original's
/// `scoutfs-fenced` with its fence scripts).

/// The mount to fence, as the cluster recorded it.
public struct FenceRequest: Sendable, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable {
        /// A slot elected before this leader whose server did not stop cleanly.
        case quorumLeader = "quorum_block_leader"
        /// A client that did not come back to a new server in time.
        case clientRecovery = "client_recovery"
    }

    public var rid: UInt64
    public var slot: Int?
    /// Where it runs: host name and kernel boot id, and the daemon's pid there.
    public var host: String
    public var bootID: String
    public var pid: UInt32
    /// Unix seconds the mount began; a process with that pid started later is another one.
    public var mountedAt: Int64
    /// Its address, for agents that fence by network (a switch port, a power controller).
    public var address: String
    public var reason: Reason

    public init(rid: UInt64, slot: Int?, host: String, bootID: String, pid: UInt32, mountedAt: Int64, address: String, reason: Reason) {
        self.rid = rid
        self.slot = slot
        self.host = host
        self.bootID = bootID
        self.pid = pid
        self.mountedAt = mountedAt
        self.address = address
        self.reason = reason
    }

    /// A node the mounted-clients tree records, fenced so that what it left is reclaimed.
    public init(recovering c: MountedClient) {
        self.init(rid: c.rid, slot: c.slot, host: c.host, bootID: c.bootID, pid: c.pid, mountedAt: c.mountedAt,
                  address: c.address, reason: .clientRecovery)
    }

    /// The request for a quorum slot from its quorum block.
    public init(slot: Int, block b: QuorumBlock, rid: UInt64, address: String, reason: Reason) {
        self.init(rid: rid, slot: slot, host: b.host, bootID: b.bootID, pid: b.pid, mountedAt: b.mountedAt, address: address, reason: reason)
    }

    public var description: String {
        "client \(String(rid, radix: 16))\(slot.map { " (quorum slot \($0))" } ?? "") on host \(host) pid \(pid) [\(reason.rawValue)]"
    }
}

public struct FenceError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Makes a mount stop writing; returns only once it has (throws otherwise).
public protocol FenceAgent: Sendable {
    func fence(_ request: FenceRequest) throws(FenceError)
}

/// The default agent, for mounts on this machine (tests, a one-host cluster): it stops the
/// recorded daemon with SIGKILL and waits until the process is gone. A mount on another
/// machine it cannot fence, and says to configure an agent that can.
public struct LocalFenceAgent: FenceAgent {
    public var host: String
    public var bootID: String
    /// How long a killed process may take to be gone (its mount's unmount by the kernel).
    public var exitWait: Duration

    public init(identity: MountClaim.Identity = .current, exitWait: Duration = .seconds(10)) {
        host = identity.host
        bootID = identity.bootID
        self.exitWait = exitWait
    }

    public func fence(_ r: FenceRequest) throws(FenceError) {
        guard r.host == host, r.bootID == bootID else {
            if r.host == host {
                // This machine rebooted since: every process of that boot is gone.
                return
            }
            throw FenceError("\(r) runs on another machine, which the built-in agent cannot fence; give the mounts a fence agent (--fence-agent PATH) that can, e.g. by power or by the network")
        }
        guard r.pid > 0 else { throw FenceError("\(r): no pid recorded, so the built-in agent cannot tell which process to stop") }
        let pid = pid_t(r.pid)
        guard Self.isSameProcess(pid, mountedAt: r.mountedAt) else { return }
        if kill(pid, SIGKILL) != 0 && errno != ESRCH {
            throw FenceError("stopping \(r): kill failed: \(String(cString: strerror(errno)))")
        }
        let deadline = ContinuousClock.now + exitWait
        while Self.isSameProcess(pid, mountedAt: r.mountedAt) {
            if ContinuousClock.now > deadline {
                throw FenceError("\(r) was sent SIGKILL but has not exited after \(exitWait) (stuck in the kernel?)")
            }
            usleep(10_000)
        }
    }

    /// Whether the mount `r` names is gone for certain without fencing it: its process on
    /// this machine has ended, or this machine rebooted since. A mount elsewhere is not known.
    public func isGone(_ r: FenceRequest) -> Bool {
        guard r.host == host else { return false }
        guard r.bootID == bootID else { return true }
        return r.pid > 0 && !Self.isSameProcess(pid_t(r.pid), mountedAt: r.mountedAt)
    }

    /// Whether `pid` is alive (not a zombie) and began no later than `mountedAt` (a pid reused
    /// by a later process is not the mount's).
    static func isSameProcess(_ pid: pid_t, mountedAt: Int64) -> Bool {
        guard let stat = readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        // Fields after the command name: state is the 3rd field, start time the 22nd.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X", let ticks = Int64(fields[19]) else { return false }
        guard let btimeLine = readText("/proc/stat")?.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
              let btime = Int64(btimeLine.dropFirst(6).trimmingPrefix(" ")) else { return true }
        let hz = Int64(sysconf(Int32(_SC_CLK_TCK)))
        let started = btime + ticks / max(hz, 1)
        // Seconds are coarse on both sides: a second of slack.
        return started <= mountedAt + 1
    }

    static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An agent that runs a program: `path` with the request in its environment
/// (`SCOUTFS_FENCED_REQ_RID`, `_IP`, `_HOST`, `_BOOT_ID`, `_PID`, `_SLOT`, `_REASON`, as the
/// original's `scoutfs-fenced` passes the first two). Exit status 0 means fenced; anything
/// else, or no exit within `timeout` (then it is killed), means not.
public struct ScriptFenceAgent: FenceAgent {
    public var path: String
    public var timeout: Duration

    public init(path: String, timeout: Duration = .seconds(30)) {
        self.path = path
        self.timeout = timeout
    }

    public func fence(_ r: FenceRequest) throws(FenceError) {
        let env = [
            "SCOUTFS_FENCED_REQ_RID=\(String(r.rid, radix: 16))",
            "SCOUTFS_FENCED_REQ_IP=\(r.address)",
            "SCOUTFS_FENCED_REQ_HOST=\(r.host)",
            "SCOUTFS_FENCED_REQ_BOOT_ID=\(r.bootID)",
            "SCOUTFS_FENCED_REQ_PID=\(r.pid)",
            "SCOUTFS_FENCED_REQ_SLOT=\(r.slot.map(String.init) ?? "")",
            "SCOUTFS_FENCED_REQ_REASON=\(r.reason.rawValue)",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        let rc = posix_spawn(&pid, path, nil, nil, argv, envp)
        guard rc == 0 else {
            throw FenceError("fence agent \(path) for \(r) did not start: \(String(cString: strerror(rc)))")
        }
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let w = waitpid(pid, &status, WNOHANG)
            if w == pid { break }
            if w < 0 && errno != EINTR { throw FenceError("fence agent \(path) for \(r): waitpid failed: \(String(cString: strerror(errno)))") }
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw FenceError("fence agent \(path) for \(r) did not finish within \(timeout); it was killed")
            }
            usleep(10_000)
        }
        // WIFEXITED / WEXITSTATUS, which Swift does not import.
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        guard exited, code == 0 else {
            throw FenceError("fence agent \(path) for \(r) failed (\(exited ? "exit status \(code)" : "killed by signal \(status & 0x7f)"))")
        }
    }
}

/// Runs an agent over every request, trying each again (1 s apart) until it succeeds or
/// `attempts` are used, with a log line for each failure; the requests fenced.
public struct Fencer: Sendable {
    public var agent: any FenceAgent
    public var attempts: Int
    public var retryDelay: Duration
    let log: @Sendable (String) -> Void

    public init(agent: any FenceAgent, attempts: Int = 3, retryDelay: Duration = .seconds(1), log: @escaping @Sendable (String) -> Void) {
        self.agent = agent
        self.attempts = max(attempts, 1)
        self.retryDelay = retryDelay
        self.log = log
    }

    public func fence(_ requests: [FenceRequest]) -> [FenceRequest] {
        var done: [FenceRequest] = []
        for r in requests {
            for attempt in 1...attempts {
                do {
                    try agent.fence(r)
                    log("fenced \(r)")
                    done.append(r)
                    break
                } catch {
                    log("error: fencing \(r) failed (attempt \(attempt) of \(attempts)): \(error)\(attempt < attempts ? "; trying again" : "; nothing of it is reclaimed")")
                    if attempt < attempts {
                        usleep(UInt32(retryDelay.components.seconds * 1_000_000 + retryDelay.components.attoseconds / 1_000_000_000_000))
                    }
                }
            }
        }
        return done
    }
}
