/// The body of a `.notice` frame: what the server and the nodes tell each other outside lock
/// messages and calls. Today that is the open-inode map (the original's `omap`): before a node
/// frees an inode whose last link is gone, the server asks every other node whether it holds
/// it open or cached, and each answers with the question's id. And the roots the server
/// sends right before each lock grant, so that the node need not ask for them.
public enum NetNotice: Sendable, Equatable {
    /// Server → node: does this node hold `ino` (open, or known to its kernel)? A node that
    /// does marks it unlinked, so its own last close frees it.
    case openQuery(id: UInt64, ino: UInt64)
    /// Node → server: the answer to question `id`.
    case openReply(id: UInt64, held: Bool)
    /// Server → node: record locks on `ino` changed; a waiter for one tries again.
    case recordLocksChanged(ino: UInt64)
    /// Server → node: its roots as of its last commit, sent right before a lock grant on the
    /// same connection. The previous holder committed before it let the lock go, so these
    /// hold what it wrote. With them, while there are few, every client's log-tree record of
    /// that commit (what the node would read from the roots' log-trees tree), by client id.
    case roots(ServerRoots, records: [UInt64: LogTreeRecord]?)

    enum Kind: UInt8 {
        case openQuery = 1, openReply, recordLocksChanged, roots
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 1 + ServerRoots.encodedSize)
        switch self {
        case .openQuery(let id, let ino):
            w.u8(Kind.openQuery.rawValue)
            w.u64(id)
            w.u64(ino)
        case .openReply(let id, let held):
            w.u8(Kind.openReply.rawValue)
            w.u64(id)
            w.u8(held ? 1 : 0)
        case .recordLocksChanged(let ino):
            w.u8(Kind.recordLocksChanged.rawValue)
            w.u64(ino)
        case .roots(let r, let records):
            w.u8(Kind.roots.rawValue)
            r.encode(into: &w)
            LogTreeRecord.encode(sent: records, into: &w)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "notice")
        let raw = try r.u8()
        guard let kind = Kind(rawValue: raw) else { throw FormatError("notice of unknown kind \(raw)") }
        switch kind {
        case .openQuery:
            self = .openQuery(id: try r.u64(), ino: try r.u64())
        case .openReply:
            let id = try r.u64()
            let held = try r.u8()
            guard held <= 1 else { throw FormatError("notice: open reply with held flag \(held)") }
            self = .openReply(id: id, held: held == 1)
        case .recordLocksChanged:
            self = .recordLocksChanged(ino: try r.u64())
        case .roots:
            self = .roots(try ServerRoots(decoding: &r), records: try LogTreeRecord.decodeSent(&r, "notice"))
        }
        try r.finish()
    }
}
