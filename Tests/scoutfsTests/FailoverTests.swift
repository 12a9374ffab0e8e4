import Foundation
import Synchronization
import ScoutTestSupport
import Testing

/// Failover with real mounts: three quorum slots of one pair of device files, three daemons
/// on this machine, killed with SIGKILL by the pids this test started. Part of `MountTests`,
/// so that they run one at a time with the other mount tests (timing-sensitive ones among
/// them) rather than beside them.
enum Failover {
    /// Mounts slots 0, 1 and 2 as a, b and c; returns their mount points.
    static func mountThree(_ m: TestMount, _ extra: [String] = []) throws -> [String] {
        try m.mountNodes([("a", 0), ("b", 1), ("c", 2)], ["--recovery-timeout", "10", "--commit-interval", "1"] + extra)
    }

    static func status(_ at: String) -> [String: Any]? {
        guard let r = try? CLI.run(["status", "--json", at]), r.status == 0 else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    }

    /// What the daemon of the mount at `at` logged (empty if nothing yet).
    static func log(of at: String, _ m: TestMount) -> String {
        String(decoding: (try? Sys.readFile(m.log + "-" + URL(fileURLWithPath: at).lastPathComponent)) ?? [], as: UTF8.self)
    }

    /// A fence agent that reports success and leaves the fenced process running (as a power
    /// switch on another machine would look from here), writing each request's
    /// `SCOUTFS_FENCED_REQ_*` variables and then `done` to a file beside the devices; the
    /// agent's path and that file's.
    static func recordingFenceAgent(_ m: TestMount) throws -> (agent: String, requests: String) {
        let requests = m.dir.appendingPathComponent("fenced").path
        let agent = m.dir.appendingPathComponent("fence-agent").path
        let script = "#!/bin/sh\nenv | grep '^SCOUTFS_FENCED_REQ_' >> \(requests)\necho done >> \(requests)\n"
        try Data(script.utf8).write(to: URL(fileURLWithPath: agent))
        chmod(agent, 0o755)
        return (agent, requests)
    }

    /// Unmounts `mounts`, the server's last (the last quorum mounts leave together), then
    /// checks the devices, expecting them clean (`context` leads the failure's message).
    @discardableResult
    static func unmountAndCheck(_ m: TestMount, _ mounts: [String], server: String?, context: String = "",
                                sourceLocation: SourceLocation = #_sourceLocation) throws -> CLI.Result {
        for s in mounts where s != server { try m.unmountNode(s) }
        if let server, mounts.contains(server) { try m.unmountNode(server) }
        let ck = try m.check()
        #expect(ck.status == 0, "\(context)\(ck.stdout)", sourceLocation: sourceLocation)
        return ck
    }

    /// The mount whose daemon runs the server now, if one does.
    static func server(of mounts: [String]) -> String? {
        mounts.first { status($0)?["role"] as? String == "server" }
    }

    /// Creates `name` with `content`, fsynced: once this returns, the file is committed.
    static func writeSynced(_ path: String, _ content: [UInt8]) throws {
        try Sys.writeFile(path, content, fsync: true)
    }

    /// One writer per mount in `dirs`: files fsynced one by one until `stop`; what each
    /// wrote (committed) and every error it met.
    final class Load: Sendable {
        let written = Mutex<[String: [UInt8]]>([:])
        let errors = Mutex<[String]>([])
        let stop = Atomic(false)
        private let threads = Mutex<[ScoutTestSupport.Thread]>([])

        func start(_ dirs: [String], tag: String) {
            for (i, d) in dirs.enumerated() {
                let t = ScoutTestSupport.Thread { [self] in
                    var n = 0
                    while !stop.load(ordering: .acquiring) {
                        let path = "\(d)/\(tag)-\(i)-\(n)"
                        let content = Array("\(path) \(n)".utf8)
                        do {
                            try Failover.writeSynced(path, content)
                            written.withLock { $0[path] = content }
                        } catch {
                            errors.withLock { $0.append("\(path): \(error)") }
                            return
                        }
                        n += 1
                    }
                }
                t.start()
                threads.withLock { $0.append(t) }
            }
        }

