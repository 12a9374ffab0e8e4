/// flock(2) and POSIX record (fcntl) locks, kept by the server for the whole cluster: the
/// original leaves them to each node's kernel, so two nodes could both hold an exclusive lock.
/// The two kinds never conflict with each other, as on Linux.
public enum RecordLockKind: UInt8, Sendable {
    /// fcntl(F_SETLK) and lockf: byte ranges, owned by a process (its files table).
    case posix = 1
    /// flock(2): the whole file, owned by an open file description.
    case flock = 2
}

public enum RecordLockType: UInt8, Sendable {
    case read = 1, write, unlock
}

/// Who holds a record lock: a kernel's lock owner on one client. Two owners on one node
/// conflict as two on different nodes do.
public struct RecordLockOwner: Sendable, Hashable {
    public var client: UInt64
    public var owner: UInt64

    public init(client: UInt64, owner: UInt64) {
        self.client = client
        self.owner = owner
    }
}

/// A lock held on bytes `start...end` of inode `ino` (the whole file for flock; `end` is
/// `RecordLock.toEnd` for "to the end of the file, however long").
public struct RecordLock: Sendable, Equatable {
    public static let toEnd = UInt64(Int64.max)

    public var ino: UInt64
    public var kind: RecordLockKind
    public var type: RecordLockType
    public var start: UInt64
    public var end: UInt64
    public var holder: RecordLockOwner
    /// The holder's process id on its own node, for F_GETLK.
    public var pid: UInt32

    public init(ino: UInt64, kind: RecordLockKind, type: RecordLockType, start: UInt64, end: UInt64,
                holder: RecordLockOwner, pid: UInt32) {
        self.ino = ino
        self.kind = kind
        self.type = type
        self.start = start
        self.end = end
        self.holder = holder
        self.pid = pid
    }

    public func overlaps(_ start: UInt64, _ end: UInt64) -> Bool { self.start <= end && start <= self.end }

    /// Whether this lock keeps `other` (of another owner) from being taken.
    public func conflicts(with other: RecordLock) -> Bool {
        kind == other.kind && ino == other.ino && holder != other.holder && overlaps(other.start, other.end)
            && (type == .write || other.type == .write) && type != .unlock && other.type != .unlock
    }

    public static let encodedSize = 8 + 1 + 1 + 8 + 8 + 8 + 8 + 4

    public func encode(into w: inout ByteWriter) {
        w.u64(ino)
        w.u8(kind.rawValue)
        w.u8(type.rawValue)
        w.u64(start)
        w.u64(end)
        w.u64(holder.client)
        w.u64(holder.owner)
        w.u32(pid)
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        ino = try r.u64()
        let k = try r.u8()
        guard let kind = RecordLockKind(rawValue: k) else { throw FormatError("record lock of unknown kind \(k)") }
        self.kind = kind
        let t = try r.u8()
        guard let type = RecordLockType(rawValue: t) else { throw FormatError("record lock of unknown type \(t)") }
        self.type = type
        start = try r.u64()
        end = try r.u64()
        guard start <= end, end <= Self.toEnd else {
            throw FormatError("record lock on bytes \(start)...\(end): not a range of a file")
        }
        holder = RecordLockOwner(client: try r.u64(), owner: try r.u64())
        pid = try r.u32()
    }
}
