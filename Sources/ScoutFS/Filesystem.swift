#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
public import ScoutFormat
import ScoutNet
import ScoutServer
public import ScoutStore
public import SystemPackage
import Synchronization

/// Who is asking: the caller's credentials, which new objects take (FUSE passes them per request).
public struct Caller: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public var umask: UInt32

    public init(uid: UInt32, gid: UInt32, umask: UInt32 = 0) {
        self.uid = uid
        self.gid = gid
        self.umask = umask
    }

    public static let root = Caller(uid: 0, gid: 0)
}

/// What `stat` shows of an inode.
public struct Attributes: Equatable, Sendable {
    public var ino: UInt64
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    /// 512-byte units, as `st_blocks`.
    public var blocks: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    public var crtime: Timestamp
    public var dataVersion: UInt64
    public var metaSeq: UInt64
    public var dataSeq: UInt64
    /// 4 KiB blocks of the file on the data device, and released (archived) ones.
    public var onlineBlocks: UInt64
    public var offlineBlocks: UInt64

    public var isDirectory: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFDIR) }
}

/// The fields a `setattr` changes; nil leaves a field alone.
public struct AttributeChanges: Sendable {
    public enum TimeChange: Sendable { case now, set(Timestamp) }
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: TimeChange? = nil, mtime: TimeChange? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
    }
}

/// One directory entry as readdir returns it; `nextOffset` is the `d_off` to continue from.
public struct DirectoryEntry: Sendable {
    public var ino: UInt64
    public var type: UInt8
    public var name: [UInt8]
    public var nextOffset: UInt64
}

/// One open directory's reading position bound. A name that is renamed or created gets a new,
/// higher readdir position; a reader that went on to the newest position could meet the same
/// file again and again while another process renames (xfstests generic/736 loops forever
/// that way). So a pass reads only the positions that existed when it started at offset 0,
/// as POSIX allows; a rewind starts a new pass that sees everything.
// @unchecked Sendable: `end` is read and written only under the filesystem lock.
public final class DirectoryStream: @unchecked Sendable {
    /// The first readdir position this pass does not show; 0 before the pass starts.
    var end: UInt64 = 0

    public init() {}
}

/// Filesystem-wide numbers for statfs.
public struct FilesystemStats: Sendable {
    public var blockSize: UInt32
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    public var nameMax: UInt32
    public var fsid: UInt64
}

/// Tunables of a mounted filesystem.
public struct FilesystemOptions: Sendable {
    /// Commit the open transaction this often when it holds changes.
    public var commitInterval: Duration
    /// Commit as soon as the transaction has dirtied this many 64 KiB metadata blocks.
    public var dirtyBlockLimit: Int
    /// Merge the mount's log tree into the fs tree at the commit that finds it this big (items).
    public var mergeThreshold: UInt64
    /// This client's id (its log tree's key), the same at every mount of one quorum slot so a
    /// client that comes back finds its own log tree; nil picks a random one (tests).
    public var clientID: UInt64?

    public init(commitInterval: Duration = .seconds(5), dirtyBlockLimit: Int = 1024, mergeThreshold: UInt64 = 100_000,
                clientID: UInt64? = nil) {
        self.commitInterval = commitInterval
        self.dirtyBlockLimit = dirtyBlockLimit
        self.mergeThreshold = mergeThreshold
        self.clientID = clientID
    }

    /// The client id of the mount of quorum slot `slot`: never 0.
    public static func clientID(slot: Int) -> UInt64 { UInt64(slot) + 1 }
}

/// A POSIX filesystem over the items of a store: inodes, directories, files, symlinks, xattrs.
///
/// The mount is a cluster client like any other: every operation first takes the cluster
/// locks covering the items it reads and writes (`locked`, through a `LockClient` against a
/// lock server in the same process), then holds the client's transaction, then works in the
/// item cache. The transaction is still one mutex per mount, so operations are atomic with
/// respect to each other and to commits; locks are never taken while it is held. Operations
/// are synchronous: they run on the caller's thread, which is a libfuse worker when mounted.
public final class Filesystem: Sendable {
    private let state: FSCore
    let cluster: ClusterClient
    /// The lock server of this mount's one-node cluster and the in-process network to it.
    private let lockServer: LockServer
    private let lockNetwork: InMemoryLockNetwork
    public let options: FilesystemOptions
    var readGate: DataReadGate { cluster.readGate }
    let waits = DataWaits()
    /// File data is read from it outside the transaction (see `read`).
    // nonisolated(unsafe): set once in init; the device's reads are thread-safe.
    nonisolated(unsafe) let dataDevice: any BlockDevice

