/// What a node asks of the server over the network (the body of a `.call` frame), and the
/// answers. These are the calls of `ServerLink` that a node in the server's own process makes
/// as plain calls, plus `roots`, which such a node reads from the shared store instead. No call
/// names the client: the server takes it from the connection, which proved who it is, so no
/// node can commit or allocate as another.
public enum ServerCall: Sendable, Equatable {
    /// The committed roots and the seqs a node needs to read and to write.
    case roots
    /// At least `count` inode numbers for this node alone.
    case allocateInodes(count: UInt64)
    /// At least `count` data blocks for this node's pool.
    case refillDataPool(atLeast: UInt64)
    /// At least `count` metadata blocks for this node's log tree.
    case refillMetaPool(atLeast: UInt64)
    /// Free data blocks now and freed by commits not yet durable.
    case dataSpace
    /// This node's log tree as last recorded.
    case recordedLogTree
    /// Record this node's log tree (its blocks written already) and commit.
    case commitLogTree(LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool)
    /// Whether another node holds inode `ino` (open or cached by its kernel): asked before
    /// this node frees an inode whose last link is gone.
    case openElsewhere(ino: UInt64)
    /// This node is leaving cleanly: its log tree is merged and its pools returned, so the
    /// server drops its locks now rather than when its session runs out.
    case leave
    /// Take, change or let go of a flock or POSIX record lock (`lock.holder.client` is
    /// ignored: the lock is the connection's client's). A conflict is answered with the lock
    /// in the way; with `wait`, the server tells this node when locks on the inode change.
    case setRecordLock(RecordLock, wait: Bool)
    /// The first lock of another owner that would keep `lock` from being taken (F_GETLK).
    case testRecordLock(RecordLock)
    /// This node is mounted (`rejoin` false: a new mount, recorded before it writes) or is
    /// back after its server changed (`rejoin`): whether the server kept its log tree and
    /// pools for it. The record's client id is ignored: it is the connection's.
    case join(MountedClient, rejoin: Bool)
    /// After a rejoin: record locks this node holds, granted by an earlier server, for the new
    /// one to keep (it grants none before every node it waits for has sent them, `last`
    /// ending a node's list, or was given up). The holders' client ids are ignored.
    case reclaimRecordLocks([RecordLock], last: Bool)
    /// Grow the filesystem onto more of its devices: the new totals in 64 KiB metadata blocks
    /// and 4 KiB data blocks, 0 (or the current total) leaving a device as it is.
    case resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64)

    /// The most extents a call or an answer carries in one list: more than a body can hold.
    public static let maxExtents = NetFrame.maxBody / 16

    /// The most record locks one `reclaimRecordLocks` carries.
    public static let maxRecordLocks = (NetFrame.maxBody - 16) / RecordLock.encodedSize

    static func decodeExtents(_ r: inout ByteReader, _ what: String) throws(FormatError) -> [Extent] {
        try Extent.decodeList(&r, limit: maxExtents, context: "server call", what: what)
    }

    enum Kind: UInt8 {
        case roots = 1, allocateInodes, refillDataPool, refillMetaPool, dataSpace, recordedLogTree, commitLogTree, openElsewhere, leave,
             setRecordLock, testRecordLock, join, reclaimRecordLocks, resizeDevices
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        switch self {
        case .roots:
            w.u8(Kind.roots.rawValue)
        case .allocateInodes(let n):
            w.u8(Kind.allocateInodes.rawValue)
            w.u64(n)
        case .refillDataPool(let n):
            w.u8(Kind.refillDataPool.rawValue)
            w.u64(n)
        case .refillMetaPool(let n):
            w.u8(Kind.refillMetaPool.rawValue)
            w.u64(n)
        case .dataSpace:
            w.u8(Kind.dataSpace.rawValue)
        case .recordedLogTree:
            w.u8(Kind.recordedLogTree.rawValue)
        case .commitLogTree(let record, let freed, let freedMeta, let merge):
            w.u8(Kind.commitLogTree.rawValue)
            w.u8(merge ? 1 : 0)
            Extent.encodeList(freed, into: &w)
            Extent.encodeList(freedMeta, into: &w)
            w.raw(record.encoded)
        case .openElsewhere(let ino):
            w.u8(Kind.openElsewhere.rawValue)
            w.u64(ino)
        case .leave:
            w.u8(Kind.leave.rawValue)
        case .setRecordLock(let lock, let wait):
            w.u8(Kind.setRecordLock.rawValue)
            w.u8(wait ? 1 : 0)
            lock.encode(into: &w)
        case .testRecordLock(let lock):
            w.u8(Kind.testRecordLock.rawValue)
            lock.encode(into: &w)
        case .reclaimRecordLocks(let locks, let last):
            w.u8(Kind.reclaimRecordLocks.rawValue)
            w.u8(last ? 1 : 0)
            w.u32(UInt32(locks.count))
            for l in locks { l.encode(into: &w) }
        case .join(let client, let rejoin):
            w.u8(Kind.join.rawValue)
            w.u8(rejoin ? 1 : 0)
            client.encode(into: &w)
        case .resizeDevices(let meta, let data):
            w.u8(Kind.resizeDevices.rawValue)
            w.u64(meta)
            w.u64(data)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "server call")
        let raw = try r.u8()
        guard let kind = Kind(rawValue: raw) else { throw FormatError("server call of unknown kind \(raw)") }
        switch kind {
        case .roots: self = .roots
        case .allocateInodes: self = .allocateInodes(count: try r.u64())
        case .refillDataPool: self = .refillDataPool(atLeast: try r.u64())
        case .refillMetaPool: self = .refillMetaPool(atLeast: try r.u64())
        case .dataSpace: self = .dataSpace
        case .recordedLogTree: self = .recordedLogTree
        case .commitLogTree:
            let flag = try r.u8()
            guard flag <= 1 else { throw FormatError("server call: commit with merge flag \(flag)") }
            let freed = try Self.decodeExtents(&r, "freed data")
            let freedMeta = try Self.decodeExtents(&r, "freed metadata")
            let record = try LogTreeRecord(decoding: try r.raw(r.remaining))
            self = .commitLogTree(record, freed: freed, freedMeta: freedMeta, merge: flag == 1)
        case .openElsewhere: self = .openElsewhere(ino: try r.u64())
        case .leave: self = .leave
        case .setRecordLock:
            let wait = try r.u8()
            guard wait <= 1 else { throw FormatError("server call: record lock with wait flag \(wait)") }
            self = .setRecordLock(try RecordLock(decoding: &r), wait: wait == 1)
        case .testRecordLock: self = .testRecordLock(try RecordLock(decoding: &r))
        case .join:
            let rejoin = try r.u8()
            guard rejoin <= 1 else { throw FormatError("server call: join with rejoin flag \(rejoin)") }
            self = .join(try MountedClient(rid: 0, decoding: &r), rejoin: rejoin == 1)
        case .reclaimRecordLocks:
            let last = try r.u8()
            guard last <= 1 else { throw FormatError("server call: record lock reclaim with last flag \(last)") }
            let n = Int(try r.u32())
            guard n <= Self.maxRecordLocks, n * RecordLock.encodedSize <= r.remaining else { throw FormatError("server call: \(n) record locks reclaimed at once in \(r.remaining) bytes; at most \(Self.maxRecordLocks)") }
            var locks: [RecordLock] = []
            locks.reserveCapacity(n)
            for _ in 0..<n { locks.append(try RecordLock(decoding: &r)) }
            self = .reclaimRecordLocks(locks, last: last == 1)
        case .resizeDevices:
            self = .resizeDevices(metaTotalBlocks: try r.u64(), dataTotalBlocks: try r.u64())
        }
        try r.finish()
    }
}

