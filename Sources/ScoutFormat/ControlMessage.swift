/// Messages between the `scoutfs` CLI and a mount's control socket (DESIGN.md §5): the
/// archive interfaces that the original reaches through ioctls, which FUSE does not pass on.
///
/// A message is a 4-byte little-endian length and a body; the body starts with the operation's
/// code. Requests about one file travel with an open descriptor of it (SCM_RIGHTS), so the
/// kernel has already applied its permission checks when the file was opened, as for an ioctl.

/// What a data waiter was doing when it found offline data (the original's `DWO_*` bits).
public struct DataWaitOperation: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = DataWaitOperation(rawValue: 1)
    public static let write = DataWaitOperation(rawValue: 2)
    public static let changeSize = DataWaitOperation(rawValue: 4)

    /// `read,write,change_size` as data-waiting prints it.
    public var names: String {
        var n: [String] = []
        if contains(.read) { n.append("read") }
        if contains(.write) { n.append("write") }
        if contains(.changeSize) { n.append("change_size") }
        return n.joined(separator: ",")
    }

    public init?(name: String) {
        switch name {
        case "read": self = .read
        case "write": self = .write
        case "change_size": self = .changeSize
        default: return nil
        }
    }
}

/// The extra inode fields (`stat_more`).
public struct InodeStatMore: Equatable, Sendable {
    public var metaSeq: UInt64
    public var dataSeq: UInt64
    public var dataVersion: UInt64
    public var onlineBlocks: UInt64
    public var offlineBlocks: UInt64
    public var crtime: Timestamp

    public init(metaSeq: UInt64, dataSeq: UInt64, dataVersion: UInt64, onlineBlocks: UInt64, offlineBlocks: UInt64, crtime: Timestamp) {
        self.metaSeq = metaSeq
        self.dataSeq = dataSeq
        self.dataVersion = dataVersion
        self.onlineBlocks = onlineBlocks
        self.offlineBlocks = offlineBlocks
        self.crtime = crtime
    }
}

/// Filesystem-wide facts (`statfs_more`) and space (`df`).
public struct FilesystemStatMore: Equatable, Sendable {
    public var fsid: UInt64
    public var rid: UInt64
    /// The stable seq: no transaction still open can write at or below it.
    public var committedSeq: UInt64
    public var totalMetaBlocks: UInt64
    public var totalDataBlocks: UInt64
    public var freeMetaBlocks: UInt64
    public var freeDataBlocks: UInt64

    public init(fsid: UInt64, rid: UInt64, committedSeq: UInt64, totalMetaBlocks: UInt64, totalDataBlocks: UInt64,
                freeMetaBlocks: UInt64, freeDataBlocks: UInt64) {
        self.fsid = fsid
        self.rid = rid
        self.committedSeq = committedSeq
        self.totalMetaBlocks = totalMetaBlocks
        self.totalDataBlocks = totalDataBlocks
        self.freeMetaBlocks = freeMetaBlocks
        self.freeDataBlocks = freeDataBlocks
    }
}

/// One reader or writer blocked on offline data.
public struct DataWaiter: Equatable, Sendable {
    public var ino: UInt64
    public var iblock: UInt64
    public var op: DataWaitOperation

    public init(ino: UInt64, iblock: UInt64, op: DataWaitOperation) {
        self.ino = ino
        self.iblock = iblock
        self.op = op
    }
}

/// A directory entry that refers to an inode, and the path through it.
public struct ReferringEntry: Equatable, Sendable {
    public var dir: UInt64
    public var pos: UInt64
    public var type: UInt8
    public var name: [UInt8]

    public init(dir: UInt64, pos: UInt64, type: UInt8, name: [UInt8]) {
        self.dir = dir
        self.pos = pos
        self.type = type
        self.name = name
    }
}

/// A position in a seq index: entries sort by seq, then inode number.
public struct IndexPosition: Hashable, Comparable, Sendable {
    public var seq: UInt64
    public var ino: UInt64

    public init(seq: UInt64, ino: UInt64) {
        self.seq = seq
        self.ino = ino
    }

    public static func < (a: IndexPosition, b: IndexPosition) -> Bool { (a.seq, a.ino) < (b.seq, b.ino) }

    /// The position after this one, or nil after the last.
    public var next: IndexPosition? {
        if ino != .max { return IndexPosition(seq: seq, ino: ino + 1) }
        if seq != .max { return IndexPosition(seq: seq + 1, ino: 0) }
        return nil
    }
}

