/// Cluster lock modes. Numbers follow the original scoutfs (`enum scoutfs_lock_mode`) so that
/// dumps and traces read the same.
public enum LockMode: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// No access; a request for null is how a client gives a lock back.
    case null = 0
    /// Many clients may read (fill their item cache).
    case read = 1
    /// One client may read and write.
    case write = 2
    /// Many clients may create unique items blindly and never read (index and orphan inserts).
    case writeOnly = 3

    public var description: String {
        switch self {
        case .null: "null"
        case .read: "read"
        case .write: "write"
        case .writeOnly: "write-only"
        }
    }

    public var canRead: Bool { self == .read || self == .write }
    public var canWrite: Bool { self == .write || self == .writeOnly }

    /// Client side: whether holding `self` lets a user that asked for `wanted` proceed. Write
    /// serves readers; write does not serve write-only, whose items must not be mixed with a
    /// cache that was read under the lock.
    @inlinable
    public func satisfies(_ wanted: LockMode) -> Bool {
        self == wanted || (self == .write && wanted == .read)
    }

    /// Server side: whether grants of these modes to two *different* clients may coexist.
    public static func compatibleAcrossClients(_ a: LockMode, _ b: LockMode) -> Bool {
        a == .null || b == .null || (a == .read && b == .read) || (a == .writeOnly && b == .writeOnly)
    }

    /// The mode a holder of `held` is asked down to so that a request for `wanted` can be granted:
    /// a writer that only has to let readers in keeps a valid cache as a reader.
    public static func invalidationTarget(held: LockMode, wanted: LockMode) -> LockMode {
        held == .write && wanted == .read ? .read : .null
    }

    /// The stronger of two requests, when one mode can serve both (read and write); `nil` when
    /// they need different grants (write-only and anything else).
    public static func covering(_ a: LockMode, _ b: LockMode) -> LockMode? {
        if a.satisfies(b) { return a }
        if b.satisfies(a) { return b }
        return nil
    }
}

/// The one lock message of the protocol, used for requests, grants, invalidations and their
/// answers. Old and new modes travel in every message so that a side can tell a stale or
/// duplicate message from a current one; `writeSeq` is set on write and write-only grants (and
/// reports the client's seq in its requests and answers).
///
/// `id` names an invalidation, and its answer repeats it: after a server restart a client may
/// still answer the previous server's invalidation, and modes alone cannot tell that answer
/// from the answer to a new invalidation with the same modes.
public struct LockMessage: Hashable, Sendable, CustomStringConvertible {
    public var key: Key
    public var writeSeq: UInt64
    public var oldMode: LockMode
    public var newMode: LockMode
    public var id: UInt64

    public static let encodedSize = Key.encodedSize + 8 + 1 + 1 + 8

    public init(key: Key, writeSeq: UInt64 = 0, oldMode: LockMode, newMode: LockMode, id: UInt64 = 0) {
        self.key = key
        self.writeSeq = writeSeq
        self.oldMode = oldMode
        self.newMode = newMode
        self.id = id
    }

    public func encode(into w: inout ByteWriter) {
        key.encode(into: &w)
        w.u64(writeSeq)
        w.u64(id)
        w.u8(oldMode.rawValue)
        w.u8(newMode.rawValue)
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        key = try Key(decoding: &r)
        writeSeq = try r.u64()
        id = try r.u64()
        oldMode = try LockMode(wire: r.u8(), field: "old mode")
        newMode = try LockMode(wire: r.u8(), field: "new mode")
    }

    public var description: String { "\(key) \(oldMode)->\(newMode) seq \(writeSeq)" + (id != 0 ? " id \(id)" : "") }
}

extension LockMode {
    init(wire: UInt8, field: String) throws(FormatError) {
        guard let m = LockMode(rawValue: wire) else {
            throw FormatError("lock message \(field) \(wire) is not a lock mode (0-3)")
        }
        self = m
    }
}

/// One lock a client reports to a recovering server.
public struct LockRecoverEntry: Hashable, Sendable {
    public var key: Key
    public var writeSeq: UInt64
    public var mode: LockMode

    public static let encodedSize = Key.encodedSize + 8 + 1

    public init(key: Key, writeSeq: UInt64, mode: LockMode) {
        self.key = key
        self.writeSeq = writeSeq
        self.mode = mode
    }
}

