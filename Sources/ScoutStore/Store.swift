public import ScoutFormat
import Synchronization

/// Tunables of an open store.
public struct StoreOptions: Sendable {
    /// Clean 64 KiB blocks kept in memory (dirty blocks of the open transaction come on top).
    public var cacheBlocks: Int
    /// Bytes of entries a btree block may hold before it splits. The format's block holds
    /// `BTreeBlock.capacity`; tests lower this to grow tall trees from few items. It decides only
    /// when blocks split and join, never how they are encoded, so any value reads any device.
    public var nodeCapacity: Int

    public init(cacheBlocks: Int = 4096, nodeCapacity: Int = BTreeBlock.capacity) {
        self.cacheBlocks = cacheBlocks
        self.nodeCapacity = nodeCapacity
    }
}

/// The metadata and data devices of one filesystem: superblock, trees, allocators and the open
/// transaction.
///
/// Everything changed since the last commit is "dirty" and lives only in memory; `commit()` makes
/// it durable atomically: it writes every dirty block to blocks no committed root references,
/// flushes, then writes the superblock that points at the new roots, and flushes again. Until the
/// superblock lands nothing new is reachable; after, all of it is.
///
/// A `Store` is not thread-safe: one caller at a time (the mount wraps it in its own lock).
public final class Store: NodeWriter {
    public let meta: any BlockDevice
    public let data: any BlockDevice
    public let options: StoreOptions
    /// Clean blocks, shared with readers of committed roots on other threads.
    let cache: BlockCache
    /// The blocks the open transaction allocated, edited in place until the commit writes them.
    private var dirty: [UInt64: CachedNode] = [:]
    /// The last commit's roots and the blocks under them, for readers without the store lock.
    public let committed: CommittedBlocks
    /// The last committed superblock.
    public private(set) var superblock: SuperBlock
    /// The seq of the open transaction: stamped on every block it writes, one more than the
    /// last commit's. Clients sharing the store stamp their changes with it from their own
    /// threads, without the store lock, while another client's commit may advance it.
    public var txnSeq: UInt64 { openSeq.load(ordering: .acquiring) }
    private let openSeq: Atomic<UInt64>
    var trees: [TreeID: BTree] = [:]
    let metaAlloc: ExtentAllocator
    let dataAlloc: ExtentAllocator
    public var nextIno: UInt64
    public var nextSeq: UInt64
    private var failure: StoreError?
    /// What was wrong with the superblock copy that `open` could not use (empty when both
    /// verified): the mount logs it and `status` shows it.
    public internal(set) var superblockProblems: [String] = []
    /// Set for stores opened for reading only; commit refuses.
    var readOnly = false

    public let fsid: UInt64
    public var nodeCapacity: Int { options.nodeCapacity }
    /// The superblock's totals, readable from clients' threads without the store lock (extent
    /// checks on every read): only `grow` changes them. The committed reader keeps the
    /// metadata total it checks references against.
    public var metaTotalBlocks: UInt64 { committed.metaTotalBlocks }
    public var dataTotalBlocks: UInt64 { dataTotal.load(ordering: .acquiring) }
    private let dataTotal: Atomic<UInt64>

    init(meta: any BlockDevice, data: any BlockDevice, superblock: SuperBlock, options: StoreOptions) {
        precondition(options.nodeCapacity >= 4 * BTreeBlock.leafEntrySize(Item.maxValueLength)
            && options.nodeCapacity <= BTreeBlock.capacity, "node capacity \(options.nodeCapacity) out of range")
        self.meta = meta
        self.data = data
        self.options = options
        self.superblock = superblock
        cache = BlockCache(capacity: options.cacheBlocks)
        fsid = superblock.fsid
        dataTotal = Atomic(superblock.dataTotalBlocks)
        committed = CommittedBlocks(cache: cache, meta: meta, fsid: superblock.fsid, metaTotalBlocks: superblock.metaTotalBlocks,
                                    roots: CommittedRoots(seq: superblock.seq, fs: superblock.root(.fs), records: .success([])))
        openSeq = Atomic(superblock.seq + 1)
        nextIno = superblock.nextIno
        nextSeq = superblock.nextSeq
        for t in [TreeID.fs, .logTrees, .mountedClients, .srch] {
            trees[t] = BTree(root: superblock.root(t), name: t.description)
        }
        metaAlloc = ExtentAllocator(kind: .meta, root: superblock.root(.metaFree),
                                    freeBlocks: superblock.metaFreeBlocks, reserve: superblock.metaReserve)
        dataAlloc = ExtentAllocator(kind: .data, root: superblock.root(.dataFree), freeBlocks: superblock.dataFreeBlocks)
        publishRoots()
    }