/// A path from the root to an inode through the entry `(dir, pos)`.
public struct InodePath: Equatable, Sendable {
    public var dir: UInt64
    public var pos: UInt64
    public var path: [UInt8]

    public init(dir: UInt64, pos: UInt64, path: [UInt8]) {
        self.dir = dir
        self.pos = pos
        self.path = path
    }
}

/// The three numbers that end a `.totl.` xattr name; totals sort by them.
public struct XattrTotalName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var a: UInt64
    public var b: UInt64
    public var c: UInt64

    public init(a: UInt64, b: UInt64, c: UInt64) {
        self.a = a
        self.b = b
        self.c = c
    }

    public static func < (x: XattrTotalName, y: XattrTotalName) -> Bool { (x.a, x.b, x.c) < (y.a, y.b, y.c) }

    public var description: String { "\(a).\(b).\(c)" }
}

/// The sum of the values of every `.totl.` xattr with one name, and how many there are.
public struct XattrTotal: Equatable, Sendable {
    public var name: XattrTotalName
    public var total: Int64
    public var count: Int64

    public init(name: XattrTotalName, total: Int64, count: Int64) {
        self.name = name
        self.total = total
        self.count = count
    }
}

/// How `setattr` restores a file.
public struct SetattrMore: Equatable, Sendable {
    public var dataVersion: UInt64
    public var size: UInt64
    /// The whole size becomes one offline region instead of a hole.
    public var offline: Bool
    public var ctime: Timestamp?
    public var crtime: Timestamp?

    public init(dataVersion: UInt64, size: UInt64, offline: Bool, ctime: Timestamp?, crtime: Timestamp?) {
        self.dataVersion = dataVersion
        self.size = size
        self.offline = offline
        self.ctime = ctime
        self.crtime = crtime
    }
}

/// A mount's place in its cluster, for `scoutfs status`.
public struct ClusterStatus: Equatable, Sendable {
    /// This mount runs the server.
    public var isServer: Bool
    /// Its connection to the server is up (always, for the server's own mount).
    public var connected: Bool
    /// The nodes with a session at the server (the server's mount only).
    public var nodes: [UInt64]
    /// Cluster locks this mount holds (cached, granted), and its lock traffic since mount.
    public var locksHeld: UInt64
    public var lockRequests: UInt64
    public var lockGrants: UInt64
    public var lockInvalidations: UInt64
    /// What the daemon's memory holds (absent from a daemon that does not say).
    public var memory: MemoryUse?

    public init(isServer: Bool, connected: Bool, nodes: [UInt64], locksHeld: UInt64, lockRequests: UInt64, lockGrants: UInt64,
                lockInvalidations: UInt64, memory: MemoryUse? = nil) {
        self.isServer = isServer
        self.connected = connected
        self.nodes = nodes
        self.locksHeld = locksHeld
        self.lockRequests = lockRequests
        self.lockGrants = lockGrants
        self.lockInvalidations = lockInvalidations
        self.memory = memory
    }
}

/// The parts of a daemon's memory that grow with use, for `scoutfs status`.
public struct MemoryUse: Equatable, Sendable {
    /// Memory taken for cached metadata blocks, and how much of it holds blocks now.
    public var blockBytes: UInt64
    public var blockBytesInUse: UInt64
    /// The item cache's clean items, as its bound counts them (an estimate).
    public var itemBytes: UInt64
    /// Inodes the kernel holds references to, each with a record in the daemon.
    public var kernelInodes: UInt64

    public init(blockBytes: UInt64, blockBytesInUse: UInt64, itemBytes: UInt64, kernelInodes: UInt64) {
        self.blockBytes = blockBytes
        self.blockBytesInUse = blockBytesInUse
        self.itemBytes = itemBytes
        self.kernelInodes = kernelInodes
    }
}

/// One extent of a file's map as FIEMAP reports it: bytes, flags of `<linux/fiemap.h>`.
public struct FiemapExtent: Equatable, Sendable {
    public var logical: UInt64
    public var physical: UInt64
    public var length: UInt64
    public var flags: UInt32

    /// The last extent of the file.
    public static let last: UInt32 = 0x1
    /// Where the data is is not known: released (offline) to an archive.
    public static let unknown: UInt32 = 0x2
    /// Allocated and never written (fallocate): reads as zeros.
    public static let unwritten: UInt32 = 0x800

    public init(logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32) {
        self.logical = logical
        self.physical = physical
        self.length = length
        self.flags = flags
    }
}

