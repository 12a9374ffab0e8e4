import ArgumentParser
import Foundation
import ScoutFormat
import ScoutNet

// The archive verbs: arguments and output follow scoutfs's own utils so that agents and
// scripts written for it work unchanged; every verb also takes --json. They reach the mount
// through its control socket, sending an open descriptor of the path they name.

/// A failed archive verb. As the original's utils do, the message is printed on its own line
/// and then `scoutfs: VERB failed: STRERROR (ERRNO)` (scripts match on that last line); an
/// error with no errno prints `scoutfs: VERB failed: message`.
struct VerbError: Error, CustomStringConvertible {
    var description: String
    var errno: Int32?
    init(_ d: String, errno: Int32? = nil) {
        description = d
        self.errno = errno
    }

    /// A failed system call on a path, in the original's words.
    static func failed(_ what: String, _ path: String, _ e: Int32) -> VerbError {
        VerbError("failed to \(what) '\(path)': \(String(cString: strerror(e))) (\(e))", errno: e)
    }
}

/// A connection to the mount holding a path, with that path open.
struct ControlTarget {
    let client: ControlClient
    let fd: Int32
    let path: String

    /// Opens `path` (or $SCOUTFS_MOUNT_PATH, or the working directory, as the original's
    /// `-p` does) and connects to the control socket of the scoutfs mount it is in.
    static func open(_ given: String?, flags: Int32 = O_RDONLY) throws -> ControlTarget {
        let path = given ?? ProcessInfo.processInfo.environment["SCOUTFS_MOUNT_PATH"] ?? "."
        let fd = Glibc.open(path, flags | O_CLOEXEC)
        guard fd >= 0 else { throw VerbError.failed("open", path, errno) }
        var st = stat()
        fstat(fd, &st)
        for rec in MountRegistry.all() where rec.lingering == nil {
            // A daemon whose mount point is not (or no longer) mounted would otherwise match
            // every path on the filesystem that holds the bare directory.
            guard let socket = rec.control, MountRegistry.isMounted(rec.mountpoint) else { continue }
            var mst = stat()
            if stat(rec.mountpoint, &mst) == 0, mst.st_dev == st.st_dev {
                do {
                    return ControlTarget(client: try ControlClient(path: socket), fd: fd, path: path)
                } catch {
                    Glibc.close(fd)
                    throw VerbError("\(error)")
                }
            }
        }
        Glibc.close(fd)
        throw VerbError("\(path) is not in a mounted scoutfs filesystem (no running mount daemon serves it)")
    }

    /// Sends `request` about this target's file, and `other`'s descriptor after it when the
    /// request is about a second file too. A failure's message starts with `failing`, the
    /// original's words for the call that failed where it has its own.
    func call(_ request: ControlRequest, with other: Int32? = nil, failing: String = "") throws -> ControlReply {
        let bytes: [UInt8]
        do {
            bytes = try client.call(request.encoded, files: [fd] + (other.map { [$0] } ?? []))
        } catch {
            throw VerbError(failing + "\(error)", errno: error.errno == 0 ? nil : error.errno)
        }
        let reply = try ControlReply(decoding: bytes)
        if case let .failure(e, message) = reply {
            throw VerbError(failing + message, errno: e)
        }
        return reply
    }

    func close() { Glibc.close(fd) }
}

/// Asks for pages of results after a two-number cursor until one comes back empty, handing
/// each page to `body`: the paging of data-waiting, ino-path and get-referring-entries.
func forEachPage<E>(after start: (UInt64, UInt64), _ fetch: ((UInt64, UInt64)) throws -> [E],
                    cursor: (E) -> (UInt64, UInt64), _ body: ([E]) throws -> Void) throws {
    var after = start
    while true {
        let page = try fetch(after)
        guard let last = page.last else { return }
        try body(page)
        after = cursor(last)
    }
}