    /// Makes the roots of the last commit (the working ones, right after it) what readers
    /// without the lock read.
    private func publishRoots() {
        let records: Result<[(rid: UInt64, record: LogTreeRecord)], StoreError>
        do {
            records = .success(try logTreeRecords())
        } catch let e as StoreError {
            records = .failure(e)
        } catch {
            records = .failure(StoreError(.corrupt, "log-trees tree: \(error); run `scoutfs check`"))
        }
        committed.publish(CommittedRoots(seq: superblock.seq, fs: superblock.root(.fs), records: records))
    }

    // MARK: opening

    /// Opens a formatted filesystem: the newest valid superblock of the metadata device, checked
    /// against the copy on the data device.
    public static func open(meta: any BlockDevice, data: any BlockDevice, options: StoreOptions = StoreOptions()) throws -> Store {
        let (sb, problems) = try readSuperblockCopies(meta)
        try checkDataDevice(data, matches: sb)
        // Counts the allocators work from must fit the devices, or their arithmetic would
        // run past them.
        if sb.metaTotalBlocks <= Layout.metaFirstBlkno || sb.dataTotalBlocks <= Layout.dataFirstBlkno
            || sb.metaFreeBlocks > sb.metaTotalBlocks || sb.dataFreeBlocks > sb.dataTotalBlocks
            || sb.metaReserve.contains(where: { $0 < Layout.metaFirstBlkno || $0 >= sb.metaTotalBlocks }) {
            throw StoreError(.corrupt, "superblock of \(meta.name): free block counts (\(sb.metaFreeBlocks) metadata, \(sb.dataFreeBlocks) data) or reserve blocks beyond the devices' \(sb.metaTotalBlocks) and \(sb.dataTotalBlocks) blocks; the superblock is damaged")
        }
        if meta.size >> Layout.metaBlockShift < sb.metaTotalBlocks {
            throw StoreError(.invalid, "metadata device \(meta.name) is \(meta.size) bytes but the filesystem spans \(sb.metaTotalBlocks) blocks of 64 KiB: was it truncated?")
        }
        let store = Store(meta: meta, data: data, superblock: sb, options: options)
        store.superblockProblems = problems
        return store
    }

    /// The newest superblock copy that verifies. Names the device and what is wrong when none does.
    public static func readSuperblock(_ meta: any BlockDevice) throws -> SuperBlock {
        try readSuperblockCopies(meta).superblock
    }

    /// The newest superblock copy that verifies, and what was wrong with the other copy when it
    /// did not verify: then the filesystem may be one commit older than the last one made (a
    /// torn superblock write at a crash, or a damaged block), which a user must be told.
    public static func readSuperblockCopies(_ meta: any BlockDevice) throws -> (superblock: SuperBlock, problems: [String]) {
        let needed = Layout.superOffset(copy: 1) + UInt64(Layout.smallBlockSize)
        if meta.size < needed {
            throw StoreError(.notScoutFS, "\(meta.name) is \(meta.size) bytes, too small to hold a scoutfs superblock; is it the right device?")
        }
        var best: SuperBlock?
        var problems: [String] = []
        for copy in 0..<2 {
            let blkno = Layout.superSmallBlkno[copy]
            let bytes = try meta.read(at: Layout.superOffset(copy: copy), count: Layout.smallBlockSize)
            if bytes.allSatisfy({ $0 == 0 }) { continue }
            switch BlockHeader.verify(bytes, magic: BlockMagic.superblock, fsid: nil, blkno: blkno, seq: nil) {
            case .valid:
                do {
                    let sb = try SuperBlock(decoding: bytes)
                    if best == nil || sb.seq > best!.seq { best = sb }
                } catch {
                    problems.append("superblock copy \(copy): \(error)")
                }
            case .stale(let why), .corrupt(let why):
                problems.append("superblock copy \(copy) (block \(blkno)): \(why)")
            }
        }
        if let best {
            if best.flags.contains(.isDataDevice) {
                throw StoreError(.notScoutFS, "\(meta.name) is a scoutfs data device; give the metadata device first")
            }
            let fallback = problems.map { "\($0); using the other copy, commit seq \(best.seq) (the filesystem may be one commit older than the last one made)" }
            return (best, fallback)
        }
        if problems.isEmpty {
            throw StoreError(.notScoutFS, "\(meta.name) holds no scoutfs filesystem (no superblock at 64 KiB); run `scoutfs mkfs`")
        }
        throw StoreError(.notScoutFS, "\(meta.name) holds no readable scoutfs superblock: " + problems.joined(separator: "; "))
    }