/// A client's answer to a recovery request: its locks from the requested key on, in key order.
/// An empty answer ends that client's recovery.
public struct LockRecoverReply: Hashable, Sendable {
    /// The original's batch (`SCOUTFS_NET_LOCK_MAX_RECOVER_NR`), which keeps a reply under its
    /// 1100-byte message limit.
    public static let maxEntries = 22

    public var entries: [LockRecoverEntry]

    public init(entries: [LockRecoverEntry]) {
        self.entries = entries
    }

    public func encode(into w: inout ByteWriter) {
        w.u16(UInt16(entries.count))
        for e in entries {
            e.key.encode(into: &w)
            w.u64(e.writeSeq)
            w.u8(e.mode.rawValue)
        }
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        let n = Int(try r.u16())
        guard n <= Self.maxEntries else {
            throw FormatError("lock recovery reply with \(n) entries, at most \(Self.maxEntries) allowed")
        }
        try r.need(n * LockRecoverEntry.encodedSize)
        var entries: [LockRecoverEntry] = []
        entries.reserveCapacity(n)
        for _ in 0..<n {
            let key = try Key(decoding: &r)
            let seq = try r.u64()
            let mode = try LockMode(wire: r.u8(), field: "recovered mode")
            entries.append(LockRecoverEntry(key: key, writeSeq: seq, mode: mode))
        }
        self.entries = entries
    }
}

/// What a lock client sends its server.
public enum LockClientMessage: Hashable, Sendable {
    /// Asks for `newMode`; `oldMode` is what the client holds.
    case request(LockMessage)
    /// Answers an invalidation: the client now holds `newMode`.
    case invalidated(LockMessage)
    case recoverReply(LockRecoverReply)

    /// The lock a message is about; recovery replies are about none.
    public var key: Key? {
        switch self {
        case .request(let m), .invalidated(let m): m.key
        case .recoverReply: nil
        }
    }
}

/// What a lock server sends a client.
public enum LockServerMessage: Hashable, Sendable {
    /// Grants `newMode`; `oldMode` is what the server believed the client held.
    case grant(LockMessage)
    /// Asks the client to go from `oldMode` down to `newMode` and answer.
    case invalidate(LockMessage)
    /// Asks for the client's locks from this key on.
    case recover(Key)

    public var key: Key? {
        switch self {
        case .grant(let m), .invalidate(let m): m.key
        case .recover: nil
        }
    }
}

/// Message kinds on the wire, one byte before the body.
enum LockWireKind: UInt8 {
    case request = 1, invalidated = 2, recoverReply = 3
    case grant = 4, invalidate = 5, recover = 6
}

extension LockClientMessage {
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 1 + LockMessage.encodedSize)
        switch self {
        case .request(let m):
            w.u8(LockWireKind.request.rawValue)
            m.encode(into: &w)
        case .invalidated(let m):
            w.u8(LockWireKind.invalidated.rawValue)
            m.encode(into: &w)
        case .recoverReply(let r):
            w.u8(LockWireKind.recoverReply.rawValue)
            r.encode(into: &w)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "lock message")
        let kind = try r.u8()
        switch LockWireKind(rawValue: kind) {
        case .request: self = .request(try LockMessage(decoding: &r))
        case .invalidated: self = .invalidated(try LockMessage(decoding: &r))
        case .recoverReply: self = .recoverReply(try LockRecoverReply(decoding: &r))
        default: throw FormatError("lock message kind \(kind) is not one a client sends")
        }
        try r.finish()
    }
}

extension LockServerMessage {
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 1 + LockMessage.encodedSize)
        switch self {
        case .grant(let m):
            w.u8(LockWireKind.grant.rawValue)
            m.encode(into: &w)
        case .invalidate(let m):
            w.u8(LockWireKind.invalidate.rawValue)
            m.encode(into: &w)
        case .recover(let k):
            w.u8(LockWireKind.recover.rawValue)
            k.encode(into: &w)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "lock message")
        let kind = try r.u8()
        switch LockWireKind(rawValue: kind) {
        case .grant: self = .grant(try LockMessage(decoding: &r))
        case .invalidate: self = .invalidate(try LockMessage(decoding: &r))
        case .recover: self = .recover(try Key(decoding: &r))
        default: throw FormatError("lock message kind \(kind) is not one a server sends")
        }
        try r.finish()
    }
}