    /// Opens the filesystem on an open store: creates the root directory on first use and frees
    /// inodes that a crash left unlinked but allocated (orphans).
    public init(store: Store, options: FilesystemOptions = FilesystemOptions()) throws {
        let server = LocalServer(store: store, mergeThreshold: options.mergeThreshold)
        var id = options.clientID ?? 0
        while id == 0 { id = UInt64.random(in: 1...UInt64.max) }
        let net = InMemoryLockNetwork(immediate: true)
        let ls = LockServer(links: net.clientLinks)
        net.attachServer { client, m in ls.receive(from: client, m) }
        let locks = LockClient(id: id, link: net.serverLink(for: id))
        net.attachClient(id) { m in locks.receive(m) }
        // One client over its own store: reads need no other log trees, and the store's
        // transaction seq orders every change (see `ClusterClient.ordersByLockSeq`).
        let cl = ClusterClient(id: id, locks: locks, store: store, server: InProcessLink(server: server),
                               cacheBytes: 256 << 20, sharesStore: false, ordersByLockSeq: false)
        lockNetwork = net
        lockServer = ls
        cluster = cl
        let c = FSCore(store: store, server: server, cluster: cl, waits: waits)
        dataDevice = store.data
        state = c
        self.options = options
        locks.startWorker()
        do {
            try c.prepare()
            try createRootIfMissing()
            try freeOrphans()
        } catch {
            stopLocks()
            throw error
        }
    }

    deinit { stopLocks() }

    private func stopLocks() {
        cluster.locks.stopWorker()
        lockNetwork.detachClient(cluster.id)
    }

    /// How an operation uses metadata space, which decides whether it may start on a nearly
    /// full device.
    enum SpaceUse { case reads, grows, frees }

    /// One attempt of an operation, with the transaction held: maps store errors to errnos,
    /// then commits if the transaction has grown past its dirty limit. An operation that
    /// writes starts only if the space it may need is there (`FSCore.admit`), so it never
    /// stops half way for space. The caller holds the operation's locks (`locked`).
    func runAttempt<T>(_ space: SpaceUse, commit: Bool = true, _ body: (FSCore) throws -> T) throws(Errno) -> T {
        let result: Result<T, Errno> = withCore { c in
            do {
                if space != .reads { try c.admit(freeing: space == .frees) }
                let r = try body(c)
                if commit {
                    // On a filling device transactions stay small, so that committing and
                    // merging them never needs more room than is left.
                    let limit = min(options.dirtyBlockLimit, Int(c.store.allocatableMetaBlocks / 8))
                    if c.items.dirtyBlocks >= limit { try c.commit() }
                }
                return .success(r)
            } catch let e as Errno {
                return .failure(e)
            } catch let e as StoreError {
                c.log("error: \(e.message)")
                return .failure(Errno(rawValue: e.errno))
            } catch let e as LockCoverageError {
                c.log("error: \(e.description)")
                return .failure(.ioError)
            } catch {
                c.log("error: \(error)")
                return .failure(.ioError)
            }
        }
        return try result.get()
    }

    /// Runs an operation that may find offline data: when it does (`DataWaitNeeded`), its locks
    /// and the transaction are let go, the caller sleeps until the inode changes, and the
    /// operation starts over.
    func lockedWaiting<T>(_ space: SpaceUse, _ cancel: WaitCancellation?, commit: Bool = true, _ plan: LockPlan,
                          _ body: (FSCore) throws -> T) throws(Errno) -> T {
        while true {
            let r: Result<T, DataWaitNeeded> = try locked(space, commit: commit, plan) { c in
                do { return .success(try body(c)) } catch let w as DataWaitNeeded { return .failure(w) }
            }
            switch r {
            case .success(let v): return v
            case .failure(let w): try waits.wait(w.ticket, cancel: cancel)
            }
        }
    }