    public static func checkDataDevice(_ data: any BlockDevice, matches sb: SuperBlock) throws {
        if data.size < Layout.dataSuperOffset + UInt64(Layout.smallBlockSize) {
            throw StoreError(.notScoutFS, "\(data.name) is \(data.size) bytes, too small to be a scoutfs data device")
        }
        let bytes = try data.read(at: Layout.dataSuperOffset, count: Layout.smallBlockSize)
        guard case .valid = BlockHeader.verify(bytes, magic: BlockMagic.superblock, fsid: nil, blkno: Layout.dataSuperSmallBlkno, seq: nil),
              let dsb = try? SuperBlock(decoding: bytes), dsb.flags.contains(.isDataDevice)
        else {
            throw StoreError(.notScoutFS, "\(data.name) is not a scoutfs data device (no data superblock at 64 KiB)")
        }
        if dsb.uuid != sb.uuid {
            throw StoreError(.notScoutFS, "data device \(data.name) belongs to filesystem \(dsb.uuidString), the metadata device to \(sb.uuidString); pair the devices made by the same mkfs")
        }
        if data.size >> Layout.dataBlockShift < sb.dataTotalBlocks {
            throw StoreError(.invalid, "data device \(data.name) is \(data.size) bytes but the filesystem spans \(sb.dataTotalBlocks) blocks of 4 KiB: was it truncated?")
        }
    }

    /// True when either superblock copy of `meta` (or the data superblock of `data`) verifies.
    public static func holdsFilesystem(_ device: any BlockDevice) -> Bool {
        var offsets = [(Layout.superOffset(copy: 0), Layout.superSmallBlkno[0]), (Layout.superOffset(copy: 1), Layout.superSmallBlkno[1])]
        offsets.append((Layout.dataSuperOffset, Layout.dataSuperSmallBlkno))
        for (off, blkno) in offsets where off + UInt64(Layout.smallBlockSize) <= device.size {
            if let bytes = try? device.read(at: off, count: Layout.smallBlockSize),
               case .valid = BlockHeader.verify(bytes, magic: BlockMagic.superblock, fsid: nil, blkno: blkno, seq: nil) {
                return true
            }
        }
        return false
    }

    // MARK: trees

    /// The working version of a tree (including uncommitted changes).
    public func tree(_ id: TreeID) -> BTree {
        switch id {
        case .metaFree: metaAlloc.tree
        case .dataFree: dataAlloc.tree
        default: trees[id]!
        }
    }

    /// Replaces the working root of a tree edited by the caller. The free-space trees belong to
    /// the allocators and cannot be set.
    public func setTree(_ id: TreeID, _ tree: BTree) {
        precondition(id != .metaFree && id != .dataFree, "the \(id) tree is owned by its allocator")
        trees[id] = tree
    }

    public func lookup(_ key: Key, in id: TreeID) throws -> Item? {
        try usable()
        return try tree(id).lookup(key, in: self)
    }

    /// Inserts into a tree. `forCommit` marks the server's own bookkeeping of a commit (the
    /// log tree's root), which may use half the margin kept for commits: a commit that could
    /// not record its root could never free anything.
    public func insert(_ item: Item, into id: TreeID, forCommit: Bool = false) throws {
        try usable()
        var t = tree(id)
        try preflight(t, margin: forCommit ? Self.commitMargin / 2 : Self.commitMargin)
        defer { setTree(id, t) }
        try t.insert(item, in: self)
    }