/// The committed state a node reads through, the seqs it writes with, and the space left, as
/// of one commit.
public struct ServerRoots: Sendable, Equatable {
    /// The commit these are the roots of.
    public var seq: UInt64
    public var fs: BTreeRoot
    /// The tree of every client's log-tree record.
    public var logTrees: BTreeRoot
    /// The seq items written in the open transaction carry.
    public var transactionSeq: UInt64
    /// The last seq below every client's open transaction.
    public var stableSeq: UInt64
    /// Metadata blocks the server can still hand out, data blocks free outside every pool, and
    /// data blocks freed by commits not yet durable.
    public var metaAllocatable: UInt64
    public var dataFree: UInt64
    public var dataPendingFree: UInt64
    /// The devices' blocks the filesystem spans as of this commit (64 KiB metadata, 4 KiB
    /// data): an online resize raises them, and a node checks references against them.
    public var metaTotalBlocks: UInt64
    public var dataTotalBlocks: UInt64

    public static let encodedSize = 8 + 2 * BTreeRoot.encodedSize + 56

    public init(seq: UInt64, fs: BTreeRoot, logTrees: BTreeRoot, transactionSeq: UInt64, stableSeq: UInt64,
                metaAllocatable: UInt64 = 0, dataFree: UInt64 = 0, dataPendingFree: UInt64 = 0,
                metaTotalBlocks: UInt64 = 0, dataTotalBlocks: UInt64 = 0) {
        self.seq = seq
        self.fs = fs
        self.logTrees = logTrees
        self.transactionSeq = transactionSeq
        self.stableSeq = stableSeq
        self.metaAllocatable = metaAllocatable
        self.dataFree = dataFree
        self.dataPendingFree = dataPendingFree
        self.metaTotalBlocks = metaTotalBlocks
        self.dataTotalBlocks = dataTotalBlocks
    }