    /// The one way to reach the core: with the transaction held.
    func withCore<T>(_ body: (FSCore) throws -> T) rethrows -> T {
        try cluster.withTransaction { try body(state) }
    }

    /// Makes everything done so far durable.
    public func sync() throws(Errno) {
        try runAttempt(.reads, commit: false) { try $0.commit() }
    }

    /// Commits if the open transaction holds changes; the mount's commit timer calls this.
    public func commitIfDirty() throws(Errno) {
        try runAttempt(.reads, commit: false) { c in if c.items.hasChanges { try c.commit() } }
    }

    public var fsid: UInt64 { withCore { $0.store.fsid } }

    /// The seq of the last commit.
    public var committedSeq: UInt64 { withCore { $0.store.superblock.seq } }

    /// Commits, merges this mount's log tree into the fs tree and commits that: what a clean
    /// unmount leaves is one fs tree and no log trees.
    public func syncAndMerge() throws(Errno) {
        try runAttempt(.reads, commit: false) { c in
            try c.commit(merge: true)
        }
    }

    /// How many log tree merges the server has done since mount.
    public var merges: Int { withCore { $0.server.merges } }

    /// Cluster lock traffic of this mount's lock client (status, tests).
    public var lockStatistics: (requests: Int, grants: Int, invalidations: Int, cached: Int) {
        let s = cluster.locks.statistics
        return (s.requests, s.grants, s.invalidations, cluster.locks.cachedCount)
    }

    /// Lines for the mount's log (errors a FUSE reply can only show as an errno).
    public var logSink: (@Sendable (String) -> Void)? {
        get { withCore { $0.logSink } }
        set { withCore { $0.logSink = newValue } }
    }

    private func createRootIfMissing() throws {
        var plan = LockPlan()
        plan.write(FSCore.rootIno)
        try locked(.reads, plan) { c in
            guard try c.get(Keys.inode(FSCore.rootIno)) == nil else { return }
            var root = InodeRecord(mode: UInt32(S_IFDIR) | 0o755, uid: 0, gid: 0, now: .now)
            root.nlink = 2
            if c.store.nextIno <= FSCore.rootIno { c.store.nextIno = FSCore.rootIno + 1 }
            try c.putInode(FSCore.rootIno, &root)
            try c.commit()
        }
    }

    /// Frees the inodes a crash left unlinked but allocated, one operation each.
    private func freeOrphans() throws {
        var plan = LockPlan()
        plan.add(.orphan, .read)
        let orphans = try locked(.reads, plan) { c in try c.range(Keys.orphan(0), Keys.orphan(.max)).map(\.key.second) }
        for ino in orphans {
            var p = LockPlan()
            p.mayFree(ino)
            try locked(.frees, p) { c in
                if let r = try? c.inode(ino), r.nlink > 0 {
                    try c.remove(Keys.orphan(ino))
                } else {
                    try c.deleteInode(ino)
                }
            }
        }
        if !orphans.isEmpty {
            withCore { $0.log("freed \(orphans.count) orphaned inode(s) left by an unclean unmount") }
            try sync()
        }
    }
}

// MARK: - the core

/// The filesystem's state and logic.
// @unchecked Sendable: reachable only through `Filesystem.withCore`, which holds the lock.
final class FSCore: @unchecked Sendable {
    let store: Store
    let server: LocalServer
    let cluster: ClusterClient
    let items: ClientItems
    /// The locks of the operation running now (set by `Filesystem.locked`).
    var held = HeldLocks.none
    /// This attempt of the operation follows a commit made to free space: short of space
    /// again, it fails instead of asking for another.
    var spaceCommitted = false
    /// Handles open per inode: an unlinked inode lives until its last close.
    var openCount: [UInt64: Int] = [:]
    /// The kernel's lookup references per inode (FUSE's nlookup), dropped by forget.
    var lookupCount: [UInt64: UInt64] = [:]
    /// Inodes whose last link is gone while a handle or the kernel still holds them: the only
    /// ones a close or forget can free. Checking here first spares the inode read on every
    /// forget, which matters when the kernel drops a million cached inodes at once.
    var unlinked = Set<UInt64>()
    var logSink: (@Sendable (String) -> Void)?