    /// Deletes from a tree, keeping half the margin kept for commits (as the server's own
    /// bookkeeping does): deleting is how a full device is emptied, and a device filled by
    /// inserts has only the margin left.
    @discardableResult
    public func delete(_ key: Key, from id: TreeID) throws -> Item? {
        try usable()
        var t = tree(id)
        try preflight(t, margin: Self.commitMargin / 2)
        defer { setTree(id, t) }
        return try t.delete(key, in: self)
    }

    /// Metadata blocks kept back from tree edits for the commit itself, which must put the
    /// transaction's freed blocks into the free tree and cannot fail for want of space.
    public static let commitMargin: UInt64 = 256

    /// Metadata blocks one filesystem operation may dirty at most (a handful of items, each
    /// copying a path and perhaps splitting it).
    public static let operationBudget: UInt64 = 64

    /// Metadata blocks allocatable now (frees of the open transaction are not).
    public var allocatableMetaBlocks: UInt64 { metaAlloc.freeBlocks + UInt64(metaAlloc.reserve.count) }

    /// Metadata blocks freed in the open transaction: a commit makes them allocatable.
    public var pendingFreeMetaBlocks: UInt64 { metaAlloc.pendingFree.reduce(0) { $0 + $1.length } }

    /// The allocatable blocks an operation must find before it starts, so that no edit inside
    /// it can fail for space and leave it half done. Operations that free space (unlink,
    /// truncate, …) may go one budget lower than others: on a full device they still run.
    public static func operationFloor(freeing: Bool) -> UInt64 {
        commitMargin + 32 + operationBudget * (freeing ? 1 : 2)
    }

    /// Throws ENOSPC unless every tree of `trees` can take one edit (keeping half the commit
    /// margin, as the server's own bookkeeping may): for a caller that must make several edits
    /// or none.
    public func ensureRoom(editing trees: [BTree]) throws {
        try usable()
        try preflight(need: trees.reduce(0) { $0 + Self.editBlocks($1) }, margin: Self.commitMargin / 2)
    }

    /// Gives up the open transaction after a failure that left it half done: nothing of it may
    /// be committed. The store refuses further work until it is opened again.
    public func abandon(_ e: StoreError) {
        fail(e)
    }

    /// Fails an edit with ENOSPC before it touches anything, rather than part way through a split.
    private func preflight(_ t: BTree, margin: UInt64) throws {
        try preflight(need: Self.editBlocks(t), margin: margin)
    }

    /// Blocks one edit of `t` may dirty at most: a path copied and split.
    private static func editBlocks(_ t: BTree) -> UInt64 { UInt64(4 * (Int(t.root.height) + 2)) }

    private func preflight(need edits: UInt64, margin: UInt64) throws {
        let need = edits + margin
        if metaAlloc.freeBlocks + UInt64(metaAlloc.reserve.count) < need {
            throw StoreError(.noSpace, "metadata device \(meta.name) is full (\(metaAlloc.freeBlocks + UInt64(metaAlloc.reserve.count)) free 64 KiB blocks, \(margin) kept for commits); free space or grow the device")
        }
    }

    /// The roots as they would be committed now.
    public var workingRoots: [TreeID: BTreeRoot] {
        var r: [TreeID: BTreeRoot] = [:]
        for t in TreeID.allCases where !tree(t).root.isEmpty { r[t] = tree(t).root }
        return r
    }

    // MARK: data extents

    /// Up to `count` contiguous data blocks; fewer when free space is fragmented.
    public func allocData(_ count: UInt64) throws -> Extent {
        try usable()
        return try dataAlloc.allocData(count, self)
    }

    /// Up to `count` contiguous data blocks from the first of `zones` (zone numbers of the
    /// superblock's data allocation zones) with free space; nil when none has any.
    public func allocData(_ count: UInt64, inZones zones: [UInt64]) throws -> Extent? {
        try usable()
        let size = superblock.dataAllocZoneBlocks
        guard size > 0, !zones.isEmpty else { return nil }
        return try dataAlloc.allocData(count, inZones: zones, zoneBlocks: size, self)
    }

    /// Frees data blocks; they become allocatable after the next commit.
    public func freeData(_ extent: Extent) {
        dataAlloc.pendingFree.append(extent)
    }

    // MARK: growing