/// Where a quota rule is kept (its item's key), for paging through the rules.
public struct QuotaRulePosition: Hashable, Sendable {
    public var hash: UInt64
    public var index: UInt64
    public init(hash: UInt64, index: UInt64) {
        self.hash = hash
        self.index = index
    }
}

/// The MAJOR and MINOR of an `.indx.` xattr name: where it lists its inode.
public struct XattrIndexPosition: Hashable, Sendable {
    public var major: UInt8
    public var minor: UInt64
    public init(major: UInt8, minor: UInt64) {
        self.major = major
        self.minor = minor
    }
}

/// One entry of the `.indx.` index, ordered by major, minor, then inode.
public struct XattrIndexEntry: Hashable, Comparable, Sendable {
    public var major: UInt8
    public var minor: UInt64
    public var ino: UInt64
    public init(major: UInt8, minor: UInt64, ino: UInt64) {
        self.major = major
        self.minor = minor
        self.ino = ino
    }
    public static func < (a: XattrIndexEntry, b: XattrIndexEntry) -> Bool { (a.major, a.minor, a.ino) < (b.major, b.minor, b.ino) }
}

/// The original's `scoutfs_ioctl_inode_attr_x`: `mask` says which fields a get fills or a set
/// changes.
public struct InodeAttrX: Equatable, Sendable {
    public var mask: UInt64
    /// Behaviour of the call (`sizeOffline`), not attributes.
    public var flags: UInt64
    public var metaSeq: UInt64 = 0
    public var dataSeq: UInt64 = 0
    public var dataVersion: UInt64 = 0
    public var onlineBlocks: UInt64 = 0
    public var offlineBlocks: UInt64 = 0
    public var ctime = Timestamp(seconds: 0, nanoseconds: 0)
    public var crtime = Timestamp(seconds: 0, nanoseconds: 0)
    public var size: UInt64 = 0
    /// Single-bit attributes (`retentionBit`).
    public var bits: UInt64 = 0
    public var projectID: UInt64 = 0

    public static let metaSeqMask: UInt64 = 1 << 0
    public static let dataSeqMask: UInt64 = 1 << 1
    public static let dataVersionMask: UInt64 = 1 << 2
    public static let onlineBlocksMask: UInt64 = 1 << 3
    public static let offlineBlocksMask: UInt64 = 1 << 4
    public static let ctimeMask: UInt64 = 1 << 5
    public static let crtimeMask: UInt64 = 1 << 6
    public static let sizeMask: UInt64 = 1 << 7
    public static let retentionMask: UInt64 = 1 << 8
    public static let projectIDMask: UInt64 = 1 << 9
    public static let knownMask: UInt64 = (1 << 10) - 1
    /// With a size: the file from 0 to it becomes one offline region.
    public static let sizeOffline: UInt64 = 1 << 0
    public static let retentionBit: UInt64 = 1 << 0

    public init(mask: UInt64, flags: UInt64 = 0) {
        self.mask = mask
        self.flags = flags
    }

    func encode(into w: inout ByteWriter) {
        for v in [mask, flags, metaSeq, dataSeq, dataVersion, onlineBlocks, offlineBlocks] { w.u64(v) }
        w.time(ctime)
        w.time(crtime)
        for v in [size, bits, projectID] { w.u64(v) }
    }

    init(decoding r: inout ByteReader) throws(FormatError) {
        mask = try r.u64()
        flags = try r.u64()
        metaSeq = try r.u64()
        dataSeq = try r.u64()
        dataVersion = try r.u64()
        onlineBlocks = try r.u64()
        offlineBlocks = try r.u64()
        ctime = try r.time()
        crtime = try r.time()
        size = try r.u64()
        bits = try r.u64()
        projectID = try r.u64()
    }
}