    static let rootIno: UInt64 = 1

    let waits: DataWaits

    init(store: Store, server: LocalServer, cluster: ClusterClient, waits: DataWaits) {
        self.store = store
        self.server = server
        self.cluster = cluster
        self.items = cluster.items
        self.waits = waits
    }

    func log(_ s: String) { logSink?(s) }

    /// Fails with ENOSPC unless an operation has the metadata space it may need. Short of it,
    /// a commit may help (blocks freed in the open transaction become allocatable) and so may
    /// a merge of the log tree (its tombstones free fs tree blocks).
    func admit(freeing: Bool) throws {
        // Changes wait in the item cache and take their log tree blocks at commit: room for
        // those must be there too, or the commit would be the edit that runs out.
        var floor: UInt64 { store.operationFloor(freeing: freeing) + UInt64(items.cache.commitBlockEstimate) }
        if store.allocatableMetaBlocks >= floor { return }
        if store.pendingFreeMetaBlocks > 0 || items.hasLogItems {
            try commit(merge: items.hasLogItems)
            if store.allocatableMetaBlocks >= floor { return }
        }
        throw Errno.noSpace
    }

    /// Makes the open transaction durable. Blocks it freed become allocatable, so no file data
    /// read may be in flight (`DataReadGate`).
    func commit(merge: Bool = false) throws {
        try cluster.commitLocked(merge: merge)
    }

    /// What comes before any operation: the log trees an earlier mount left are merged (no
    /// lock covers them; nothing else runs yet) and the next inode number is checked.
    func prepare() throws {
        let recovered = try server.recoverLogTrees()
        if recovered > 0 { log("merged \(recovered) log tree(s) left by an unclean unmount") }
        try checkNextInode()
    }

    // MARK: items

    var seq: UInt64 { items.seq }

    // Every item call goes through the lock of the running operation that covers its key.

    func get(_ key: Key) throws -> Item? {
        try cluster.lookup(key, under: held.handle(for: key, write: false))
    }

    func put(_ key: Key, _ value: [UInt8]) throws {
        try cluster.insert(key, value, under: held.handle(for: key, write: true))
    }

    func remove(_ key: Key) throws {
        try cluster.delete(key, under: held.handle(for: key, write: true))
    }

    func addDelta(_ key: Key, _ fields: [Int64]) throws {
        try cluster.addDelta(key, fields, under: held.handle(for: key, write: true))
    }

    /// Calls `body` with each item of `[start, end]` (within one lock) in order until it
    /// returns false.
    func scan(_ start: Key, _ end: Key, _ body: (Item) throws -> Bool) throws {
        try cluster.forEach(from: start, through: end, under: held.handle(for: start, write: false), body)
    }

    /// Items with keys in `[start, end]` (within one lock), in order.
    func range(_ start: Key, _ end: Key, limit: Int = .max) throws -> [Item] {
        var out: [Item] = []
        try scan(start, end) { it in
            out.append(it)
            return out.count < limit
        }
        return out
    }

    // MARK: inodes

    func inode(_ ino: UInt64) throws -> InodeRecord {
        guard let it = try get(Keys.inode(ino)) else { throw Errno.noSuchFileOrDirectory }
        let rec: InodeRecord
        do {
            rec = try InodeRecord(decoding: it.value)
        } catch {
            log("inode \(ino): \(error)")
            throw Errno.ioError
        }
        if let why = rec.impossibility {
            log("inode \(ino): \(why); the item is damaged: run `scoutfs check`")
            throw Errno.ioError
        }
        return rec
    }

    /// Writes an inode, stamping its meta seq with the open transaction's and moving its index
    /// items along (a new inode also gets its first data seq).
    func putInode(_ ino: UInt64, _ rec: inout InodeRecord) throws {
        try moveIndex(ItemType.metaSeq, ino, from: rec.metaSeq)
        rec.metaSeq = seq
        if rec.dataSeq == 0 { try markDataChanged(ino, &rec) }
        try put(Keys.inode(ino), rec.encoded)
        // Whatever changed, a request waiting for this inode's offline data looks again.
        if waits.hasWaiters { waits.wake(ino) }
    }

