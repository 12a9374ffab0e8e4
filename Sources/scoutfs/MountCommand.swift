import ArgumentParser
import Foundation
import ScoutFormat
import ScoutFS
import ScoutFUSE
import ScoutNet
import ScoutStore

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a filesystem through FUSE.",
        discussion: """
            Returns once the filesystem is mounted and serving; the daemon keeps running until \
            `scoutfs unmount MNT` or SIGTERM, which commit everything and unmount. With -f the \
            daemon stays in the foreground.
            """
    )

    @Option(name: .customLong("quorum-slot"), help: "This mount's quorum slot (as given to mkfs -Q).")
    var quorumSlot: Int

    @Option(name: .customShort("o"), help: "Comma-separated FUSE mount options (allow_other, …).")
    var options: [String] = []

    @Flag(name: .customShort("f"), help: "Stay in the foreground; log to stderr.")
    var foreground = false

    @Option(help: "Where the daemon logs once detached.")
    var log: String = "/var/log/scoutfs.log"

    @Option(help: "Seconds between commits of the open transaction.")
    var commitInterval: Int = 5

    @Option(name: .customLong("cache-mib"), help: "Memory for cached metadata blocks, in MiB (the daemon's RSS is about this plus the open transaction's dirty blocks).")
    var cacheMiB: Int = 256

    @Flag(name: .customLong("daemon-child"), help: .hidden)
    var daemonChild = false

    @Argument(help: "Metadata device.") var meta: String
    @Argument(help: "Data device.") var data: String
    @Argument(help: "Mount point (an existing directory).") var mountpoint: String

    func validate() throws {
        if quorumSlot < 0 || quorumSlot >= Layout.maxQuorumSlots {
            throw ValidationError("--quorum-slot must be 0 to \(Layout.maxQuorumSlots - 1)")
        }
        if commitInterval < 1 { throw ValidationError("--commit-interval must be at least 1 second") }
        if cacheMiB < 16 { throw ValidationError("--cache-mib must be at least 16") }
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
        var args = ["mount", "--daemon-child", "--quorum-slot", String(quorumSlot), "--log", log,
                    "--commit-interval", String(commitInterval), "--cache-mib", String(cacheMiB)]
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

    /// The devices are locked by another process here. If it is a daemon whose mount the
    /// kernel has already dropped (a plain umount: the daemon is committing on its way out),
    /// wait for it to finish, as a remount straight after an unmount expects; devices that are
    /// really mounted are refused, whatever the slot.
    func waitForLeavingDaemon(_ metaDev: FileBlockDevice, _ dataDev: FileBlockDevice) throws {
        let metaPath = MountRegistry.canonical(meta)
        let holders = MountRegistry.all().filter { $0.meta == metaPath || $0.data == MountRegistry.canonical(data) }
        if let mounted = holders.first(where: { MountRegistry.isMounted($0.mountpoint) }) {
            throw StoreError(.exists, "\(meta) is already mounted on this machine (on \(mounted.mountpoint), quorum slot \(mounted.quorumSlot), daemon pid \(mounted.pid)); until the cluster is built only one mount may use the devices: unmount it first")
        }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            usleep(50_000)
            if try MountClaim.lockDevices(meta: metaDev, data: dataDev) { return }
        }
        throw StoreError(.exists, "\(meta) or \(data) is in use by another process on this machine (its lock was not released within 30 s); until the cluster is built only one mount may use the devices")
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
        let claim: MountClaim
        var warnings: [String] = []
        let logLine: @Sendable (String) -> Void = { line in FileHandle.standardError.write(Data("scoutfs: \(line)\n".utf8)) }
        do {
            let metaDev = try openDevice(meta, directReads: true)
            let dataDev = try openDevice(data)
            if try !MountClaim.lockDevices(meta: metaDev, data: dataDev) {
                try waitForLeavingDaemon(metaDev, dataDev)
            }
            let store = try Store.open(meta: metaDev, data: dataDev,
                                       options: StoreOptions(cacheBlocks: cacheMiB << 20 / Layout.metaBlockSize))
            warnings = store.superblockProblems
            guard store.superblock.quorumSlots.contains(where: { Int($0.slot) == quorumSlot }) else {
                let have = store.superblock.quorumSlots.map { String($0.slot) }.joined(separator: ", ")
                throw StoreError(.invalid, "quorum slot \(quorumSlot) is not configured in \(meta) (slots: \(have))")
            }
            claim = try MountClaim(meta: metaDev, superblock: store.superblock, slot: quorumSlot, log: logLine)
            do {
                try claim.start()
                fsys = try Filesystem(store: store, options: FilesystemOptions(commitInterval: .seconds(commitInterval),
                                                                                 clientID: FilesystemOptions.clientID(slot: quorumSlot)))
                fsys.logSink = logLine
                fuse = try FUSEMount(filesystem: fsys, mountpoint: mnt, source: "\(meta):\(data)", options: options)
            } catch {
                try? claim.release()
                throw error
            }
        } catch {
            throw fail("mount", error)
        }
        let service = ControlService(filesystem: fsys, mountpoint: mnt, invalidate: fuse.inodeInvalidator)
        let control: ControlServer
        do {
            try FileManager.default.createDirectory(atPath: MountRegistry.directory, withIntermediateDirectories: true)
            control = try ControlServer(path: MountRegistry.controlSocket(for: mnt), log: { line in
                FileHandle.standardError.write(Data("scoutfs: \(line)\n".utf8))
            }) { body, file, peer in service.handle(body, file: file, peer: peer) }
            try control.start()
        } catch {
            fuse.close()
            try? claim.release()
            throw fail("mount", error)
        }
        let record = MountRecord(pid: getpid(), mountpoint: mnt, meta: MountRegistry.canonical(meta),
                                 data: MountRegistry.canonical(data), quorumSlot: quorumSlot,
                                 fsid: hex(fsys.fsid),
                                 committedSeq: fsys.committedSeq, log: daemonChild ? log : nil, control: control.path,
                                 warnings: warnings.isEmpty ? nil : warnings)
        try? MountRegistry.publish(record)

        let committer = Committer(fs: fsys, interval: .seconds(commitInterval)) { seq in
            var r = record
            r.committedSeq = seq
            try? MountRegistry.publish(r)
        }
        do {
            try committer.start()
        } catch {
            control.stop()
            fuse.close()
            try? claim.release()
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
        FileHandle.standardError.write(Data("scoutfs: mounted \(meta) \(data) on \(mnt), quorum slot \(quorumSlot), pid \(getpid())\n".utf8))
        for w in warnings { logLine("warning: \(w)") }

        let rc = fuse.run()
        control.stop()
        committer.stop()
        var status: Int32 = rc == 0 ? 0 : 1
        do {
            try fsys.syncAndMerge()
        } catch {
            FileHandle.standardError.write(Data("scoutfs: final commit failed: \(error); the last committed state is seq \(fsys.committedSeq)\n".utf8))
            status = 1
        }
        fuse.close()
        do {
            try claim.release()
        } catch {
            FileHandle.standardError.write(Data("scoutfs: clearing the claim in quorum slot \(quorumSlot) failed: \(error); the next mount on another host waits for it to go stale\n".utf8))
        }
        MountRegistry.remove(mnt)
        FileHandle.standardError.write(Data("scoutfs: unmounted \(mnt) at seq \(fsys.committedSeq)\n".utf8))
        if status != 0 { throw ExitCode(status) }
    }
}