public enum ControlRequest: Equatable, Sendable {
    /// Entries of a seq index (`index` 0 meta_seq, 1 data_seq) between two (seq, ino) positions.
    case walkInodes(index: UInt8, firstSeq: UInt64, firstIno: UInt64, lastSeq: UInt64, lastIno: UInt64, limit: UInt32)
    /// About the file sent along (every request carries an open descriptor: of the file it is
    /// about, or of any path in the filesystem).
    case statMore
    case statfsMore
    case release(dataVersion: UInt64, offset: UInt64, length: UInt64)
    case stage(dataVersion: UInt64, offset: UInt64, data: [UInt8])
    case setattrMore(SetattrMore)
    case dataWaiting(afterIno: UInt64, afterBlock: UInt64, limit: UInt32)
    case dataWaitErr(ino: UInt64, dataVersion: UInt64, offset: UInt64, count: UInt64, op: DataWaitOperation, errno: Int32)
    case referringEntries(ino: UInt64, afterDir: UInt64, afterPos: UInt64, limit: UInt32)
    /// Paths of `ino`, one per referring entry after (dir, pos).
    case inoPaths(ino: UInt64, afterDir: UInt64, afterPos: UInt64, limit: UInt32)
    /// Inodes in `[firstIno, lastIno]` that may carry the `.srch.` xattr `name` (root only).
    case searchXattrs(name: [UInt8], firstIno: UInt64, lastIno: UInt64, limit: UInt32)
    /// Names of the `.hide.` xattrs of the file sent along, skipping the first `skip`.
    case listHiddenXattrs(skip: UInt32, limit: UInt32)
    /// `.totl.` totals after `after` (from the first when nil), root only.
    case readXattrTotals(after: XattrTotalName?, limit: UInt32)
    /// Commit everything now and answer (with the committed seq) once it is durable:
    /// sync(1) and syncfs(2) never reach a FUSE daemon.
    case sync
    /// The mount's role, its server connection and its lock figures.
    case clusterStatus
    /// The extents of the file sent along from logical block `fromBlock` on, adjacent ones
    /// merged as FIEMAP merges them, at most `limit`.
    case fiemap(fromBlock: UInt64, limit: UInt32)
    /// Turns the offline extents of `[offset, offset + length)` of the file sent along into
    /// holes, if its data version matches (the original's PUNCH_OFFLINE).
    case punchOffline(dataVersion: UInt64, offset: UInt64, length: UInt64)
    /// Moves the data extents of `[fromOffset, fromOffset + length)` of the request's second
    /// descriptor into the file sent first at `toOffset` (the original's MOVE_BLOCKS; with
    /// `stage`, into an offline region of a file whose data version is `dataVersion`).
    case moveBlocks(fromOffset: UInt64, length: UInt64, toOffset: UInt64, dataVersion: UInt64, stage: Bool)
    /// The fields of the file sent along that `mask` names (the original's GET_ATTR_X).
    case getAttrX(mask: UInt64)
    /// Sets the fields `mask` names (the original's SET_ATTR_X; root only).
    case setAttrX(InodeAttrX)
    /// Entries of the `.indx.` index from `first` through `last` (root only).
    case readXattrIndex(first: XattrIndexEntry, last: XattrIndexEntry, limit: UInt32)
    /// Adds a quota rule (root only); EEXIST if the same rule is there.
    case addQuotaRule(QuotaRule)
    /// Deletes a quota rule equal in every field (root only); ENOENT if there is none.
    case deleteQuotaRule(QuotaRule)
    /// Quota rules in storage order from `from` on.
    case quotaRules(from: QuotaRulePosition, limit: UInt32)
    /// The inode numbers in use from `start` to the end of its inode group (the original's
    /// GET_ALLOCATED_INOS, a debugging aid).
    case allocatedInodes(start: UInt64)
    /// Grows the filesystem onto more of its devices (root only): new totals in 64 KiB
    /// metadata and 4 KiB data blocks, 0 leaving a device as it is (the original's
    /// RESIZE_DEVICES).
    case resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64)
}

public enum ControlReply: Equatable, Sendable {
    case failure(errno: Int32, message: String)
    case done
    case count(UInt64)
    case walk([IndexPosition])
    case statMore(InodeStatMore)
    case statfsMore(FilesystemStatMore)
    case waiters([DataWaiter])
    case entries([ReferringEntry])
    case paths([InodePath])
    case inodes([UInt64], end: Bool)
    case names([[UInt8]])
    case totals([XattrTotal])
    case clusterStatus(ClusterStatus)
    /// Extents of a fiemap request; `end`: the file has no more (the last carries `last`).
    case fiemap([FiemapExtent], end: Bool)
    case attrX(InodeAttrX)
    case indexEntries([XattrIndexEntry])
    /// A page of quota rules; `next` is where the following page starts (nil: no more).
    case quotaRules([QuotaRule], next: QuotaRulePosition?)
}

public enum ControlMessage {
    /// Largest body either side accepts: a 1 MiB stage chunk and its header, or a page of
    /// results. A longer length prefix is refused before anything is read.
    public static let maxBody = (1 << 20) + 4096
    /// Largest stage chunk the CLI sends.
    public static let stageChunk = 1 << 20
}

// MARK: - encoding

extension ByteWriter {
    mutating func bytes16(_ b: [UInt8]) {
        u16(UInt16(b.count))
        raw(b)
    }

