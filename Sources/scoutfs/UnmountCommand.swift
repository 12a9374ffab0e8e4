import ArgumentParser
import Foundation

struct UnmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmount",
        abstract: "Unmount a scoutfs mount; returns once its daemon has committed and exited."
    )

    @Option(help: "Seconds to wait for the daemon to finish.")
    var timeout: Int = 120

    @Argument(help: "Mount point.") var mountpoint: String

    func run() throws {
        let mnt = MountRegistry.canonical(mountpoint)
        guard let rec = MountRegistry.lookup(mnt) else {
            throw fail("unmount", "no scoutfs mount at \(mnt) (see `mount -t fuse.scoutfs`)")
        }
        if umount2(mnt, 0) != 0 {
            let e = errno
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/fusermount3")
            p.arguments = ["-u", mnt]
            if (try? p.run()) == nil || { p.waitUntilExit(); return p.terminationStatus != 0 }() {
                throw fail("unmount", "cannot unmount \(mnt): \(String(cString: strerror(e))); is it busy?")
            }
        }
        let deadline = Date().addingTimeInterval(TimeInterval(timeout))
        while MountRegistry.isAlive(rec.pid) {
            if Date() > deadline {
                throw fail("unmount", "\(mnt) is unmounted but daemon pid \(rec.pid) has not exited after \(timeout)s; see its log \(rec.log ?? "")")
            }
            usleep(20_000)
        }
        print("unmounted \(mnt)")
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a mount's daemon pid, devices, quorum slot and last committed seq."
    )

    @Flag(help: "Print JSON instead of text.") var json = false
    @Argument(help: "Mount point.") var mountpoint: String

    func run() throws {
        let mnt = MountRegistry.canonical(mountpoint)
        guard let rec = MountRegistry.lookup(mnt) else {
            throw fail("status", "no scoutfs mount at \(mnt)")
        }
        if json {
            try printJSON(rec)
        } else {
            print("mountpoint     \(rec.mountpoint)")
            print("pid            \(rec.pid)")
            print("meta device    \(rec.meta)")
            print("data device    \(rec.data)")
            print("quorum slot    \(rec.quorumSlot.map(String.init) ?? "none (plain client)")")
            if let role = rec.role { print("role           \(role)") }
            if let server = rec.server { print("server         \(server)") }
            print("committed seq  \(rec.committedSeq)")
            if let log = rec.log { print("log            \(log)") }
            for w in rec.warnings ?? [] { print("warning        \(w)") }
        }
    }
}