    func attributes(_ ino: UInt64, _ r: InodeRecord) -> Attributes {
        Attributes(ino: ino, mode: r.mode, nlink: r.nlink, uid: r.uid, gid: r.gid, rdev: r.rdev, size: r.size,
                   blocks: (r.onlineBlocks << UInt64(Layout.dataBlockShift)) / 512,
                   atime: r.atime, mtime: r.mtime, ctime: r.ctime, crtime: r.crtime,
                   dataVersion: r.dataVersion, metaSeq: r.metaSeq, dataSeq: r.dataSeq,
                   onlineBlocks: r.onlineBlocks, offlineBlocks: r.offlineBlocks)
    }

    func allocateIno() throws -> UInt64 {
        try items.allocateInode()
    }

    func directory(_ ino: UInt64) throws -> InodeRecord {
        let r = try inode(ino)
        guard r.isDirectory else { throw Errno.notDirectory }
        return r
    }

    // MARK: lifetime of unlinked inodes

    func noteLookup(_ ino: UInt64) {
        lookupCount[ino, default: 0] += 1
    }

    func forget(_ ino: UInt64, _ n: UInt64) throws {
        guard let have = lookupCount[ino] else { return }
        if have <= n {
            lookupCount[ino] = nil
            // A dictionary never gives back its storage; once the kernel has forgotten most of
            // what it once held, rebuild the table at its present size.
            if lookupCount.capacity > 4096 && lookupCount.count < lookupCount.capacity / 8 {
                lookupCount = Dictionary(minimumCapacity: lookupCount.count * 2).merging(lookupCount) { a, _ in a }
            }
        } else {
            lookupCount[ino] = have - n
        }
        try freeIfUnused(ino)
    }

    /// Deletes an inode with no links once no handle and no kernel reference remain.
    func freeIfUnused(_ ino: UInt64) throws {
        guard unlinked.contains(ino), ino != Self.rootIno, (openCount[ino] ?? 0) == 0, (lookupCount[ino] ?? 0) == 0 else { return }
        guard let r = try? inode(ino), r.nlink == 0 else {
            unlinked.remove(ino)
            return
        }
        try deleteInode(ino)
    }

    func deleteInode(_ ino: UInt64) throws {
        unlinked.remove(ino)
        if let r = try? inode(ino) { try removeIndexItems(ino, r) }
        try truncateExtents(ino, fromBlock: 0)
        for it in try range(Keys.first(ino), Keys.last(ino)) {
            if it.key.type == ItemType.xattr && it.key.fourth == 0 { try dropTags(ofXattrItem: it) }
            try remove(it.key)
        }
        try remove(Keys.orphan(ino))
    }

    /// Inode numbers are handed out from the superblock's next number: one at or below an
    /// inode that exists would make new files overwrite old ones, so the mount refuses. A
    /// damaged block on the way only costs the check (with a log line): the mount still serves
    /// what does not depend on that block.
    func checkNextInode() throws {
        let last: Item?
        do {
            last = try store.tree(.fs).prev(from: Key.last(in: Zone.fs), in: store)
        } catch let e as StoreError where e.code == .corrupt || e.code == .stale {
            log("cannot verify the superblock's next inode number against the fs tree: \(e.message)")
            return
        }
        if let last, last.key.zone == Zone.fs, last.key.first >= store.nextIno {
            throw StoreError(.corrupt, "the superblock's next inode number \(store.nextIno) is not above inode \(last.key.first), which the fs tree holds: new files would overwrite existing ones. The superblock is damaged; run `scoutfs check`")
        }
    }
}

extension Timestamp {
    static var now: Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec))
    }
}

extension InodeRecord {
    /// Why no filesystem could have written this inode, or nil: every operation relies on a
    /// known file type and a size a file may have.
    var impossibility: String? {
        // A switch, not a set: this runs on every inode read.
        switch fileType {
        case UInt32(S_IFREG), UInt32(S_IFDIR), UInt32(S_IFLNK), UInt32(S_IFCHR), UInt32(S_IFBLK), UInt32(S_IFIFO), UInt32(S_IFSOCK):
            break
        default:
            return "mode \(String(mode, radix: 8)) has no known file type"
        }
        if size > UInt64(Int64.max) { return "size \(size) is larger than any file may be" }
        if isDirectory && nlink == 1 { return "directory with link count 1" }
        return nil
    }

