import ArgumentParser
import Foundation
import ScoutFormat

// The verbs of tagged xattrs and of space: search-xattrs, read-xattr-totals,
// list-hidden-xattrs and df, with the original utils' arguments and output.

struct SearchXattrsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search-xattrs",
        abstract: "Print inode numbers of inodes which may have the given .srch. xattr (root only).",
        discussion: "A search may list an inode that lacks the xattr (names can share a hash); it never misses one that has it.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "An xattr name containing the .srch. scoutfs tag.") var name: String

    func run() throws {
        try runVerb("search-xattrs") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [UInt64] = []
            var next: UInt64 = 0
            while true {
                guard case let .inodes(inos, end) = try t.call(.searchXattrs(name: Array(name.utf8), firstIno: next, lastIno: .max, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                if json { all += inos } else { for i in inos { print(i) } }
                guard !end, let last = inos.last, last != .max else { break }
                next = last + 1
            }
            if json { try printJSON(all) }
        }
    }
}

struct ReadXattrIndexCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read-xattr-index",
        abstract: "Search and print inode numbers indexed by their .indx. xattrs (root only).",
        discussion: "Entries are MAJOR.MINOR.INO (each number may be 0x hex or 0 octal, -1 the largest); one line per inode and position: MAJOR.MINOR = INO.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The first entry (default 0.0.0).") var firstEntry: String?
    @Argument(help: "The last entry (default 255.-1.-1).") var lastEntry: String?

    struct Entry: Encodable { var major: UInt8; var minor, ino: UInt64 }

    /// "a.b.ino" as the original's sscanf("%i.%lli.%lli") reads it.
    static func parse(_ s: String) throws -> XattrIndexEntry {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let major = parseSigned(parts[0]), let minor = parseNumber(parts[1]), let ino = parseNumber(parts[2]) else {
            throw VerbError("bad index position entry argument '\(s)', it must be in the form \"a.b.ino\" where each value can be prefixed by '0' for octal or '0x' for hex", errno: EINVAL)
        }
        guard (0...255).contains(major) else {
            throw VerbError("initial major index position '\(major)' must be between 0 and 255, inclusive.", errno: EINVAL)
        }
        return XattrIndexEntry(major: UInt8(major), minor: minor, ino: ino)
    }

    /// A signed number as %i reads it (decimal, 0x hex, 0 octal, a leading minus).
    static func parseSigned(_ s: String) -> Int64? {
        if s.hasPrefix("-") { return parseNumber(String(s.dropFirst())).flatMap { $0 <= UInt64(Int64.max) ? -Int64($0) : nil } }
        return parseNumber(s).flatMap { $0 <= UInt64(Int64.max) ? Int64($0) : nil }
    }

    func run() throws {
        try runVerb("read-xattr-index") {
            var first = XattrIndexEntry(major: 0, minor: 0, ino: 0)
            let last = try lastEntry.map(Self.parse) ?? XattrIndexEntry(major: .max, minor: .max, ino: .max)
            if let firstEntry { first = try Self.parse(firstEntry) }
            guard first <= last else {
                throw VerbError("first index position \(first.major).\(first.minor).\(first.ino) must be less than last index position \(last.major).\(last.minor).\(last.ino)", errno: EINVAL)
            }
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [Entry] = []
            while true {
                guard case let .indexEntries(es) = try t.call(.readXattrIndex(first: first, last: last, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                for e in es {
                    if json { all.append(Entry(major: e.major, minor: e.minor, ino: e.ino)) } else { print("\(e.major).\(e.minor) = \(e.ino)") }
                }
                guard var next = es.last else { break }
                // The entry after the last one, carrying into minor and major as the original.
                next.ino &+= 1
                if next.ino == 0 {
                    next.minor &+= 1
                    if next.minor == 0 {
                        if next.major == .max { break }
                        next.major += 1
                    }
                }
                guard next <= last else { break }
                first = next
            }
            if json { try printJSON(all) }
        }
    }
}

struct ReadXattrTotalsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read-xattr-totals",
        abstract: "Print global value totals of .totl. xattrs (root only).",
        discussion: "One line per name: A.B.C = TOTAL, COUNT (the sum of the values and the number of xattrs).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(help: "Print JSON.") var json = false

    struct Entry: Encodable { var a, b, c: UInt64; var total, count: Int64 }

    func run() throws {
        try runVerb("read-xattr-totals") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var all: [Entry] = []
            var after: XattrTotalName?
            while true {
                guard case let .totals(ts) = try t.call(.readXattrTotals(after: after, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                for x in ts {
                    if json {
                        all.append(Entry(a: x.name.a, b: x.name.b, c: x.name.c, total: x.total, count: x.count))
                    } else {
                        print("\(x.name.a).\(x.name.b).\(x.name.c) = \(x.total), \(x.count)")
                    }
                }
                guard let last = ts.last, last.name != XattrTotalName(a: .max, b: .max, c: .max) else { break }
                after = last.name
            }
            if json { try printJSON(all) }
        }
    }
}

struct ListHiddenXattrsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list-hidden-xattrs", abstract: "Print the names of hidden xattrs on a file.")
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "The file.") var file: String

    func run() throws {
        try runVerb("list-hidden-xattrs") {
            let t = try ControlTarget.open(file)
            defer { t.close() }
            var all: [String] = []
            var skip: UInt32 = 0
            while true {
                guard case let .names(ns) = try t.call(.listHiddenXattrs(skip: skip, limit: 1024)) else {
                    throw VerbError("unexpected reply from the mount")
                }
                if ns.isEmpty { break }
                for n in ns {
                    // Non-printing bytes become '?', as the original prints them.
                    let shown = String(decoding: n.map { (0x20...0x7e).contains($0) ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
                    if json { all.append(String(decoding: n, as: UTF8.self)) } else { print(shown) }
                }
                skip += UInt32(ns.count)
            }
            if json { try printJSON(all) }
        }
    }
}

struct DfCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "df", abstract: "Show metadata and data block usage.",
        // -h is the original's --human-readable.
        helpNames: [.long])
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(name: [.customShort("h"), .long], help: "Print sizes in human readable format (e.g., 1KB 234MB 2GB).") var humanReadable = false
    @Flag(help: "Print JSON.") var json = false

    struct Row: Encodable {
        var type: String
        var blockSize: Int
        var totalBlocks: UInt64
        var usedBlocks: UInt64
        var freeBlocks: UInt64
        var usePercent: UInt64
    }

    /// A byte count as the original prints it: two decimals and B, KB, MB… in powers of 1024.
    static func human(_ bytes: UInt64) -> String {
        let suffixes = ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
        var x = Double(bytes)
        var i = 0
        while x >= 1024 {
            x /= 1024
            i += 1
        }
        return String(format: "%.2f%@", x, suffixes[i])
    }

    func run() throws {
        try runVerb("df") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            guard case let .statfsMore(s) = try t.call(.statfsMore) else { throw VerbError("unexpected reply from the mount") }
            func row(_ type: String, _ size: Int, _ total: UInt64, _ free: UInt64) -> Row {
                let f = min(free, total)
                return Row(type: type, blockSize: size, totalBlocks: total, usedBlocks: total - f, freeBlocks: f,
                           usePercent: total == 0 ? 0 : (total - f) * 100 / total)
            }
            let rows = [row("MetaData", Layout.metaBlockSize, s.totalMetaBlocks, s.freeMetaBlocks),
                        row("Data", Layout.dataBlockSize, s.totalDataBlocks, s.freeDataBlocks)]
            if json {
                try printJSON(rows)
                return
            }
            var cells = [["Type", "Size", "Total", "Used", "Free", "Use%"]]
            for r in rows {
                let n: (UInt64) -> String = { humanReadable ? Self.human($0 * UInt64(r.blockSize)) : "\($0)" }
                cells.append([r.type, "\(r.blockSize / 1024)KB", n(r.totalBlocks), n(r.usedBlocks), n(r.freeBlocks), "\(r.usePercent)"])
            }
            // Right-aligned columns two spaces apart, trailing spaces included, as the original.
            let widths = (0..<6).map { c in cells.map { $0[c].count }.max()! }
            for r in cells {
                print(r.enumerated().map { String(repeating: " ", count: widths[$0.offset] - $0.element.count) + $0.element + "  " }.joined())
            }
        }
    }
}
