import ArgumentParser
import Foundation
import ScoutFormat

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
        // Other mount points of the same mount (the mount helper binds one for a second mount
        // of the same devices and slot) keep it, and its daemon, going.
        let device = MountRegistry.mountInfo().last { $0.mountpoint == mnt }?.device
        if umount2(mnt, 0) != 0 {
            let e = errno
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/fusermount3")
            p.arguments = ["-u", mnt]
            if (try? p.run()) == nil || { p.waitUntilExit(); return p.terminationStatus != 0 }() {
                throw fail("unmount", "cannot unmount \(mnt): \(String(cString: strerror(e))); is it busy?")
            }
        }
        if let device, let other = MountRegistry.mountInfo().first(where: { $0.device == device && $0.fstype == "fuse.scoutfs" }) {
            print("unmounted \(mnt); the mount stays at \(other.mountpoint) (daemon pid \(rec.pid))")
            return
        }
        let deadline = Date().addingTimeInterval(TimeInterval(timeout))
        while MountRegistry.isAlive(rec.pid) {
            if let why = MountRegistry.lookup(mnt)?.lingering {
                print("unmounted \(mnt); \(why) (daemon pid \(rec.pid), log \(rec.log ?? "-"))")
                return
            }
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
        abstract: "Show a mount's daemon pid, devices, quorum slot, role in the cluster, the server, the connected nodes, the locks it holds, what its memory holds and its last committed seq."
    )

    @Flag(help: "Print JSON instead of text.") var json = false
    @Argument(help: "Mount point.") var mountpoint: String

    func run() throws {
        let mnt = MountRegistry.canonical(mountpoint)
        guard let rec = MountRegistry.lookup(mnt) else {
            throw fail("status", "no scoutfs mount at \(mnt)")
        }
        // Live figures from the daemon; the record alone when it cannot answer.
        var live: ClusterStatus?
        if let target = try? ControlTarget.open(mnt), case .clusterStatus(let c)? = try? target.call(.clusterStatus) {
            live = c
            target.close()
        }
        if json {
            struct Status: Encodable {
                var mount: MountRecord
                var connected: Bool?
                var nodes: [String]?
                var locksHeld: UInt64?
                var lockRequests: UInt64?
                var lockGrants: UInt64?
                var lockInvalidations: UInt64?
                var memory: MemoryUse?
                func encode(to encoder: any Encoder) throws {
                    try mount.encode(to: encoder)
                    enum K: String, CodingKey { case connected, nodes, locksHeld, lockRequests, lockGrants, lockInvalidations, memory }
                    enum M: String, CodingKey { case blockBytes, blockBytesInUse, itemBytes, kernelInodes }
                    var c = encoder.container(keyedBy: K.self)
                    try c.encodeIfPresent(connected, forKey: .connected)
                    try c.encodeIfPresent(nodes, forKey: .nodes)
                    try c.encodeIfPresent(locksHeld, forKey: .locksHeld)
                    try c.encodeIfPresent(lockRequests, forKey: .lockRequests)
                    try c.encodeIfPresent(lockGrants, forKey: .lockGrants)
                    try c.encodeIfPresent(lockInvalidations, forKey: .lockInvalidations)
                    if let memory {
                        var m = c.nestedContainer(keyedBy: M.self, forKey: .memory)
                        try m.encode(memory.blockBytes, forKey: .blockBytes)
                        try m.encode(memory.blockBytesInUse, forKey: .blockBytesInUse)
                        try m.encode(memory.itemBytes, forKey: .itemBytes)
                        try m.encode(memory.kernelInodes, forKey: .kernelInodes)
                    }
                }
            }
            try printJSON(Status(mount: rec, connected: live?.connected, nodes: live.map { $0.nodes.map { hex($0) } },
                                 locksHeld: live?.locksHeld, lockRequests: live?.lockRequests, lockGrants: live?.lockGrants,
                                 lockInvalidations: live?.lockInvalidations, memory: live?.memory))
        } else {
            print("mountpoint     \(rec.mountpoint)")
            print("pid            \(rec.pid)")
            print("meta device    \(rec.meta)")
            print("data device    \(rec.data)")
            print("quorum slot    \(rec.quorumSlot.map(String.init) ?? "none (plain client)")")
            if let role = rec.role { print("role           \(role)") }
            if let server = rec.server { print("server         \(server)\(live.map { $0.isServer ? " (this mount)" : $0.connected ? " (connected)" : " (not connected: reconnecting)" } ?? "")") }
            if let live {
                if live.isServer { print("nodes          \(live.nodes.isEmpty ? "none" : live.nodes.map { hex($0) }.joined(separator: " "))") }
                print("locks held     \(live.locksHeld) (requests \(live.lockRequests), grants \(live.lockGrants), invalidations \(live.lockInvalidations))")
                if let m = live.memory {
                    let mib = { (b: UInt64) in String(format: "%.0f MiB", Double(b) / 1_048_576) }
                    print("memory         blocks \(mib(m.blockBytesInUse)) of \(mib(m.blockBytes)) taken, items \(mib(m.itemBytes)), kernel inodes \(m.kernelInodes)")
                }
            }
            print("committed seq  \(rec.committedSeq)")
            if let log = rec.log { print("log            \(log)") }
            for w in rec.warnings ?? [] { print("warning        \(w)") }
        }
    }
}
