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
        // The original's last line, which scripts match on, after the reason.
        #expect(r2.stderr.hasSuffix("scoutfs: release failed: Stale file handle (116)\n") && r2.stderr.contains("data version"), "\(r2.stderr)")
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
        #expect(try asNobody(["release", file, "-V", "\(version)"]).stderr.contains("failed to open"))
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

        let r = try run(["get-fiemap", "-L", f])
        try #require(r.status == 0, "\(r.stderr)")
        #expect(lines(r) == ["0: offset: 0 length: 4 flags: O..", "1: offset: 4 length: 4 flags: ...",
                             "2: offset: 20 length: 4 flags: ..L", "extents: 3"], "\(r.stdout)")
        let bytes = try run(["get-fiemap", "-Lb", f])
        #expect(lines(bytes).first == "0: offset: 0 length: 16384 flags: O..", "\(bytes.stdout)")
        #expect(lines(bytes).dropFirst(2).first == "2: offset: 81920 length: 16384 flags: ..L", "\(bytes.stdout)")
        let phys = try run(["get-fiemap", "--physical", f])
        let physOffsets = lines(phys).dropLast().map { $0.split(separator: " ")[2] }
        #expect(physOffsets.first == "0", "an offline extent has no device position: \(phys.stdout)")
        #expect(physOffsets.dropFirst().allSatisfy { (UInt64($0) ?? 0) > 0 }, "\(phys.stdout)")
        // Without -P or -L, both: logical then physical.
        let both = try run(["get-fiemap", f])
        #expect(lines(both).dropLast().map { $0.split(separator: " ")[2] } == ["0", "4", "20"], "\(both.stdout)")
        #expect(lines(both).last == "extents: 3")
        #expect(lines(both).dropLast().map { $0.split(separator: " ")[3] } == physOffsets, "\(both.stdout)")
        #expect(try run(["get-fiemap", "-P", "-L", f]).status != 0)

        let j = try run(["get-fiemap", "--json", f])
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        #expect(obj["extents"] as? Int == 3)
        let map = try #require(obj["map"] as? [[String: Any]])
        #expect(map.map { "\($0["logical"] as? Int ?? -1)+\($0["length"] as? Int ?? -1) \($0["flags"] as? String ?? "")" }
                == ["0+4 O..", "4+4 ...", "20+4 ..L"])

        // An empty file maps nothing; a missing one is an error naming it.
        let empty = m.path("empty")
        try Sys.writeFile(empty, [])
        #expect(lines(try run(["get-fiemap", empty])) == ["extents: 0"])
        let missing = try run(["get-fiemap", m.path("nothing")])
        #expect(missing.status != 0 && missing.stderr.contains("nothing"))
        try m.unmount()
    }

    /// punch-offline through the CLI, with the original's errnos and lines (its
    /// tests/golden/punch-offline).
    @Test(.timeLimit(.minutes(2))) func punchOfflineAnswersAsTheOriginal() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let dir = m.path("dir")
        #expect(mkdir(dir, 0o755) == 0)
        let onDir = try run(["punch-offline", dir, "-o", "0", "-l", "4096", "-V", "0"])
        #expect(onDir.status == 1 && onDir.stderr == "failed to open '\(dir)': Is a directory (21)\nscoutfs: punch-offline failed: Is a directory (21)\n",
                "\(onDir.stderr)")
        #expect(try run(["punch-offline", dir, "-o", "0", "-l", "4096"]).status != 0, "the data version is required")

        let f = m.path("file")
        try Sys.writeFile(f, [UInt8](repeating: 1, count: 4096))
        let v1 = try field(f, "data_version")
        #expect(try run(["punch-offline", f, "-o", "4096", "-l", "4096", "-V", "\(v1)"]).status == 0, "outside the mapped blocks: nothing to do")
        let online = try run(["punch-offline", f, "-o", "0", "-l", "4096", "-V", "\(v1)"])
        #expect(online.status == 1 && online.stderr.hasSuffix("scoutfs: punch-offline failed: Invalid argument (22)\n"), "\(online.stderr)")
        #expect(lines(try run(["get-fiemap", "-Lb", f])) == ["0: offset: 0 length: 4096 flags: ..L", "extents: 1"])

        try Sys.writeFile(f, [UInt8](repeating: 2, count: 7 * 4096))
        let v = try field(f, "data_version")
        #expect(try run(["release", f, "--data-version", "\(v)"]).status == 0)
        #expect(lines(try run(["get-fiemap", "-L", f])) == ["0: offset: 0 length: 7 flags: O.L", "extents: 1"])
        for b in [1, 3, 5] { #expect(try run(["punch-offline", f, "-o", "\(b * 4096)", "-l", "4096", "-V", "\(v)"]).status == 0) }
        #expect(lines(try run(["get-fiemap", "-L", f])) == ["0: offset: 0 length: 1 flags: O..", "1: offset: 2 length: 1 flags: O..",
                                                             "2: offset: 4 length: 1 flags: O..", "3: offset: 6 length: 1 flags: O.L", "extents: 4"])
        #expect(try run(["punch-offline", f, "-o", "\(2 * 4096)", "-l", "12K", "-V", "\(v)"]).status == 0)
        #expect(lines(try run(["get-fiemap", "-L", f])) == ["0: offset: 0 length: 1 flags: O..", "1: offset: 6 length: 1 flags: O.L", "extents: 2"])
        for (o, l) in [("4095", "4096"), ("1", "4096"), ("4096", "409700"), ("4096", "4097"), ("4096", "1")] {
            let r = try run(["punch-offline", f, "-o", o, "-l", l, "-V", "\(v)"])
            #expect(r.status == 1 && r.stderr.hasSuffix("scoutfs: punch-offline failed: Value too large for defined data type (75)\n"), "\(o) \(l): \(r.stderr)")
        }
        #expect(try run(["punch-offline", f, "-o", "4096", "-l", "0", "-V", "\(v)"]).status == 0)
        let stale = try run(["punch-offline", f, "-o", "0", "-l", "4096", "-V", "\(v + 1)"])
        #expect(stale.stderr.hasSuffix("scoutfs: punch-offline failed: Stale file handle (116)\n"), "\(stale.stderr)")
        #expect(try run(["punch-offline", f, "-o", "0", "-l", "7M", "-V", "\(v)", "--json"]).status == 0)
        #expect(lines(try run(["get-fiemap", f])) == ["extents: 0"])
        // All holes now: the file reads as zeros, with nothing waiting.
        #expect(try Sys.readFile(f) == [UInt8](repeating: 0, count: 7 * 4096))
        #expect(try field(f, "offline_blocks") == 0 && field(f, "data_version") == v)
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// move-blocks through the CLI, as the original's tests/tests/move-blocks.sh drives it.
    @Test(.timeLimit(.minutes(3))) func moveBlocksAnswersAsTheOriginal() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let bs = 4096, blocks = 8, part = 123
        let len = bs * blocks + part
        let from = m.path("from"), to = m.path("to"), hard = m.path("hardlink")
        var rng = SplitMix64(seed: 7)
        func regenerate() throws -> [UInt8] {
            unlink(from)
            unlink(to)
            let bytes = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try Sys.writeFile(from, bytes)
            try Sys.writeFile(to, [])
            return bytes
        }
        func move(_ f: String, _ fo: Int, _ l: Int, _ t: String, _ to: Int) throws -> CLI.Result {
            try run(["move-blocks", f, "-f", "\(fo)", "-l", "\(l)", t, "-t", "\(to)"])
        }
        func failed(_ r: CLI.Result, _ e: String, _ n: Int) -> Bool {
            r.status == 1 && r.stderr.hasPrefix("ioctl failed on '") && r.stderr.hasSuffix("scoutfs: move-blocks failed: \(e) (\(n))\n")
        }
        var src = try regenerate()
        #expect(link(from, hard) == 0)
        let other = "/tmp/scoutfs-move-other-\(getpid())"
        try Sys.writeFile(other, [UInt8](repeating: 3, count: bs))
        defer { unlink(other) }

        let wrap1 = try run(["move-blocks", from, "-f", "0xfffffffffffff000", "-l", "8192", to, "-t", "0"])
        #expect(failed(wrap1, "Value too large for defined data type", 75), "\(wrap1.stderr)")
        let wrap2 = try run(["move-blocks", from, "-f", "0", "-l", "0xfffffffffffff000", to, "-t", "8192"])
        #expect(failed(wrap2, "Value too large for defined data type", 75), "\(wrap2.stderr)")
        #expect(failed(try move(from, 0, bs, hard, 0), "Invalid argument", 22))
        let cross = try move(other, 0, bs, to, 0)
        #expect(failed(cross, "Invalid cross-device link", 18), "\(cross.stderr)")
        for (fo, l, t) in [(1, bs, 0), (0, 1, 0), (0, bs, 1)] { #expect(failed(try move(from, fo, l, to, t), "Invalid argument", 22)) }
        try Sys.writeFile(to, [UInt8](repeating: 9, count: bs))
        #expect(failed(try move(from, 0, bs, to, 0), "Invalid argument", 22), "can't move onto an existing extent")
        let tv = try field(to, "data_version")
        #expect(try run(["release", to, "-V", "\(tv)", "-o", "0", "-l", "\(bs)"]).status == 0)
        #expect(failed(try move(from, 0, bs, to, 0), "No data available", 61))
        src = try regenerate()
        let fv = try field(from, "data_version")
        #expect(try run(["release", from, "-V", "\(fv)", "-o", "0", "-l", "\(bs)"]).status == 0)
        #expect(failed(try move(from, 0, bs, to, 0), "No data available", 61))

        // Basic moves, the final partial block, and the inode fields both files update.
        src = try regenerate()
        #expect(try move(from, 0, len, to, bs).status == 0)
        #expect(try Sys.readFile(to) == [UInt8](repeating: 0, count: bs) + src)
        #expect(try Sys.readFile(from) == [UInt8](repeating: 0, count: len), "moving leaves holes and keeps the size")
        src = try regenerate()
        #expect(try move(from, len - part, part, to, 0).status == 0)
        var st = stat()
        #expect(stat(to, &st) == 0 && st.st_size == part)
        src = try regenerate()
        #expect(try run(["sync", "-p", m.mnt]).status == 0)
        let names = ["data_version", "meta_seq", "data_seq"]
        let fromBefore = try names.map { try field(from, $0) }, toBefore = try names.map { try field(to, $0) }
        #expect(try move(from, 0, bs, to, 0).status == 0)
        let fromAfter = try names.map { try field(from, $0) }, toAfter = try names.map { try field(to, $0) }
        for i in names.indices { #expect(fromAfter[i] != fromBefore[i] && toAfter[i] != toBefore[i], "\(names[i])") }

        // Backwards, block by block, rebuilds the file; many files combine into one.
        src = try regenerate()
        #expect(try move(from, len - part, part, to, len - part).status == 0)
        for i in stride(from: blocks - 1, through: 0, by: -1) { #expect(try move(from, i * bs, bs, to, i * bs).status == 0) }
        #expect(try Sys.readFile(to) == src)
        unlink(to)
        try Sys.writeFile(to, [])
        var large: [UInt8] = []
        for i in 0..<4 {
            let piece = (0..<(bs * blocks)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try Sys.writeFile(from + ".\(i)", piece)
            large += piece
            #expect(try move(from + ".\(i)", 0, bs * blocks, to, i * bs * blocks).status == 0)
        }
        #expect(try Sys.readFile(to) == large)
        try m.unmount()
        let ck = try m.check()
        #expect(ck.status == 0, "a moved block has one owner: \(ck.stdout)")
    }

    /// Project ids as the original's tests/golden/projects: none by default, any 64-bit value,
    /// readable by anyone, inherited by new files and directories.
    @Test(.timeLimit(.minutes(2))) func projectIdsAreSetAndInherited() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        let file = m.path("file"), dir = m.path("dir")
        try Sys.writeFile(file, [])
        #expect(mkdir(dir, 0o755) == 0)
        func project(_ p: String) throws -> String { try run(["get-attr-x", "-p", p]).stdout }
        #expect(try project(file) == "0\n")
        for p in [file, dir] { #expect(try run(["set-attr-x", "-p", "8675309", p]).status == 0) }
        #expect(try project(file) == "8675309\n" && project(dir) == "8675309\n")
        #expect(try asNobody(["get-attr-x", "-p", file]).stdout == "8675309\n", "anyone may read it")
        let nobody = try asNobody(["set-attr-x", "-p", "1", file])
        #expect(nobody.status == 1 && nobody.stderr.hasSuffix("scoutfs: set-attr-x failed: Operation not permitted (1)\n"), "\(nobody.stderr)")
        let ids = m.path("ids")
        try Sys.writeFile(ids, [])
        var shown: [String] = []
        for id in ["0x7FFFFFFF", "0x80000000", "0xFFFFFFFF", "0x7FFFFFFFFFFFFFFF", "0x8000000000000000", "0xFFFFFFFFFFFFFFFF"] {
            #expect(try run(["set-attr-x", "-p", id, ids]).status == 0)
            shown.append(try project(ids))
        }
        #expect(shown == ["2147483647\n", "2147483648\n", "4294967295\n", "9223372036854775807\n", "9223372036854775808\n", "18446744073709551615\n"])
        try Sys.writeFile(dir + "/file", [])
        #expect(mkdir(dir + "/sub", 0o755) == 0 && mkdir(dir + "/sub/more", 0o755) == 0)
        #expect(symlink("../file", dir + "/sub/link") == 0)
        for p in ["/file", "/sub", "/sub/more"] { #expect(try project(dir + p) == "8675309\n", "\(p)") }
        #expect(try run(["get-attr-x", "-p", dir + "/sub/link"]).stdout == "8675309\n", "through the link to its target")
        // A rename keeps the id; clearing the directory's stops inheritance.
        #expect(rename(dir + "/file", m.path("moved")) == 0)
        #expect(try project(m.path("moved")) == "8675309\n")
        #expect(try run(["set-attr-x", "-p", "0", dir]).status == 0)
        try Sys.writeFile(dir + "/another", [])
        #expect(try project(dir + "/another") == "0\n")
        // Several fields: `name: value` lines in the original's order; JSON round trip.
        let many = try run(["get-attr-x", "-v", "-s", "-p", m.path("moved")])
        #expect(many.stdout == "data_version: 0\nsize: 0\nproject_id: 8675309\n", "\(many.stdout)")
        let j = try run(["get-attr-x", "--json", m.path("moved")])
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: String])
        #expect(obj["project_id"] == "8675309" && obj["retention"] == "0" && obj.count == 10, "\(obj)")
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// Retention as the original's tests/golden/retention-basic: set on regular files only, by
    /// root only; while set nothing changes the file but non-`user.` xattrs, not even root.
    @Test(.timeLimit(.minutes(2))) func aRetainedFileCannotBeChangedUntilCleared() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        let onDir = try run(["set-attr-x", "-t", "1", m.mnt])
        #expect(onDir.status == 1 && onDir.stderr.hasPrefix("attr_x ioctl failed on '\(m.mnt)': ")
                && onDir.stderr.hasSuffix("scoutfs: set-attr-x failed: Invalid argument (22)\n"), "\(onDir.stderr)")
        let f = m.path("file-1")
        try Sys.writeFile(f, Array("hello".utf8))
        #expect(chmod(f, 0o666) == 0)
        #expect(try run(["set-attr-x", "-t", "1", f]).status == 0)
        #expect(try run(["get-attr-x", "-t", f]).stdout == "1\n")
        #expect(try asNobody(["set-attr-x", "-t", "0", f]).stderr.hasSuffix("Operation not permitted (1)\n"))
        #expect(Sys.setxattr(f, "scoutfs.hide.x", "v", 1, 0) == 0, "a non-user xattr may change")
        #expect(Sys.setxattr(f, "trusted.x", "v", 1, 0) == 0)
        func refused(_ rc: Int32) -> Bool { rc == -1 && errno == EPERM }
        #expect(refused(Sys.setxattr(f, "user.x", "v", 1, 0)))
        #expect(refused(unlink(f)))
        #expect(refused(rename(f, m.path("file-2"))))
        let fd = open(f, O_WRONLY)
        #expect(fd >= 0)
        #expect(write(fd, "x", 1) == -1 && errno == EPERM)
        close(fd)
        #expect(refused(truncate(f, 0)))
        #expect(open(f, O_WRONLY | O_TRUNC) == -1 && errno == EPERM)
        #expect(refused(utimes(f, nil)))
        #expect(refused(chmod(f, 0o600)))
        let other = m.path("other")
        try Sys.writeFile(other, [])
        #expect(refused(rename(other, f)), "nothing may be renamed over it")
        #expect(try run(["set-attr-x", "-p", "5", f]).status == 1, "nor may set-attr-x change it without clearing the flag")
        #expect(try Sys.readFile(f) == Array("hello".utf8))
        // Clearing the flag (with another change in the same call) lifts it.
        #expect(try run(["set-attr-x", "-t", "0", "-p", "5", f]).status == 0)
        #expect(try run(["get-attr-x", "-t", "-p", f]).stdout == "retention: 0\nproject_id: 5\n")
        try Sys.writeFile(f, Array("again".utf8))
        #expect(rename(f, m.path("file-2")) == 0)
        #expect(Sys.removexattr(m.path("file-2"), "trusted.x") == 0)
        #expect(unlink(m.path("file-2")) == 0)
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// setattr's arguments as the original's: `-V 0` refused, a size of 0 is no size.
    @Test(.timeLimit(.minutes(2))) func setattrRestoresAStubWithTheOriginalsArgumentRules() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let f = m.path("stub")
        try Sys.writeFile(f, [])
        #expect(try run(["setattr", "-V", "0", "-s", "4096", f]).stderr.contains("data version must not be 0"))
        #expect(try run(["setattr", "-s", "4096", f]).stderr.contains("must provide data-version if using --size option"))
        #expect(try run(["setattr", "-s", "0", "-o", f]).stderr.contains("must provide size if using --offline option"))
        let zero = try run(["setattr", "-s", "0", "-t", "5.6", f])
        #expect(zero.status == 0, "a size of 0 needs no data version: \(zero.stderr)")
        let r = try run(["setattr", "-V", "0x5", "-s", "10000", "-o", "-t", "5.6", "-r", "7.8", f])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try field(f, "data_version") == 5 && field(f, "offline_blocks") == 3)
        #expect(try run(["get-attr-x", "-s", "-c", "-r", f]).stdout == "ctime: 5.6\ncrtime: 7.8\nsize: 10000\n")
        let again = try run(["setattr", "-V", "6", "-s", "1", f])
        #expect(again.status == 1 && again.stderr.hasSuffix("scoutfs: setattr failed: Invalid argument (22)\n"), "only a never written file: \(again.stderr)")
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// read-xattr-index as the original's tests/golden/basic-xattr-indx drives it.
    @Test(.timeLimit(.minutes(2))) func readXattrIndexAnswersAsTheOriginal() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        let invalid: [([String], String)] = [
            (["bad"], "bad index position entry argument 'bad', it must be in the form \"a.b.ino\" where each value can be prefixed by '0' for octal or '0x' for hex"),
            (["1.2"], "bad index position entry argument '1.2', it must be in the form \"a.b.ino\" where each value can be prefixed by '0' for octal or '0x' for hex"),
            (["1.2.3", "256.0.0"], "initial major index position '256' must be between 0 and 255, inclusive."),
            (["1.2.3", "0.0.0"], "first index position 1.2.3 must be less than last index position 0.0.0"),
            (["2.2.2", "2.2.1"], "first index position 2.2.2 must be less than last index position 2.2.1"),
        ]
        for (args, line) in invalid {
            let r = try run(["read-xattr-index", "-p", m.mnt] + args)
            #expect(r.status == 1 && r.stderr == line + "\nscoutfs: read-xattr-index failed: Invalid argument (22)\n", "\(args): \(r.stderr)")
        }
        let a = m.path("a"), b = m.path("b")
        try Sys.writeFile(a, [])
        try Sys.writeFile(b, [])
        let ia = try Sys.stat(a).st_ino, ib = try Sys.stat(b).st_ino
        func set(_ p: String, _ n: String) -> Int32 { Sys.setxattr(p, n, nil, 0, 0) == 0 ? 0 : errno }
        #expect(set(a, "scoutfs.hide.indx.test.5") == EINVAL)
        #expect(set(a, "scoutfs.hide.indx.test.256.100") == EINVAL)
        #expect(Sys.setxattr(a, "scoutfs.hide.indx.test.5.100", "1", 1, 0) == -1 && errno == EINVAL, "an .indx. xattr has no value")
        #expect(set(a, "scoutfs.hide.indx.test.5.100") == 0)
        #expect(set(b, "scoutfs.hide.indx.aa.5.100") == 0 && set(b, "scoutfs.hide.indx.bb.5.100") == 0)
        #expect(set(b, "scoutfs.hide.indx.c.255.18446744073709551615") == 0)
        let all = try run(["read-xattr-index", "-p", m.mnt])
        #expect(all.stdout == "5.100 = \(ia)\n5.100 = \(ib)\n255.18446744073709551615 = \(ib)\n", "\(all.stdout)\(all.stderr)")
        #expect(try run(["read-xattr-index", "-p", m.mnt, "5.100.\(ib)", "0x5.-1.-1"]).stdout == "5.100 = \(ib)\n")
        #expect(try run(["read-xattr-index", "-p", m.mnt, "255.0.0", "255.-1.-1"]).stdout == "255.18446744073709551615 = \(ib)\n")
        #expect(try asNobody(["read-xattr-index", "-p", m.mnt]).stderr.contains("root only"))
        #expect(unlink(b) == 0)
        #expect(try run(["read-xattr-index", "-p", m.mnt]).stdout == "5.100 = \(ia)\n")
        try m.unmount()
        let ck = try m.check()
        #expect(ck.status == 0, "\(ck.stdout)")
    }

    /// The quota verbs as the original's tests/golden/quota drives them: rule strings, the
    /// list's order and layout, wipe and restore, and EDQUOT for the caller a rule names.
    @Test(.timeLimit(.minutes(3))) func quotaVerbsAnswerAsTheOriginal() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        func q(_ args: [String]) throws -> CLI.Result { try run([args[0], "-p", m.mnt] + args.dropFirst()) }
        #expect(try q(["quota-list"]).stdout.isEmpty)
        #expect(try q(["quota-add", "-r", "7 13,L,- 15,L,- 17,L,- I 33 -"]).status == 0)
        #expect(try q(["quota-list"]).stdout == "  7 13,L,- 15,L,- 17,L,- I 33 -\n")
        let dup = try q(["quota-add", "-r", "7 13,L,- 15,L,- 17,L,- I 33 -"])
        #expect(dup.status == 1 && dup.stderr.hasSuffix("scoutfs: quota-add failed: File exists (17)\n"), "\(dup.stderr)")
        #expect(try q(["quota-del", "-r", "7 13,L,- 15,L,- 17,L,- I 33 -"]).status == 0)
        #expect(try q(["quota-list"]).stdout.isEmpty)
        let bad = try q(["quota-add", "-r", "7 13,X,- 15,L,- 17,L,- I 33 -"])
        #expect(bad.stderr.hasPrefix("invalid name source 'X' in name #1 in rule:"), "\(bad.stderr)")
        #expect(try q(["quota-add", "-r", "7 13,L,-"]).stderr.hasPrefix("invalid rule, missing fields: 7 13,L,-"))
        #expect(try asNobody(["quota-list", "-p", m.mnt]).stderr.contains("root only"))

        for a in 10...15 { #expect(try q(["quota-add", "-r", "7 \(a),L,- 0,L,- 0,L,- I 33 -"]).status == 0) }
        let listed = try q(["quota-list"]).stdout
        #expect(listed == (10...15).reversed().map { "  7 \($0),L,- 0,L,- 0,L,- I 33 -\n" }.joined(), "\(listed)")
        #expect(try q(["quota-wipe"]).status == 0)
        #expect(try q(["quota-list"]).stdout.isEmpty)
        let restore = try CLI.runTool("/bin/sh", ["-c", "printf '%s' \"$0\" | \(CLI.binary) quota-restore -p \(m.mnt)", listed])
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try q(["quota-list"]).stdout == listed)
        #expect(try q(["quota-wipe"]).status == 0)

        // A default rule refuses creates while the total is at the limit, even root's.
        let dir = m.path("dir")
        #expect(mkdir(dir, 0o777) == 0 && chmod(dir, 0o777) == 0)
        #expect(try q(["quota-add", "-r", "1 1,L,- 1,L,- 1,L,- I 1 -"]).status == 0)
        #expect(Sys.setxattr(m.mnt, "scoutfs.totl.test.1.1.1", "2", 1, 0) == 0)
        #expect(open(dir + "/file", O_CREAT | O_WRONLY, 0o644) == -1 && errno == EDQUOT)
        let nobody = try CLI.runTool("/usr/bin/setpriv", ["--reuid=22222", "--regid=44444", "--clear-groups", "/usr/bin/touch", dir + "/file"])
        #expect(nobody.status != 0 && nobody.stderr.contains("Disk quota exceeded"), "\(nobody.stderr)")
        #expect(Sys.removexattr(m.mnt, "scoutfs.totl.test.1.1.1") == 0)
        let fd = open(dir + "/file", O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0, "a lower total lets creates in")
        // A data rule refuses writes.
        #expect(try q(["quota-add", "-r", "1 1,L,- 1,L,- 1,L,- D 0 C"]).status == 0)
        #expect(Sys.setxattr(m.mnt, "scoutfs.totl.test.1.1.1", "0", 1, 0) == 0)
        #expect(write(fd, "x", 1) == -1 && errno == EDQUOT)
        close(fd)
        #expect(try q(["quota-wipe"]).status == 0)
        try m.unmount()
        #expect(try m.check().status == 0)
    }

    /// get-allocated-inos: the inodes in use from a number to the end of its group.
    @Test(.timeLimit(.minutes(2))) func getAllocatedInosListsOneGroup() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        var inos: [UInt64] = []
        for i in 0..<5 {
            try Sys.writeFile(m.path("f\(i)"), [])
            inos.append(UInt64(try Sys.stat(m.path("f\(i)")).st_ino))
        }
        let r = try run(["get-allocated-inos", "-p", m.mnt, "-i", "\(inos[0])"])
        #expect(r.status == 0, "\(r.stderr)")
        let listed = r.stdout.split(separator: "\n").compactMap { UInt64($0) }
        #expect(Array(listed.prefix(5)) == inos, "\(r.stdout)")
        #expect(listed.allSatisfy { $0 >= inos[0] && $0 / 1024 == inos[0] / 1024 }, "one group only: \(r.stdout)")
        #expect(try run(["get-allocated-inos", "-p", m.mnt, "-s", "-i", "\(inos[2])"]).stdout == "\(inos[2])\n")
        let unused = (inos[0] | 1023)
        #expect(!listed.contains(unused))
        #expect(try run(["get-allocated-inos", "-p", m.mnt, "-s", "-i", "\(unused)"]).stdout.isEmpty)
        #expect(try run(["get-allocated-inos", "-p", m.mnt]).status != 0, "the starting number is required")
        try m.unmount()
    }

    /// Argument errors in the original's (argp's) form, with its exit status; `--` ends the
    /// options; `--usage` is answered.
    @Test(.timeLimit(.minutes(2))) func argumentErrorsAnswerInTheOriginalsForm() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let f = m.path("f")
        try Sys.writeFile(f, [1])
        let missing = try run(["punch-offline", f, "-o", "0", "-l", "4096"])
        #expect(missing.status == 64 && missing.stderr.hasPrefix("punch-offline: ")
                && missing.stderr.hasSuffix("Try `punch-offline --help' or `punch-offline --usage' for more information.\n"), "\(missing.stderr)")
        let zero = try run(["setattr", "-V", "0", "-s", "1", f])
        #expect(zero.status == 64 && zero.stderr.hasPrefix("setattr: data version must not be 0\n"), "\(zero.stderr)")
        #expect(try run(["stat", "-s", "data_version", "--", f]).stdout == "1\n")
        let usage = try run(["punch-offline", "--usage"])
        #expect(usage.status == 0 && usage.stdout.contains("punch-offline"), "\(usage.stdout)\(usage.stderr)")
        try m.unmount()
    }

    /// data-waiting lists every reader of offline data, not one per page: files with offline
    /// data are read past the page cache, so each reader's read is its own request, and a
    /// killed reader's request is interrupted and leaves the list.
    @Test(.timeLimit(.minutes(2))) func everyWaitingReaderIsListedAndAKilledOneLeaves() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        try m.mount()
        let file = m.path("f")
        let contents = (0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try Sys.writeFile(file, contents, fsync: true)
        let ino = UInt64(try Sys.stat(file).st_ino)
        let version = try field(file, "data_version")
        #expect(try run(["release", file, "-V", "\(version)"]).status == 0)
        let a = try startCat(file, m.dir.appendingPathComponent("a").path)
        let b = try startCat(file, m.dir.appendingPathComponent("b").path)
        try waitUntil("both readers to be listed") { try waiting(m) == ["ino \(ino) iblock 0 ops read", "ino \(ino) iblock 0 ops read"] }
        kill(a.processIdentifier, SIGKILL)
        a.waitUntilExit()
        try waitUntil("the killed reader to leave the list") { try waiting(m) == ["ino \(ino) iblock 0 ops read"] }
        let archive = m.dir.appendingPathComponent("archive").path
        try Data(contents).write(to: URL(fileURLWithPath: archive))
        #expect(try run(["stage", archive, file, "-V", "\(version)"]).status == 0)
        #expect(finished(b) && b.terminationStatus == 0)
        #expect(FileManager.default.contents(atPath: m.dir.appendingPathComponent("b").path) == Data(contents))
        #expect(try waiting(m).isEmpty)
        try m.unmount()
    }

    /// resize-devices as the original's tests drive it: nothing asked, nothing done; shrinking
    /// or growing past a device's end refused with the original's lines and nothing changed;
    /// growing onto longer devices seen by every node at once. A node on another connection
    /// than the server's then writes more than the old data device held, and the server's
    /// mount reads it back.
    @Test(.timeLimit(.minutes(4))) func resizeDevicesGrowsTheFilesystemOnEveryNode() throws {
        let m = try TestMount(metaSize: 256 << 20, dataSize: 256 << 20)
        defer { m.cleanup() }
        try m.mount(["-o", "allow_other"])
        let b = try m.mountNode("b", slot: nil)
        func total(_ which: String, _ at: String) throws -> UInt64 {
            let r = try run(["statfs", "-s", "total_\(which)_blocks", "-p", at])
            try #require(r.status == 0, "\(r.stderr)")
            return try #require(UInt64(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let meta0 = try total("meta", m.mnt), data0 = try total("data", m.mnt)
        #expect(meta0 == 4096 && data0 == 65536)
        let einval = "resize_devices ioctl failed: Invalid argument (22)\nscoutfs: resize-devices failed: Invalid argument (22)\n"

        for args in [[], ["-m", "0"], ["-d", "0"], ["-m", "0", "-d", "0"], ["-m", "256M", "-d", "256M"]] {
            let r = try run(["resize-devices", "-p", m.mnt] + args)
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(args): \(r.stderr)")
        }
        for args in [["-m", "128M"], ["-d", "128M"], ["-m", "128M", "-d", "128M"], ["-m", "512M"], ["-d", "512M"], ["-m", "512M", "-d", "512M"],
                     ["-m", "256M", "-d", "512M"]] {
            let r = try run(["resize-devices", "-p", b] + args)
            #expect(r.status == 1 && r.stderr == einval, "\(args): \(r.status) \(r.stderr)")
        }
        let nobody = try asNobody(["resize-devices", "-p", m.mnt, "-d", "256M"])
        #expect(nobody.status == 1 && nobody.stderr.hasPrefix("resize_devices ioctl failed: Operation not permitted (1)\n"), "\(nobody.stderr)")
        #expect(try total("meta", b) == meta0 && total("data", b) == data0)

        // The devices grow (a longer file, as a grown volume or `losetup -c` would), then the
        // filesystem, asked through the server's mount: the node learns of it from the
        // server. An unaligned size is rounded down, as the original says.
        #expect(truncate(m.meta, 512 << 20) == 0 && truncate(m.data, 512 << 20) == 0)
        let grow = try run(["resize-devices", "-p", m.mnt, "-m", "512M", "-d", "\((512 << 20) + 100)"])
        #expect(grow.status == 0, "\(grow.stderr)")
        #expect(grow.stdout == "data device size \((512 << 20) + 100) is not a multiple of 4096 data block size, truncating down to \(512 << 20) byte size\n")

        // More than the old data device held, written on the node and read on the server's mount.
        let file = b + "/big"
        let dd = try CLI.runTool("/bin/dd", ["if=/dev/urandom", "of=\(file)", "bs=1M", "count=300", "conv=fsync", "status=none"])
        #expect(dd.status == 0, "\(dd.stderr)")
        let sums = try [file, m.path("big")].map { path in
            let r = try CLI.runTool("/usr/bin/sha256sum", [path])
            try #require(r.status == 0, "\(r.stderr)")
            return String(r.stdout.prefix(64))
        }
        #expect(sums[0] == sums[1])

        for at in [m.mnt, b] {
            #expect(try total("meta", at) == 2 * meta0 && total("data", at) == 2 * data0, "\(at)")
        }
        let df = try run(["df", "-p", b])
        #expect(df.status == 0 && df.stdout.contains("\(2 * data0)"), "\(df.stdout)")

        try m.unmountNode(b)
        try m.unmount()
        let check = try m.check()
        #expect(check.status == 0 && check.stdout.contains("free of \(2 * data0)"), "\(check.stdout)\(check.stderr)")
    }

    /// mkfs -z as the original's: its limits and words, `print` showing the zone size, and
    /// two nodes writing in turn whose files land in zones of their own.
    @Test(.timeLimit(.minutes(3))) func dataZonesKeepEachNodesFilesApart() throws {
        let zone: UInt64 = 1 << 20
        let m = try TestMount(metaSize: 256 << 20, dataSize: 16 << 30, mkfsArgs: ["-z", "\(zone)"])
        defer { m.cleanup() }
        let zero = try run(["mkfs", "-f", "-Q", "0,127.0.0.1,7100", "-z", "0", m.meta, m.data])
        #expect(zero.status == 64 && zero.stderr.hasPrefix("mkfs: must provide non-zero data-alloc-zone-blocks\n"), "\(zero.stderr)")
        let small = try run(["mkfs", "-f", "-Q", "0,127.0.0.1,7100", "-z", "100", m.meta, m.data])
        #expect(small.status == 1 && small.stderr.contains("setting data_alloc_zone_blocks to '100' failed, must be at least 1048576 mount data allocation target blocks"),
                "\(small.stderr)")
        let printed = try run(["print", m.meta])
        #expect(printed.stdout.contains("    data_alloc_zone_blocks: \(zone)\n"), "\(printed.stdout.prefix(800))")

        try m.mount()
        let b = try m.mountNode("b", slot: nil)
        func zones(_ file: String) throws -> Set<UInt64> {
            let r = try run(["get-fiemap", "--json", file])
            try #require(r.status == 0, "\(r.stderr)")
            let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            let map = try #require(obj?["map"] as? [[String: Any]])
            try #require(!map.isEmpty)
            return Set(map.flatMap { e -> [UInt64] in
                let p = UInt64(e["physical"] as? Int ?? 0), n = UInt64(e["length"] as? Int ?? 1)
                return Array((p / zone)...((p + n - 1) / zone))
            })
        }
        var onA = Set<UInt64>(), onB = Set<UInt64>()
        for i in 0..<3 {
            let chunk = [UInt8](repeating: UInt8(i + 1), count: 4 << 20)
            try Sys.writeFile(m.path("a\(i)"), chunk, fsync: true)
            try Sys.writeFile(b + "/b\(i)", chunk, fsync: true)
            onA.formUnion(try zones(m.path("a\(i)")))
            onB.formUnion(try zones(b + "/b\(i)"))
        }
        #expect(onA.count == 1 && onB.count == 1 && onA.isDisjoint(with: onB), "\(onA) \(onB)")
        try m.unmountNode(b)
        try m.unmount()
        #expect(try m.check().status == 0)
    }
}
