#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// Where a btree reads its blocks from. The store reads its working trees (the open
/// transaction's dirty blocks over the committed ones) with its lock held; `CommittedBlocks`
/// reads only what commits made durable, from any thread, with no lock.
public protocol NodeSource {
    /// The block `ref` names, checked to be that block at `level`.
    func readNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode
}

/// Where a btree edit gets its blocks: copies of committed blocks and new ones, allocated
/// from the store's transaction (the server's trees) or from a client's pool (its log tree).
public protocol NodeWriter: NodeSource {
    /// Bytes of entries a block may hold before it splits.
    var nodeCapacity: Int { get }
    /// The block `ref` names, made writable: itself if this writer allocated it, else a copy
    /// in a new block (the old one freed once the edit is committed).
    func dirtyNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode
    func newNode(level: UInt8) throws -> CachedNode
    /// A block that left its tree.
    func freeNode(_ n: CachedNode)
}

/// The roots of one commit, as clients read them: the fs tree and every client's recorded log
/// tree. Blocks these roots reach stay as they are until a later commit frees them and a
/// writer reuses them; a reader that then meets another block than its ref names (stale, or
/// torn while being rewritten) takes newer roots and reads again (`CommittedBlocks.reading`).
public struct CommittedRoots: Sendable {
    /// The commit these are the roots of.
    public let seq: UInt64
    public let fs: BTreeRoot
    /// Every client's log-trees record, by client id in key order; a damaged record is the
    /// error reading it gave.
    public let records: Result<[(rid: UInt64, record: LogTreeRecord)], StoreError>
}

/// Reads committed blocks without the store's lock: through the store's shared cache of clean
/// blocks, else from the device, checking each block against its ref.
public final class CommittedBlocks: NodeSource, Sendable {
    let cache: BlockCache
    // nonisolated(unsafe): the devices' reads are safe from any thread (BlockDevice).
    nonisolated(unsafe) let meta: any BlockDevice
    let fsid: UInt64
    /// The metadata device's blocks in the filesystem: raised by an online resize.
    var metaTotalBlocks: UInt64 { metaTotal.load(ordering: .acquiring) }
    private let metaTotal: Atomic<UInt64>
    private let published: Mutex<CommittedRoots>
    private let floor = Atomic<UInt64>(0)

    init(cache: BlockCache, meta: any BlockDevice, fsid: UInt64, metaTotalBlocks: UInt64, roots: CommittedRoots) {
        self.cache = cache
        self.meta = meta
        self.fsid = fsid
        metaTotal = Atomic(metaTotalBlocks)
        published = Mutex(roots)
    }

    /// The filesystem grew onto `blocks` of the metadata device: references up to there are good.
    public func raiseMetaTotal(to blocks: UInt64) {
        _ = metaTotal.max(blocks, ordering: .acquiringAndReleasing)
    }

    /// The roots of the last commit.
    public var roots: CommittedRoots { published.withLock { $0 } }

    /// The oldest commit a read may go through from now on: a lock granted since another
    /// node wrote under it is read through roots that hold what that node committed. Only a
    /// node's store raises it (a client in the server's process reads the newest roots, which
    /// no commit moves while its own commit lands: both take the store lock).
    public var readFloor: UInt64 { floor.load(ordering: .acquiring) }

    public func raiseReadFloor(to seq: UInt64) {
        floor.max(seq, ordering: .acquiringAndReleasing)
    }

    /// The block `ref` names: a writer's own uncommitted copy in `own` if that is it, else the
    /// committed one. The store's transaction and a client's log tree build both read so.
    func readNode(_ ref: BlockRef, level: UInt8, tree: String, over own: [UInt64: CachedNode]) throws -> CachedNode {
        if let n = own[ref.blkno], n.seq == ref.seq {
            guard n.block.level == level else {
                throw StoreError(.corrupt, "metadata block \(ref.blkno) in \(tree) tree: level \(n.block.level), expected \(level); run `scoutfs check`")
            }
            return n
        }
        return try readNode(ref, level: level, tree: tree)
    }

    /// Blocks a client wrote and a commit made durable join the clean cache.
    func adopt(_ nodes: [CachedNode]) {
        for n in nodes {
            n.dirty = false
            cache.insert(n)
        }
    }

    func publish(_ roots: CommittedRoots) {
        published.withLock { $0 = roots }
    }

    public func readNode(_ ref: BlockRef, level: UInt8, tree: String) throws -> CachedNode {
        if let n = cache.get(ref.blkno, seq: ref.seq) {
            guard n.block.level == level else {
                throw StoreError(.corrupt, "metadata block \(ref.blkno) in \(tree) tree: level \(n.block.level), expected \(level); run `scoutfs check`")
            }
            return n
        }
        let block = try readBlock(ref, tree: tree)
        guard block.level == level else {
            throw StoreError(.corrupt, "metadata block \(ref.blkno) in \(tree) tree: level \(block.level), expected \(level); run `scoutfs check`")
        }
        let n = CachedNode(blkno: ref.blkno, seq: ref.seq, block: block, dirty: false)
        cache.insert(n)
        return n
    }

    /// Reads and verifies a btree block from the device, bypassing the cache.
    func readBlock(_ ref: BlockRef, tree: String) throws -> BTreeBlock {
        guard ref.blkno >= Layout.metaFirstBlkno && ref.blkno < metaTotalBlocks else {
            throw StoreError(.corrupt, "\(tree) tree references metadata block \(ref.blkno), outside the device's \(metaTotalBlocks) blocks; run `scoutfs check`")
        }
        let bytes = try BlockArena.shared.take()
        try meta.readBlock(at: ref.blkno << UInt64(Layout.metaBlockShift),
                           into: UnsafeMutableRawBufferPointer(start: bytes.base, count: bytes.count))
        switch BlockHeader.verify(bytes.buffer, magic: BlockMagic.btree, fsid: fsid, blkno: ref.blkno, seq: ref.seq) {
        case .valid:
            break
        case .stale(let why):
            throw StoreError(.stale, "metadata block \(ref.blkno) in \(tree) tree: \(why)")
        case .corrupt(let why):
            throw StoreError(.corrupt, "metadata block \(ref.blkno) in \(tree) tree: \(why); run `scoutfs check`")
        }
        do {
            return try BTreeBlock(adopting: bytes)
        } catch {
            throw StoreError(.corrupt, "metadata block \(ref.blkno) in \(tree) tree: \(error); run `scoutfs check`")
        }
    }

    /// Runs `body` on roots `pick` chooses (normally the last commit's), and again on newer
    /// ones when a read meets a block other than its ref names: a commit since freed it and a
    /// writer reused it (a block being rewritten can also read as torn). The same failure on
    /// the newest roots is real and is thrown. `pick` may hold older roots back for a while
    /// (a client whose own commit is landing); the retries wait for it.
    public func reading<T>(_ pick: () -> CommittedRoots, _ body: (CommittedRoots) throws -> T) throws -> T {
        var waits = 0
        while true {
            let r = pick()
            do {
                return try body(r)
            } catch let e as StoreError where e.code == .stale || e.code == .corrupt {
                guard roots.seq != r.seq else { throw e }
                if pick().seq == r.seq {
                    // Held back on purpose; the hold ends with the commit that set it.
                    waits += 1
                    if waits > 100_000 { throw e }
                    usleep(100)
                }
            }
        }
    }
}
