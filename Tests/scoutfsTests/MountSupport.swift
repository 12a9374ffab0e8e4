import Foundation
import ScoutTestSupport
import Synchronization
import Testing

/// A filesystem on sparse device files, mounted through the real `scoutfs mount`.
final class TestMount {
    let dir: URL
    let meta: String
    let data: String
    let mnt: String
    let log: String
    /// The cluster key mkfs wrote, beside the devices.
    let key: String
    /// The port of slot 0's server; slot n's is `port + n` (a block of `TestPorts`, so that
    /// mounts of several tests at once do not meet).
    let port: Int
    private(set) var pid: Int32 = 0
    /// Further mounts of the same devices (nodes), by mount point: their daemons' pids.
    private(set) var nodes: [String: Int32] = [:]

    /// `address`: where the slots' servers listen (loopback unless a test made a network);
    /// `addresses`: each slot's own, by slot number, instead (a node per network namespace).
    init(metaSize: UInt64 = 2 << 30, dataSize: UInt64 = 4 << 30, slots: [Int] = [0], address: String = "127.0.0.1",
         addresses: [String]? = nil, mkfsArgs: [String] = []) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("scoutfs-mount-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        meta = dir.appendingPathComponent("meta").path
        data = dir.appendingPathComponent("data").path
        mnt = dir.appendingPathComponent("mnt").path
        log = dir.appendingPathComponent("log").path
        key = dir.appendingPathComponent("cluster.key").path
        port = try TestPorts.block((slots.max() ?? 0) + 1)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        for (path, size) in [(meta, metaSize), (data, dataSize)] { try Sys.sparseFile(path, size: size) }
        let mk = try CLI.run(["mkfs", "--cluster-key", key] + mkfsArgs + slots.flatMap { ["-Q", "\($0),\(addresses?[$0] ?? address),\(port + $0)"] } + [meta, data])
        try #require(mk.status == 0, "\(mk.stderr)")
    }

    /// `inNetwork`: the network namespace (`ip netns`) the daemon runs in.
    func mount(_ extra: [String] = [], inNetwork netns: String? = nil) throws {
        let r = try CLI.run(["mount", "--quorum-slot", "0", "--cluster-key", key, "--log", log] + extra + [meta, data, mnt], inNetwork: netns)
        try #require(r.status == 0, "mount failed: \(r.stderr)")
        pid = try Self.daemonPid(mnt)
    }

    static func daemonPid(_ mountpoint: String) throws -> Int32 {
        let st = try CLI.run(["status", "--json", mountpoint])
        let obj = try JSONSerialization.jsonObject(with: Data(st.stdout.utf8)) as? [String: Any]
        let pid = Int32(obj?["pid"] as? Int ?? 0)
        try #require(pid > 0)
        return pid
    }

    /// Mounts the devices again on `name` (a new directory beside the first mount point) as a
    /// node: of quorum slot `slot`, or a plain client; returns its mount point.
    @discardableResult
    func mountNode(_ name: String, slot: Int?, _ extra: [String] = [], inNetwork netns: String? = nil) throws -> String {
        let at = dir.appendingPathComponent(name).path
        try FileManager.default.createDirectory(atPath: at, withIntermediateDirectories: true)
        let r = try CLI.run(["mount"] + (slot.map { ["--quorum-slot", String($0)] } ?? []) + ["--cluster-key", key,
                            "--log", log + "-" + name] + extra + [meta, data, at], inNetwork: netns)
        try #require(r.status == 0, "mount of \(name) failed: \(r.stderr)")
        nodes[at] = try Self.daemonPid(at)
        return at
    }