    mutating func bytes32(_ b: [UInt8]) {
        u32(UInt32(b.count))
        raw(b)
    }

    mutating func time(_ t: Timestamp) {
        i64(t.seconds)
        u32(t.nanoseconds)
    }
}

extension ByteReader {
    mutating func bytes16(max: Int) throws(FormatError) -> [UInt8] {
        let n = Int(try u16())
        if n > max { throw FormatError("control message field of \(n) bytes, at most \(max) allowed") }
        return try raw(n)
    }

    mutating func bytes32(max: Int) throws(FormatError) -> [UInt8] {
        let n = Int(try u32())
        if n > max { throw FormatError("control message field of \(n) bytes, at most \(max) allowed") }
        return try raw(n)
    }

    mutating func time() throws(FormatError) -> Timestamp {
        let s = try i64()
        let ns = try u32()
        if ns >= 1_000_000_000 { throw FormatError("timestamp with \(ns) nanoseconds") }
        return Timestamp(seconds: s, nanoseconds: ns)
    }

    /// A count of entries that each take at least `size` bytes, checked against what is left
    /// before anything is allocated for them.
    mutating func count(each size: Int) throws(FormatError) -> Int {
        let n = Int(try u32())
        if n > remaining / max(size, 1) { throw FormatError("control message claims \(n) entries in \(remaining) bytes") }
        return n
    }
}