/// Runs a verb's body, turning failures into the original's lines (see `VerbError`) and exit
/// status 1.
func runVerb(_ verb: String, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch let e as VerbError {
        if let n = e.errno {
            FileHandle.standardError.write(Data("\(e.description)\nscoutfs: \(verb) failed: \(String(cString: strerror(n))) (\(n))\n".utf8))
        } else {
            FileHandle.standardError.write(Data("scoutfs: \(verb) failed: \(e.description)\n".utf8))
        }
        throw ExitCode(1)
    } catch {
        FileHandle.standardError.write(Data("scoutfs: \(verb) failed: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// A byte count with an optional K, M, G, T or P suffix (powers of 1024), its number read as
/// `parseNumber` reads one (0x hex too), as the original's parse_human takes them.
func parseSize(_ s: String) throws -> UInt64 {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50]
    var digits = Substring(s)
    var scale: UInt64 = 1
    if !s.lowercased().hasPrefix("0x"), let last = s.last?.uppercased().first, let u = units[last] {
        scale = u
        digits = digits.dropLast()
    }
    guard let n = parseNumber(String(digits)), n.multipliedReportingOverflow(by: scale).overflow == false else {
        throw ValidationError("'\(s)' is not a size (bytes, or a number with K, M, G, T or P)")
    }
    return n * scale
}

/// A number as strtoull(…, 0) reads it: decimal, 0x hex, 0 octal, and -1 for the largest.
func parseNumber(_ s: String) -> UInt64? {
    if s.hasPrefix("-") { return UInt64(s.dropFirst()).map { 0 &- $0 } }
    if s.hasPrefix("0x") || s.hasPrefix("0X") { return UInt64(s.dropFirst(2), radix: 16) }
    if s.count > 1 && s.hasPrefix("0") { return UInt64(s.dropFirst(), radix: 8) }
    return UInt64(s)
}

/// A number argument as the original's utils read theirs (`parseNumber`): a decimal, 0x hex
/// (`0xFFFFFFFFFFFFF000`) or 0 octal number.
struct ScoutNumber: ExpressibleByArgument, Sendable {
    var value: UInt64
    init(_ value: UInt64) { self.value = value }
    init?(argument: String) {
        guard let v = parseNumber(argument) else { return nil }
        value = v
    }
    var defaultValueDescription: String { "\(value)" }
}

func timestampString(_ t: Timestamp) -> String { String(format: "%lld.%09u", t.seconds, t.nanoseconds) }

struct WalkInodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walk-inodes",
        abstract: "Print inodes whose meta_seq or data_seq lies between two index positions.",
        discussion: "Positions are MAJOR[.MINOR[.INO]] (major is the seq; -1 is the largest). Never returns seqs past the stable seq.")

    @Option(name: .shortAndLong, help: "A path in the filesystem (default: $SCOUTFS_MOUNT_PATH, else the working directory).")
    var path: String?
    @Flag(help: "Print JSON.") var json = false
    // One array, so that positions such as -1 are not taken for options.
    @Argument(parsing: .allUnrecognized, help: "INDEX (meta_seq or data_seq), FIRST and LAST positions.")
    var arguments: [String] = []

    var index: String { arguments[0] }
    var first: String { arguments[1] }
    var last: String { arguments[2] }

    struct Position { var major: UInt64; var minor: UInt64; var ino: UInt64 }

    static func parsePosition(_ s: String) throws -> Position {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard (1...3).contains(parts.count), let vals = Optional(parts.map(parseNumber)), vals.allSatisfy({ $0 != nil }) else {
            throw ValidationError("invalid position '\(s)', try '1.2.3' or '-1'")
        }
        let v = vals.map { $0! }
        return Position(major: v[0], minor: v.count > 1 ? v[1] : 0, ino: v.count > 2 ? v[2] : 0)
    }

    func validate() throws {
        guard arguments.count == 3 else { throw ValidationError("give an index, a first and a last position (e.g. data_seq 0 -1)") }
        guard ["meta_seq", "data_seq"].contains(index.lowercased()) else {
            throw ValidationError("unknown index '\(index)', try 'meta_seq' or 'data_seq'")
        }
        _ = try Self.parsePosition(first)
        _ = try Self.parsePosition(last)
    }

    func run() throws {
        try runVerb("walk-inodes") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var from = try Self.parsePosition(first)
            let to = try Self.parsePosition(last)
            var total: UInt64 = 0
            var all: [[String: UInt64]] = []
            while true {
                guard case let .walk(entries) = try t.call(.walkInodes(index: index.lowercased() == "meta_seq" ? 0 : 1,
                                                                       firstSeq: from.major, firstIno: from.ino,
                                                                       lastSeq: to.major, lastIno: to.ino, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                if entries.isEmpty { break }
                for (i, e) in entries.enumerated() {
                    if json {
                        all.append(["major": e.seq, "minor": 0, "ino": e.ino])
                        continue
                    }
                    if (total + UInt64(i)) % 25 == 0 {
                        print("#".padding(20) + " " + "major".padding(20) + " " + "minor".padding(10) + " " + "ino".padding(20))
                    }
                    print(String(total + UInt64(i)).padding(20) + " " + String(e.seq).padding(20) + " " + "0".padding(10) + " " + String(e.ino).padding(20))
                }
                total += UInt64(entries.count)
                guard let next = entries[entries.count - 1].next else { break }
                from = Position(major: next.seq, minor: 0, ino: next.ino)
            }
            if json { try printJSON(all) }
        }
    }
}

extension String {
    /// Left-justified in `width` columns, as printf's `%-Ns`.
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stat", abstract: "Print the scoutfs fields of a file's inode.")
    @Option(name: [.customShort("s"), .customLong("single-field")], help: "Print only this field.") var field: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "A file in a scoutfs mount.") var file: String

    static let fields = ["meta_seq", "data_seq", "data_version", "online_blocks", "offline_blocks", "crtime"]

    func validate() throws {
        if let field, !Self.fields.contains(field) { throw ValidationError("unknown field: '\(field)'") }
    }

    func run() throws {
        try runVerb("stat") {
            let t = try ControlTarget.open(file)
            defer { t.close() }
            guard case let .statMore(s) = try t.call(.statMore) else { throw VerbError("unexpected reply from the mount") }
            let values: [(String, String)] = [
                ("meta_seq", "\(s.metaSeq)"), ("data_seq", "\(s.dataSeq)"), ("data_version", "\(s.dataVersion)"),
                ("online_blocks", "\(s.onlineBlocks)"), ("offline_blocks", "\(s.offlineBlocks)"), ("crtime", timestampString(s.crtime)),
            ]
            printFields(values, only: field, json: json)
        }
    }
}

func printFields(_ values: [(String, String)], only: String?, json: Bool) {
    let chosen = values.filter { only == nil || $0.0 == only }
    if json {
        let obj = Dictionary(uniqueKeysWithValues: chosen)
        try? printJSON(obj)
    } else if only != nil {
        print(chosen[0].1)
    } else {
        for (k, v) in chosen { print(k.padding(17) + " " + v) }
    }
}

struct StatfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "statfs", abstract: "Print the scoutfs fields of a mounted filesystem.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: [.customShort("s"), .customLong("single-field")], help: "Print only this field.") var field: String?
    @Flag(help: "Print JSON.") var json = false

    static let fields = ["fsid", "rid", "committed_seq", "total_meta_blocks", "total_data_blocks"]

    func validate() throws {
        if let field, !Self.fields.contains(field) { throw ValidationError("unknown field: '\(field)'") }
    }

    func run() throws {
        try runVerb("statfs") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            guard case let .statfsMore(s) = try t.call(.statfsMore) else { throw VerbError("unexpected reply from the mount") }
            printFields([("fsid", String(format: "%016llx", s.fsid)), ("rid", String(format: "%016llx", s.rid)),
                         ("committed_seq", "\(s.committedSeq)"), ("total_meta_blocks", "\(s.totalMetaBlocks)"),
                         ("total_data_blocks", "\(s.totalDataBlocks)")], only: field, json: json)
        }
    }
}

