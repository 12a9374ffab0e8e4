/// One message of the election among quorum slots (`Election`), sent over UDP to each slot's
/// configured address and port (the port its server listens on over TCP).
///
/// Layout (little-endian), then a 32-byte proof under the cluster key over those bytes
/// (`ScoutNet/QuorumTransport.swift` adds and checks it):
/// ```
///  0  fsid u64   8  version u8 (1)   9  kind u8   10  from slot u8   11  pad[5]   16  term u64
/// ```
public struct QuorumMessage: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: UInt8, Sendable {
        /// A candidate asks for votes in `term`.
        case requestVote = 0
        /// A vote for the candidate of `term`.
        case vote = 1
        /// The leader of `term` is alive.
        case heartbeat = 2
        /// The leader of `term` is leaving (unmount): elect another now.
        case resignation = 3
        /// A follower heard the leader of `term` (the leader counts these to know it still
        /// has a majority); also the answer to a message of an older term, which tells its
        /// sender the newer term.
        case heartbeatReply = 4
        /// Would the sender get a vote in `term` (its own term plus one)? Asked before it
        /// stands, and changing no one's term: a slot that was cut off comes back without a
        /// term that deposes a leader everyone else still follows.
        case preVote = 5
        /// It would: this slot has not heard a leader within its heartbeat timeout.
        case preVoteGranted = 6
    }

    public var kind: Kind
    public var term: UInt64
    public var from: UInt8

    public static let version: UInt8 = 1
    public static let encodedSize = 24

    public init(_ kind: Kind, term: UInt64, from: UInt8) {
        self.kind = kind
        self.term = term
        self.from = from
    }

    public func encode(fsid: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: Self.encodedSize)
        w.u64(fsid)
        w.u8(Self.version)
        w.u8(kind.rawValue)
        w.u8(from)
        w.zeros(5)
        w.u64(term)
        return w.bytes
    }

    /// Decodes the message part of a datagram (the proof already checked and cut off);
    /// refuses another filesystem's, another version's, an unknown kind and a slot out of range.
    public init(decoding bytes: [UInt8], fsid: UInt64) throws(FormatError) {
        guard bytes.count == Self.encodedSize else {
            throw FormatError("quorum message of \(bytes.count) bytes, expected \(Self.encodedSize)")
        }
        var r = ByteReader(bytes, what: "quorum message")
        let theirs = try r.u64()
        guard theirs == fsid else {
            throw FormatError("quorum message for filesystem \(String(theirs, radix: 16)), not \(String(fsid, radix: 16))")
        }
        let version = try r.u8()
        guard version == Self.version else { throw FormatError("quorum message version \(version), expected \(Self.version)") }
        let raw = try r.u8()
        guard let kind = Kind(rawValue: raw) else { throw FormatError("quorum message of unknown kind \(raw)") }
        let from = try r.u8()
        guard Int(from) < Layout.maxQuorumSlots else { throw FormatError("quorum message from slot \(from), beyond the last slot") }
        try r.skip(5)
        self.init(kind, term: try r.u64(), from: from)
    }

    public var description: String { "\(kind) term \(term) from slot \(from)" }
}
