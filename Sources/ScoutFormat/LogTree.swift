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
    /// Metadata blocks the server gave the client for the blocks of its log tree, not used as
    /// of this record: the client writes its tree into them outside the server's transaction,
    /// and a dead client's go back to the free tree like its data pool.
    public var metaPool: [Extent]

    /// Commits of the client recorded so far, counted by the client and kept by the server
    /// across merges: after a server change, the new server's record tells a client whether
    /// the commit it had in flight landed (its count is in the record) or not, so that it is
    /// neither lost nor applied twice (its freed blocks freed twice). Zero for records written
    /// before it was kept.
    public var commits: UInt64 = 0

    /// The record without a pool (what the original layout held).
    public static let baseSize = BTreeRoot.encodedSize + 8
    /// Extents both pools may hold together: what fits in one item's value beside the root,
    /// the count, the two extent counts and the commit count.
    public static let maxPoolExtents = (Item.maxValueLength - baseSize - 16) / 16
    /// What a record may hold when read: records written before the commit count had room
    /// for one more extent.
    static let maxDecodedPoolExtents = (Item.maxValueLength - baseSize - 8) / 16
    /// Extents the data pool may take of them, so the metadata pool always has room.
    public static let maxDataPoolExtents = maxPoolExtents - 16

    /// `blocks` as extents added to `pool` while the record still fits beside `otherExtents`
    /// of the other pool: the blocks that went in come back as `kept` and those that did not
    /// as `left`, both in block order.
    public static func fit(_ blocks: [UInt64], into pool: [Extent], beside otherExtents: Int)
        -> (pool: [Extent], kept: [UInt64], left: [UInt64]) {
        var extents = pool
        var kept: [UInt64] = []
        var left: [UInt64] = []
        for b in blocks.sorted() {
            if let i = extents.firstIndex(where: { $0.start + $0.length == b }) {
                extents[i].length += 1
                if i + 1 < extents.count, extents[i + 1].start == b + 1 {
                    extents[i].length += extents[i + 1].length
                    extents.remove(at: i + 1)
                }
            } else if let i = extents.firstIndex(where: { $0.start == b + 1 }) {
                extents[i] = Extent(start: b, length: extents[i].length + 1)
            } else if extents.count + otherExtents < maxPoolExtents {
                let at = extents.firstIndex(where: { $0.start > b }) ?? extents.count
                extents.insert(Extent(start: b, length: 1), at: at)
            } else {
                left.append(b)
                continue
            }
            kept.append(b)
        }
        return (extents, kept, left)
    }

    public init(root: BTreeRoot, items: UInt64, dataPool: [Extent] = [], metaPool: [Extent] = [], commits: UInt64 = 0) {
        self.root = root
        self.items = items
        self.dataPool = dataPool
        self.metaPool = metaPool
        self.commits = commits
    }

    public static func key(rid: UInt64, nr: UInt64 = 0) -> Key {
        Key(zone: Zone.logTrees, first: rid, type: 0, second: nr)
    }

    /// Blocks in the data pool.
    public var poolBlocks: UInt64 { dataPool.reduce(0) { $0 + $1.length } }

    /// Blocks in the metadata pool.
    public var metaPoolBlocks: UInt64 { metaPool.reduce(0) { $0 + $1.length } }

    /// Base, then the data pool (count and extents) when either pool or a commit count is
    /// there, then the metadata pool when it or a commit count is, then the commit count when
    /// it is not zero: a record without pools keeps the original layout, one with a data pool
    /// only the layout before metadata pools, and so on.
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.baseSize + 16 + 16 * (dataPool.count + metaPool.count))
        root.encode(into: &w)
        w.u64(items)
        if !dataPool.isEmpty || !metaPool.isEmpty || commits > 0 {
            Extent.encodeList(dataPool, into: &w)
        }
        if !metaPool.isEmpty || commits > 0 {
            Extent.encodeList(metaPool, into: &w)
        }
        if commits > 0 { w.u64(commits) }
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
        metaPool = []
        guard bytes.count > Self.baseSize else { return }
        dataPool = try Extent.decodeList(&r, limit: Self.maxDecodedPoolExtents, context: "log tree record", what: "a data pool")
        if r.remaining > 0 {
            metaPool = try Extent.decodeList(&r, limit: Self.maxDecodedPoolExtents, context: "log tree record", what: "a metadata pool")
            if r.remaining == 8 {
                commits = try r.u64()
                guard commits > 0 else { throw FormatError("log tree record: a zero commit count written out") }
            } else if metaPool.isEmpty {
                throw FormatError("log tree record: an empty metadata pool written out")
            }
        } else if dataPool.isEmpty {
            throw FormatError("log tree record: an empty data pool written out")
        }
        guard r.remaining == 0 else {
            throw FormatError("log tree record: \(r.remaining) bytes after its pools")
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

extension LogTreeRecord {
    /// Records that travel with roots (the notice before a grant, a commit's answer) at most:
    /// past that the node reads them from the roots' log-trees tree itself.
    public static let maxSent = 16

    /// Every client's record of one commit by client id, to send with its roots; nil when
    /// they are too many to send, or could not be read.
    public static func sendable(_ records: Result<[(rid: UInt64, record: LogTreeRecord)], some Error>) -> [UInt64: LogTreeRecord]? {
        guard case .success(let list) = records, list.count <= maxSent else { return nil }
        return Dictionary(list.map { ($0.rid, $0.record) }, uniquingKeysWith: { a, _ in a })
    }

    /// Writes records sent with roots: a flag (none sent, or sent), then each by client id.
    static func encode(sent records: [UInt64: LogTreeRecord]?, into w: inout ByteWriter) {
        guard let records else { return w.u8(0) }
        w.u8(1)
        w.u16(UInt16(records.count))
        for (rid, rec) in records.sorted(by: { $0.key < $1.key }) {
            let bytes = rec.encoded
            w.u64(rid)
            w.u16(UInt16(bytes.count))
            w.raw(bytes)
        }
    }

    /// Reads what `encode(sent:into:)` wrote; `what` names the message in errors.
    static func decodeSent(_ r: inout ByteReader, _ what: String) throws(FormatError) -> [UInt64: LogTreeRecord]? {
        switch try r.u8() {
        case 0:
            return nil
        case 1:
            let n = Int(try r.u16())
            guard n <= maxSent else { throw FormatError("\(what): roots with \(n) log-tree records, at most \(maxSent)") }
            var records: [UInt64: LogTreeRecord] = [:]
            for _ in 0..<n {
                let rid = try r.u64()
                let length = Int(try r.u16())
                guard length <= Item.maxValueLength else { throw FormatError("\(what): a log-tree record of \(length) bytes, at most \(Item.maxValueLength)") }
                guard records.updateValue(try LogTreeRecord(decoding: try r.raw(length)), forKey: rid) == nil else {
                    throw FormatError("\(what): two log-tree records of client \(rid)")
                }
            }
            return records
        case let flag:
            throw FormatError("\(what): roots with records flag \(flag)")
        }
    }
}