struct SyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Commit everything written to a mounted filesystem and return once it is durable.",
        discussion: "sync(1) and syncfs(2) never reach a FUSE filesystem; this does. fsync(2) of a file commits too.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runVerb("sync") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            guard case let .count(seq) = try t.call(.sync) else { throw VerbError("unexpected reply from the mount") }
            if json { try printJSON(["committedSeq": seq]) }
        }
    }
}

struct ReleaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release",
        abstract: "Free a file's data blocks and mark the region offline, if its data version still matches.")
    @Option(name: [.customShort("V"), .customLong("data-version")], help: "Data version of the file (from `scoutfs stat`).") var dataVersionNumber: ScoutNumber
    var dataVersion: UInt64 { dataVersionNumber.value }
    @Option(name: .shortAndLong, help: "Offset (bytes or KMGTP units; 4 KiB aligned; default 0).") var offset: String = "0"
    @Option(name: .shortAndLong, help: "Length (bytes or KMGTP units; 4 KiB aligned; default: the whole file).") var length: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The file.") var file: String

    func run() throws {
        try runVerb("release") {
            let off = try parseSize(offset)
            let t = try ControlTarget.open(file, flags: O_RDWR)
            defer { t.close() }
            var len: UInt64
            if let length {
                len = try parseSize(length)
            } else {
                var st = stat()
                fstat(t.fd, &st)
                let size = UInt64(st.st_size)
                len = (size + 4095) / 4096 * 4096
                len = len > off ? len - off : 0
            }
            _ = try t.call(.release(dataVersion: dataVersion, offset: off, length: len))
            if json { try printJSON(["released": len]) }
        }
    }
}