    /// Grows the filesystem onto devices made larger since mkfs: the blocks from the current
    /// totals up to `metaTotalBlocks` (64 KiB) and `dataTotalBlocks` (4 KiB) become free space
    /// in the open transaction, and the caller commits. nil, or the current total, leaves a
    /// device as it is. Shrinking, and a total past what the device holds now, are refused
    /// with nothing changed.
    public func grow(metaTotalBlocks newMeta: UInt64?, dataTotalBlocks newData: UInt64?) throws {
        try usable()
        let sb = superblock
        if let m = newMeta, m < sb.metaTotalBlocks {
            throw StoreError(.invalid, "the metadata device cannot shrink: \(m) blocks of 64 KiB asked for, the filesystem already spans \(sb.metaTotalBlocks)")
        }
        if let d = newData, d < sb.dataTotalBlocks {
            throw StoreError(.invalid, "the data device cannot shrink: \(d) blocks of 4 KiB asked for, the filesystem already spans \(sb.dataTotalBlocks)")
        }
        if let m = newMeta, m > sb.metaTotalBlocks {
            let has = try meta.remeasure() >> UInt64(Layout.metaBlockShift)
            guard m <= has else {
                throw StoreError(.invalid, "metadata device \(meta.name) holds \(has) blocks of 64 KiB, fewer than the \(m) asked for; grow the device first")
            }
        }
        if let d = newData, d > sb.dataTotalBlocks {
            let has = try data.remeasure() >> UInt64(Layout.dataBlockShift)
            guard d <= has else {
                throw StoreError(.invalid, "data device \(data.name) holds \(has) blocks of 4 KiB, fewer than the \(d) asked for; grow the device first")
            }
        }
        if let m = newMeta, m > sb.metaTotalBlocks {
            superblock.metaTotalBlocks = m
            metaAlloc.pendingFree.append(Extent(start: sb.metaTotalBlocks, length: m - sb.metaTotalBlocks))
            committed.raiseMetaTotal(to: m)
        }
        if let d = newData, d > sb.dataTotalBlocks {
            superblock.dataTotalBlocks = d
            dataAlloc.pendingFree.append(Extent(start: sb.dataTotalBlocks, length: d - sb.dataTotalBlocks))
            dataTotal.store(d, ordering: .releasing)
        }
    }

    /// `count` metadata blocks for a client's pool, as at most `maxExtents` runs
    /// (`ExtentAllocator.allocMetaRun`): the client writes its log tree into them itself,
    /// outside this transaction. Fewer blocks when the free space is in more pieces than
    /// that. Throws ENOSPC, taking none, unless the commit margin stays.
    public func allocMetaExtents(_ count: Int, maxExtents: Int) throws -> [Extent] {
        try usable()
        try preflight(need: UInt64(count) + Self.editBlocks(tree(.logTrees)), margin: Self.commitMargin)
        var got: [Extent] = []
        var have: UInt64 = 0
        while have < UInt64(count), got.count < maxExtents,
              let e = try metaAlloc.allocMetaRun(UInt64(count) - have, self) {
            got.append(e)
            have += e.length
        }
        return got
    }

    /// Frees metadata blocks a commit takes out of use (a client's log tree blocks it copied,
    /// its pool when it leaves); they become allocatable after that commit.
    public func freeMeta(_ extent: Extent) {
        metaAlloc.pendingFree.append(extent)
    }

    /// Free space as a reader of statfs would count it: what is free now plus what the open
    /// transaction has freed.
    public var freeMetaBlocks: UInt64 {
        metaAlloc.freeBlocks + UInt64(metaAlloc.reserve.count) + metaAlloc.pendingFree.reduce(0) { $0 + $1.length }
    }

    public var freeDataBlocks: UInt64 {
        dataAlloc.freeBlocks + dataAlloc.pendingFree.reduce(0) { $0 + $1.length }
    }

    /// Data blocks `allocData` can hand out before the next commit (frees of the open
    /// transaction are not among them).
    public var allocatableDataBlocks: UInt64 { dataAlloc.freeBlocks }

    /// Data blocks freed in the open transaction: a commit makes them allocatable.
    public var pendingFreeDataBlocks: UInt64 { dataAlloc.pendingFree.reduce(0) { $0 + $1.length } }

    /// Blocks the open transaction has dirtied so far (each becomes a 64 KiB write at commit).
    public var dirtyBlocks: Int { dirty.count }

    // MARK: blocks