extension ControlRequest {
    private var code: UInt8 {
        switch self {
        case .walkInodes: 1
        case .statMore: 2
        case .statfsMore: 3
        case .release: 4
        case .stage: 5
        case .setattrMore: 6
        case .dataWaiting: 7
        case .dataWaitErr: 8
        case .referringEntries: 12
        case .inoPaths: 13
        case .searchXattrs: 9
        case .listHiddenXattrs: 10
        case .readXattrTotals: 11
        case .sync: 14
        case .clusterStatus: 15
        case .fiemap: 16
        case .punchOffline: 17
        case .moveBlocks: 18
        case .getAttrX: 19
        case .setAttrX: 20
        case .readXattrIndex: 21
        case .addQuotaRule: 22
        case .deleteQuotaRule: 23
        case .quotaRules: 24
        case .allocatedInodes: 25
        case .resizeDevices: 26
        }
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.u8(code)
        switch self {
        case let .walkInodes(index, fs, fi, ls, li, limit):
            w.u8(index)
            for v in [fs, fi, ls, li] { w.u64(v) }
            w.u32(limit)
        case .statMore, .statfsMore, .sync, .clusterStatus:
            break
        case let .release(v, off, len), let .punchOffline(v, off, len):
            for x in [v, off, len] { w.u64(x) }
        case let .moveBlocks(from, len, to, v, stage):
            for x in [from, len, to, v] { w.u64(x) }
            w.u8(stage ? 1 : 0)
        case let .getAttrX(mask):
            w.u64(mask)
        case let .setAttrX(a):
            a.encode(into: &w)
        case let .readXattrIndex(first, last, limit):
            for e in [first, last] {
                w.u8(e.major)
                w.u64(e.minor)
                w.u64(e.ino)
            }
            w.u32(limit)
        case let .stage(v, off, data):
            w.u64(v)
            w.u64(off)
            w.bytes32(data)
        case let .setattrMore(s):
            w.u64(s.dataVersion)
            w.u64(s.size)
            w.u8((s.offline ? 1 : 0) | (s.ctime != nil ? 2 : 0) | (s.crtime != nil ? 4 : 0))
            w.time(s.ctime ?? Timestamp(seconds: 0, nanoseconds: 0))
            w.time(s.crtime ?? Timestamp(seconds: 0, nanoseconds: 0))
        case let .dataWaiting(ino, block, limit):
            w.u64(ino)
            w.u64(block)
            w.u32(limit)
        case let .dataWaitErr(ino, v, off, count, op, err):
            for x in [ino, v, off, count] { w.u64(x) }
            w.u8(op.rawValue)
            w.u32(UInt32(bitPattern: err))
        case let .referringEntries(ino, dir, pos, limit), let .inoPaths(ino, dir, pos, limit):
            for x in [ino, dir, pos] { w.u64(x) }
            w.u32(limit)
        case let .searchXattrs(name, first, last, limit):
            w.bytes16(name)
            w.u64(first)
            w.u64(last)
            w.u32(limit)
        case let .listHiddenXattrs(skip, limit):
            w.u32(skip)
            w.u32(limit)
        case let .readXattrTotals(after, limit):
            w.u8(after == nil ? 0 : 1)
            for x in [after?.a ?? 0, after?.b ?? 0, after?.c ?? 0] { w.u64(x) }
            w.u32(limit)
        case let .fiemap(block, limit):
            w.u64(block)
            w.u32(limit)
        case let .addQuotaRule(rule), let .deleteQuotaRule(rule):
            rule.encode(into: &w)
        case let .quotaRules(from, limit):
            w.u64(from.hash)
            w.u64(from.index)
            w.u32(limit)
        case let .allocatedInodes(start):
            w.u64(start)
        case let .resizeDevices(meta, data):
            w.u64(meta)
            w.u64(data)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "control request")
        let code = try r.u8()
        switch code {
        case 1:
            let index = try r.u8()
            self = .walkInodes(index: index, firstSeq: try r.u64(), firstIno: try r.u64(), lastSeq: try r.u64(),
                               lastIno: try r.u64(), limit: try r.u32())
        case 2: self = .statMore
        case 3: self = .statfsMore
        case 14: self = .sync
        case 15: self = .clusterStatus
        case 16: self = .fiemap(fromBlock: try r.u64(), limit: try r.u32())
        case 17: self = .punchOffline(dataVersion: try r.u64(), offset: try r.u64(), length: try r.u64())
        case 18:
            self = .moveBlocks(fromOffset: try r.u64(), length: try r.u64(), toOffset: try r.u64(), dataVersion: try r.u64(),
                               stage: try r.u8() != 0)
        case 19: self = .getAttrX(mask: try r.u64())
        case 20: self = .setAttrX(try InodeAttrX(decoding: &r))
        case 21:
            let first = XattrIndexEntry(major: try r.u8(), minor: try r.u64(), ino: try r.u64())
            self = .readXattrIndex(first: first, last: XattrIndexEntry(major: try r.u8(), minor: try r.u64(), ino: try r.u64()), limit: try r.u32())
        case 22: self = .addQuotaRule(try QuotaRule(decoding: &r))
        case 23: self = .deleteQuotaRule(try QuotaRule(decoding: &r))
        case 24: self = .quotaRules(from: QuotaRulePosition(hash: try r.u64(), index: try r.u64()), limit: try r.u32())
        case 25: self = .allocatedInodes(start: try r.u64())
        case 26: self = .resizeDevices(metaTotalBlocks: try r.u64(), dataTotalBlocks: try r.u64())
        case 4: self = .release(dataVersion: try r.u64(), offset: try r.u64(), length: try r.u64())
        case 5:
            self = .stage(dataVersion: try r.u64(), offset: try r.u64(), data: try r.bytes32(max: ControlMessage.stageChunk))
        case 6:
            let v = try r.u64()
            let size = try r.u64()
            let flags = try r.u8()
            if flags & ~7 != 0 { throw FormatError("setattr flags \(flags) has unknown bits") }
            let ctime = try r.time()
            let crtime = try r.time()
            self = .setattrMore(SetattrMore(dataVersion: v, size: size, offline: flags & 1 != 0,
                                            ctime: flags & 2 != 0 ? ctime : nil, crtime: flags & 4 != 0 ? crtime : nil))
        case 7: self = .dataWaiting(afterIno: try r.u64(), afterBlock: try r.u64(), limit: try r.u32())
        case 8:
            let ino = try r.u64(), v = try r.u64(), off = try r.u64(), count = try r.u64()
            let op = DataWaitOperation(rawValue: try r.u8())
            self = .dataWaitErr(ino: ino, dataVersion: v, offset: off, count: count, op: op, errno: Int32(bitPattern: try r.u32()))
        case 12: self = .referringEntries(ino: try r.u64(), afterDir: try r.u64(), afterPos: try r.u64(), limit: try r.u32())
        case 13: self = .inoPaths(ino: try r.u64(), afterDir: try r.u64(), afterPos: try r.u64(), limit: try r.u32())
        case 9: self = .searchXattrs(name: try r.bytes16(max: 255), firstIno: try r.u64(), lastIno: try r.u64(), limit: try r.u32())
        case 10: self = .listHiddenXattrs(skip: try r.u32(), limit: try r.u32())
        case 11:
            let has = try r.u8()
            if has > 1 { throw FormatError("xattr totals position flag \(has) is neither 0 nor 1") }
            let name = XattrTotalName(a: try r.u64(), b: try r.u64(), c: try r.u64())
            self = .readXattrTotals(after: has == 1 ? name : nil, limit: try r.u32())
        default: throw FormatError("unknown control request \(code)")
        }
        try r.finish()
    }
}