struct StageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stage",
        abstract: "Write archived bytes back into a file's offline region without changing its data version.")
    @Option(name: [.customShort("V"), .customLong("data-version")], help: "Data version of the file.") var dataVersionNumber: ScoutNumber
    var dataVersion: UInt64 { dataVersionNumber.value }
    @Option(name: .shortAndLong, help: "Offset in the file (bytes or KMGTP units; 4 KiB aligned; default 0).") var offset: String = "0"
    @Option(name: .shortAndLong, help: "Length (bytes or KMGTP units; default: the archive file's size).") var length: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The archive file to read from its start.") var archive: String
    @Argument(help: "The file to stage into.") var file: String

    func run() throws {
        try runVerb("stage") {
            let afd = Glibc.open(archive, O_RDONLY | O_CLOEXEC)
            guard afd >= 0 else { throw VerbError.failed("open", archive, errno) }
            defer { close(afd) }
            var st = stat()
            guard fstat(afd, &st) == 0 else { throw VerbError.failed("stat", archive, errno) }
            // A directory reads as nothing (or EISDIR): staging from one would stage nothing and
            // look like success.
            if st.st_mode & S_IFMT == S_IFDIR { throw VerbError("'\(archive)' is a directory; give the archive file to read from") }
            var pos = try parseSize(offset)
            var remaining = try length.map(parseSize) ?? UInt64(max(0, st.st_size))
            if pos.addingReportingOverflow(remaining).overflow {
                throw VerbError("offset \(pos) + length \(remaining) runs past the largest file offset")
            }
            let t = try ControlTarget.open(file, flags: O_RDWR)
            defer { t.close() }
            var buf = [UInt8](repeating: 0, count: ControlMessage.stageChunk)
            var staged: UInt64 = 0
            while remaining > 0 {
                let want = Int(min(remaining, UInt64(buf.count)))
                let n = buf.withUnsafeMutableBytes { read(afd, $0.baseAddress, want) }
                guard n > 0 else {
                    throw VerbError("archive read returned \(n)\(n < 0 ? ": " + String(cString: strerror(errno)) : " (the archive is shorter than the length)")")
                }
                guard case let .count(done) = try t.call(.stage(dataVersion: dataVersion, offset: pos, data: Array(buf[0..<n]))),
                      done == UInt64(n) else {
                    throw VerbError("stage did not take all \(n) bytes at offset \(pos)")
                }
                pos += UInt64(n)
                remaining -= UInt64(n)
                staged += UInt64(n)
            }
            if json { try printJSON(["staged": staged]) }
        }
    }
}

struct SetattrCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setattr",
        abstract: "Restore a new, empty file's size, data version and times (root only), optionally as offline data.")
    @Option(name: [.customShort("t"), .customLong("ctime")], help: "Change time, SECONDS.NANOSECONDS.") var ctime: String?
    @Option(name: [.customShort("r"), .customLong("crtime")], help: "Creation time, SECONDS.NANOSECONDS.") var crtime: String?
    @Option(name: [.customShort("V"), .customLong("data-version")], help: "Data version (not 0).") var dataVersionNumber: ScoutNumber?
    var dataVersion: UInt64? { dataVersionNumber?.value }
    @Option(name: [.customShort("s"), .customLong("size")], help: "Size (bytes or KMGTP units); needs --data-version.") var size: String?
    @Flag(name: [.customShort("o"), .customLong("offline")], help: "Make the contents offline, not sparse; needs --size.") var offline = false
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The file.") var file: String

    static func parseTime(_ s: String) throws -> Timestamp {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let sec = Int64(parts[0]),
              let ns = parts.count == 2 ? UInt32(parts[1]) : 0, ns < 1_000_000_000 else {
            throw ValidationError("'\(s)' is not a time; use SECONDS.NANOSECONDS")
        }
        return Timestamp(seconds: sec, nanoseconds: ns)
    }

    func validate() throws {
        if dataVersion == 0 { throw ValidationError("data version must not be 0") }
        // As the original: a size of 0 is no size (`-s 0` needs no version, and is no size for -o).
        let sizeValue = try size.map(parseSize) ?? 0
        if sizeValue != 0 && dataVersion == nil { throw ValidationError("must provide data-version if using --size option") }
        if offline && sizeValue == 0 { throw ValidationError("must provide size if using --offline option") }
        if let ctime { _ = try Self.parseTime(ctime) }
        if let crtime { _ = try Self.parseTime(crtime) }
    }

    func run() throws {
        try runVerb("setattr") {
            let t = try ControlTarget.open(file, flags: O_WRONLY)
            defer { t.close() }
            let s = SetattrMore(dataVersion: dataVersion ?? 0, size: try size.map(parseSize) ?? 0, offline: offline,
                                ctime: try ctime.map(Self.parseTime), crtime: try crtime.map(Self.parseTime))
            _ = try t.call(.setattrMore(s))
            if json { try printJSON(["ok": true]) }
        }
    }
}

struct DataWaitingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data-waiting", abstract: "List requests blocked on offline data.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: [.customShort("I"), .customLong("inode")], help: "List waiters after this inode number.") var inodeNumber = ScoutNumber(0)
    var inode: UInt64 { inodeNumber.value }
    @Option(name: [.customShort("B"), .customLong("block")], help: "…and after this block.") var blockNumber = ScoutNumber(0)
    var block: UInt64 { blockNumber.value }
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runVerb("data-waiting") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [DataWaiter] = []
            try forEachPage(after: (inode, block), { after in
                guard case let .waiters(ws) = try t.call(.dataWaiting(afterIno: after.0, afterBlock: after.1, limit: 16)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                return ws
            }, cursor: { ($0.ino, $0.iblock) }) { ws in
                for w in ws where !json { print("ino \(w.ino) iblock \(w.iblock) ops \(w.op.names)") }
                all += ws
            }
            if json { try printJSON(all.map { ["ino": "\($0.ino)", "iblock": "\($0.iblock)", "ops": $0.op.names] }) }
        }
    }
}

