/// A timestamp as stored in inode items.
public struct Timestamp: Hashable, Sendable, Comparable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public static func < (a: Timestamp, b: Timestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

/// The value of an inode item, keyed `(fs, ino, inode)`.
public struct InodeRecord: Hashable, Sendable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var nlink: UInt32
    public var rdev: UInt64
    public var size: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    public var crtime: Timestamp
    /// Seq of the transaction of the last metadata change (indexed for archive agents).
    public var metaSeq: UInt64
    /// Seq of the transaction of the last data change.
    public var dataSeq: UInt64
    /// Bumped on every change of contents or size.
    public var dataVersion: UInt64
    public var onlineBlocks: UInt64
    public var offlineBlocks: UInt64
    /// Directories: the next readdir position to hand out (positions start at 2, never reused).
    public var nextReaddirPos: UInt64
    /// The next xattr id (xattr items are keyed by name hash and id).
    public var nextXattrID: UInt64
    /// `Flags` bits (the original's inode flags).
    public var flags: UInt64
    /// The project this inode counts against (0: none); new inodes take their directory's.
    public var projectID: UInt64

    public struct Flags {
        /// Retained (WORM): nothing may change the file but non-`user.` xattrs and clearing
        /// the flag, not even root (the original's SCOUTFS_INO_FLAG_RETENTION).
        public static let retention: UInt64 = 0x2
    }

    public var isRetained: Bool { flags & Flags.retention != 0 }

    public static let encodedSize = 4 * 4 + 8 * 2 + 12 * 4 + 8 * 9
    /// Inode items written before flags and project ids were kept: read with both zero.
    public static let encodedSizeWithoutProject = 4 * 4 + 8 * 2 + 12 * 4 + 8 * 7

    public init(mode: UInt32, uid: UInt32, gid: UInt32, now: Timestamp) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        nlink = 1
        rdev = 0
        size = 0
        atime = now
        mtime = now
        ctime = now
        crtime = now
        metaSeq = 0
        dataSeq = 0
        dataVersion = 0
        onlineBlocks = 0
        offlineBlocks = 0
        nextReaddirPos = 2
        nextXattrID = 1
        flags = 0
        projectID = 0
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.encodedSize)
        w.u32(mode)
        w.u32(uid)
        w.u32(gid)
        w.u32(nlink)
        w.u64(rdev)
        w.u64(size)
        for t in [atime, mtime, ctime, crtime] {
            w.i64(t.seconds)
            w.u32(t.nanoseconds)
        }
        for v in [metaSeq, dataSeq, dataVersion, onlineBlocks, offlineBlocks, nextReaddirPos, nextXattrID, flags, projectID] { w.u64(v) }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == Self.encodedSize || bytes.count == Self.encodedSizeWithoutProject else {
            throw FormatError("inode item is \(bytes.count) bytes, expected \(Self.encodedSize)")
        }
        var r = ByteReader(bytes, what: "inode item")
        mode = try r.u32()
        uid = try r.u32()
        gid = try r.u32()
        nlink = try r.u32()
        rdev = try r.u64()
        size = try r.u64()
        func time(_ r: inout ByteReader) throws(FormatError) -> Timestamp {
            let s = try r.i64()
            let ns = try r.u32()
            if ns >= 1_000_000_000 { throw FormatError("inode timestamp with \(ns) nanoseconds") }
            return Timestamp(seconds: s, nanoseconds: ns)
        }
        atime = try time(&r)
        mtime = try time(&r)
        ctime = try time(&r)
        crtime = try time(&r)
        metaSeq = try r.u64()
        dataSeq = try r.u64()
        dataVersion = try r.u64()
        onlineBlocks = try r.u64()
        offlineBlocks = try r.u64()
        nextReaddirPos = try r.u64()
        nextXattrID = try r.u64()
        flags = bytes.count == Self.encodedSize ? try r.u64() : 0
        projectID = bytes.count == Self.encodedSize ? try r.u64() : 0
        if flags & ~Flags.retention != 0 { throw FormatError("inode item has unknown flags \(hex(flags))") }
    }
}

/// A directory entry's value, stored under both the lookup key `(fs, dir, dirent, hash, pos)`
/// and the readdir key `(fs, dir, readdir, pos)`.
public struct DirentRecord: Hashable, Sendable {
    public var ino: UInt64
    /// The `DT_*` type of the target, for readdir.
    public var type: UInt8
    public var name: [UInt8]

    public static let maxNameLength = 255

    public init(ino: UInt64, type: UInt8, name: [UInt8]) {
        self.ino = ino
        self.type = type
        self.name = name
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.nameOffset + name.count)
        w.u64(ino)
        w.u8(type)
        w.raw(name)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        (ino, type) = try Self.header(of: bytes)
        name = Array(bytes[Self.nameOffset...])
    }

    /// Where the name starts: after the inode number and the type.
    static let nameOffset = 9

    /// The inode number and type of an encoded entry, once its length is checked: a name of 1
    /// to `maxNameLength` bytes after them.
    static func header(of bytes: [UInt8]) throws(FormatError) -> (ino: UInt64, type: UInt8) {
        let nameLength = bytes.count - nameOffset
        guard nameLength >= 1, nameLength <= maxNameLength else {
            throw FormatError("directory entry of \(bytes.count) bytes: its name must take 1 to \(maxNameLength)")
        }
        return bytes.withUnsafeBytes { (UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)), $0[8]) }
    }

    /// Reads an encoded entry's inode number and type and lends `body` its name in place:
    /// listing a directory hands thousands of names straight on to the kernel's buffer, and
    /// an array for each would cost more than the rest of the listing.
    public static func withFields<R>(of bytes: [UInt8], _ body: (_ ino: UInt64, _ type: UInt8, _ name: UnsafeRawBufferPointer) throws -> R) throws -> R {
        let (ino, type) = try header(of: bytes)
        return try bytes.withUnsafeBytes { try body(ino, type, UnsafeRawBufferPointer(rebasing: $0[nameOffset...])) }
    }
}

/// The 64-bit FNV-1a hash that places names and xattr names in keys.
public func nameHash(_ name: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in name {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    return h
}
