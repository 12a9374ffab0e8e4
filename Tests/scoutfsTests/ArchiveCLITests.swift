import Foundation
import ScoutFormat
import ScoutTestSupport
import Testing

/// The archive verbs against a real mount, through the CLI and the control socket.
@Suite(.serialized) struct ArchiveCLITests {
    func run(_ args: [String]) throws -> CLI.Result { try CLI.run(args) }

    func field(_ file: String, _ name: String) throws -> UInt64 {
        let r = try run(["stat", "-s", name, file])
        try #require(r.status == 0, "\(r.stderr)")
        return try #require(UInt64(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// Starts `cat FILE` with its output in `out`; the caller waits for or signals it.
    func startCat(_ file: String, _ out: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/cat")
        p.arguments = [file]
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// Waits up to 20 s for a process this test started; kills it (by its pid) if it is stuck.
    func finished(_ p: Process) -> Bool {
        for _ in 0..<800 where p.isRunning { usleep(25_000) }
        if p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            return false
        }
        return true
    }

    /// Starts a process with no signals blocked (test threads may block them, and a child
    /// inherits the mask): the interrupt test needs SIGINT delivered.
    func spawnWithSignals(_ argv: [String]) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        let rc = posix_spawn(&pid, argv[0], nil, &attr, &cargs, environ)
        guard rc == 0 else { throw Sys.Failure(call: "posix_spawn \(argv[0])", errno: rc) }
        return pid
    }