    /// Reads the block a reference names in the working trees: the open transaction's own
    /// block, else the committed one (cached or from the device), checked to be that block.
    public func readNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode {
        try committed.readNode(ref, level: level, tree: tree, over: dirty)
    }

    /// Reads and verifies a btree block from the device, bypassing the cache.
    func readBlock(_ ref: BlockRef, tree: String) throws -> BTreeBlock {
        try committed.readBlock(ref, tree: tree)
    }

    /// The block a reference names, made writable in the open transaction: itself if it was
    /// allocated in this transaction, else a copy in a new block (and the old one freed).
    public func dirtyNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode {
        let n = try readNode(ref, level: level, tree: tree)
        if n.dirty { return n }
        let copy = CachedNode(blkno: try metaAlloc.allocMeta(self), seq: txnSeq, block: n.block, dirty: true)
        dirty[copy.blkno] = copy
        metaAlloc.pendingFree.append(Extent(start: n.blkno, length: 1))
        return copy
    }

    public func newNode(level: UInt8) throws -> CachedNode {
        let n = CachedNode(blkno: try metaAlloc.allocMeta(self), seq: txnSeq, block: BTreeBlock(level: level), dirty: true)
        dirty[n.blkno] = n
        return n
    }

    /// Frees a block that left its tree: at once if this transaction allocated it, else when the
    /// transaction commits.
    public func freeNode(_ n: CachedNode) {
        if n.dirty {
            dirty.removeValue(forKey: n.blkno)
            metaAlloc.reserve.append(n.blkno)
        } else {
            metaAlloc.pendingFree.append(Extent(start: n.blkno, length: 1))
        }
    }

    // MARK: commit

    /// True when the open transaction holds anything a commit would write.
    public var hasChanges: Bool {
        !dirty.isEmpty || !metaAlloc.pendingFree.isEmpty || !dataAlloc.pendingFree.isEmpty
            || nextIno != superblock.nextIno || nextSeq != superblock.nextSeq
    }

    /// Asked before each superblock write, beside the flushes that precede it; a throw fails
    /// the commit and the store (set by a server's mount: a server that another leader has
    /// replaced since — its process stopped and resumed, a fence that did not hold — must not
    /// write over the new one's).
    public var beforeSuperblockWrite: (@Sendable () throws -> Void)?

    /// Runs `beforeSuperblockWrite` beside the flushes before the superblock; made at the
    /// first commit that has a check, nil if no thread could be started (then the check runs
    /// after the flushes).
    private lazy var checkThread: SideThread? = try? SideThread("the check before each superblock write")

    /// Called after each commit, by the committing thread (a server's mount keeps the roots
    /// it sends with lock grants current this way).
    public var afterCommit: (() -> Void)?

    /// Makes the open transaction durable and atomic, then opens the next one. After a failure
    /// part way the store refuses further work: reopen it from the devices.
    public func commit() throws {
        try usable()
        guard hasChanges else { return }
        if readOnly {
            throw StoreError(.invalid, "\(meta.name) was opened for reading only; nothing can be committed")
        }
        do {
            try settleAllocators()
            let written = dirty.values.sorted { $0.blkno < $1.blkno }
            try writeNodes(written)
            // The check before the superblock reads the quorum blocks while the flushes run.
            let side = beforeSuperblockWrite.flatMap { check in checkThread.map { t in t.start(check); return t } }
            let flushed = Result { () throws in
                try data.flush()
                try meta.flush()
            }
            if let side { try side.finish() }
            try flushed.get()
            if side == nil { try beforeSuperblockWrite?() }
            var sb = superblock
            sb.seq = txnSeq
            sb.roots = workingRoots
            sb.nextIno = nextIno
            sb.nextSeq = nextSeq
            sb.metaFreeBlocks = metaAlloc.freeBlocks
            sb.dataFreeBlocks = dataAlloc.freeBlocks
            sb.metaReserve = metaAlloc.reserve.sorted()
            let copy = Int(sb.seq % 2)
            try meta.write(at: Layout.superOffset(copy: copy), sb.encode(smallBlkno: Layout.superSmallBlkno[copy]))
            try meta.flush()
            superblock = sb
            metaAlloc.transactionCommitted()
            dataAlloc.transactionCommitted()
            dirty.removeAll()
            for n in written {
                n.dirty = false
                cache.insert(n)
            }
            publishRoots()
            openSeq.add(1, ordering: .releasing)
            afterCommit?()
        } catch let e as StoreError {
            fail(e)
            throw e
        }
    }

