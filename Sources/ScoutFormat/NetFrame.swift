/// One message between a node and the server, as it crosses the network:
///
///     u32 length of what follows (little-endian)
///     u16 kind · u8 flags · u8 zero · u64 id · u64 seq · u64 ack
///     body (length − `headerSize` bytes, at most `maxBody`)
///
/// A call (a request that expects an answer) has a nonzero id and its answer repeats it with
/// `.answer` set; messages that expect none (lock messages, heartbeats) have id 0. `seq` numbers
/// lock and call frames in each direction and `ack` counts those taken in from the peer, so a
/// session can resend across reconnects (ScoutNet's `NetSession`). The length
/// comes first and is checked before anything else is read, so a peer that announces more than
/// `maxBody` is refused at the header, before it can make the other side buffer it.
public struct NetFrame: Sendable, Equatable {
    /// Bytes after the length field and before the body.
    public static let headerSize = 28
    /// Bytes of the length field.
    public static let lengthSize = 4
    /// The largest body either side sends or accepts. A commit's record with its freed
    /// extents is the largest message the protocol has; 16 MiB holds a million extents.
    public static let maxBody = 16 << 20

    public var kind: NetKind
    public var flags: NetFrameFlags
    public var id: UInt64
    public var seq: UInt64
    public var ack: UInt64
    public var body: [UInt8]

    public init(_ kind: NetKind, flags: NetFrameFlags = [], id: UInt64 = 0, seq: UInt64 = 0, ack: UInt64 = 0, body: [UInt8] = []) {
        self.kind = kind
        self.flags = flags
        self.id = id
        self.seq = seq
        self.ack = ack
        self.body = body
    }

    /// The whole frame, length field included.
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.lengthSize + Self.headerSize + body.count)
        w.u32(UInt32(Self.headerSize + body.count))
        encodeHeader(into: &w)
        w.raw(body)
        return w.bytes
    }

    public func encodeHeader(into w: inout ByteWriter) {
        w.u16(kind.rawValue)
        w.u8(flags.rawValue)
        w.u8(0)
        w.u64(id)
        w.u64(seq)
        w.u64(ack)
    }

    /// What a length field announces: how many bytes follow it, or why the connection must
    /// close before reading them.
    public static func checkLength(_ length: UInt32) throws(FormatError) -> Int {
        let n = Int(length)
        guard n >= headerSize else {
            throw FormatError("network frame of \(n) bytes is shorter than its \(headerSize)-byte header")
        }
        guard n - headerSize <= maxBody else {
            throw FormatError("network frame body of \(n - headerSize) bytes is over the \(maxBody)-byte limit")
        }
        return n
    }

    /// Decodes the bytes after the length field (exactly the length it announced).
    public init(decodingAfterLength bytes: [UInt8]) throws(FormatError) {
        _ = try Self.checkLength(UInt32(clamping: bytes.count))
        var r = ByteReader(bytes, what: "network frame")
        let rawKind = try r.u16()
        guard let kind = NetKind(rawValue: rawKind) else {
            throw FormatError("network frame of unknown kind \(rawKind)")
        }
        let rawFlags = try r.u8()
        guard rawFlags & ~NetFrameFlags.known.rawValue == 0 else {
            throw FormatError("network frame with unknown flags 0x\(String(rawFlags, radix: 16))")
        }
        guard try r.u8() == 0 else { throw FormatError("network frame with a nonzero reserved byte") }
        self.kind = kind
        self.flags = NetFrameFlags(rawValue: rawFlags)
        self.id = try r.u64()
        self.seq = try r.u64()
        self.ack = try r.u64()
        self.body = try r.raw(r.remaining)
    }
}

/// What a frame carries. A kind the receiver does not know closes the connection: both sides
/// of one cluster run one protocol version, which the greeting checks.
public enum NetKind: UInt16, Sendable, CaseIterable {
    /// Server → node, first thing on a connection: the filesystem and a challenge.
    case hello = 1
    /// Node → server: who it is and its answer to the challenge.
    case greeting = 2
    /// Server → node: accepted, with the server's own answer to the node's challenge.
    case welcome = 3
    /// Either way: why the connection is being closed (then it is).
    case refusal = 4
    /// Either way, when nothing else was sent for a while: the peer is alive.
    case heartbeat = 5
    /// A lock request, grant, invalidation, recovery or an answer to one (`LockMessage`).
    case lock = 6
    /// A call of the server by a node and its answer (`.answer`): body defined by the caller.
    case call = 7
    /// Either way, expecting no answer of its own: the server's questions about open inodes
    /// and the nodes' replies (`NetNotice`).
    case notice = 8
}

public struct NetFrameFlags: OptionSet, Sendable, Equatable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The answer to the call with the same id.
    public static let answer = NetFrameFlags(rawValue: 1)
    /// The call failed; the body is its error message (UTF-8).
    public static let failed = NetFrameFlags(rawValue: 2)

    static let known: NetFrameFlags = [.answer, .failed]
}