    var fileType: UInt32 { mode & UInt32(S_IFMT) }
    var isDirectory: Bool { fileType == UInt32(S_IFDIR) }
    var isRegular: Bool { fileType == UInt32(S_IFREG) }
    var isSymlink: Bool { fileType == UInt32(S_IFLNK) }

    /// The `DT_*` value for readdir.
    var direntType: UInt8 { UInt8(fileType >> 12) }
}

/// Key builders for every item the filesystem writes.
enum Keys {
    static func inode(_ ino: UInt64) -> Key { Key(zone: Zone.fs, first: ino, type: ItemType.inode) }
    static func dirent(_ dir: UInt64, _ hash: UInt64, _ pos: UInt64) -> Key {
        Key(zone: Zone.fs, first: dir, type: ItemType.dirent, second: hash, third: pos)
    }
    static func readdir(_ dir: UInt64, _ pos: UInt64) -> Key { Key(zone: Zone.fs, first: dir, type: ItemType.readdir, second: pos) }
    static func backref(_ ino: UInt64, _ dir: UInt64, _ pos: UInt64) -> Key {
        Key(zone: Zone.fs, first: ino, type: ItemType.linkBackref, second: dir, third: pos)
    }
    static func symlink(_ ino: UInt64, _ nr: UInt64) -> Key { Key(zone: Zone.fs, first: ino, type: ItemType.symlink, second: nr) }
    static func xattr(_ ino: UInt64, _ hash: UInt64, _ id: UInt64, _ part: UInt8) -> Key {
        Key(zone: Zone.fs, first: ino, type: ItemType.xattr, second: hash, third: id, fourth: part)
    }
    static func extent(_ ino: UInt64, last: UInt64, length: UInt64) -> Key {
        Key(zone: Zone.fs, first: ino, type: ItemType.dataExtent, second: last, third: length)
    }
    /// An inode's entry in the meta_seq or data_seq index.
    static func seqIndex(_ type: UInt8, _ seq: UInt64, _ ino: UInt64) -> Key {
        Key(zone: Zone.inodeIndex, type: type, second: seq, third: ino)
    }
    static func orphan(_ ino: UInt64) -> Key { Key(zone: Zone.orphan, type: ItemType.orphan, second: ino) }
    /// The first and last keys of everything an inode owns.
    static func first(_ ino: UInt64) -> Key { Key(zone: Zone.fs, first: ino) }
    static func last(_ ino: UInt64) -> Key { Key(zone: Zone.fs, first: ino, type: .max, second: .max, third: .max, fourth: .max) }
}

/// The client's view of a server in the same process: plain calls.
final class InProcessLink: ServerLink {
    let server: LocalServer
    init(server: LocalServer) { self.server = server }
    var transactionSeq: UInt64 { server.transactionSeq }
    var committedSeq: UInt64 { server.committedSeq }
    func allocateInodes(_ count: UInt64) throws -> Range<UInt64> { server.allocateInodes(count) }
    func commitLogTree(rid: UInt64, _ record: LogTreeRecord, merge: Bool) throws -> LogCommit {
        try server.commitLogTree(rid: rid, record, merge: merge)
    }
}

extension FixedWidthInteger {
    /// `self + n` for a counter that came from disk (link counts, positions, versions): an
    /// overflow means the item is damaged, and the operation fails with EIO and a log line
    /// naming it instead of trapping the mount.
    func adding(_ n: Self, _ what: @autoclosure () -> String) throws -> Self {
        let (r, overflow) = addingReportingOverflow(n)
        if overflow { throw StoreError(.corrupt, "\(what()) is \(self), too large to add \(n) to; the item is damaged: run `scoutfs check`") }
        return r
    }

    /// `self - n` for a counter that came from disk; going below zero means the item is damaged.
    func subtracting(_ n: Self, _ what: @autoclosure () -> String) throws -> Self {
        let (r, overflow) = subtractingReportingOverflow(n)
        if overflow { throw StoreError(.corrupt, "\(what()) is \(self), too small to take \(n) from; the item is damaged: run `scoutfs check`") }
        return r
    }
}