    /// The signal that ended a process this test spawned, waiting up to 20 s (then killing it).
    func exitSignal(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        for _ in 0..<800 {
            if waitpid(pid, &status, WNOHANG) == pid {
                return status & 0x7f != 0 ? status & 0x7f : nil
            }
            usleep(25_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
        return nil
    }

    func waitUntil(_ what: String, _ cond: () throws -> Bool) throws {
        for _ in 0..<400 {
            if try cond() { return }
            usleep(25_000)
        }
        Issue.record("timed out waiting for \(what)")
    }

    /// The CLI run as nobody (uid and gid 65534, no groups).
    func asNobody(_ args: [String]) throws -> CLI.Result {
        try CLI.runTool("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", CLI.binary] + args)
    }

    func waiting(_ m: TestMount) throws -> [String] {
        let r = try run(["data-waiting", "-p", m.mnt])
        try #require(r.status == 0, "\(r.stderr)")
        return r.stdout.split(separator: "\n").map(String.init)
    }

    @Test(.timeLimit(.minutes(3))) func theAgentCycleThroughTheCLI() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        try FileManager.default.createDirectory(atPath: m.path("dir"), withIntermediateDirectories: true)
        let file = m.path("dir/file")
        var rng = SystemRandomNumberGenerator()
        let contents = (0..<(3 << 20) + 123).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try Sys.writeFile(file, contents, fsync: true)
        let ino = UInt64(try Sys.stat(file).st_ino)

        // walk data_seq: the changed file is listed (after its commit) with its data_seq.
        let dataSeq = try field(file, "data_seq")
        let walk = try run(["walk-inodes", "-p", m.mnt, "data_seq", "0", "-1"])
        #expect(walk.status == 0, "\(walk.stderr)")
        let rows = walk.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { $0.split(separator: " ").map(String.init) }
        #expect(rows.contains { $0.count == 4 && $0[1] == String(dataSeq) && $0[2] == "0" && $0[3] == String(ino) })
        #expect(walk.stdout.hasPrefix("#                    major                minor      ino"))
        let json = try run(["walk-inodes", "--json", "-p", m.mnt, "data_seq", "\(dataSeq)", "\(dataSeq).0.\(ino)"])
        #expect(json.stdout.contains("\"ino\" : \(ino)"))

        // Copy out, release, and the space is gone from the file.
        let archive = m.dir.appendingPathComponent("archive").path
        try Data(contents).write(to: URL(fileURLWithPath: archive))
        let version = try field(file, "data_version")
        let rel = try run(["release", file, "-V", "\(version)"])
        #expect(rel.status == 0, "\(rel.stderr)")
        #expect(try field(file, "offline_blocks") == 769)
        #expect(try field(file, "online_blocks") == 0)
        #expect(try Sys.stat(file).st_blocks == 769 * 8, "st_blocks counts offline blocks, as the original's")
        #expect(try Sys.stat(file).st_size == contents.count)

        // A reader blocks and shows up in data-waiting; stage wakes it with the original bytes.
        let out = m.dir.appendingPathComponent("out").path
        let reader = try startCat(file, out)
        try waitUntil("the reader to wait") { try waiting(m) == ["ino \(ino) iblock 0 ops read"] }
        #expect(reader.isRunning)
        let st = try run(["stage", archive, file, "-V", "\(version)"])
        #expect(st.status == 0, "\(st.stderr)")
        #expect(finished(reader))
        #expect(reader.terminationStatus == 0)
        #expect(FileManager.default.contents(atPath: out) == Data(contents))
        #expect(try field(file, "data_version") == version)
        #expect(try field(file, "data_seq") == dataSeq)
        #expect(try waiting(m).isEmpty)

        // A write after the agent's stat makes its release stale; nothing is released.
        try Sys.writeFile(m.path("other"), [1, 2, 3])
        let stale = try field(m.path("other"), "data_version")
        let fd = open(m.path("other"), O_WRONLY | O_APPEND)
        _ = write(fd, "x", 1)
        close(fd)
        let r2 = try run(["release", m.path("other"), "-V", "\(stale)"])
        #expect(r2.status == 1)
        #expect(r2.stderr.contains("scoutfs release:") && r2.stderr.contains("data version"))
        #expect(try field(m.path("other"), "online_blocks") == 1)

        // data-wait-err fails a waiter with the given errno.
        #expect(try run(["release", file, "-V", "\(version)", "-o", "0", "-l", "4096"]).status == 0)
        let failing = try startCat(file, out)
        try waitUntil("the second reader to wait") { try waiting(m).count == 1 }
        let err = try run(["data-wait-err", "-p", m.mnt, "-I", "\(ino)", "-V", "\(version)", "-F", "0", "-C", "4096", "-O", "read", "-E", "-5"])
        #expect(err.stdout == "data_wait_err found 1 waiters.\n", "\(err.stderr)")
        #expect(finished(failing))
        #expect(failing.terminationStatus != 0)

        // A signal interrupts a waiting truncate (a request the process waits on itself).
        let truncater = try spawnWithSignals(["/usr/bin/truncate", "-s", "8000", file])
        try waitUntil("the truncate to wait") { try waiting(m) == ["ino \(ino) iblock 0 ops change_size"] }
        kill(truncater, SIGINT)
        #expect(exitSignal(truncater) == SIGINT)
        try waitUntil("the waiter to leave") { try waiting(m).isEmpty }
        #expect(try Sys.stat(file).st_size == contents.count)

        // Root-only verbs refuse others; release needs the file writable.
        let nobody = try asNobody(["data-wait-err", "-p", m.mnt, "-I", "\(ino)", "-V", "1", "-F", "0", "-C", "1", "-O", "read", "-E", "-5"])
        #expect(nobody.status == 1 && nobody.stderr.contains("root only"), "\(nobody.stderr)")
        #expect(try asNobody(["ino-path", "-p", m.mnt, "\(ino)"]).stderr.contains("root only"))
        #expect(try asNobody(["release", file, "-V", "\(version)"]).stderr.contains("cannot open"))
        #expect(try asNobody(["stat", "-s", "data_version", file]).stdout == "\(version)\n")

        // Paths from inode numbers.
        #expect(try run(["ino-path", "-p", m.mnt, "\(ino)"]).stdout == "dir/file\n")
        let dirIno = try Sys.stat(m.path("dir")).st_ino
        let refs = try run(["get-referring-entries", "-p", m.mnt, "\(ino)"]).stdout
        #expect(refs.hasPrefix("dir \(dirIno) pos ") && refs.hasSuffix(" type 8 name file\n"), "\(refs)")
        // Numbers as the original's utils read them: 0x hex and 0 octal too.
        #expect(try run(["get-referring-entries", "-p", m.mnt, "0x" + String(UInt64(ino), radix: 16)]).stdout == refs)
        #expect(try run(["ino-path", "-p", m.mnt, "0" + String(UInt64(ino), radix: 8)]).stdout == "dir/file\n")
        #expect(try run(["data-waiting", "-p", m.mnt, "-I", "0x0", "-B", "0"]).status == 0)
        #expect(try run(["ino-path", "-p", m.mnt, "0xZZ"]).status != 0)
        // An inode no entry refers to, here one that does not exist: nothing, and success.
        let none = try run(["get-referring-entries", "-p", m.mnt, "\(ino + 100_000)"])
        #expect(none.status == 0 && none.stdout.isEmpty && none.stderr.isEmpty, "\(none.status) \(none.stdout) \(none.stderr)")
        #expect(try run(["ino-path", "-p", m.mnt, "\(ino + 100_000)"]).status != 0)

        // statfs and bad input.
        let sf = try run(["statfs", "-p", m.mnt])
        #expect(sf.stdout.contains("committed_seq") && sf.stdout.contains("total_data_blocks"))
        #expect(try run(["walk-inodes", "-p", m.mnt, "size", "0", "-1"]).stderr.contains("unknown index 'size'"))
        let unaligned = try run(["release", file, "-V", "\(version)", "-o", "100", "-l", "4096"])
        #expect(unaligned.status == 1 && unaligned.stderr.contains("multiples of 4096"))
        #expect(try run(["stat", "/tmp"]).stderr.contains("not in a mounted scoutfs filesystem"))

        try m.unmount()
        #expect(try m.check().status == 0)
    }