    /// Mounts several nodes at once (quorum slots elect a server only once a majority of
    /// them is mounted, and each mount returns only when it has one); their mount points.
    /// `networks`: each node's network namespace.
    func mountNodes(_ specs: [(name: String, slot: Int?)], _ extra: [String] = [], networks: [String]? = nil) throws -> [String] {
        let ats = specs.map { dir.appendingPathComponent($0.name).path }
        for at in ats { try FileManager.default.createDirectory(atPath: at, withIntermediateDirectories: true) }
        let results = Mutex<[Int: CLI.Result]>([:])
        let threads = specs.enumerated().map { i, spec in
            ScoutTestSupport.Thread { [key, log, meta, data] in
                let r = try? CLI.run(["mount"] + (spec.slot.map { ["--quorum-slot", String($0)] } ?? []) + ["--cluster-key", key,
                                     "--log", log + "-" + spec.name] + extra + [meta, data, ats[i]], inNetwork: networks?[i])
                results.withLock { $0[i] = r }
            }
        }
        for t in threads { t.start() }
        for t in threads { t.join() }
        for (i, at) in ats.enumerated() {
            let r = results.withLock { $0[i] }
            try #require(r?.status == 0, "mount of \(specs[i].name) failed: \(r?.stderr ?? "no result")")
            nodes[at] = try Self.daemonPid(at)
        }
        return ats
    }

    /// Unmounts a node mounted with `mountNode`.
    func unmountNode(_ at: String) throws {
        let r = try CLI.run(["unmount", at])
        try #require(r.status == 0, "unmount of \(at) failed: \(r.stderr)\(r.stdout)")
        if let p = nodes.removeValue(forKey: at) { Sys.waitForExit(p) }
    }

    /// Kills the daemon of a node mounted with `mountNode` (SIGKILL: a crash) and clears its
    /// dead mount.
    func killNode(_ at: String) {
        guard let p = nodes.removeValue(forKey: at) else { return }
        kill(p, SIGKILL)
        Sys.waitForExit(p)
        _ = umount2(at, Int32(MNT_DETACH))
    }

    func unmount() throws {
        let r = try CLI.run(["unmount", mnt])
        try #require(r.status == 0, "unmount failed: \(r.stderr)\(r.stdout)")
    }

    /// Kills the daemon this test started (SIGKILL: a crash) and clears the dead mount.
    func crash() {
        kill(pid, SIGKILL)
        Sys.waitForExit(pid)
        _ = umount2(mnt, Int32(MNT_DETACH))
    }

    func check() throws -> CLI.Result { try CLI.run(["check", meta, data]) }

    func path(_ p: String) -> String { mnt + "/" + p }

    /// Unmounts if still mounted and removes the device files.
    func cleanup() {
        // All unmounted before any is killed: a server's daemon may serve on until the
        // other mounts have left (the last quorum mounts leave together).
        for (at, p) in nodes where Sys.isAlive(p) { _ = try? CLI.run(["unmount", "--timeout", "30", at]) }
        let deadline = Date().addingTimeInterval(20)
        while nodes.values.contains(where: { Sys.isAlive($0) }) && Date() < deadline { usleep(50_000) }
        for (at, p) in nodes {
            if Sys.isAlive(p) {
                kill(p, SIGKILL)
                Sys.waitForExit(p)
            }
            // A daemon that died leaves its mount behind, dead (ENOTCONN).
            _ = umount2(at, Int32(MNT_DETACH))
        }
        if pid > 0 && Sys.isAlive(pid) {
            _ = try? CLI.run(["unmount", mnt])
            if Sys.isAlive(pid) { crash() }
        }
        // Mounts a test made past `mount` (through the mount helper, a second mount point of
        // a mount) would outlive a failed test: what is still mounted here goes too, the
        // innermost first.
        for at in Sys.mountPoints(under: dir.path).reversed() {
            _ = try? CLI.run(["unmount", "--timeout", "30", at])
            _ = umount2(at, Int32(MNT_DETACH))
        }
        // SCOUTFS_TEST_KEEP keeps the devices and the daemons' logs for a look after a failure.
        if ProcessInfo.processInfo.environment["SCOUTFS_TEST_KEEP"] != nil {
            print("kept \(dir.path)")
        } else {
            try? FileManager.default.removeItem(at: dir)
        }
    }
}