    /// Puts everything freed in this transaction into the free trees. Editing a free tree frees
    /// its own committed blocks, so this runs until nothing is pending; it ends because a block
    /// is copied at most once per transaction.
    private func settleAllocators() throws {
        repeat {
            try dataAlloc.applyPendingFrees(self)
            try metaAlloc.applyPendingFrees(self)
            try metaAlloc.trimReserve(self)
        } while !metaAlloc.pendingFree.isEmpty || !dataAlloc.pendingFree.isEmpty
            || metaAlloc.reserve.count > SuperBlock.maxReserve
    }

    private func writeNodes(_ nodes: [CachedNode]) throws {
        try Self.write(nodes, to: meta, fsid: fsid)
    }

    /// Writes blocks in block order, gathering runs of adjacent blocks into one write of up to
    /// 1 MiB: far fewer syscalls for the mostly sequential blocks a transaction allocates.
    ///
    /// Each leaf is encoded into a slot of the block arena and from then on kept in that
    /// encoded form (what a cold read makes), its edited arrays let go: those took two to three
    /// times the block's 64 KiB, and a merge's thousands of written fs-tree leaves, kept in
    /// the cache that way, were most of a busy mount's memory. The content is the same; the
    /// next edit of a leaf unpacks it again. The nodes are the caller's alone (dirty, or a
    /// build not yet shared), so nothing reads them while they change form.
    static func write(_ nodes: [CachedNode], to meta: any BlockDevice, fsid: UInt64) throws {
        let maxRun = 16
        let size = Layout.metaBlockSize
        var i = 0
        while i < nodes.count {
            var j = i + 1
            while j < nodes.count && j - i < maxRun && nodes[j].blkno == nodes[j - 1].blkno + 1 { j += 1 }
            var buf = [UInt8](repeating: 0, count: (j - i) * size)
            var slots: [BlockBytes?] = []
            slots.reserveCapacity(j - i)
            try buf.withUnsafeMutableBytes { run in
                for (k, n) in nodes[i..<j].enumerated() {
                    let encoded = UnsafeMutableRawBufferPointer(rebasing: run[(k * size)..<((k + 1) * size)])
                    n.block.encode(into: encoded, fsid: fsid, seq: n.seq, blkno: n.blkno)
                    guard n.block.isLeaf else {
                        slots.append(nil)
                        continue
                    }
                    let slot = try BlockArena.shared.take()
                    slot.base.copyMemory(from: encoded.baseAddress!, byteCount: size)
                    slots.append(slot)
                }
            }
            try meta.write(at: nodes[i].blkno << UInt64(Layout.metaBlockShift), buf)
            for (k, n) in nodes[i..<j].enumerated() {
                guard let slot = slots[k] else { continue }
                do {
                    try n.block.adoptEncoded(slot)
                } catch {
                    // The encoder wrote what the decoder refuses: the block on the device is
                    // wrong too, and nothing may be committed over it.
                    throw StoreError(.corrupt, "metadata block \(n.blkno) as just written does not decode: \(error); this is a bug, the transaction is given up")
                }
            }
            i = j
        }
    }

    private func usable() throws {
        if let failure {
            throw StoreError(.failed, "an earlier commit failed (\(failure.message)); unmount and remount to continue from the last committed state")
        }
    }

    private func fail(_ e: StoreError) {
        failure = e
        dirty.removeAll()
        cache.removeAll()
    }
}

extension Store {
    /// Opens only the metadata device, for tools that read trees but never file data (`print`).
    /// Refuses to commit: without the data device it cannot flush data before the superblock.
    public static func openMetadataOnly(meta: any BlockDevice, superblock: SuperBlock) throws -> Store {
        let placeholder = MemoryBlockDevice(name: "(no data device)", size: 0)
        let store = Store(meta: meta, data: placeholder, superblock: superblock, options: StoreOptions(cacheBlocks: 64))
        store.readOnly = true
        return store
    }
}

extension Store {
    /// The cached nodes by block number; for tests that check copy-on-write.
    func cacheSnapshot() -> [UInt64: CachedNode] { cache.all.merging(dirty) { $1 } }
}
