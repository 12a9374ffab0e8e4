import Foundation
import ScoutFormat

/// What a running mount publishes about itself for `status` and `unmount`: one JSON file per
/// mount point under /run/scoutfs, rewritten after every commit.
struct MountRecord: Codable {
    var pid: Int32
    var mountpoint: String
    var meta: String
    var data: String
    /// nil for a plain client.
    var quorumSlot: Int?
    /// "server" (it runs the server for the others) or "client".
    var role: String?
    /// Where the server listens.
    var server: String?
    var fsid: String
    var committedSeq: UInt64
    var log: String?
    /// The mount's control socket (archive verbs: walk-inodes, release, stage, …).
    var control: String?
    /// What the mount found wrong when it started and went on from (an unreadable superblock
    /// copy, so the filesystem may be one commit older than the last one made).
    var warnings: [String]?
    /// Set when the mount is gone but its daemon serves on for nodes still mounted.
    var lingering: String?
}

enum MountRegistry {
    static let rootDirectory = "/run/scoutfs"

    static var directory: String {
        getuid() == 0 ? rootDirectory : NSTemporaryDirectory() + "scoutfs-\(getuid())"
    }

    /// Where records are looked for: this user's, and for other users root's too (the verbs of
    /// any user reach root's mounts).
    static var searchDirectories: [String] { getuid() == 0 ? [directory] : [directory, rootDirectory] }

    /// The canonical form of a mount point, so `status ./mnt` and `status /abs/mnt` agree.
    static func canonical(_ path: String) -> String {
        guard let r = realpath(path, nil) else { return URL(fileURLWithPath: path).standardizedFileURL.path }
        defer { free(r) }
        return String(cString: r)
    }

    /// Where a mount's files live, by a hash of its canonical mount point.
    private static func base(for mountpoint: String, in dir: String = directory) -> String {
        "\(dir)/mount-\(hex(nameHash(Array(canonical(mountpoint).utf8))))"
    }

    static func file(for mountpoint: String, in dir: String = directory) -> String { base(for: mountpoint, in: dir) + ".json" }

    static func controlSocket(for mountpoint: String) -> String { base(for: mountpoint) + ".sock" }

    static func publish(_ record: MountRecord) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let data = try JSONEncoder().encode(record)
        let path = file(for: record.mountpoint)
        try data.write(to: URL(fileURLWithPath: path + ".tmp"))
        if rename(path + ".tmp", path) != 0 {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    /// The record of a live mount at `mountpoint`, or nil (stale records of dead daemons are removed).
    /// A further mount point of a mount (the mount helper binds one for a second mount of the
    /// same devices and slot) finds the record of the mount it shares.
    static func lookup(_ mountpoint: String) -> MountRecord? {
        if let rec = recorded(mountpoint) { return rec }
        let mounted = mountInfo()
        guard let here = mounted.last(where: { $0.mountpoint == mountpoint && $0.fstype == "fuse.scoutfs" }) else { return nil }
        let live = all().filter { $0.lingering == nil }
        if let rec = live.first(where: { r in mounted.contains { $0.mountpoint == r.mountpoint && $0.device == here.device } }) {
            return rec
        }
        // The mount point scoutfs mounted is gone and this one stays: the daemon of the same
        // devices whose own mount point is not mounted.
        let orphaned = live.filter { r in "\(r.meta):\(r.data)" == here.source && !mounted.contains { $0.mountpoint == r.mountpoint } }
        return orphaned.count == 1 ? orphaned[0] : nil
    }

    private static func recorded(_ mountpoint: String) -> MountRecord? {
        for dir in searchDirectories {
            let path = file(for: mountpoint, in: dir)
            guard let data = FileManager.default.contents(atPath: path),
                  let rec = try? JSONDecoder().decode(MountRecord.self, from: data) else { continue }
            if isAlive(rec.pid) { return rec }
            // A dead daemon's record; removable only by its owner.
            try? FileManager.default.removeItem(atPath: path)
        }
        return nil
    }

    /// Whether `pid` is still running. A zombie counts as gone: a daemon detached by `mount` is
    /// reparented to whatever reaps orphans here, and that may not reap promptly. But its main
    /// thread turns zombie first, while the others still tear down the memory and only then
    /// close the devices (and release their locks): gone means every thread a zombie.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        func running(_ statPath: String) -> Bool {
            guard let stat = try? String(contentsOfFile: statPath, encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let state = stat[stat.index(after: close)...].drop(while: { $0 == " " }).first
            return state != "Z" && state != "X"
        }
        guard FileManager.default.fileExists(atPath: "/proc/\(pid)/stat") else { return true }
        if running("/proc/\(pid)/stat") { return true }
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.contains { running("/proc/\(pid)/task/\($0)/stat") }
    }

    /// Records of every live daemon in `searchDirectories`.
    static func all() -> [MountRecord] {
        searchDirectories.flatMap { dir -> [MountRecord] in
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
            return names.compactMap { name -> MountRecord? in
                guard name.hasPrefix("mount-"), name.hasSuffix(".json"),
                      let data = FileManager.default.contents(atPath: "\(dir)/\(name)"),
                      let rec = try? JSONDecoder().decode(MountRecord.self, from: data), isAlive(rec.pid) else { return nil }
                return rec
            }
        }
    }

    /// Whether the kernel still has a filesystem mounted at `mountpoint`.
    static func isMounted(_ mountpoint: String) -> Bool {
        mountInfo().contains { $0.mountpoint == mountpoint }
    }

    /// One line of /proc/self/mountinfo: `device` (major:minor) is the same for every mount
    /// point of one mounted filesystem.
    struct MountPoint {
        var device: String
        var mountpoint: String
        var fstype: String
        var source: String
    }

    static func mountInfo() -> [MountPoint] {
        guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        func unescape(_ s: Substring) -> String {
            s.replacingOccurrences(of: "\\040", with: " ").replacingOccurrences(of: "\\011", with: "\t")
                .replacingOccurrences(of: "\\012", with: "\n").replacingOccurrences(of: "\\134", with: "\\")
        }
        return info.split(separator: "\n").compactMap { line in
            // id parent major:minor root mountpoint options [optional fields] - fstype source superoptions
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count > 6, let dash = f[6...].firstIndex(of: "-"), dash + 2 < f.count else { return nil }
            return MountPoint(device: String(f[2]), mountpoint: unescape(f[4]), fstype: String(f[dash + 1]), source: unescape(f[dash + 2]))
        }
    }

    static func remove(_ mountpoint: String) {
        try? FileManager.default.removeItem(atPath: file(for: mountpoint))
    }
}

/// The running mount's record, published again whenever it changes (a commit, a takeover).
final class Published: Sendable {
    private let record = BlockingMutex<MountRecord?>(nil)

    func start(_ r: MountRecord) {
        record.withLock { $0 = r }
        try? MountRegistry.publish(r)
    }

    func update(_ change: (inout MountRecord) -> Void) {
        record.withLock { r in
            guard var now = r else { return }
            change(&now)
            r = now
            try? MountRegistry.publish(now)
        }
    }
}
