import ArgumentParser
import Foundation
import Logging
import ScoutFormat
import ScoutFS
import ScoutFUSE
import ScoutNet
import ScoutServer
import ScoutStore

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a filesystem through FUSE.",
        discussion: """
            Returns once the filesystem is mounted and serving; the daemon keeps running until \
            `scoutfs unmount MNT` or SIGTERM, which commit everything and unmount. With -f the \
            daemon stays in the foreground. The mounts of quorum slots elect a leader (a \
            majority of the configured slots; with one or two slots a mount elects itself), \
            which runs the server at its slot's address; every other mount (another slot, or \
            none: a plain client) connects to the server the quorum blocks name, waiting while \
            there is none. When the server's mount dies or leaves, the others elect another, \
            which fences the old one (--fence-agent) and takes over.
            """
    )

    @Option(name: .customLong("quorum-slot"), help: "This mount's quorum slot (as given to mkfs -Q); without it the mount is a plain client.")
    var quorumSlot: Int?

    @Option(name: .customLong("cluster-key"), help: ArgumentHelp("The cluster key file mkfs wrote (default: \(clusterKeyDirectory)/cluster-FSID.key).", valueName: "PATH"))
    var clusterKey: String?

    @Option(name: .customLong("server-wait"), help: "Seconds a mount that is not the server waits for the server to be reachable.")
    var serverWait: Int = 300

    @Option(name: .customLong("fence-agent"), help: ArgumentHelp("A program that fences a lost mount (given SCOUTFS_FENCED_REQ_RID, _IP, _HOST, _BOOT_ID, _PID, _SLOT, _REASON; exit 0 when fenced). Default: stop the mount's daemon if it runs on this machine.", valueName: "PATH"))
    var fenceAgent: String?

    @Option(name: .customLong("recovery-timeout"), help: "Seconds the server waits for a node that lost its connection (or a node of the previous server) to come back before fencing it.")
    var recoveryTimeout: Int = 30

    @Option(name: .customShort("o"), help: "Comma-separated FUSE mount options (allow_other, …); acl (the default) or noacl for POSIX ACLs.")
    var options: [String] = []

    /// Every -o option, one by one.
    var splitOptions: [String] {
        var out: [String] = []
        for o in options { out += o.split(separator: ",").map { String($0) } }
        return out
    }

    /// The -o options for FUSE: all but acl and noacl, which are the filesystem's.
    var fuseOptions: [String] { splitOptions.filter { $0 != "acl" && $0 != "noacl" } }

    /// POSIX ACLs on unless the last of acl and noacl given says otherwise.
    var posixACLs: Bool {
        let said: String? = splitOptions.last { $0 == "acl" || $0 == "noacl" }
        return said != "noacl"
    }

    @Flag(name: .customShort("f"), help: "Stay in the foreground; log to stderr.")
    var foreground = false

    @Option(help: "Where the daemon logs once detached.")
    var log: String = "/var/log/scoutfs.log"

    @Option(name: .customLong("log-level"), help: "The least important messages logged: trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(help: ArgumentHelp("Serve Prometheus metrics on http://ADDRESS:PORT/metrics (off unless given).", valueName: "ADDRESS:PORT"))
    var metrics: String?

    @Option(help: "Seconds between commits of the open transaction.")
    var commitInterval: Int = 5

    @Option(name: .customLong("merge-threshold"), help: ArgumentHelp("Items a node's log tree may hold before the server merges it into the fs tree (at the commit that passes it). Only the server's mount's setting counts, while it serves.", valueName: "ITEMS"))
    var mergeThreshold: UInt64 = 100_000

    @Option(name: .customLong("cache-mib"), help: "Memory for cached metadata blocks, in MiB, reserved at mount; the items decoded from them are kept to half that. A mount that takes over as the cluster's server after a failover keeps a second block cache as large for it, taken as it fills. The daemon's RSS is about these plus the open transaction's dirty blocks and what it keeps of each inode the kernel holds (see --kernel-inodes).")
    var cacheMiB: Int = 256

    @Option(name: .customLong("kernel-inodes"), help: ArgumentHelp("Most files the kernel may keep cached (names and attributes) before the oldest it does not use are dropped; the daemon keeps about 150 bytes for each it holds. 0: no bound, the kernel keeps them until memory runs short.", valueName: "COUNT"))
    var kernelInodes: Int = 500_000

    @Flag(name: .customLong("daemon-child"), help: .hidden)
    var daemonChild = false

    @Argument(help: "Metadata device.") var meta: String
    @Argument(help: "Data device.") var data: String
    @Argument(help: "Mount point (an existing directory).") var mountpoint: String

    func validate() throws {
        if let quorumSlot, quorumSlot < 0 || quorumSlot >= Layout.maxQuorumSlots {
            throw ValidationError("--quorum-slot must be 0 to \(Layout.maxQuorumSlots - 1)")
        }
        if serverWait < 0 { throw ValidationError("--server-wait must be 0 or more seconds") }
        if recoveryTimeout < 1 { throw ValidationError("--recovery-timeout must be at least 1 second") }
        if let fenceAgent, access(fenceAgent, X_OK) != 0 {
            throw ValidationError("--fence-agent \(fenceAgent) is not an executable file")
        }
        if commitInterval < 1 { throw ValidationError("--commit-interval must be at least 1 second") }
        if mergeThreshold < 1 { throw ValidationError("--merge-threshold must be at least 1 item") }
        if cacheMiB < 16 { throw ValidationError("--cache-mib must be at least 16") }
        if kernelInodes < 0 { throw ValidationError("--kernel-inodes must be 0 (no bound) or more") }
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be trace, debug, info, notice, warning, error or critical, not '\(logLevel)'")
        }
        if let metrics, Self.metricsAddress(metrics) == nil {
            throw ValidationError("--metrics takes ADDRESS:PORT (e.g. 127.0.0.1:9127), not '\(metrics)'")
        }
    }

    /// "127.0.0.1:9127" → ("127.0.0.1", 9127); "[::1]:9127" too.
    static func metricsAddress(_ s: String) -> (host: String, port: Int)? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(s[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    func run() throws {
        if foreground || daemonChild {
            try serve()
        } else {
            try spawnDaemon()
        }
    }

    /// Starts this command again as a detached child in the foreground and waits until it says
    /// it is serving (or fails, passing on its message).
    func spawnDaemon() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0].hasPrefix("/")
            ? CommandLine.arguments[0] : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0])
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            p.executableURL = URL(fileURLWithPath: exe)
        }
        var args = ["mount", "--daemon-child", "--log", log, "--server-wait", String(serverWait),
                    "--commit-interval", String(commitInterval), "--cache-mib", String(cacheMiB), "--kernel-inodes", String(kernelInodes), "--log-level", logLevel]
        if let metrics { args += ["--metrics", metrics] }
        if let quorumSlot { args += ["--quorum-slot", String(quorumSlot)] }
        if let fenceAgent { args += ["--fence-agent", fenceAgent] }
        args += ["--recovery-timeout", String(recoveryTimeout), "--merge-threshold", String(mergeThreshold)]
        if let clusterKey { args += ["--cluster-key", clusterKey] }
        for o in options { args += ["-o", o] }
        args += [meta, data, mountpoint]
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let line = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        if line.hasPrefix("ready") {
            print("mounted \(MountRegistry.canonical(mountpoint)) (daemon pid \(p.processIdentifier), log \(log))")
            return
        }
        p.waitUntilExit()
        let msg = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        FileHandle.standardError.write(Data((msg.isEmpty ? "scoutfs mount: the daemon exited with status \(p.terminationStatus)\n" : msg).utf8))
        throw ExitCode(1)
    }

    /// The slot (or the devices, for mkfs) is locked by another process here. If it is a
    /// daemon whose mount the kernel has already dropped (a plain umount: the daemon is
    /// committing on its way out), wait for it to finish, as a remount straight after an
    /// unmount expects; a slot that is really mounted is refused.
    func waitForLeavingDaemon(_ metaDev: FileBlockDevice, _ dataDev: FileBlockDevice) throws {
        let metaPath = MountRegistry.canonical(meta)
        let holders = MountRegistry.all().filter { ($0.meta == metaPath || $0.data == MountRegistry.canonical(data)) && $0.quorumSlot == quorumSlot }
        if let quorumSlot, let mounted = holders.first(where: { MountRegistry.isMounted($0.mountpoint) }) {
            throw StoreError(.exists, "quorum slot \(quorumSlot) of \(meta) is already mounted on this machine (on \(mounted.mountpoint), daemon pid \(mounted.pid)); mount another slot, or none (a plain client)")
        }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            usleep(50_000)
            if try MountClaim.lockForMount(meta: metaDev, data: dataDev, slot: quorumSlot) { return }
        }
        throw StoreError(.exists, "\(meta) or \(data) is in use by another process on this machine (mkfs, or a mount of quorum slot \(quorumSlot.map(String.init) ?? "-")) and was not let go within 30 s")
    }

    func serve() throws {
        if daemonChild { setsid() }
        signal(SIGPIPE, SIG_IGN)
        // A parent that spawned us from a thread with signals blocked (libdispatch workers do)
        // passes its mask on; SIGTERM must reach libfuse's handler or the daemon never unmounts.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for s in [SIGTERM, SIGINT, SIGHUP] {
            sigaddset(&stopSignals, s)
            signal(s, SIG_DFL)
        }
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        let mnt = MountRegistry.canonical(mountpoint)
        let fsys: Filesystem
        let fuse: FUSEMount
        let claim: MountClaim?
        let role: String
        var local: LocalCluster?
        var warnings: [String] = []
        let logger = DaemonLog.start(level: Logger.Level(rawValue: logLevel) ?? .info, style: DaemonLogHandler.style(foreground: foreground && !daemonChild))
        let logLine = DaemonLog.sink(logger)
        var mountMetrics: MountMetrics?
        var leadership: MountLeadership?
        let published = Published()
        var serverAt: (@Sendable () -> (host: String, port: Int)?)?
        do {
            // Reads past the page cache on both devices: another node (another machine on the
            // SAN, or another process here) writes them, and a cached page would be stale.
            let metaDev = try openDevice(meta, directReads: true)
            let dataDev = try openDevice(data, directReads: true)
            if try !MountClaim.lockForMount(meta: metaDev, data: dataDev, slot: quorumSlot) {
                try waitForLeavingDaemon(metaDev, dataDev)
            }
            let sb = try Store.readSuperblock(metaDev)
            let have = sb.quorumSlots.map { String($0.slot) }.joined(separator: ", ")
            if let quorumSlot, !sb.quorumSlots.contains(where: { Int($0.slot) == quorumSlot }) {
                throw StoreError(.invalid, "quorum slot \(quorumSlot) is not configured in \(meta) (slots: \(have))")
            }
            guard !sb.quorumSlots.isEmpty else {
                throw StoreError(.corrupt, "\(meta) configures no quorum slot, so no mount can run the server; run `scoutfs print \(meta)`")
            }
            let keyPath = clusterKey ?? defaultClusterKeyPath(fsid: sb.fsid)
            let key: ClusterKey
            do {
                key = try ClusterKey.load(from: keyPath)
            } catch {
                throw StoreError(.invalid, "\(error); every mount needs the key mkfs wrote (copy it from the machine that ran mkfs, or give it with --cluster-key)")
            }
            let locate = ServerLocator.resolver(meta: metaDev, superblock: sb)
            serverAt = locate
            claim = try quorumSlot.map { try MountClaim(meta: metaDev, superblock: sb, slot: $0, log: logLine) }
            do {
                try claim?.start()
                let cacheBlocks = cacheMiB << 20 / Layout.metaBlockSize
                // Items decoded from those blocks: half as much again, enough for the items of
                // every directory and inode a busy mount works in.
                let itemCacheBytes = cacheMiB << 20 / 2
                try BlockArena.shared.reserve(slots: cacheBlocks)
                // A slot's client id is the same at every mount; a plain client's is random,
                // above every slot's.
                let id = quorumSlot.map { FilesystemOptions.clientID(slot: $0) }
                    ?? UInt64.random(in: UInt64(Layout.maxQuorumSlots) + 1 ... UInt64.max)
                let fsOptions = FilesystemOptions(commitInterval: .seconds(commitInterval), mergeThreshold: mergeThreshold, clientID: id,
                                                  posixACLs: posixACLs)
                let agent: any FenceAgent = fenceAgent.map { ScriptFenceAgent(path: $0) } ?? LocalFenceAgent()
                let fencer = Fencer(agent: agent, log: logLine)
                var leads: UInt64?
                if let quorumSlot, let claim {
                    let l = try MountLeadership(slot: quorumSlot, claim: claim, meta: metaDev, data: dataDev, superblock: sb, key: key,
                                                fencer: fencer, cacheBlocks: cacheBlocks, itemCacheBytes: itemCacheBytes, recoveryTimeout: .seconds(recoveryTimeout),
                                                mergeThreshold: mergeThreshold,
                                                onServing: { serving in
                                                    published.update {
                                                        $0.role = serving ? "server" : "client"
                                                        $0.server = locate().map { "\($0.host) port \($0.port)" }
                                                    }
                                                },
                                                log: logLine)
                    leadership = l
                    try l.start()
                    if case .lead(let term) = try l.waitForRole(.seconds(max(serverWait, 1))) { leads = term }
                }
                if let leads, let leadership {
                    role = "server"
                    let cluster = try leadership.serveInProcess(leads)
                    local = cluster
                    warnings = cluster.superblockProblems
                    fsys = try Filesystem(joining: cluster, options: fsOptions)
                } else {
                    role = "client"
                    let address = quorumSlot.flatMap { s in sb.quorumSlots.first { Int($0.slot) == s }?.address } ?? ""
                    let me = MountClaim.Identity.current.mounted(rid: id, slot: quorumSlot, address: address)
                    logLine("connecting to the server the quorum names as client \(String(id, radix: 16))")
                    let node = try NodeCluster(meta: metaDev, data: dataDev, server: locate,
                                               key: key, id: id, mounted: me, cacheBlocks: cacheBlocks, cacheBytes: itemCacheBytes,
                                               waitForServer: .seconds(serverWait), log: logLine)
                    fsys = try Filesystem(node: node, options: fsOptions)
                    leadership?.becameNode()
                }
                fsys.logSink = logLine
                // A node that died holding unlinked inodes open leaves orphans only a live
                // client can free: this mount does, once its server has reclaimed that node.
                let sweeping = fsys
                leadership?.whenNodeReclaimed { rid in
                    Thread.detachNewThread {
                        do {
                            try sweeping.reclaimOrphans()
                        } catch {
                            logLine("error: freeing the orphans of client \(String(rid, radix: 16)), which was reclaimed, failed: \(error); the next mount frees them")
                        }
                    }
                }
                // Before the mount: its request timers are made through the metrics system.
                if metrics != nil { mountMetrics = MountMetrics.start(fsys) }
                fuse = try FUSEMount(filesystem: fsys, mountpoint: mnt, source: "\(meta):\(data)", options: fuseOptions,
                                     requestTimerLabel: metrics == nil ? nil : MountMetrics.requestTimerLabel, kernelInodes: kernelInodes)
            } catch {
                leadership?.finish()
                local?.stopServing()
                try? claim?.release()
                throw error
            }
        } catch {
            throw fail("mount", error)
        }
        let service = ControlService(filesystem: fsys, mountpoint: mnt, invalidate: fuse.inodeInvalidator)
        let control: ControlServer
        var endpoint: MetricsEndpoint?
        do {
            if let mountMetrics, let metrics, let (host, port) = Self.metricsAddress(metrics) {
                do {
                    endpoint = try MetricsEndpoint(host: host, port: port, metrics: mountMetrics)
                } catch {
                    throw StoreError(.io, "cannot serve metrics on \(metrics): \(error); is another program using the port?")
                }
            }
            try FileManager.default.createDirectory(atPath: MountRegistry.directory, withIntermediateDirectories: true)
            control = try ControlServer(path: MountRegistry.controlSocket(for: mnt), log: logLine) { body, files, peer in
                service.handle(body, files: files, peer: peer)
            }
            try control.start()
        } catch {
            endpoint?.close()
            fuse.close()
            leadership?.finish()
            try? claim?.release()
            throw fail("mount", error)
        }
        let record = MountRecord(pid: getpid(), mountpoint: mnt, meta: MountRegistry.canonical(meta),
                                 data: MountRegistry.canonical(data), quorumSlot: quorumSlot, role: role,
                                 server: serverAt?().map { "\($0.host) port \($0.port)" },
                                 fsid: hex(fsys.fsid),
                                 committedSeq: fsys.committedSeq, log: daemonChild ? log : nil, control: control.path,
                                 warnings: warnings.isEmpty ? nil : warnings)
        published.start(record)

        let committer = Committer(fs: fsys, interval: .seconds(commitInterval)) { seq in
            published.update { $0.committedSeq = seq }
        }
        do {
            try committer.start()
        } catch {
            control.stop()
            endpoint?.close()
            fuse.close()
            leadership?.finish()
            try? claim?.release()
            throw fail("mount", error)
        }

        if daemonChild {
            // Tell the parent we serve, then detach from its pipes: later output goes to the log.
            FileHandle.standardOutput.write(Data("ready\n".utf8))
            let fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            let target = fd >= 0 ? fd : open("/dev/null", O_WRONLY)
            dup2(target, STDOUT_FILENO)
            dup2(target, STDERR_FILENO)
            if target > STDERR_FILENO { close(target) }
        } else {
            print("serving \(mnt); unmount with `scoutfs unmount \(mnt)` or Ctrl-C")
        }
        logger.info("mounted \(meta) \(data) on \(mnt), \(quorumSlot.map { "quorum slot \($0)" } ?? "no quorum slot"), \(role), pid \(getpid())")
        if let endpoint { logger.info("metrics on \(endpoint.url)") }
        for w in warnings { logger.warning("\(w)") }

        let served = MountServices.run([FUSEService(fuse: fuse)] + (endpoint.map { [MetricsService(endpoint: $0)] } ?? []), logger: logger)
        control.stop()
        committer.stop()
        var status: Int32 = served ? 0 : 1
        do {
            try fsys.syncAndMerge()
        } catch {
            logger.error("final commit failed: \(error); the last committed state is seq \(fsys.committedSeq)")
            status = 1
        }
        fuse.close()
        fsys.leave()
        if let local, !local.nodes.isEmpty {
            logLine("leaving while \(local.nodes.count) node(s) are mounted: they go on with the server the other quorum slots elect next")
        }
        // The server ends and says so before this slot leaves the election, so the next
        // leader finds it stopped and need not fence it.
        leadership?.finish(lingering: { why in published.update { $0.lingering = why } })
        do {
            try claim?.release()
        } catch {
            logger.error("clearing the claim in quorum slot \(quorumSlot ?? -1) failed: \(error); the next mount on another host waits for it to go stale")
        }
        MountRegistry.remove(mnt)
        logger.info("unmounted \(mnt) at seq \(fsys.committedSeq)")
        if status != 0 { throw ExitCode(status) }
    }
}