    func setXattr(_ path: String, _ name: String, _ value: String) -> Int32 {
        Sys.setxattr(path, name, value, value.utf8.count, 0) == 0 ? 0 : errno
    }

    func lines(_ r: CLI.Result) -> [String] { r.stdout.split(separator: "\n").map(String.init) }

    @Test(.timeLimit(.minutes(3))) func taggedXattrsAndDfThroughTheCLI() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        for f in ["a", "b", "c"] { try Sys.writeFile(m.path(f), [1]) }
        let ino = try ["a", "b", "c"].map { UInt64(try Sys.stat(m.path($0)).st_ino) }
        #expect(setXattr(m.path("a"), "scoutfs.srch.tag", "x") == 0)
        #expect(setXattr(m.path("c"), "scoutfs.srch.tag", "y") == 0)
        #expect(setXattr(m.path("b"), "scoutfs.srch.other", "z") == 0)
        #expect(setXattr(m.path("a"), "scoutfs.hide.totl.size.1.2.3", "100") == 0)
        #expect(setXattr(m.path("b"), "scoutfs.hide.totl.size.1.2.3", "0x17") == 0)
        #expect(setXattr(m.path("c"), "scoutfs.totl.count.0.0.1", "7") == 0)
        #expect(setXattr(m.path("b"), "scoutfs.hide.secret", "s") == 0)
        // Bad names and values reach the mount and are refused there.
        #expect(setXattr(m.path("a"), "scoutfs.totl.size.1.2.3", "-5") == EINVAL)
        #expect(setXattr(m.path("a"), "scoutfs.totl.size.1.2", "5") == EINVAL)
        #expect(setXattr(m.path("a"), "scoutfs.hide.hide.x", "5") == EINVAL)
        #expect(setXattr(m.path("a"), "scoutfs.plain", "5") == EINVAL)