        func finish() {
            stop.store(true, ordering: .releasing)
            for t in threads.withLock({ $0 }) { t.join() }
        }
    }
}

extension MountTests {
    /// SIGKILL of the server's daemon while the other two create and fsync files: another
    /// slot is elected, fences it, takes over, and the writers go on without an error; every
    /// file fsynced before or after is there on both survivors, and the filesystem checks
    /// clean. Also measures how long after the kill a lock held by one survivor is granted to
    /// the other (the new server's first hand-over).
    @Test(.timeLimit(.minutes(3))) func serverKilledUnderLoadIsReplacedAndNothingCommittedIsLost() throws {
        let m = try TestMount(slots: [0, 1, 2])
        defer { m.cleanup() }
        let mounts = try Failover.mountThree(m)
        let server = try #require(Failover.server(of: mounts))
        let survivors = mounts.filter { $0 != server }
        for s in survivors { try FileManager.default.createDirectory(atPath: s + "/w-" + URL(fileURLWithPath: s).lastPathComponent, withIntermediateDirectories: false) }
        try FileManager.default.createDirectory(atPath: survivors[0] + "/shared", withIntermediateDirectories: false)
        try Failover.writeSynced(survivors[0] + "/shared/held", [1])

        let load = Failover.Load()
        load.start(survivors.map { $0 + "/w-" + URL(fileURLWithPath: $0).lastPathComponent }, tag: "f")
        usleep(800_000)
        let killedAt = ContinuousClock.now
        m.killNode(server)
        // survivors[0] holds shared's lock for writing; survivors[1] needs it.
        try Failover.writeSynced(survivors[1] + "/shared/taken", [2])
        let handOver = killedAt.duration(to: .now)
        usleep(1_500_000)
        load.finish()

        #expect(load.errors.withLock { $0 }.isEmpty, "writers failed across the takeover: \(load.errors.withLock { $0 })")
        let written = load.written.withLock { $0 }
        #expect(written.count > 10, "the writers wrote only \(written.count) files")
        let newServer = Failover.server(of: survivors)
        #expect(newServer != nil, "no survivor runs the server")
        for (path, content) in written {
            let name = path.split(separator: "/").suffix(2).joined(separator: "/")
            for s in survivors { #expect((try? Sys.readFile(s + "/" + name)) == content, "\(name) lost or damaged on \(s)") }
        }
        #expect(try Sys.readFile(survivors[0] + "/shared/taken") == [2])
        print("failover: first lock hand-over by the new server \(handOver) after the server's SIGKILL; \(written.count) files fsynced across it, none lost")
        let newLog = newServer.map { Failover.log(of: $0, m) } ?? ""
        #expect(newLog.contains("fenced client 1") || newLog.contains("fenced client 2") || newLog.contains("fenced client 3"), "the new server did not fence the old one:\n\(newLog)")

        // The non-server survivor first: the last two quorum mounts leave together.
        try Failover.unmountAndCheck(m, survivors, server: newServer)
    }

    /// SIGKILL of a node holding a write lock: the server sees its process gone, fences it
    /// (already gone), merges its log tree and takes its pool back, and another node gets
    /// the lock; what the killed node fsynced is there, and a file it held open after its
    /// last unlink (an orphan only it kept) is freed once it is reclaimed.
    @Test(.timeLimit(.minutes(2))) func aKilledNodesLocksGoToTheOthers() throws {
        let m = try TestMount(slots: [0, 1, 2])
        defer { m.cleanup() }
        let mounts = try Failover.mountThree(m)
        let server = try #require(Failover.server(of: mounts))
        let others = mounts.filter { $0 != server }
        try FileManager.default.createDirectory(atPath: others[0] + "/d", withIntermediateDirectories: false)
        try Failover.writeSynced(others[0] + "/d/synced", Array("fsynced before the kill".utf8))
        try Sys.writeFile(others[0] + "/d/unsynced", [9])
        try Failover.writeSynced(others[0] + "/d/held", [UInt8](repeating: 5, count: 1 << 20))
        let holder = try MountTests.Background("/bin/sh", ["-c", "exec 3<\(others[0])/d/held; cat"])
        defer { try? holder.input.fileHandleForWriting.close() }
        #expect(eventually(within: 5, every: 0.02) { FileManager.default.fileExists(atPath: "/proc/\(holder.process.processIdentifier)/fd/3") })
        #expect(unlink(others[0] + "/d/held") == 0)
        let fd = open(others[0] + "/d/sync-point", O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0 && fsync(fd) == 0)
        close(fd)
        let killedAt = ContinuousClock.now
        m.killNode(others[0])
        try Failover.writeSynced(others[1] + "/d/after", [3])
        let usable = killedAt.duration(to: .now)
        print("failover: a killed node's write lock was granted to another node \(usable) after its SIGKILL")
        #expect(usable < .seconds(20), "the lock took \(usable) to be usable")
        #expect(try Sys.readFile(others[1] + "/d/synced") == Array("fsynced before the kill".utf8))
        #expect(try Sys.readFile(server + "/d/after") == [3])
        let serverLog = Failover.log(of: server, m)
        #expect(serverLog.contains("was fenced; its locks are dropped, its log tree merged"), "\(serverLog)")
        let swept = eventually(within: 20, every: 0.1) { Failover.log(of: server, m).contains("freed 1 orphaned inode(s)") }
        #expect(swept, "the orphan the killed node held was not freed:\n\(Failover.log(of: server, m).suffix(2000))")
        // The killed slot mounts again as a node.
        let back = try m.mountNode(URL(fileURLWithPath: others[0]).lastPathComponent + "2", slot: mounts.firstIndex(of: others[0])!,
                                   ["--recovery-timeout", "10"])
        #expect(try Sys.readFile(back + "/d/after") == [3])
        try Failover.unmountAndCheck(m, [back, others[1], server], server: server)
    }

    /// Rounds of a random victim (the server or a node) killed at a random moment of a load
    /// on all three; the victim mounts again; after each round every file fsynced so far is
    /// there and the filesystem checks clean. `SCOUTFS_FAILOVER_ROUNDS` sets the count
    /// (default 4, so the suite stays short; the figures in BENCHMARKS.md come from 50).
    @Test(.timeLimit(.minutes(40))) func randomVictimsRoundAfterRound() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["SCOUTFS_FAILOVER_ROUNDS"] ?? "") ?? 4
        let m = try TestMount(slots: [0, 1, 2])
        defer { m.cleanup() }
        var rng = SystemRandomNumberGenerator()
        var committed: [String: [UInt8]] = [:]
        var takeovers: [Duration] = []
        var done = 0
        var lost = 0
        for round in 0..<rounds {
            let mounts = try Failover.mountThree(m)
            for (path, content) in committed {
                for at in mounts { #expect((try? Sys.readFile(at + "/" + path)) == content, "round \(round): \(path) lost or damaged on \(at)") }
            }
            let dirs = mounts.map { $0 + "/r\(round)-" + URL(fileURLWithPath: $0).lastPathComponent }
            for d in dirs { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false) }
            let load = Failover.Load()
            load.start(dirs, tag: "f")
            usleep(UInt32.random(in: 100_000...1_500_000, using: &rng))
            let victim = mounts[Int.random(in: 0..<3, using: &rng)]
            let wasServer = Failover.status(victim)?["role"] as? String == "server"
            let killedAt = ContinuousClock.now
            m.killNode(victim)
            let survivors = mounts.filter { $0 != victim }
            // A survivor's write in the victim's directory needs the lock the victim held.
            let probe = dirs[mounts.firstIndex(of: victim)!].replacingOccurrences(of: victim, with: survivors[0]) + "/probe"
            try Failover.writeSynced(probe, [UInt8(round & 0xff)])
            takeovers.append(killedAt.duration(to: .now))
            usleep(500_000)
            load.finish()
            let victimDir = dirs[mounts.firstIndex(of: victim)!]
            let errors = load.errors.withLock { $0 }.filter { !$0.hasPrefix(victimDir) }
            #expect(errors.isEmpty, "round \(round) (victim \(victim), server: \(wasServer)): writers on survivors failed: \(errors)")
            for (path, content) in load.written.withLock({ $0 }) {
                let rel = String(path.dropFirst(mounts.first { path.hasPrefix($0 + "/") }!.count + 1))
                committed[rel] = content
            }
            committed[String(probe.dropFirst(survivors[0].count + 1))] = [UInt8(round & 0xff)]
            for (path, content) in committed where (try? Sys.readFile(survivors[1] + "/" + path)) != content {
                lost += 1
                Issue.record("round \(round): \(path) lost or damaged")
            }
            let ck = try Failover.unmountAndCheck(m, survivors, server: Failover.server(of: survivors),
                                                  context: "round \(round) (victim \(victim), server: \(wasServer)): ")
            done += 1
            if ck.status != 0 { break }
        }
        let secs = takeovers.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }.sorted()
        if !secs.isEmpty {
            print("failover: \(done) of \(rounds) rounds, \(committed.count) fsynced files, \(lost) lost or damaged; victim's lock usable by a survivor after median \(secs[secs.count / 2]) s, worst \(secs.last!) s")
        }
    }

    /// Three nodes, each in a network namespace of its own: slots 0 and 1 and a plain client.
    /// The client's link is cut while it holds a write lock; the server fences it once the
    /// recovery timeout passes (a fence agent that reports success and leaves the process
    /// running, as a power switch on another machine would look from here), a node waiting
    /// for that lock then gets it, and the client, brought back, is refused: its calls fail
    /// with EIO and nothing it did after the cut reaches the devices. Mounted again, it sees
    /// everything the others did; the filesystem checks clean.
    @Test(.timeLimit(.minutes(3))) func aNodeCutOffIsFencedAndComesBackRefused() throws {
        let net = try TestNetwork(nodes: 3)
        defer { net.remove() }
        let m = try TestMount(slots: [0, 1], addresses: Array(net.address.prefix(2)))
        defer { m.cleanup() }
        let (agent, fenced) = try Failover.recordingFenceAgent(m)
        let opts = ["--recovery-timeout", "3", "--fence-agent", agent, "--commit-interval", "1"]
        let a = try m.mountNode("a", slot: 0, opts, inNetwork: net.names[0])
        let b = try m.mountNode("b", slot: 1, opts, inNetwork: net.names[1])
        let c = try m.mountNode("c", slot: nil, opts, inNetwork: net.names[2])
        let statfs = try CLI.run(["statfs", "-p", c, "-s", "rid"])
        let rid = try #require(UInt64(statfs.stdout.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16), "statfs of c: \(statfs.stdout)\(statfs.stderr)")
        try FileManager.default.createDirectory(atPath: c + "/d", withIntermediateDirectories: false)
        try Failover.writeSynced(c + "/d/before", Array("fsynced before the cut".utf8))

        try net.setLink(2, up: false)
        let cutAt = ContinuousClock.now
        // Written on c after the cut: never committed anywhere.
        try? Sys.writeFile(c + "/d/cut-off", [7])
        // b needs d's lock, which c holds: it gets it once c is fenced.
        try Failover.writeSynced(b + "/d/after", Array("written once c was fenced".utf8))
        let waited = cutAt.duration(to: .now)
        let request = String(decoding: (try? Sys.readFile(fenced)) ?? [], as: UTF8.self)
        #expect(request.contains("SCOUTFS_FENCED_REQ_RID=\(String(rid, radix: 16))\n"), "the agent was not asked to fence c (client \(String(rid, radix: 16))):\n\(request)")
        #expect(request.contains("done"))
        print("failover: a node cut off was fenced and its write lock granted to another node \(waited) after the cut (silence timeout 10 s, recovery timeout 3 s)")

        try net.setLink(2, up: true)
        // Brought back, c is refused and stops.
        let refused = eventually(within: 40, every: 0.2) {
            Failover.log(of: c, m).contains("the server gave this node up")
        }
        #expect(refused, "c came back and was not refused:\n\(Failover.log(of: c, m))")
        var eio: Int32 = 0
        let failed = eventually(within: 10, every: 0.2) {
            do {
                try Failover.writeSynced(c + "/d/refused-\(UUID().uuidString)", [1])
                return false
            } catch let e as Sys.Failure {
                eio = e.errno
                return true
            } catch {
                return true
            }
        }
        #expect(failed && eio == EIO, "a write on the fenced node did not fail with EIO (errno \(eio))")

        m.killNode(c)
        let c2 = try m.mountNode("c2", slot: nil, opts, inNetwork: net.names[2])
        #expect(try Sys.readFile(c2 + "/d/before") == Array("fsynced before the cut".utf8))
        #expect(try Sys.readFile(c2 + "/d/after") == Array("written once c was fenced".utf8))
        #expect(!FileManager.default.fileExists(atPath: c2 + "/d/cut-off"), "what the fenced node wrote after the cut reached the devices")
        try Failover.unmountAndCheck(m, [c2, b, a], server: a)
    }

    /// SIGKILL of the server in the middle of merging a node's log tree (the merge of a big
    /// tree goes in chunks, each committed; a small metadata device keeps the chunks small):
    /// the node's commit was in flight, the new server's record shows it made and the tree
    /// half merged, and the node commits it again asking for the merge, which the new server
    /// finishes. Every file is there on every mount and the filesystem checks clean.
    @Test(.timeLimit(.minutes(4))) func serverKilledMidMergeHasTheMergeFinishedByTheNext() throws {
        let m = try TestMount(metaSize: 256 << 20, slots: [0, 1, 2])
        defer { m.cleanup() }
        let mounts = try Failover.mountThree(m, ["--merge-threshold", "15000"])
        let server = try #require(Failover.server(of: mounts))
        let survivors = mounts.filter { $0 != server }
        let writer = survivors[0]
        let statfs = try CLI.run(["statfs", "-p", writer, "-s", "rid"])
        let rid = String(try #require(UInt64(statfs.stdout.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16)), radix: 16)
        let chunk = "merging the log tree of client \(rid): chunk 1 committed"
        let finished = "merged the log tree of client \(rid):"
        try FileManager.default.createDirectory(atPath: writer + "/m", withIntermediateDirectories: false)

        // Files until the server is seen merging the writer's tree, then it is killed.
        let stop = Atomic(false)
        let created = Mutex(0)
        let failure = Mutex<String?>(nil)
        let creator = ScoutTestSupport.Thread {
            var n = 0
            while !stop.load(ordering: .acquiring) && n < 60_000 {
                do {
                    try Sys.writeFile(writer + "/m/f\(n)", Array("file \(n)".utf8))
                } catch {
                    failure.withLock { $0 = "m/f\(n): \(error)" }
                    return
                }
                n += 1
                created.withLock { $0 = n }
            }
        }
        creator.start()
        let seen = eventually(within: 120, every: 0.005) { Failover.log(of: server, m).contains(chunk) }
        if seen { m.killNode(server) }
        stop.store(true, ordering: .releasing)
        creator.join()
        try #require(seen, "the server never merged the writer's tree in chunks (\(created.withLock { $0 }) files):\n\(Failover.log(of: server, m).suffix(3000))")
        #expect(failure.withLock { $0 } == nil, "the writer failed across the takeover: \(failure.withLock { $0 } ?? "")")
        let oldLog = Failover.log(of: server, m)
        try #require(!oldLog.contains(finished), "the merge finished before the kill landed; nothing was cut short")

        // An fsync on the writer makes its commit (and the merge) land on the new server.
        try Failover.writeSynced(writer + "/m/last", [1])
        let newServer = try #require(Failover.server(of: survivors), "no survivor runs the server")
        let resumed = eventually(within: 30, every: 0.1) { Failover.log(of: newServer, m).contains(finished) }
        #expect(resumed, "the new server did not finish the merge of the writer's tree:\n\(Failover.log(of: newServer, m).suffix(3000))")
        let n = created.withLock { $0 }
        for s in survivors {
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: s + "/m"))
            #expect(names.count == n + 1, "\(s) lists \(names.count) of \(n + 1) files")
            for i in stride(from: 0, to: n, by: max(1, n / 200)) {
                #expect((try? Sys.readFile(s + "/m/f\(i)")) == Array("file \(i)".utf8), "m/f\(i) lost or damaged on \(s)")
            }
        }
        print("failover: server killed while merging a node's log tree after \(n) files; the new server finished the merge")
        try Failover.unmountAndCheck(m, survivors, server: newServer)
    }

    /// Record locks outlive the server that granted them: a node holding an flock and a POSIX
    /// range when the server is killed tells the new server, which answers no lock call
    /// before it knows them; the other node still finds both held, then gets them once the
    /// holder lets go.
    @Test(.timeLimit(.minutes(3))) func recordLocksAreKeptAcrossATakeover() throws {
        let m = try TestMount(slots: [0, 1, 2])
        defer { m.cleanup() }
        let mounts = try Failover.mountThree(m)
        let server = try #require(Failover.server(of: mounts))
        let nodes = mounts.filter { $0 != server }
        let (holderNode, other) = (nodes[0], nodes[1])
        try Failover.writeSynced(holderNode + "/lockfile", Array("locked".utf8))
        let holder = try MountTests.Background("/usr/bin/flock", ["-o", "-x", holderNode + "/lockfile", "cat"])
        #expect(try eventually(every: 0.02) { try MountTests.tryFlock(other + "/lockfile", "-s") == 1 }, "the flock was never taken")
        let fdH = open(holderNode + "/lockfile", O_RDWR), fdO = open(other + "/lockfile", O_RDWR)
        #expect(fdH >= 0 && fdO >= 0)
        var w = Sys.byteRange(F_WRLCK, start: 0, length: 100)
        #expect(fcntl(fdH, F_SETLK, &w) == 0)

        m.killNode(server)
        // Asked during the takeover, answered once the new server knows the locks.
        #expect(try MountTests.tryFlock(other + "/lockfile", "-x") == 1, "the other node took an flock a node held across the takeover")
        var r = Sys.byteRange(F_RDLCK, start: 50, length: 1)
        #expect(fcntl(fdO, F_SETLK, &r) == -1 && (errno == EAGAIN || errno == EACCES), "the other node read-locked a byte held for writing across the takeover")
        var probe = r
        #expect(fcntl(fdO, F_GETLK, &probe) == 0)
        #expect(probe.l_type == Int16(F_WRLCK) && probe.l_start == 0 && probe.l_len == 100, "F_GETLK after the takeover: \(probe)")
        r.l_start = 100
        #expect(fcntl(fdO, F_SETLK, &r) == 0, "a free byte could not be locked after the takeover")
        let holderLog = Failover.log(of: holderNode, m)
        #expect(holderLog.contains("the new server keeps this node's 2 record lock(s)"), "\(holderLog.suffix(2000))")

        // The holder lets go: the other node gets both.
        try holder.input.fileHandleForWriting.close()
        #expect(holder.ended(within: 5))
        #expect(try eventually(every: 0.05) { try MountTests.tryFlock(other + "/lockfile", "-x") == 0 }, "the flock outlived its holder after the takeover")
        close(fdH)
        r.l_start = 50
        #expect(eventually(every: 0.05) { fcntl(fdO, F_SETLK, &r) == 0 }, "the POSIX lock outlived its holder's close after the takeover")
        close(fdO)

        let newServer = Failover.server(of: nodes)
        try Failover.unmountAndCheck(m, nodes, server: newServer)
    }

    /// Three slots, each in a network namespace of its own. The server's link is cut: hearing
    /// no majority, it stops serving (its own filesystem fails with EIO from then), the other
    /// two elect a new server, the nodes leave the silent old one as soon as the quorum blocks
    /// name the new one, and they go on writing. Its link
    /// back, the old server's slot follows the new leader rather than forcing an election
    /// (its term stayed while it was cut off). Mounted again, it sees what the others did.
    @Test(.timeLimit(.minutes(3))) func aServerCutOffStopsAndTheMajorityGoesOn() throws {
        let net = try TestNetwork(nodes: 3)
        defer { net.remove() }
        let m = try TestMount(slots: [0, 1, 2], addresses: net.address)
        defer { m.cleanup() }
        let (agent, fenced) = try Failover.recordingFenceAgent(m)
        let opts = ["--recovery-timeout", "5", "--fence-agent", agent, "--commit-interval", "1"]
        let mounts = try m.mountNodes([("a", 0), ("b", 1), ("c", 2)], opts, networks: net.names)
        let server = try #require(Failover.server(of: mounts))
        let cutSlot = mounts.firstIndex(of: server)!
        let survivors = mounts.filter { $0 != server }
        try FileManager.default.createDirectory(atPath: server + "/d", withIntermediateDirectories: false)
        try Failover.writeSynced(server + "/d/before", Array("fsynced before the cut".utf8))

        try net.setLink(cutSlot, up: false)
        let cutAt = ContinuousClock.now
        // A survivor writes where the old server held the lock: it waits for the new server.
        try Failover.writeSynced(survivors[0] + "/d/after", Array("written by the majority".utf8))
        let resumed = cutAt.duration(to: .now)
        let newServer = try #require(Failover.server(of: survivors), "no survivor serves")
        #expect(try Sys.readFile(survivors[1] + "/d/after") == Array("written by the majority".utf8))
        let oldLog = Failover.log(of: server, m)
        #expect(oldLog.contains("no longer leads"), "the cut-off server never stopped:\n\(oldLog.suffix(2000))")
        // Cut off from the network but not from the devices, the old server recorded its stop
        // in its quorum block; had it not, the new leader would have fenced it (the agent).
        let requests = String(decoding: (try? Sys.readFile(fenced)) ?? [], as: UTF8.self)
        let fencedIt = requests.contains("SCOUTFS_FENCED_REQ_SLOT=\(cutSlot)\n") && requests.contains("quorum_block_leader")
        #expect(fencedIt || oldLog.contains("election: quorum slot \(cutSlot) no longer leads"), "the old server neither stopped nor was fenced")
        var eio: Int32 = 0
        do {
            try Failover.writeSynced(server + "/d/cut-off", [1])
        } catch let e as Sys.Failure {
            eio = e.errno
        }
        #expect(eio == EIO, "a write on the stopped server's mount did not fail with EIO (errno \(eio))")
        print("failover: the majority's first write after the server's link was cut landed \(resumed) after the cut")

        // Back on the network, the old server's slot follows: the server stays where it is.
        let newLog = { Failover.log(of: newServer, m) }
        let electionsBefore = newLog().components(separatedBy: "no longer leads").count
        try net.setLink(cutSlot, up: true)
        sleep(4)
        #expect(Failover.server(of: survivors) == newServer, "the server moved when the cut-off slot came back")
        #expect(newLog().components(separatedBy: "no longer leads").count == electionsBefore, "the new server stepped down when the old one came back:\n\(newLog().suffix(2000))")
        try Failover.writeSynced(survivors[1] + "/d/later", [2])

        m.killNode(server)
        let back = try m.mountNode(URL(fileURLWithPath: server).lastPathComponent + "2", slot: cutSlot, opts, inNetwork: net.names[cutSlot])
        #expect(try Sys.readFile(back + "/d/before") == Array("fsynced before the cut".utf8))
        #expect(try Sys.readFile(back + "/d/after") == Array("written by the majority".utf8))
        #expect(try Sys.readFile(back + "/d/later") == [2])
        #expect(!FileManager.default.fileExists(atPath: back + "/d/cut-off"))
        try Failover.unmountAndCheck(m, [back] + survivors, server: newServer)
    }
}