    public func encode(into w: inout ByteWriter) {
        w.u64(seq)
        fs.encode(into: &w)
        logTrees.encode(into: &w)
        w.u64(transactionSeq)
        w.u64(stableSeq)
        w.u64(metaAllocatable)
        w.u64(dataFree)
        w.u64(dataPendingFree)
        w.u64(metaTotalBlocks)
        w.u64(dataTotalBlocks)
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        seq = try r.u64()
        fs = try BTreeRoot(decoding: &r)
        logTrees = try BTreeRoot(decoding: &r)
        transactionSeq = try r.u64()
        stableSeq = try r.u64()
        metaAllocatable = try r.u64()
        dataFree = try r.u64()
        dataPendingFree = try r.u64()
        metaTotalBlocks = try r.u64()
        dataTotalBlocks = try r.u64()
        guard stableSeq < transactionSeq else {
            throw FormatError("server roots: stable seq \(stableSeq) is not below the open transaction's \(transactionSeq)")
        }
    }
}

/// The server's answer to a `ServerCall`, one case per call.
public enum ServerAnswer: Sendable, Equatable {
    case roots(ServerRoots)
    case inodes(Range<UInt64>)
    case dataPool([Extent])
    case metaPool([Extent])
    case dataSpace(free: UInt64, pendingFree: UInt64)
    case recordedLogTree(LogTreeRecord?)
    /// The commit, and the roots right after it (merged or not), with every client's
    /// log-tree record of them while they are few (`LogTreeRecord.maxSent`).
    case committed(LogCommit, ServerRoots, records: [UInt64: LogTreeRecord]?)
    case held(Bool)
    case left
    /// The lock in the way of a record lock call, or nil: taken (set) or free (test).
    case recordLock(conflict: RecordLock?)
    /// A new server is still learning which record locks the nodes hold: ask again shortly.
    case recordLocksRecovering
    /// The reclaimed record locks are kept.
    case reclaimed
    /// Whether the node may go on: false when it rejoined a server that had given it up
    /// (fenced it and reclaimed its log tree).
    case joined(Bool)
    /// The resize is done and committed (`errno` 0), or refused with `errno` for `reason`.
    case resized(errno: Int32, reason: String)

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        switch self {
        case .roots(let r):
            w.u8(ServerCall.Kind.roots.rawValue)
            r.encode(into: &w)
        case .inodes(let range):
            w.u8(ServerCall.Kind.allocateInodes.rawValue)
            w.u64(range.lowerBound)
            w.u64(range.upperBound)
        case .dataPool(let extents):
            w.u8(ServerCall.Kind.refillDataPool.rawValue)
            Extent.encodeList(extents, into: &w)
        case .metaPool(let extents):
            w.u8(ServerCall.Kind.refillMetaPool.rawValue)
            Extent.encodeList(extents, into: &w)
        case .dataSpace(let free, let pending):
            w.u8(ServerCall.Kind.dataSpace.rawValue)
            w.u64(free)
            w.u64(pending)
        case .recordedLogTree(let record):
            w.u8(ServerCall.Kind.recordedLogTree.rawValue)
            if let record {
                w.u8(1)
                w.raw(record.encoded)
            } else {
                w.u8(0)
            }
        case .committed(let c, let roots, let records):
            w.u8(ServerCall.Kind.commitLogTree.rawValue)
            w.u64(c.seq)
            w.u8(c.merged ? 1 : 0)
            roots.encode(into: &w)
            LogTreeRecord.encode(sent: records, into: &w)
        case .held(let held):
            w.u8(ServerCall.Kind.openElsewhere.rawValue)
            w.u8(held ? 1 : 0)
        case .left:
            w.u8(ServerCall.Kind.leave.rawValue)
        case .recordLock(let conflict):
            w.u8(ServerCall.Kind.setRecordLock.rawValue)
            if let conflict {
                w.u8(1)
                conflict.encode(into: &w)
            } else {
                w.u8(0)
            }
        case .joined(let ok):
            w.u8(ServerCall.Kind.join.rawValue)
            w.u8(ok ? 1 : 0)
        case .recordLocksRecovering:
            w.u8(ServerCall.Kind.setRecordLock.rawValue)
            w.u8(2)
        case .reclaimed:
            w.u8(ServerCall.Kind.reclaimRecordLocks.rawValue)
        case .resized(let e, let reason):
            w.u8(ServerCall.Kind.resizeDevices.rawValue)
            w.u32(UInt32(bitPattern: e))
            let text = Array(reason.utf8.prefix(1024))
            w.u16(UInt16(text.count))
            w.raw(text)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "server answer")
        let raw = try r.u8()
        guard let kind = ServerCall.Kind(rawValue: raw) else { throw FormatError("server answer of unknown kind \(raw)") }
        switch kind {
        case .roots:
            self = .roots(try ServerRoots(decoding: &r))
        case .allocateInodes:
            let lo = try r.u64()
            let hi = try r.u64()
            guard lo <= hi else { throw FormatError("server answer: inode numbers \(lo)..<\(hi)") }
            self = .inodes(lo..<hi)
        case .refillDataPool:
            self = .dataPool(try ServerCall.decodeExtents(&r, "data pool"))
        case .refillMetaPool:
            self = .metaPool(try ServerCall.decodeExtents(&r, "metadata pool"))
        case .dataSpace:
            self = .dataSpace(free: try r.u64(), pendingFree: try r.u64())
        case .recordedLogTree:
            let has = try r.u8()
            guard has <= 1 else { throw FormatError("server answer: log tree presence flag \(has)") }
            self = .recordedLogTree(has == 1 ? try LogTreeRecord(decoding: try r.raw(r.remaining)) : nil)
        case .commitLogTree:
            let seq = try r.u64()
            let merged = try r.u8()
            guard merged <= 1 else { throw FormatError("server answer: merged flag \(merged)") }
            let roots = try ServerRoots(decoding: &r)
            self = .committed(LogCommit(seq: seq, merged: merged == 1), roots, records: try LogTreeRecord.decodeSent(&r, "server answer"))
        case .openElsewhere:
            let held = try r.u8()
            guard held <= 1 else { throw FormatError("server answer: held flag \(held)") }
            self = .held(held == 1)
        case .leave:
            self = .left
        case .setRecordLock:
            let has = try r.u8()
            guard has <= 2 else { throw FormatError("server answer: record lock conflict flag \(has)") }
            self = has == 2 ? .recordLocksRecovering : .recordLock(conflict: has == 1 ? try RecordLock(decoding: &r) : nil)
        case .testRecordLock:
            throw FormatError("server answer of kind \(raw): record lock answers are of the set kind")
        case .join:
            let ok = try r.u8()
            guard ok <= 1 else { throw FormatError("server answer: joined flag \(ok)") }
            self = .joined(ok == 1)
        case .reclaimRecordLocks:
            self = .reclaimed
        case .resizeDevices:
            let e = Int32(bitPattern: try r.u32())
            let n = Int(try r.u16())
            guard e >= 0, n <= 1024 else { throw FormatError("server answer: resize refused with errno \(e) and a reason of \(n) bytes") }
            self = .resized(errno: e, reason: String(decoding: try r.raw(n), as: UTF8.self))
        }
        try r.finish()
    }
}