        let search = try run(["search-xattrs", "-p", m.mnt, "scoutfs.srch.tag"])
        #expect(search.status == 0, "\(search.stderr)")
        #expect(lines(search) == [ino[0], ino[2]].sorted().map(String.init))
        #expect(try run(["search-xattrs", "--json", "-p", m.mnt, "scoutfs.srch.other"]).stdout.contains("\(ino[1])"))
        let notSrch = try run(["search-xattrs", "-p", m.mnt, "user.tag"])
        #expect(notSrch.status == 1 && notSrch.stderr.contains("Invalid argument"), "\(notSrch.stderr)")

        #expect(try run(["read-xattr-totals", "-p", m.mnt]).stdout == "0.0.1 = 7, 1\n1.2.3 = 123, 2\n")
        let totalsJSON = try run(["read-xattr-totals", "--json", "-p", m.mnt]).stdout
        #expect(totalsJSON.contains("\"total\" : 123") && totalsJSON.contains("\"count\" : 2"), "\(totalsJSON)")
        // A new value and a removal change the totals at once.
        #expect(setXattr(m.path("a"), "scoutfs.hide.totl.size.1.2.3", "1") == 0)
        #expect(Sys.removexattr(m.path("c"), "scoutfs.totl.count.0.0.1") == 0)
        #expect(try run(["read-xattr-totals", "-p", m.mnt]).stdout == "1.2.3 = 24, 2\n")