struct DataWaitErrCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data-wait-err", abstract: "Make requests waiting on offline data fail with an error (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: [.customShort("I"), .customLong("inode")], help: "Inode number.") var inodeNumber: ScoutNumber
    var inode: UInt64 { inodeNumber.value }
    @Option(name: [.customShort("V"), .customLong("version")], help: "Data version (ignored, as by the original since 1.25).") var versionNumber: ScoutNumber
    var version: UInt64 { versionNumber.value }
    @Option(name: [.customShort("F"), .customLong("offset")], help: "Offset (bytes or KMGTP units).") var offset: String
    @Option(name: [.customShort("C"), .customLong("count")], help: "Byte count (bytes or KMGTP units).") var count: String
    @Option(name: [.customShort("O"), .customLong("op")], help: "read, write or change_size.") var op: String
    @Option(name: [.customShort("E"), .customLong("err")], parsing: .unconditional, help: "The error to return, negative (e.g. -5 for EIO).") var err: Int64
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if DataWaitOperation(name: op) == nil { throw ValidationError("invalid data wait op: '\(op)'") }
        if err >= 0 || err < -4095 { throw ValidationError("errno out of range") }
    }

    func run() throws {
        try runVerb("data-wait-err") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            guard case let .count(n) = try t.call(.dataWaitErr(ino: inode, dataVersion: version, offset: try parseSize(offset),
                                                               count: try parseSize(count), op: DataWaitOperation(name: op)!,
                                                               errno: Int32(-err))) else {
                throw VerbError("unexpected reply from the mount")
            }
            if json { try printJSON(["waiters": n]) } else { print("data_wait_err found \(n) waiters.") }
        }
    }
}

struct InoPathCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ino-path", abstract: "Print every path to an inode number (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: ArgumentHelp("Inode number.", valueName: "ino")) var inoNumber: ScoutNumber
    var ino: UInt64 { inoNumber.value }

    func run() throws {
        try runVerb("ino-path") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [String] = []
            try forEachPage(after: (0, 0), { after in
                guard case let .paths(ps) = try t.call(.inoPaths(ino: ino, afterDir: after.0, afterPos: after.1, limit: 256)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                return ps
            }, cursor: { ($0.dir, $0.pos) }) { ps in
                for p in ps {
                    let s = String(decoding: p.path, as: UTF8.self)
                    if json { all.append(s) } else { print(s) }
                }
            }
            if json { try printJSON(all) }
        }
    }
}

struct GetReferringEntriesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get-referring-entries", abstract: "Print the directory entries that refer to an inode (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: ArgumentHelp("Inode number.", valueName: "ino")) var inoNumber: ScoutNumber
    var ino: UInt64 { inoNumber.value }

    func run() throws {
        try runVerb("get-referring-entries") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [ReferringEntry] = []
            try forEachPage(after: (0, 0), { after in
                guard case let .entries(es) = try t.call(.referringEntries(ino: ino, afterDir: after.0, afterPos: after.1, limit: 256)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                return es
            }, cursor: { ($0.dir, $0.pos) }) { es in
                for e in es where !json { print("dir \(e.dir) pos \(e.pos) type \(e.type) name \(String(decoding: e.name, as: UTF8.self))") }
                all += es
            }
            if json {
                try printJSON(all.map { ["dir": "\($0.dir)", "pos": "\($0.pos)", "type": "\($0.type)", "name": String(decoding: $0.name, as: UTF8.self)] })
            }
        }
    }
}