/// Network namespaces made for a test and removed by it, one per node, joined by a bridge in
/// a namespace of its own (each node's veth pair has one end in its namespace and the other on
/// the bridge): node i at 10.201.N.(i+1).
final class TestNetwork {
    let names: [String]
    let hub: String
    let subnet = Int(getpid() % 200) + 20
    var address: [String] { names.indices.map { "10.201.\(subnet).\($0 + 1)" } }
    private var made = false

    init(nodes: Int = 2) throws {
        let tag = "sfs\(getpid())"
        names = (0..<nodes).map { tag + String(UnicodeScalar(UInt8(97 + $0))) }
        hub = tag + "hub"
        made = true
        try ip(["netns", "add", hub])
        try ip(["-n", hub, "link", "add", "br0", "type", "bridge"])
        try ip(["-n", hub, "link", "set", "br0", "up"])
        for (i, n) in names.enumerated() {
            try ip(["netns", "add", n])
            try ip(["link", "add", "veth\(i)", "netns", n, "type", "veth", "peer", "name", "port\(i)", "netns", hub])
            try ip(["-n", hub, "link", "set", "port\(i)", "master", "br0"])
            try ip(["-n", hub, "link", "set", "port\(i)", "up"])
            try ip(["-n", n, "addr", "add", address[i] + "/24", "dev", "veth\(i)"])
            try ip(["-n", n, "link", "set", "veth\(i)", "up"])
            try ip(["-n", n, "link", "set", "lo", "up"])
        }
    }

    /// Takes node `i`'s end of its link down or up again.
    func setLink(_ i: Int, up: Bool) throws {
        try ip(["-n", names[i], "link", "set", "veth\(i)", up ? "up" : "down"])
    }

    func remove() {
        guard made else { return }
        for n in names + [hub] { _ = try? CLI.runTool("/usr/sbin/ip", ["netns", "del", n]) }
        made = false
    }

    deinit { remove() }

    private func ip(_ args: [String]) throws {
        let r = try CLI.runTool("/usr/sbin/ip", args)
        try #require(r.status == 0, "ip \(args.joined(separator: " ")): \(r.stderr)")
    }
}