        #expect(try run(["list-hidden-xattrs", m.path("b")]).stdout == "scoutfs.hide.totl.size.1.2.3\nscoutfs.hide.secret\n"
            || (try run(["list-hidden-xattrs", m.path("b")]).stdout == "scoutfs.hide.secret\nscoutfs.hide.totl.size.1.2.3\n"))
        var names = [CChar](repeating: 0, count: 4096)
        let n = Sys.listxattr(m.path("b"), &names, names.count)
        let visible = String(decoding: names[..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "\0")
        #expect(visible == ["scoutfs.srch.other"])

        // Root only, as the original asks CAP_SYS_ADMIN.
        #expect(try asNobody(["search-xattrs", "-p", m.mnt, "scoutfs.srch.tag"]).stderr.contains("root only"))
        #expect(try asNobody(["read-xattr-totals", "-p", m.mnt]).stderr.contains("root only"))

        // df: the original's table, right-aligned columns; used + free = total.
        let df = lines(try run(["df", "-p", m.mnt]))
        #expect(df.count == 3)
        let cells = df.map { $0.split(separator: " ").map(String.init) }
        #expect(cells.first == ["Type", "Size", "Total", "Used", "Free", "Use%"])
        #expect(cells.dropFirst().map { Array($0.prefix(2)) } == [["MetaData", "64KB"], ["Data", "4KB"]])
        for row in cells.dropFirst() {
            let (total, used, free) = (UInt64(row[2]) ?? 0, UInt64(row[3]) ?? 0, UInt64(row[4]) ?? 0)
            #expect(total > 0 && used + free == total && UInt64(row[5]) == used * 100 / total, "\(row)")
        }
        #expect(df.allSatisfy { $0.hasSuffix("  ") })
        let sf = try run(["statfs", "-p", m.mnt, "-s", "total_data_blocks"]).stdout
        #expect(cells.last?[2] == sf.trimmingCharacters(in: .whitespacesAndNewlines))
        let human = lines(try run(["df", "-h", "-p", m.mnt]))
        let sizes = human.dropFirst().flatMap { $0.split(separator: " ").dropFirst(2).prefix(3) }
        #expect(sizes.count == 6 && sizes.allSatisfy { $0.wholeMatch(of: /[0-9]+\.[0-9][0-9](B|KB|MB|GB|TB)/) != nil }, "\(human)")
        #expect(human[2].split(separator: " ")[2] == "4.00GB", "\(human)")

        try m.unmount()
        let check = try m.check()
        #expect(check.status == 0, "\(check.stdout)")
    }


    /// What any local user can throw at the control socket: extra and O_PATH descriptors,
    /// offsets that overflow, truncated, oversized and random frames, more idle connections
    /// than it serves. The daemon refuses each with a reason, keeps no descriptor, keeps
    /// serving, and still unmounts.
    @Test(.timeLimit(.minutes(3))) func hostileControlRequestsNeitherPinNorHangNorCrashTheMount() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let f = m.path("secret")
        try Sys.writeFile(f, [UInt8](repeating: 1, count: 4096), fsync: true)
        chmod(f, 0o600)
        #expect(Sys.setxattr(f, "scoutfs.hide.x", "v", 1, 0) == 0)
        let st = try run(["status", "--json", m.mnt])
        let sock = try #require((try JSONSerialization.jsonObject(with: Data(st.stdout.utf8)) as? [String: Any])?["control"] as? String)

        func ask(_ request: ControlRequest, fds: [Int32]) throws -> ControlReply? {
            let s = try RawControlSocket.connect(sock)
            defer { close(s) }
            try RawControlSocket.send(s, RawControlSocket.frame(request.encoded), fds: fds)
            return try RawControlSocket.reply(s).map { try ControlReply(decoding: $0) }
        }
        // Three O_PATH descriptors: refused (O_PATH grants no access), and none kept.
        let paths = (0..<3).map { _ in open(f, O_PATH | O_CLOEXEC) }
        for request in [ControlRequest.listHiddenXattrs(skip: 0, limit: 0), .statMore] {
            guard case .failure(let e, let message)? = try ask(request, fds: paths) else {
                Issue.record("\(request) over O_PATH was answered")
                continue
            }
            #expect(e == EBADF && message.contains("O_PATH"), "\(message)")
        }
        for fd in paths { close(fd) }
        // Offsets whose end overflows: refused, the daemon lives.
        let w = open(f, O_RDWR)
        let version = try field(f, "data_version")
        for (off, n) in [(UInt64.max - 4095, 4096), (UInt64.max, 1)] {
            guard case .failure(let e, let message)? = try ask(.stage(dataVersion: version, offset: off, data: [UInt8](repeating: 2, count: n)), fds: [w]) else {
                Issue.record("stage at \(off) was answered")
                continue
            }
            #expect(e == EINVAL && message.contains("runs past the largest file offset"), "\(message)")
        }
        close(w)
        let cli = try run(["stage", "-V", "\(version)", "-o", "18446744073709547520", m.path("secret"), f])
        #expect(cli.status != 0)
        let dirArchive = try run(["stage", "-V", "\(version)", m.mnt, f])
        #expect(dirArchive.status != 0 && dirArchive.stderr.contains("is a directory"), "\(dirArchive.stderr)")
        // Truncated, oversized and random frames.
        var rng = SystemRandomNumberGenerator()
        for i in 0..<50 {
            let s = try RawControlSocket.connect(sock)
            let bytes: [UInt8] = switch i % 3 {
            case 0: RawControlSocket.frame([1, 2, 3]).dropLast()
            case 1: [0xff, 0xff, 0xff, 0x7f]
            default: (0..<Int.random(in: 1...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            try? RawControlSocket.send(s, bytes)
            shutdown(s, Int32(SHUT_WR))
            _ = RawControlSocket.reply(s)
            close(s)
        }
        // More idle connections than the daemon serves: the surplus, and the CLI meanwhile,
        // are told to try again; once they go, service is back.
        let idle = try (0..<70).map { _ in try RawControlSocket.connect(sock) }
        usleep(300_000)
        let busy = try run(["stat", "-s", "data_version", f])
        #expect(busy.status != 0 && busy.stderr.contains("try again"), "\(busy.stderr)")
        for s in idle { close(s) }
        try waitUntil("the daemon to serve again") { try run(["stat", "-s", "data_version", f]).status == 0 }
        #expect(try field(f, "data_version") == version)
        // Out of descriptors (EMFILE) for a while: accepting resumes once some are free.
        let openFDs = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(m.pid)/fd").count
        let limit = try CLI.runTool("/usr/bin/prlimit", ["--pid", "\(m.pid)", "--nofile=\(openFDs + 8)"])
        try #require(limit.status == 0, "\(limit.stderr)")
        let flood = try (0..<40).map { _ in try RawControlSocket.connect(sock) }
        usleep(500_000)
        for s in flood { close(s) }
        _ = try CLI.runTool("/usr/bin/prlimit", ["--pid", "\(m.pid)", "--nofile=65536"])
        try waitUntil("the daemon to accept again after EMFILE") { try run(["stat", "-s", "data_version", f]).status == 0 }
        let log = String(decoding: FileManager.default.contents(atPath: m.log) ?? Data(), as: UTF8.self)
        #expect(log.contains("accept failed: Too many open files; retrying"), "\(log)")
        #expect(try run(["list-hidden-xattrs", f]).stdout.contains("scoutfs.hide.x"))
        // Nothing pins the mount.
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// get-fiemap (FUSE never passes FIEMAP on): written and released extents and a hole, with
    /// the original's flags and layout, blocks or bytes, logical or physical, and its JSON.
    /// (fallocate here writes zeros into the blocks it allocates, so no extent is unwritten.)
    @Test(.timeLimit(.minutes(2))) func getFiemapMapsWrittenAndReleasedExtents() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let f = m.path("mapped")
        let fd = open(f, O_CREAT | O_RDWR, 0o644)
        try #require(fd >= 0)
        let block = [UInt8](repeating: 7, count: 4096)
        for b in 0..<8 { #expect(pwrite(fd, block, 4096, off_t(b * 4096)) == 4096) }
        for b in 20..<24 { #expect(pwrite(fd, block, 4096, off_t(b * 4096)) == 4096) }
        #expect(fsync(fd) == 0)
        close(fd)
        let version = try field(f, "data_version")
        let rel = try run(["release", f, "-V", "\(version)", "-o", "0", "-l", "16384"])
        try #require(rel.status == 0, "\(rel.stderr)")

        let r = try run(["get-fiemap", f])
        try #require(r.status == 0, "\(r.stderr)")
        #expect(lines(r) == ["0: offset: 0, length: 4, flags: O..", "1: offset: 4, length: 4, flags: ...",
                             "2: offset: 20, length: 4, flags: ..L", "entries: 3, extents: 3"], "\(r.stdout)")
        let bytes = try run(["get-fiemap", "-b", f])
        #expect(lines(bytes).first == "0: offset: 0, length: 16384, flags: O..", "\(bytes.stdout)")
        #expect(lines(bytes).dropFirst(2).first == "2: offset: 81920, length: 16384, flags: ..L", "\(bytes.stdout)")
        let phys = try run(["get-fiemap", "--physical", f])
        let physOffsets = lines(phys).dropLast().map { $0.split(separator: " ")[2].dropLast() }
        #expect(physOffsets.first == "0", "an offline extent has no device position: \(phys.stdout)")
        #expect(physOffsets.dropFirst().allSatisfy { (UInt64($0) ?? 0) > 0 }, "\(phys.stdout)")

        let j = try run(["get-fiemap", "--json", f])
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        #expect(obj["entries"] as? Int == 3 && obj["extents"] as? Int == 3)
        let map = try #require(obj["map"] as? [[String: Any]])
        #expect(map.map { "\($0["offset"] as? Int ?? -1)+\($0["length"] as? Int ?? -1) \($0["flags"] as? String ?? "")" }
                == ["0+4 O..", "4+4 ...", "20+4 ..L"])

        // An empty file maps nothing; a missing one is an error naming it.
        let empty = m.path("empty")
        try Sys.writeFile(empty, [])
        #expect(lines(try run(["get-fiemap", empty])) == ["entries: 0, extents: 0"])
        let missing = try run(["get-fiemap", m.path("nothing")])
        #expect(missing.status != 0 && missing.stderr.contains("nothing"))
        try m.unmount()
    }
}