struct GetFiemapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get-fiemap",
        abstract: "Print a file's extent map: logical and physical offsets, lengths, O offline, U unwritten, L last.",
        discussion: "FUSE does not pass FIEMAP to the filesystem, so filefrag and other FIEMAP users see no extents on a scoutfs mount; this asks the mount over its control socket.")
    @Flag(name: [.customShort("P"), .customLong("physical")], help: "Print physical offsets only.") var physical = false
    @Flag(name: [.customShort("L"), .customLong("logical")], help: "Print logical offsets only.") var logical = false
    @Flag(name: [.customShort("b"), .customLong("byte")], help: "Print bytes instead of 4 KiB blocks.") var byte = false
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "A file in a scoutfs mount.") var file: String

    func validate() throws {
        if physical && logical { throw ValidationError("can't pass both -P and -L options") }
    }

    func run() throws {
        try runVerb("get-fiemap") {
            let t = try ControlTarget.open(file)
            defer { t.close() }
            let block = UInt64(Layout.dataBlockSize)
            let unit: UInt64 = byte ? 1 : block
            var nr = 0
            var rows: [FiemapRow] = []
            var from: UInt64 = 0
            while true {
                guard case let .fiemap(es, end) = try t.call(.fiemap(fromBlock: from, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                for e in es {
                    let flags = (e.flags & FiemapExtent.unknown != 0 ? "O" : ".") + (e.flags & FiemapExtent.unwritten != 0 ? "U" : ".")
                        + (e.flags & FiemapExtent.last != 0 ? "L" : ".")
                    let l = e.logical / unit, p = e.physical / unit
                    if json {
                        rows.append(FiemapRow(logical: l, physical: p, length: e.length / unit, flags: flags))
                    } else {
                        let offsets = physical ? "\(p)" : logical ? "\(l)" : "\(l) \(p)"
                        print("\(nr): offset: \(offsets) length: \(e.length / unit) flags: \(flags)")
                    }
                    nr += 1
                }
                guard !end, let last = es.last else { break }
                from = (last.logical + last.length) / block
            }
            if json {
                try printJSON(FiemapJSON(extents: nr, map: rows))
            } else {
                print("extents: \(nr)")
            }
        }
    }
}

/// `get-fiemap --json`: the text output's numbers, in the units asked for.
struct FiemapJSON: Encodable {
    var extents: Int
    var map: [FiemapRow]
}

struct FiemapRow: Encodable {
    var logical: UInt64
    var physical: UInt64
    var length: UInt64
    var flags: String
}

struct PunchOfflineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "punch-offline",
        abstract: "Make a (sparse) hole in a file's offline region at offset and with length, if its data version still matches.",
        discussion: "Only offline (released) extents are punched: a region with allocated blocks is refused whole. Size, times and data version stay.")
    @Option(name: [.customShort("V"), .customLong("data-version")], help: "Data version of the file (from `scoutfs stat`).") var dataVersionNumber: ScoutNumber
    @Option(name: .shortAndLong, help: "Offset (bytes or KMGTP units; 4 KiB aligned).") var offset: String
    @Option(name: .shortAndLong, help: "Length (bytes or KMGTP units; 4 KiB aligned).") var length: String
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The file.") var file: String

    func run() throws {
        try runVerb("punch-offline") {
            let off = try parseSize(offset)
            let len = try parseSize(length)
            let t = try ControlTarget.open(file, flags: O_RDWR)
            defer { t.close() }
            _ = try t.call(.punchOffline(dataVersion: dataVersionNumber.value, offset: off, length: len))
            if json { try printJSON(["punched": len]) }
        }
    }
}

struct MoveBlocksCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move-blocks",
        abstract: "Move a fixed-size region of extents from one regular file to another.",
        discussion: "The blocks change owner without being copied. Offsets and length are 4 KiB multiples (the length may instead end at FROM_FILE's size); the destination region must be a hole, and neither file may have offline data.")
    @Option(name: [.customShort("f"), .customLong("from-offset")], help: "Byte offset in FROM_FILE of the region to move.") var fromOffset: String
    @Option(name: .shortAndLong, help: "Length in bytes (or KMGTP units) of the region to move.") var length: String
    @Option(name: [.customShort("t"), .customLong("to-offset")], help: "Byte offset (or KMGTP units) in TO_FILE where the region goes.") var toOffset: String
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The file the blocks come from.") var fromFile: String
    @Argument(help: "The file they go to.") var toFile: String

    func run() throws {
        try runVerb("move-blocks") {
            guard let from = parseNumber(fromOffset) else { throw ValidationError("'\(fromOffset)' is not a number") }
            let len = try parseSize(length)
            let to = try parseSize(toOffset)
            let src = Glibc.open(fromFile, O_RDWR | O_CLOEXEC)
            guard src >= 0 else { throw VerbError.failed("open", fromFile, errno) }
            defer { Glibc.close(src) }
            let t = try ControlTarget.open(toFile, flags: O_RDWR)
            defer { t.close() }
            // The original names the destination the ioctl was made on.
            _ = try t.call(.moveBlocks(fromOffset: from, length: len, toOffset: to, dataVersion: 0, stage: false), with: src,
                           failing: "ioctl failed on '\(toFile)': ")
            if json { try printJSON(["moved": len]) }
        }
    }
}

/// The fields of get-attr-x and set-attr-x in the original's order, with its option letters.
let attrXFields: [(short: Character, long: String, mask: UInt64)] = [
    ("m", "meta_seq", InodeAttrX.metaSeqMask), ("d", "data_seq", InodeAttrX.dataSeqMask),
    ("v", "data_version", InodeAttrX.dataVersionMask), ("n", "online_blocks", InodeAttrX.onlineBlocksMask),
    ("f", "offline_blocks", InodeAttrX.offlineBlocksMask), ("c", "ctime", InodeAttrX.ctimeMask),
    ("r", "crtime", InodeAttrX.crtimeMask), ("s", "size", InodeAttrX.sizeMask),
    ("t", "retention", InodeAttrX.retentionMask), ("p", "project_id", InodeAttrX.projectIDMask),
]

