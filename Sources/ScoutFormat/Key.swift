/// The sorted name of every persistent item: `(zone, first, type, second, third, fourth)`,
/// compared field by field in that order. On disk a key is 27 big-endian bytes, so comparing the
/// encoded bytes gives the same order as comparing keys.
///
/// Keys of one inode are contiguous (zone fs, first = ino), which is what lets one cluster lock
/// over an inode group cover every item of those inodes.
public struct Key: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var zone: UInt8
    public var first: UInt64
    public var type: UInt8
    public var second: UInt64
    public var third: UInt64
    public var fourth: UInt8

    public static let encodedSize = 27

    public init(zone: UInt8, first: UInt64 = 0, type: UInt8 = 0, second: UInt64 = 0, third: UInt64 = 0, fourth: UInt8 = 0) {
        self.zone = zone
        self.first = first
        self.type = type
        self.second = second
        self.third = third
        self.fourth = fourth
    }

    public static let min = Key(zone: 0)
    public static let max = Key(zone: .max, first: .max, type: .max, second: .max, third: .max, fourth: .max)

    /// The last key of a zone: with `Key(zone:)` the bounds of everything in it.
    public static func last(in zone: UInt8) -> Key {
        Key(zone: zone, first: .max, type: .max, second: .max, third: .max, fourth: .max)
    }

    @inlinable
    public static func < (a: Key, b: Key) -> Bool {
        if a.zone != b.zone { return a.zone < b.zone }
        if a.first != b.first { return a.first < b.first }
        if a.type != b.type { return a.type < b.type }
        if a.second != b.second { return a.second < b.second }
        if a.third != b.third { return a.third < b.third }
        return a.fourth < b.fourth
    }

    /// The next key in order, treating the key as one multi-precision number; `nil` after `max`.
    public var successor: Key? {
        var k = self
        if k.fourth != .max { k.fourth += 1; return k }
        k.fourth = 0
        if k.third != .max { k.third += 1; return k }
        k.third = 0
        if k.second != .max { k.second += 1; return k }
        k.second = 0
        if k.type != .max { k.type += 1; return k }
        k.type = 0
        if k.first != .max { k.first += 1; return k }
        k.first = 0
        if k.zone != .max { k.zone += 1; return k }
        return nil
    }

    /// The previous key in order; `nil` before `min`.
    public var predecessor: Key? {
        var k = self
        if k.fourth != 0 { k.fourth -= 1; return k }
        k.fourth = .max
        if k.third != 0 { k.third -= 1; return k }
        k.third = .max
        if k.second != 0 { k.second -= 1; return k }
        k.second = .max
        if k.type != 0 { k.type -= 1; return k }
        k.type = .max
        if k.first != 0 { k.first -= 1; return k }
        k.first = .max
        if k.zone != 0 { k.zone -= 1; return k }
        return nil
    }

    public func encode(into w: inout some FieldWriter) {
        w.u8(zone)
        w.u64BigEndian(first)
        w.u8(type)
        w.u64BigEndian(second)
        w.u64BigEndian(third)
        w.u8(fourth)
    }

    public init(decoding r: inout some FieldReader) throws(FormatError) {
        zone = try r.u8()
        first = try r.u64BigEndian()
        type = try r.u8()
        second = try r.u64BigEndian()
        third = try r.u64BigEndian()
        fourth = try r.u8()
    }

    /// `zone.first.type.second.third.fourth`, the print format of the original.
    public var description: String { "\(zone).\(first).\(type).\(second).\(third).\(fourth)" }
}

/// Key zones. The numbers follow the original scoutfs so that key dumps read the same.
public enum Zone {
    public static let inodeIndex: UInt8 = 4
    public static let orphan: UInt8 = 8
    public static let quota: UInt8 = 10
    public static let xattrTotl: UInt8 = 12
    public static let xattrIndx: UInt8 = 14
    public static let fs: UInt8 = 16
    public static let lock: UInt8 = 20
    public static let logTrees: UInt8 = 24
    public static let mountedClient: UInt8 = 28
    public static let srch: UInt8 = 32
    /// Free extents by start block: `(freeExtent, 0, byStart, start, length)`.
    public static let freeExtent: UInt8 = 36

    public static func name(_ zone: UInt8) -> String {
        switch zone {
        case inodeIndex: "inode-index"
        case orphan: "orphan"
        case quota: "quota"
        case xattrTotl: "xattr-totl"
        case xattrIndx: "xattr-indx"
        case fs: "fs"
        case lock: "lock"
        case logTrees: "log-trees"
        case mountedClient: "mounted-client"
        case srch: "srch"
        case freeExtent: "free-extent"
        default: "zone-\(zone)"
        }
    }
}

/// Item types, numbered within their zone.
public enum ItemType {
    // inode index zone
    public static let metaSeq: UInt8 = 4
    public static let dataSeq: UInt8 = 8
    // orphan zone
    public static let orphan: UInt8 = 4
    // fs zone
    public static let inode: UInt8 = 4
    public static let xattr: UInt8 = 8
    public static let dirent: UInt8 = 12
    public static let readdir: UInt8 = 16
    public static let linkBackref: UInt8 = 20
    public static let symlink: UInt8 = 24
    public static let dataExtent: UInt8 = 28
    // lock zone: keys that name locks, not items
    public static let renameLock: UInt8 = 4
    // free extent zone: one index by start (to merge neighbours), one by length (to find room)
    public static let freeByStart: UInt8 = 4
    public static let freeByLength: UInt8 = 8
}