extension ControlReply {
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        switch self {
        case let .failure(errno, message):
            w.u8(0)
            w.u32(UInt32(bitPattern: errno))
            w.bytes16(Array(message.utf8.prefix(4096)))
        case .done:
            w.u8(1)
        case let .count(n):
            w.u8(2)
            w.u64(n)
        case let .walk(entries):
            w.u8(3)
            w.u32(UInt32(entries.count))
            for e in entries {
                w.u64(e.seq)
                w.u64(e.ino)
            }
        case let .statMore(s):
            w.u8(4)
            for v in [s.metaSeq, s.dataSeq, s.dataVersion, s.onlineBlocks, s.offlineBlocks] { w.u64(v) }
            w.time(s.crtime)
        case let .statfsMore(s):
            w.u8(5)
            for v in [s.fsid, s.rid, s.committedSeq, s.totalMetaBlocks, s.totalDataBlocks, s.freeMetaBlocks, s.freeDataBlocks] { w.u64(v) }
        case let .waiters(ws):
            w.u8(6)
            w.u32(UInt32(ws.count))
            for x in ws {
                w.u64(x.ino)
                w.u64(x.iblock)
                w.u8(x.op.rawValue)
            }
        case let .entries(es):
            w.u8(10)
            w.u32(UInt32(es.count))
            for e in es {
                w.u64(e.dir)
                w.u64(e.pos)
                w.u8(e.type)
                w.bytes16(e.name)
            }
        case let .paths(ps):
            w.u8(11)
            w.u32(UInt32(ps.count))
            for p in ps {
                w.u64(p.dir)
                w.u64(p.pos)
                w.bytes32(p.path)
            }
        case let .inodes(inos, end):
            w.u8(7)
            w.u8(end ? 1 : 0)
            w.u32(UInt32(inos.count))
            for i in inos { w.u64(i) }
        case let .names(ns):
            w.u8(8)
            w.u32(UInt32(ns.count))
            for n in ns { w.bytes16(n) }
        case let .totals(ts):
            w.u8(9)
            w.u32(UInt32(ts.count))
            for t in ts {
                for x in [t.name.a, t.name.b, t.name.c] { w.u64(x) }
                w.i64(t.total)
                w.i64(t.count)
            }
        case let .clusterStatus(c):
            w.u8(12)
            w.u8((c.isServer ? 1 : 0) | (c.connected ? 2 : 0))
            for v in [c.locksHeld, c.lockRequests, c.lockGrants, c.lockInvalidations] { w.u64(v) }
            w.u32(UInt32(c.nodes.count))
            for n in c.nodes { w.u64(n) }
            w.u8(c.memory == nil ? 0 : 1)
            if let m = c.memory {
                for v in [m.blockBytes, m.blockBytesInUse, m.itemBytes, m.kernelInodes] { w.u64(v) }
            }
        case let .fiemap(es, end):
            w.u8(13)
            w.u8(end ? 1 : 0)
            w.u32(UInt32(es.count))
            for e in es {
                for x in [e.logical, e.physical, e.length] { w.u64(x) }
                w.u32(e.flags)
            }
        case let .attrX(a):
            w.u8(14)
            a.encode(into: &w)
        case let .quotaRules(rules, next):
            w.u8(16)
            w.u8(next == nil ? 0 : 1)
            w.u64(next?.hash ?? 0)
            w.u64(next?.index ?? 0)
            w.u32(UInt32(rules.count))
            for rule in rules { rule.encode(into: &w) }
        case let .indexEntries(es):
            w.u8(15)
            w.u32(UInt32(es.count))
            for e in es {
                w.u8(e.major)
                w.u64(e.minor)
                w.u64(e.ino)
            }
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "control reply")
        let code = try r.u8()
        switch code {
        case 0:
            let e = Int32(bitPattern: try r.u32())
            self = .failure(errno: e, message: String(decoding: try r.bytes16(max: 4096), as: UTF8.self))
        case 1: self = .done
        case 2: self = .count(try r.u64())
        case 3:
            let n = try r.count(each: 16)
            var es: [IndexPosition] = []
            es.reserveCapacity(n)
            for _ in 0..<n { es.append(IndexPosition(seq: try r.u64(), ino: try r.u64())) }
            self = .walk(es)
        case 4:
            self = .statMore(InodeStatMore(metaSeq: try r.u64(), dataSeq: try r.u64(), dataVersion: try r.u64(),
                                           onlineBlocks: try r.u64(), offlineBlocks: try r.u64(), crtime: try r.time()))
        case 5:
            self = .statfsMore(FilesystemStatMore(fsid: try r.u64(), rid: try r.u64(), committedSeq: try r.u64(),
                                                  totalMetaBlocks: try r.u64(), totalDataBlocks: try r.u64(),
                                                  freeMetaBlocks: try r.u64(), freeDataBlocks: try r.u64()))
        case 6:
            let n = try r.count(each: 17)
            var ws: [DataWaiter] = []
            for _ in 0..<n {
                ws.append(DataWaiter(ino: try r.u64(), iblock: try r.u64(), op: DataWaitOperation(rawValue: try r.u8())))
            }
            self = .waiters(ws)
        case 10:
            let n = try r.count(each: 19)
            var es: [ReferringEntry] = []
            for _ in 0..<n {
                es.append(ReferringEntry(dir: try r.u64(), pos: try r.u64(), type: try r.u8(), name: try r.bytes16(max: 255)))
            }
            self = .entries(es)
        case 11:
            let n = try r.count(each: 20)
            var ps: [InodePath] = []
            for _ in 0..<n { ps.append(InodePath(dir: try r.u64(), pos: try r.u64(), path: try r.bytes32(max: ControlMessage.maxBody))) }
            self = .paths(ps)
        case 7:
            let end = try r.u8()
            if end > 1 { throw FormatError("search end flag \(end) is neither 0 nor 1") }
            let n = try r.count(each: 8)
            var inos: [UInt64] = []
            inos.reserveCapacity(n)
            for _ in 0..<n { inos.append(try r.u64()) }
            self = .inodes(inos, end: end == 1)
        case 8:
            let n = try r.count(each: 2)
            var ns: [[UInt8]] = []
            for _ in 0..<n { ns.append(try r.bytes16(max: 255)) }
            self = .names(ns)
        case 9:
            let n = try r.count(each: 40)
            var ts: [XattrTotal] = []
            for _ in 0..<n {
                let name = XattrTotalName(a: try r.u64(), b: try r.u64(), c: try r.u64())
                ts.append(XattrTotal(name: name, total: try r.i64(), count: try r.i64()))
            }
            self = .totals(ts)
        case 12:
            let flags = try r.u8()
            if flags > 3 { throw FormatError("cluster status flags \(flags)") }
            let held = try r.u64(), requests = try r.u64(), grants = try r.u64(), invalidations = try r.u64()
            let n = try r.count(each: 8)
            var nodes: [UInt64] = []
            for _ in 0..<n { nodes.append(try r.u64()) }
            var memory: MemoryUse?
            let hasMemory = try r.u8()
            if hasMemory > 1 { throw FormatError("cluster status memory flag \(hasMemory) is neither 0 nor 1") }
            if hasMemory == 1 {
                memory = MemoryUse(blockBytes: try r.u64(), blockBytesInUse: try r.u64(), itemBytes: try r.u64(), kernelInodes: try r.u64())
            }
            self = .clusterStatus(ClusterStatus(isServer: flags & 1 != 0, connected: flags & 2 != 0, nodes: nodes, locksHeld: held,
                                                lockRequests: requests, lockGrants: grants, lockInvalidations: invalidations, memory: memory))
        case 13:
            let end = try r.u8()
            if end > 1 { throw FormatError("fiemap end flag \(end) is neither 0 nor 1") }
            let n = try r.count(each: 28)
            var es: [FiemapExtent] = []
            es.reserveCapacity(n)
            for _ in 0..<n {
                es.append(FiemapExtent(logical: try r.u64(), physical: try r.u64(), length: try r.u64(), flags: try r.u32()))
            }
            self = .fiemap(es, end: end == 1)
        case 14: self = .attrX(try InodeAttrX(decoding: &r))
        case 16:
            let more = try r.u8()
            if more > 1 { throw FormatError("quota rules' next flag \(more) is neither 0 nor 1") }
            let next = QuotaRulePosition(hash: try r.u64(), index: try r.u64())
            let n = try r.count(each: QuotaRule.encodedSize)
            var rules: [QuotaRule] = []
            for _ in 0..<n { rules.append(try QuotaRule(decoding: &r)) }
            self = .quotaRules(rules, next: more == 1 ? next : nil)
        case 15:
            let n = try r.count(each: 17)
            var es: [XattrIndexEntry] = []
            for _ in 0..<n { es.append(XattrIndexEntry(major: try r.u8(), minor: try r.u64(), ino: try r.u64())) }
            self = .indexEntries(es)
        default:
            throw FormatError("unknown control reply \(code)")
        }
        try r.finish()
    }
}
