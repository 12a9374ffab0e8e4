/// The value of a log-trees item: where one client's log btree stands as of the last commit the
/// server recorded. Keyed `(logTrees, rid, 0, nr)` so a client's trees sort together.
public struct LogTreeRecord: Hashable, Sendable {
    public var root: BTreeRoot
    /// Items the tree held when recorded; the server merges when this grows past its threshold.
    public var items: UInt64
    /// Data blocks the server gave the client and it has not used as of this record: the
    /// client allocates file data from them alone, and when the client is gone they go back
    /// to the free tree. Blocks it used since are referenced by extent items of its next
    /// commit, so none is ever both free and in use, nor lost, across a crash.
    public var dataPool: [Extent]

    /// The record without a pool (what the original layout held).
    public static let baseSize = BTreeRoot.encodedSize + 8
    /// A pool is refilled a few extents at a time and only shrinks in between; more than this
    /// many is a damaged record.
    public static let maxPoolExtents = 1024

    public init(root: BTreeRoot, items: UInt64, dataPool: [Extent] = []) {
        self.root = root
        self.items = items
        self.dataPool = dataPool
    }

    public static func key(rid: UInt64, nr: UInt64 = 0) -> Key {
        Key(zone: Zone.logTrees, first: rid, type: 0, second: nr)
    }

    /// Blocks in the pool.
    public var poolBlocks: UInt64 { dataPool.reduce(0) { $0 + $1.length } }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.baseSize + 4 + 16 * dataPool.count)
        root.encode(into: &w)
        w.u64(items)
        if !dataPool.isEmpty {
            w.u32(UInt32(dataPool.count))
            for e in dataPool {
                w.u64(e.start)
                w.u64(e.length)
            }
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == Self.baseSize || bytes.count >= Self.baseSize + 4 else {
            throw FormatError("log tree record of \(bytes.count) bytes, expected \(Self.baseSize) or a pool after them")
        }
        var r = ByteReader(bytes, what: "log tree record")
        root = try BTreeRoot(decoding: &r)
        items = try r.u64()
        dataPool = []
        guard bytes.count > Self.baseSize else { return }
        let n = Int(try r.u32())
        guard n > 0, n <= Self.maxPoolExtents, bytes.count == Self.baseSize + 4 + 16 * n else {
            throw FormatError("log tree record: a pool of \(n) extents in \(bytes.count) bytes")
        }
        dataPool.reserveCapacity(n)
        for _ in 0..<n {
            let start = try r.u64()
            let length = try r.u64()
            guard length > 0, start <= UInt64.max - length else {
                throw FormatError("log tree record: pool extent \(start)+\(length) is impossible")
            }
            dataPool.append(Extent(start: start, length: length))
        }
    }
}

/// The server's answer to a client's commit.
public struct LogCommit: Equatable, Sendable {
    /// The commit that made the client's log tree durable (or the merge after it).
    public var seq: UInt64
    /// The log tree was merged into the fs tree: the client starts a new, empty one.
    public var merged: Bool

    public init(seq: UInt64, merged: Bool) {
        self.seq = seq
        self.merged = merged
    }
}
