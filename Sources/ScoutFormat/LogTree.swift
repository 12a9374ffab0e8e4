/// The value of a log-trees item: where one client's log btree stands as of the last commit the
/// server recorded. Keyed `(logTrees, rid, 0, nr)` so a client's trees sort together.
public struct LogTreeRecord: Hashable, Sendable {
    public var root: BTreeRoot
    /// Items the tree held when recorded; the server merges when this grows past its threshold.
    public var items: UInt64

    public static let encodedSize = BTreeRoot.encodedSize + 8

    public init(root: BTreeRoot, items: UInt64) {
        self.root = root
        self.items = items
    }

    public static func key(rid: UInt64, nr: UInt64 = 0) -> Key {
        Key(zone: Zone.logTrees, first: rid, type: 0, second: nr)
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.encodedSize)
        root.encode(into: &w)
        w.u64(items)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == Self.encodedSize else {
            throw FormatError("log tree record of \(bytes.count) bytes, expected \(Self.encodedSize)")
        }
        var r = ByteReader(bytes, what: "log tree record")
        root = try BTreeRoot(decoding: &r)
        items = try r.u64()
    }
}

/// The server's answer to a client's commit.
public struct LogCommit: Equatable, Sendable {
    /// The commit that made the client's log tree durable (or the merge after it).
    public var seq: UInt64
    /// The log tree was merged into the fs tree: the client starts a new, empty one.
    public var merged: Bool
    /// A merge started and stopped part way (out of space): some of the log tree's items are
    /// in the fs tree already, while the client goes on writing into the same log tree.
    public var partlyMerged: Bool

    public init(seq: UInt64, merged: Bool, partlyMerged: Bool = false) {
        self.seq = seq
        self.merged = merged
        self.partlyMerged = partlyMerged
    }
}