struct GetAttrXCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get-attr-x",
        abstract: "Get extensible file attributes: seqs, data version, block counts, times, size, retention, project id.",
        discussion: "With no field options, all of them. With one, only its value is printed; with more, `name: value` lines.")
    @Flag(name: [.customShort("m"), .customLong("meta_seq")], help: "Inode metadata change index sequence number.") var metaSeq = false
    @Flag(name: [.customShort("d"), .customLong("data_seq")], help: "File data change index sequence number.") var dataSeq = false
    @Flag(name: [.customShort("v"), .customLong("data_version")], help: "File data contents version.") var dataVersion = false
    @Flag(name: [.customShort("n"), .customLong("online_blocks")], help: "Online data block count.") var onlineBlocks = false
    @Flag(name: [.customShort("f"), .customLong("offline_blocks")], help: "Offline data block count.") var offlineBlocks = false
    @Flag(name: [.customShort("c"), .customLong("ctime")], help: "Inode change time.") var ctime = false
    @Flag(name: [.customShort("r"), .customLong("crtime")], help: "Creation time.") var crtime = false
    @Flag(name: [.customShort("s"), .customLong("size")], help: "Size.") var size = false
    @Flag(name: [.customShort("t"), .customLong("retention")], help: "Retention flag.") var retention = false
    @Flag(name: [.customShort("p"), .customLong("project_id")], help: "Project ID.") var projectID = false
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "A file in a scoutfs mount.") var file: String

    func run() throws {
        try runVerb("get-attr-x") {
            let chosen = [metaSeq, dataSeq, dataVersion, onlineBlocks, offlineBlocks, ctime, crtime, size, retention, projectID]
            var mask = zip(attrXFields, chosen).reduce(UInt64(0)) { $0 | ($1.1 ? $1.0.mask : 0) }
            if mask == 0 { mask = InodeAttrX.knownMask }
            let t = try ControlTarget.open(file)
            defer { t.close() }
            guard case let .attrX(x) = try t.call(.getAttrX(mask: mask), failing: "attr_x ioctl failed on '\(file)': ") else { throw VerbError("unexpected reply from the mount") }
            func time(_ t: Timestamp) -> String { "\(UInt64(bitPattern: t.seconds)).\(t.nanoseconds)" }
            let values: [UInt64: String] = [
                InodeAttrX.metaSeqMask: "\(x.metaSeq)", InodeAttrX.dataSeqMask: "\(x.dataSeq)",
                InodeAttrX.dataVersionMask: "\(x.dataVersion)", InodeAttrX.onlineBlocksMask: "\(x.onlineBlocks)",
                InodeAttrX.offlineBlocksMask: "\(x.offlineBlocks)", InodeAttrX.ctimeMask: time(x.ctime),
                InodeAttrX.crtimeMask: time(x.crtime), InodeAttrX.sizeMask: "\(x.size)",
                InodeAttrX.retentionMask: x.bits & InodeAttrX.retentionBit != 0 ? "1" : "0", InodeAttrX.projectIDMask: "\(x.projectID)",
            ]
            let shown = attrXFields.filter { mask & $0.mask != 0 }
            if json {
                try printJSON(Dictionary(uniqueKeysWithValues: shown.map { ($0.long, values[$0.mask]!) }))
            } else {
                for f in shown { print(shown.count > 1 ? "\(f.long): \(values[f.mask]!)" : values[f.mask]!) }
            }
        }
    }
}