enum CLI {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The executable sits beside the test bundle in the build folder.
    static let binary: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("scoutfs").path
    }()

    static func run(_ args: [String]) throws -> Result {
        try runTool(binary, args)
    }

    /// Runs the CLI with its network namespace switched to `netns` (nothing else: its mounts
    /// stay in this mount namespace, where the test sees them).
    static func run(_ args: [String], inNetwork netns: String?) throws -> Result {
        guard let netns else { return try run(args) }
        return try runTool("/usr/bin/nsenter", ["--net=/run/netns/\(netns)", binary] + args)
    }

    static func runTool(_ tool: String, _ args: [String]) throws -> Result {
        try runToolWithEnvironment(tool, args, [:])
    }

    static func runToolWithEnvironment(_ tool: String, _ args: [String], _ env: [String: String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { _, new in new } }
        // stderr goes to a file so that a chatty child can never block on a full pipe while we
        // read its stdout.
        let errPath = FileManager.default.temporaryDirectory.appendingPathComponent("stderr-\(UUID().uuidString)").path
        guard FileManager.default.createFile(atPath: errPath, contents: nil) else {
            throw Sys.Failure(call: "create \(errPath)", errno: errno)
        }
        defer { try? FileManager.default.removeItem(atPath: errPath) }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let e = FileManager.default.contents(atPath: errPath) ?? Data()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

/// Thin throwing wrappers over the syscalls the tests drive the mount with.
enum Sys {
    /// Mount points at or below `path`, in the order the kernel lists them (field 5 of
    /// /proc/self/mountinfo).
    static func mountPoints(under path: String) -> [String] {
        guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return info.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            guard f.count > 4 else { return nil }
            let at = f[4].replacingOccurrences(of: "\\040", with: " ")
            return at == path || at.hasPrefix(path + "/") ? at : nil
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var call: String
        var errno: Int32
        var description: String { "\(call): \(String(cString: strerror(errno)))" }
    }

    /// GET `path` from an HTTP server on 127.0.0.1:`port`; the status line and the body.
    static func httpGet(port: Int, _ path: String) throws -> (status: String, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(call: "socket", errno: errno) }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw Failure(call: "connect to port \(port)", errno: errno) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        guard write(fd, request, request.count) == request.count else { throw Failure(call: "send", errno: errno) }
        var reply: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            reply += buf[0..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return (text, "") }
        let status = String(text[..<split.lowerBound].prefix { $0 != "\r\n" })
        return (status, String(text[split.upperBound...]))
    }

    /// A new sparse file of `size` bytes (a device file for mkfs).
    static func sparseFile(_ path: String, size: UInt64) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else {
            throw Failure(call: "create \(path)", errno: errno)
        }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.truncate(atOffset: size)
        try h.close()
    }

    @discardableResult
    static func check(_ rc: Int32, _ call: String) throws -> Int32 {
        if rc < 0 { throw Failure(call: call, errno: errno) }
        return rc
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], fsync doSync: Bool = false) throws {
        let fd = try check(open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o644), "open \(path)")
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 { throw Failure(call: "write \(path)", errno: errno) }
            done += n
        }
        if doSync { try check(fsync(fd), "fsync \(path)") }
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        let fd = try check(open(path, O_RDONLY), "open \(path)")
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 { throw Failure(call: "read \(path)", errno: errno) }
            if n == 0 { return out }
            out += buf[0..<n]
        }
    }

    /// getxattr(2) with no buffer: the value's size, or minus the errno.
    static func getxattrSize(_ path: String, _ name: String) -> Int {
        let n = getxattr(path, name, nil, 0)
        return n >= 0 ? n : -Int(errno)
    }

    static func stat(_ path: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        try check(lstat(path, &st), "stat \(path)")
        return st
    }

    /// Whether `pid` runs; a zombie (the detached daemon's reaper may be slow) counts as gone.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].drop(while: { $0 == " " }).first != "Z"
    }

    static func waitForExit(_ pid: pid_t) {
        while isAlive(pid) { usleep(10_000) }
    }

    /// A `struct flock` for fcntl: `length` bytes from `start` (0: to the end), of lock
    /// type `type` (F_RDLCK, F_WRLCK, F_UNLCK).
    static func byteRange(_ type: Int32, start: off_t, length: off_t) -> flock {
        var l = flock()
        l.l_type = Int16(type)
        l.l_whence = Int16(SEEK_SET)
        l.l_start = start
        l.l_len = length
        return l
    }

    /// The errno a call fails with, or 0.
    static func errnoOf(_ rc: Int32) -> Int32 { rc < 0 ? errno : 0 }

    static func symbol<T>(_ name: String, as: T.Type) -> T {
        unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), name), to: T.self)
    }

    static let setxattr = symbol("setxattr", as: (@convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32).self)
    static let getxattr = symbol("getxattr", as: (@convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int).self)
    static let listxattr = symbol("listxattr", as: (@convention(c) (UnsafePointer<CChar>, UnsafeMutablePointer<CChar>?, Int) -> Int).self)
    static let removexattr = symbol("removexattr", as: (@convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32).self)

    static let fallocate = symbol("fallocate", as: (@convention(c) (Int32, Int32, Int, Int) -> Int32).self)

    typealias Renameat2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    static let renameat2Fn = symbol("renameat2", as: Renameat2.self)

    static func rename2(_ from: String, _ to: String, flags: UInt32) -> Int32 {
        renameat2Fn(AT_FDCWD, from, AT_FDCWD, to, flags)
    }
}