struct SetAttrXCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set-attr-x",
        abstract: "Set extensible file attributes (root only): data version, size, times, retention, project id.",
        discussion: "Size and data version only on a new, never written file. A retained file can be neither changed nor removed, even by root, until its retention flag is cleared (-t 0). meta_seq, data_seq and the block counts are accepted and left to the filesystem.")
    @Option(name: [.customShort("m"), .customLong("meta_seq")], help: "Inode metadata change index sequence number.") var metaSeq: ScoutNumber?
    @Option(name: [.customShort("d"), .customLong("data_seq")], help: "File data change index sequence number.") var dataSeq: ScoutNumber?
    @Option(name: [.customShort("v"), .customLong("data_version")], help: "File data contents version (not 0).") var dataVersion: ScoutNumber?
    @Option(name: [.customShort("n"), .customLong("online_blocks")], help: "Online data block count.") var onlineBlocks: ScoutNumber?
    @Option(name: [.customShort("f"), .customLong("offline_blocks")], help: "Offline data block count.") var offlineBlocks: ScoutNumber?
    @Option(name: [.customShort("c"), .customLong("ctime")], help: "Inode change time, SECS.NSECS.") var ctime: String?
    @Option(name: [.customShort("r"), .customLong("crtime")], help: "Creation time, SECS.NSECS.") var crtime: String?
    @Option(name: [.customShort("s"), .customLong("size")], help: "Size.") var size: ScoutNumber?
    @Option(name: [.customShort("t"), .customLong("retention")], help: "Retention flag, 0 or 1.") var retention: ScoutNumber?
    @Option(name: [.customShort("p"), .customLong("project_id")], help: "Project ID (0: none).") var projectID: ScoutNumber?
    @Argument(help: "A file in a scoutfs mount.") var file: String

    func validate() throws {
        if dataVersion?.value == 0 { throw ValidationError("data version must not be 0") }
        if let ctime { _ = try SetattrCommand.parseTime(ctime) }
        if let crtime { _ = try SetattrCommand.parseTime(crtime) }
    }

    func run() throws {
        try runVerb("set-attr-x") {
            var x = InodeAttrX(mask: 0)
            func set(_ n: ScoutNumber?, _ mask: UInt64, _ field: WritableKeyPath<InodeAttrX, UInt64>) {
                guard let n else { return }
                x.mask |= mask
                x[keyPath: field] = n.value
            }
            set(metaSeq, InodeAttrX.metaSeqMask, \.metaSeq)
            set(dataSeq, InodeAttrX.dataSeqMask, \.dataSeq)
            set(dataVersion, InodeAttrX.dataVersionMask, \.dataVersion)
            set(onlineBlocks, InodeAttrX.onlineBlocksMask, \.onlineBlocks)
            set(offlineBlocks, InodeAttrX.offlineBlocksMask, \.offlineBlocks)
            set(size, InodeAttrX.sizeMask, \.size)
            set(projectID, InodeAttrX.projectIDMask, \.projectID)
            if let ctime {
                x.mask |= InodeAttrX.ctimeMask
                x.ctime = try SetattrCommand.parseTime(ctime)
            }
            if let crtime {
                x.mask |= InodeAttrX.crtimeMask
                x.crtime = try SetattrCommand.parseTime(crtime)
            }
            if let retention {
                x.mask |= InodeAttrX.retentionMask
                if retention.value != 0 { x.bits |= InodeAttrX.retentionBit }
            }
            // Nothing asked: nothing to do, as the original.
            guard x.mask != 0 else { return }
            let t = try ControlTarget.open(file)
            defer { t.close() }
            _ = try t.call(.setAttrX(x), failing: "attr_x ioctl failed on '\(file)': ")
        }
    }
}

struct GetAllocatedInosCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get-allocated-inos",
        abstract: "Print allocated inode numbers from a starting inode number to the end of its inode group.",
        discussion: "A debugging aid, as the original's: it looks at one group of 1024 inode numbers, so it cannot list every inode.")
    @Option(name: [.customShort("i"), .customLong("ino")], help: "Start from this 64-bit inode number (required).") var inoNumber: ScoutNumber
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(name: [.customShort("s"), .customLong("single")], help: "Only print the starting inode number, if it is allocated.") var single = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runVerb("get-allocated-inos") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            guard case var .inodes(inos, _) = try t.call(.allocatedInodes(start: inoNumber.value)) else {
                throw VerbError("unexpected reply from the mount")
            }
            if single { inos = inos.first == inoNumber.value ? [inoNumber.value] : [] }
            if json { try printJSON(inos) } else { for i in inos { print(i) } }
        }
    }
}

struct ResizeDevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize-devices",
        abstract: "Online resize of metadata and/or data devices (root only).",
        discussion: "Grows a mounted filesystem onto devices made larger since mkfs (a grown volume, `losetup -c`, a longer file). 0, or the size in use, leaves a device as it is; devices cannot shrink, nor grow past their end. Every mount of the filesystem sees the new size.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: [.customShort("m"), .customLong("meta-size")],
            help: ArgumentHelp("New metadata device size (bytes or KMGTP units).", valueName: "SIZE")) var metaSize: String?
    @Option(name: [.customShort("d"), .customLong("data-size")],
            help: ArgumentHelp("New data device size (bytes or KMGTP units).", valueName: "SIZE")) var dataSize: String?

    func run() throws {
        let meta = try metaSize.map(parseSize) ?? 0
        let data = try dataSize.map(parseSize) ?? 0
        let metaMask = UInt64(Layout.metaBlockSize - 1)
        let dataMask = UInt64(Layout.dataBlockSize - 1)
        if meta & metaMask != 0 {
            print("metadata device size \(meta) is not a multiple of \(Layout.metaBlockSize) metadata block size, truncating down to \(meta & ~metaMask) byte size")
        }
        if data & dataMask != 0 {
            print("data device size \(data) is not a multiple of \(Layout.dataBlockSize) data block size, truncating down to \(data & ~dataMask) byte size")
        }
        try runVerb("resize-devices") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            do {
                _ = try t.call(.resizeDevices(metaTotalBlocks: meta >> UInt64(Layout.metaBlockShift),
                                              dataTotalBlocks: data >> UInt64(Layout.dataBlockShift)))
            } catch let e as VerbError {
                // The original's line: the reason is in the mount's log.
                guard let n = e.errno else { throw e }
                throw VerbError("resize_devices ioctl failed: \(String(cString: strerror(n))) (\(n))", errno: n)
            }
        }
    }
}
