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

/// A write, truncate or fallocate by a caller without CAP_FSETID (or a chown), which takes
/// setuid and setgid away as the kernel rules (since Linux 6.2): setuid always; setgid where
/// group execute makes it a privilege, or where the caller is not in the file's group (without
/// group execute it marks mandatory locking, which only a group member may keep).
/// `dropped` says afterwards whether a bit went, for replies that carry no attributes.
public final class SetIDKill: Sendable {
    let inGroup: @Sendable (UInt32) -> Bool
    private let droppedBits = Atomic<Bool>(false)

    /// `inGroup`: whether the caller belongs to a group (asked only for setgid files without
    /// group execute).
    public init(inGroup: @escaping @Sendable (UInt32) -> Bool) {
        self.inGroup = inGroup
    }

    public var dropped: Bool { droppedBits.load(ordering: .acquiring) }

    /// Clears the bits the rules above take from `rec`.
    func apply(_ rec: inout InodeRecord) {
        let before = rec.mode
        rec.mode &= ~UInt32(S_ISUID)
        if rec.mode & UInt32(S_ISGID) != 0 && (rec.mode & UInt32(S_IXGRP) != 0 || !inGroup(rec.gid)) {
            rec.mode &= ~UInt32(S_ISGID)
        }
        if rec.mode != before { droppedBits.store(true, ordering: .releasing) }
    }
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
    /// A truncate by a caller without CAP_FSETID, or a chown: setuid and setgid go (the
    /// kernel leaves this to the filesystem once FUSE_HANDLE_KILLPRIV_V2 is on).
    public var killSetID: SetIDKill?

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
public final class DirectoryStream: Sendable {
    /// The first readdir position this pass does not show; 0 before the pass starts. Readers
    /// of one directory share its lock, so two may set it at once (to the same position).
    private let endPosition = Atomic<UInt64>(0)
    var end: UInt64 {
        get { endPosition.load(ordering: .relaxed) }
        set { endPosition.store(newValue, ordering: .relaxed) }
    }

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
    /// POSIX ACLs kept and inherited (the original's `acl`, its default); false refuses the
    /// ACL xattrs (`noacl`).
    public var posixACLs: Bool

    public init(commitInterval: Duration = .seconds(5), dirtyBlockLimit: Int = 1024, mergeThreshold: UInt64 = 100_000,
                clientID: UInt64? = nil, posixACLs: Bool = true) {
        self.commitInterval = commitInterval
        self.dirtyBlockLimit = dirtyBlockLimit
        self.mergeThreshold = mergeThreshold
        self.clientID = clientID
        self.posixACLs = posixACLs
    }

    /// The client id of the mount of quorum slot `slot`: never 0.
    public static func clientID(slot: Int) -> UInt64 { UInt64(slot) + 1 }
}

/// A POSIX filesystem over the items of a store: inodes, directories, files, symlinks, xattrs.
///
/// The mount is a cluster client like any other: every operation first takes the cluster
/// locks covering the items it reads and writes (`locked`, through a `LockClient` against a
/// lock server in the same process), then its inode groups' local stripes (operations on one
/// group take turns, readers share), then the client's transaction shared with other
/// operations, then works in the item cache. Operations on different groups run in parallel;
/// a commit holds the transaction alone, so it never writes half an operation. Operations are
/// synchronous: they run on the caller's thread, which is a libfuse worker when mounted.
public final class Filesystem: Sendable {
    let shared: FSShared
    var cluster: ClusterClient { shared.cluster }
    /// The cluster this client is a member of: the server's process, or a node of its own.
    let host: any ClusterHost
    let localLocks = LocalLocks()
    public let options: FilesystemOptions
    var readGate: DataReadGate { cluster.readGate }
    var waits: DataWaits { shared.waits }
    /// File data is read from it outside the transaction (see `read`).
    var dataDevice: any BlockDevice { shared.data }

    /// Opens the filesystem on an open store as the only client of its own cluster (a mount):
    /// creates the root directory on first use and frees inodes that a crash left unlinked but
    /// allocated (orphans).
    public convenience init(store: Store, options: FilesystemOptions = FilesystemOptions()) throws {
        try self.init(joining: LocalCluster(store: store, mergeThreshold: options.mergeThreshold), options: options)
    }

    /// Joins `local` as one more client: its own lock client, item cache, log tree,
    /// transaction and data pool, over the store and servers it shares with the others.
    public convenience init(joining local: LocalCluster, options: FilesystemOptions = FilesystemOptions()) throws {
        try self.init(host: local, options: options)
    }

    /// The client of a node: the server is across the network (`NodeCluster`).
    public convenience init(node: NodeCluster, options: FilesystemOptions = FilesystemOptions()) throws {
        try self.init(host: node, options: options)
    }

    /// Whether POSIX ACLs are kept (FilesystemOptions.posixACLs).
    public var posixACLs: Bool { shared.posixACLs }

    init(host: any ClusterHost, options: FilesystemOptions) throws {
        let id = host.clientID(asked: options.clientID)
        let cl = try host.makeClient(id: id)
        let shared = FSShared(host: host, cluster: cl, posixACLs: options.posixACLs)
        // Before the object is whole: a refused join must not run `deinit`, which would take
        // the client already holding this id out of the cluster.
        try host.join(id, shared)
        self.host = host
        self.shared = shared
        self.options = options
        host.attach(cl)
        host.setReports { [weak shared] message in shared?.log(message) }
        if host.several {
            // A reader waiting for offline data learns of another client's stage only by
            // losing the inode group's lock to it: it looks again, and waits for the lock.
            let waits = shared.waits
            cl.addDropHook { range in
                if let group = range.inodeGroupNumber { waits.wake(inGroup: group) }
            }
        }
        // A rule changed on another node: it took the quota lock from this one.
        let quotas = shared.quotas
        cl.addDropHook { range in
            if range == .quota { quotas.invalidate() }
        }
        cl.locks.startWorker()
        do {
            if host.recovered > 0 { shared.log("merged \(host.recovered) log tree(s) left by an unclean unmount") }
            try host.checkNextInode { shared.log($0) }
            try createRootIfMissing()
            try reclaimOrphans()
        } catch {
            leaveCluster()
            throw error
        }
    }

    deinit { leaveCluster() }

    /// Set once this client is out of its cluster: its id may then belong to a new client
    /// (one that rejoined after a crash), which leaving again would take out.
    private let departed = Atomic<Bool>(false)

    /// Takes this client out of its cluster (after `syncAndMerge`, at unmount): its locks go
    /// at once. The object must not be used again.
    public func leave() { leaveCluster() }

    /// Stops the lock client and takes this client out of the cluster, once.
    func leaveCluster() {
        guard !departed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shared.recordWaits.stop()
        cluster.locks.stopWorker()
        host.leave(cluster.id)
    }

    /// How an operation uses metadata space, which decides whether it may start on a nearly
    /// full device.
    enum SpaceUse { case reads, grows, frees }

    /// Maps what an operation threw to its errno, logging what only a log line can explain.
    func errno(of error: any Error) -> Errno {
        switch error {
        case let e as Errno:
            return e
        case let e as StoreError:
            shared.log("error: \(e.message)")
            return Errno(rawValue: e.errno)
        case let e as LockCoverageError:
            shared.log("error: \(e.description)")
            return .ioError
        default:
            shared.log("error: \(error)")
            return .ioError
        }
    }

    /// One attempt of an operation under `held` (the caller's locks), with the transaction
    /// held shared.
    func runOperation<T>(held: HeldLocks, spaceCommitted: Bool = false, _ body: (FSCore) throws -> T) throws(Errno) -> T {
        if let why = host.fenced {
            shared.log("error: \(why)")
            throw .ioError
        }
        let result: Result<T, Errno> = cluster.withOperation {
            let c = FSCore(shared, held: held)
            c.spaceCommitted = spaceCommitted
            do {
                return .success(try body(c))
            } catch {
                return .failure(errno(of: error))
            }
        }
        return try result.get()
    }

    /// Commits once the open transaction has grown past its dirty limit. On a filling device
    /// transactions stay small, so that committing and merging them never needs more room
    /// than is left. With a commit thread (`Committer`), the operation only wakes it, and
    /// waits for a commit itself only past twice the limit, when writers outrun commits.
    func commitIfPastDirtyLimit() throws(Errno) {
        let (dirty, allocatable) = cluster.items.commitPressure
        let limit = min(options.dirtyBlockLimit, Int(allocatable / 8))
        guard dirty >= limit else { return }
        if dirty < 2 * limit, let committer = backgroundCommit.withLock({ $0 }) {
            committer.unpark()
            return
        }
        // Another thread may have committed meanwhile.
        guard cluster.items.dirtyBlocks >= limit else { return }
        try commitNow()
    }

    /// Wakes the commit thread (`Committer` sets it while it runs).
    let backgroundCommit = Mutex<Parker?>(nil)

    /// A commit, with its failure mapped to an errno and a log line.
    func commitNow(merge: Bool = false, returnPool: Bool = false) throws(Errno) {
        do {
            try cluster.commit(merge: merge, returnPool: returnPool)
        } catch {
            throw errno(of: error)
        }
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

    /// The core with the transaction held alone (tests, logging).
    func withCore<T>(_ body: (FSCore) throws -> T) rethrows -> T {
        try cluster.withTransaction { try body(FSCore(shared, held: HeldLocks())) }
    }

    /// Makes everything done so far durable.
    public func sync() throws(Errno) {
        try commitNow()
    }

    /// Commits if the open transaction holds changes; the mount's commit timer calls this.
    public func commitIfDirty() throws(Errno) {
        if cluster.items.hasChanges { try commitNow() }
    }

    public var fsid: UInt64 { host.layout.fsid }

    /// The seq of the server's last commit (as this client last heard, on a node).
    public var committedSeq: UInt64 { host.committedSeq(cluster.items) }

    /// Commits, merges this mount's log tree into the fs tree, hands its data pool back and
    /// commits that: what a clean unmount leaves is one fs tree and no log trees.
    public func syncAndMerge() throws(Errno) {
        try commitNow(merge: true, returnPool: true)
    }

    /// How many log tree merges the server has done since mount.
    public var merges: Int { host.merges(cluster.items) }

    /// Cluster lock traffic of this mount's lock client (status, tests).
    public var lockStatistics: (requests: Int, grants: Int, invalidations: Int, cached: Int) {
        let s = cluster.locks.statistics
        return (s.requests, s.grants, s.invalidations, cluster.locks.cachedCount)
    }

    /// What the mount has done since it started and what waits now (metrics).
    public struct Statistics: Sendable, Equatable {
        public var lockRequests = 0, lockGrants = 0, lockInvalidations = 0, lockWaits = 0, locksHeld = 0
        public var commits = 0
        /// Log tree merges the server made (0 on a node: the server counts them).
        public var merges = 0
        public var recordLockWaiters = 0
        public var dataWaiters = 0
        /// Lock hand-overs that went on before the kernel had dropped what it cached under
        /// the lock (a request held what the notification needed past the bound).
        public var kernelInvalidationTimeouts = 0

        public init() {}
    }

    public var statistics: Statistics {
        let s = cluster.locks.statistics
        var out = Statistics()
        out.lockRequests = s.requests
        out.lockGrants = s.grants
        out.lockInvalidations = s.invalidations
        out.lockWaits = s.waits
        out.locksHeld = cluster.locks.cachedCount
        out.commits = cluster.commitCount
        out.merges = host.merges(cluster.items)
        out.recordLockWaiters = shared.recordWaits.waiting
        out.dataWaiters = waits.waiting
        out.kernelInvalidationTimeouts = shared.kernelFlushTimeouts.load(ordering: .relaxed)
        return out
    }

    /// Calls `observe` with the number of items of each commit once it is durable.
    public func observeCommits(_ observe: @escaping @Sendable (_ items: Int) -> Void) {
        cluster.observeCommits(observe)
    }

    /// The mount's role in its cluster and its lock figures (`scoutfs status`).
    public var clusterStatus: ClusterStatus {
        let s = cluster.locks.statistics
        let place = host.place
        return ClusterStatus(isServer: place.isServer, connected: place.connected, nodes: place.nodes,
                             locksHeld: UInt64(cluster.locks.cachedCount), lockRequests: UInt64(s.requests), lockGrants: UInt64(s.grants),
                             lockInvalidations: UInt64(s.invalidations), memory: memoryUse)
    }

    /// The parts of the process's memory that grow with use: the block arena is the
    /// process's (every store in it), the rest this mount's.
    public var memoryUse: MemoryUse {
        let arena = BlockArena.shared
        let taken = arena.chunkCount * BlockArena.chunkSize
        return MemoryUse(blockBytes: UInt64(taken), blockBytesInUse: UInt64(max(0, taken - arena.freeSlots * BlockArena.slotSize)),
                         itemBytes: UInt64(cluster.items.cache.cachedBytes), kernelInodes: UInt64(shared.refs.kernelInodeCount))
    }

    /// Lines for the mount's log (errors a FUSE reply can only show as an errno).
    public var logSink: (@Sendable (String) -> Void)? {
        get { shared.logSink.withLock { $0 }?.call }
        set { shared.logSink.withLock { $0 = newValue.map(Callback.init) } }
    }

    private func createRootIfMissing() throws {
        var plan = LockPlan()
        plan.write(FSCore.rootIno)
        let created = try locked(.reads, plan) { c in
            guard try c.get(Keys.inode(FSCore.rootIno)) == nil else { return false }
            var root = InodeRecord(mode: UInt32(S_IFDIR) | 0o755, uid: 0, gid: 0, now: .now)
            root.nlink = 2
            c.shared.host.reserveRootInode(c.items)
            try c.putInode(FSCore.rootIno, &root)
            return true
        }
        if created { try sync() }
    }

    /// Frees the inodes a crash left unlinked but allocated (orphans no client holds), one
    /// operation each; returns how many. A client runs it when it joins, and after another
    /// client died.
    @discardableResult
    public func reclaimOrphans() throws -> Int {
        var plan = LockPlan()
        plan.add(.orphan, .read)
        let orphans = try locked(.reads, plan) { c in try c.range(Keys.orphan(0), Keys.orphan(.max)).map(\.key.second) }
        var freed = 0
        for ino in orphans {
            var p = LockPlan()
            p.mayFree(ino)
            try locked(.frees, p) { c in
                if let r = try? c.inode(ino), r.nlink > 0 {
                    try c.remove(Keys.orphan(ino))
                } else if try !c.shared.heldElsewhere(ino) {
                    try c.deleteInode(ino)
                    freed += 1
                }
            }
        }
        if freed > 0 {
            shared.log("freed \(freed) orphaned inode(s) left by an unclean unmount or a client that died")
            try sync()
        }
        return freed
    }

    /// Frees `ino` if nothing holds it any more (its last close or forget): an operation of
    /// its own, under the locks freeing takes.
    func freeIfUnused(_ ino: UInt64) throws(Errno) {
        var plan = LockPlan()
        plan.mayFree(ino)
        try locked(.frees, plan) { try $0.freeIfUnused(ino) }
    }
}

// MARK: - the core

/// What the mount's operations share besides the item cache: open and lookup references per
/// inode, and the log. Guarded by its own mutex; everything else they reach (the cache, the
/// lock client, the store through `ClientItems.withStore`) is thread-safe.
final class FSShared: Sendable {
    /// The cluster: the other clients are asked through it before an unlinked inode is freed.
    let host: any ClusterHost
    let cluster: ClusterClient
    /// The device sizes and fsid as the client started.
    let layout: SuperBlock
    // nonisolated(unsafe): set once; the device's reads and writes are thread-safe.
    nonisolated(unsafe) let data: any BlockDevice
    let waits = DataWaits()
    let refs = InodeReferences()
    let quotas = QuotaState()
    let posixACLs: Bool
    let logSink: Mutex<Callback<String, Void>?>
    /// Blocking flock and POSIX lock requests, waiting for the cluster's table to let them in.
    let recordWaits: RecordLockWaits
    /// The owners that took record locks through this client, by inode and kind, with the
    /// open files (handles) they took them through: a close whose owner took none has none
    /// to let go, and asks nobody.
    let recordLockOwners = Mutex<[RecordLockUse: Set<UInt64>]>([:])
    /// Lock hand-overs that gave up waiting for the kernel to drop what it cached (metrics).
    let kernelFlushTimeouts = Atomic<Int>(0)

    struct RecordLockUse: Hashable {
        var ino: UInt64
        var kind: RecordLockKind
        var owner: UInt64
    }

    init(host: any ClusterHost, cluster: ClusterClient, posixACLs: Bool) {
        self.host = host
        self.cluster = cluster
        self.posixACLs = posixACLs
        layout = host.layout
        data = host.dataDevice
        let sink = Mutex<Callback<String, Void>?>(nil)
        logSink = sink
        let log: @Sendable (String) -> Void = { m in sink.withLock { $0 }?.call(m) }
        recordWaits = RecordLockWaits(attempt: { [host] lock in
            Result { () throws(Errno) in try Self.askRecordLocks(host, about: lock, log: log) { try host.setRecordLock(lock, wait: true) } }
        }, log: log)
    }

    /// Asks the cluster's record lock table about `lock` (`body`): EIO, and a log line, when
    /// this client is fenced or the server cannot be asked.
    static func askRecordLocks<T>(_ host: any ClusterHost, about lock: RecordLock, log: (String) -> Void,
                                  _ body: () throws -> T) throws(Errno) -> T {
        if let why = host.fenced {
            log("error: \(why)")
            throw .ioError
        }
        do {
            return try body()
        } catch {
            log("error: record lock on inode \(lock.ino): \(error)")
            throw .ioError
        }
    }

    /// Another client holds `ino` (and now knows it is unlinked). Always false alone.
    func heldElsewhere(_ ino: UInt64) throws -> Bool {
        try host.several && host.heldElsewhere(ino, by: cluster.id)
    }

    func log(_ s: String) {
        logSink.withLock { $0 }?.call(s)
    }
}

/// The references that keep inodes alive past their last link, in shards by inode group:
/// every open, close, lookup and forget of the mount takes one, and threads working in
/// directories of their own (inode groups of their own) must not meet here. One mutex for
/// all was where two threads creating in their own directories waited most.
final class InodeReferences: Sendable {
    static let shardCount = 64
    private let shards: [Mutex<InodeRefs>] = (0..<InodeReferences.shardCount).map { _ in Mutex(InodeRefs()) }
    /// What the kernel caches, kept once other clients can change it (`trackKernel`); taken
    /// only inside a shard's mutex or alone, so an inode's count and names change together.
    private let kernel = Mutex<KernelNames?>(nil)
    private let tracksKernel = Atomic(false)
    /// Inodes the kernel holds a lookup reference to (entries of the shards' `lookupCount`).
    private let held = Atomic<Int>(0)
    /// Past this many, the kernel is asked to drop the names of the oldest it holds (0: no
    /// bound), through `pruneTarget`, in the order it took them (`age`: files only; an inode
    /// dropped and taken again, or asked for and put back, may be in it more than once).
    private let pruneLimit = Atomic<Int>(0)
    private let pruneTarget = Mutex<(any KernelInvalidation)?>(nil)
    private let age = Mutex(FIFO<UInt64>())

    /// Runs `body` on the references of `ino`'s shard.
    func withLock<T>(_ ino: UInt64, _ body: (inout InodeRefs) throws -> T) rethrows -> T {
        try shards[Int((ino / LockRange.groupSize) % UInt64(Self.shardCount))].withLock { try body(&$0) }
    }

    /// The kernel now holds one more reference to `ino`, found as `name` in `parent` if given.
    /// `prunable`: the kernel may be asked to drop it again to keep within the bound (not a
    /// directory, whose name's drop would take its subtree and any mounts on it along).
    func noteLookup(_ ino: UInt64, in parent: UInt64?, name: [UInt8]?, prunable: Bool) {
        let first = withLock(ino) { r -> Bool in
            let had = r.lookupCount[ino]
            r.lookupCount[ino] = (had ?? 0) + 1
            if tracksKernel.load(ordering: .acquiring) { kernel.withLock { $0?.note(ino, in: parent, name: name) } }
            return had == nil
        }
        guard first else { return }
        let count = held.wrappingAdd(1, ordering: .relaxed).newValue
        let limit = pruneLimit.load(ordering: .relaxed)
        guard limit > 0, prunable, name != nil else { return }
        let compact = age.withLock { a in
            a.append(ino)
            return a.count > 2 * count + 4096
        }
        if compact { compactAge() }
        if count > limit { pruneOldest(upTo: 2) }
    }

    /// Drops `n` of the kernel's references to `ino`; true when the inode may now be freed.
    func forget(_ ino: UInt64, _ n: UInt64) -> Bool {
        withLock(ino) { r in
            let (forgotten, unused) = r.forget(ino, n)
            if forgotten {
                held.subtract(1, ordering: .relaxed)
                if tracksKernel.load(ordering: .acquiring) { kernel.withLock { $0?.forget(ino) } }
            }
            return unused
        }
    }

    /// A rename made here: the kernel moved its entries as `moves` says (`KernelNames.move`).
    func renamed(_ moves: [KernelNames.Move]) {
        guard tracksKernel.load(ordering: .acquiring) else { return }
        kernel.withLock { $0?.move(moves) }
    }

    /// Inodes the kernel holds a lookup reference to.
    var kernelInodeCount: Int { held.load(ordering: .relaxed) }

    /// Bounds the inodes the kernel holds to about `limit` (0: none): past it, each inode the
    /// kernel takes has it asked, through `target`, to drop the names of up to two of the
    /// oldest it holds. The kernel drops those it does not use (an open file's stays), and its
    /// forgets end their records here: the daemon's memory per inode the kernel holds stops
    /// growing with the files touched. Needs the names (`trackKernel`).
    func prune(through target: any KernelInvalidation, limit: Int) {
        pruneTarget.withLock { $0 = target }
        pruneLimit.store(limit, ordering: .relaxed)
    }

    /// Asks the kernel to drop up to `most` of the oldest files it holds while it holds more
    /// than the bound: two for each new inode it takes, and, while it is idle, what that left
    /// over (names in use then, or whose directory a request held) — a pass from the
    /// notifier's thread (`KernelInvalidation.whenIdle`).
    func pruneOldest(upTo most: Int) {
        let limit = pruneLimit.load(ordering: .relaxed)
        guard limit > 0, let target = pruneTarget.withLock({ $0 }) else { return }
        var asked = 0
        var looked = 0
        // Inodes the kernel forgot of itself are passed over, a bounded number per call.
        while asked < most, looked < 8 * most, held.load(ordering: .relaxed) > limit {
            guard let ino = age.withLock({ $0.popFirst() }) else { return }
            looked += 1
            let names = withLock(ino) { r in
                r.lookupCount[ino] == nil ? [] : kernel.withLock { $0?.names(of: ino) ?? [] }
            }
            guard !names.isEmpty else { continue }
            for n in names { target.pruneEntry(n.parent, n.name) }
            asked += 1
            // Back in line: a name in use stays in the kernel, and is asked again once it is
            // the oldest again (the kernel's forget of one it dropped makes this a no-op).
            age.withLock { $0.append(ino) }
        }
    }

    /// Drops from `age` the inodes the kernel no longer holds, and repeats: it grows by one for
    /// every inode the kernel takes, and only a pass over the bound takes from it.
    private func compactAge() {
        age.withLock { a in
            a.keepLast { ino in withLock(ino) { $0.lookupCount[ino] != nil } }
        }
    }

    /// Keeps what the kernel caches from now on.
    func trackKernel() {
        kernel.withLock { if $0 == nil { $0 = KernelNames() } }
        tracksKernel.store(true, ordering: .releasing)
    }

    /// What the kernel caches under inode group `group`'s lock.
    func kernelCached(inGroup group: UInt64) -> (inodes: [UInt64], names: [(parent: UInt64, name: [UInt8])]) {
        kernel.withLock { $0?.cached(inGroup: group) ?? ([], []) }
    }
}

/// The references of one shard of inodes (`InodeReferences`).
struct InodeRefs {
    /// Handles open per inode: an unlinked inode lives until its last close.
    var openCount: [UInt64: Int] = [:]
    /// The kernel's lookup references per inode (FUSE's nlookup), dropped by forget.
    var lookupCount: [UInt64: UInt64] = [:]
    /// Inodes whose last link is gone while a handle or the kernel still holds them: the only
    /// ones a close or forget can free. Checking here first spares the inode read on every
    /// forget, which matters when the kernel drops a million cached inodes at once.
    var unlinked = Set<UInt64>()

    /// Nothing holds `ino` but its links, and it has none.
    func isUnused(_ ino: UInt64) -> Bool {
        unlinked.contains(ino) && (openCount[ino] ?? 0) == 0 && (lookupCount[ino] ?? 0) == 0
    }

    /// Drops `n` of the kernel's references: whether the kernel now holds none, and whether
    /// the inode may now be freed.
    mutating func forget(_ ino: UInt64, _ n: UInt64) -> (forgotten: Bool, unused: Bool) {
        guard let have = lookupCount[ino] else { return (false, false) }
        if have <= n {
            lookupCount[ino] = nil
            // A dictionary never gives back its storage; once the kernel has forgotten most of
            // what it once held, rebuild the table at its present size.
            if lookupCount.capacity > 4096 && lookupCount.count < lookupCount.capacity / 8 {
                lookupCount = Dictionary(minimumCapacity: lookupCount.count * 2).merging(lookupCount) { a, _ in a }
            }
            return (true, isUnused(ino))
        }
        lookupCount[ino] = have - n
        return (false, isUnused(ino))
    }

    /// `ino` is held here, which a client that unlinked it elsewhere asks before freeing it:
    /// if so it is marked unlinked, so the last close or forget here frees it.
    mutating func takeUnlinked(_ ino: UInt64) -> Bool {
        guard (openCount[ino] ?? 0) > 0 || (lookupCount[ino] ?? 0) > 0 else { return false }
        unlinked.insert(ino)
        return true
    }

    /// Ends one open; true when the inode may now be freed.
    mutating func close(_ ino: UInt64) -> Bool {
        if let n = openCount[ino] { openCount[ino] = n > 1 ? n - 1 : nil }
        return isUnused(ino)
    }
}

/// One operation's view of the filesystem: the shared state and the locks it holds.
final class FSCore {
    let shared: FSShared
    /// The locks of this operation (set by `Filesystem.locked`).
    let held: HeldLocks
    /// This attempt of the operation follows a commit made to free space: short of space
    /// again, it fails instead of asking for another.
    var spaceCommitted = false

    var cluster: ClusterClient { shared.cluster }
    var items: ClientItems { shared.cluster.items }
    var waits: DataWaits { shared.waits }

    static let rootIno: UInt64 = 1

    init(_ shared: FSShared, held: HeldLocks) {
        self.shared = shared
        self.held = held
    }

    func log(_ s: String) { shared.log(s) }

    /// Fails with ENOSPC unless an operation has the metadata space it may need. Short of it,
    /// a commit may help (blocks freed in the open transaction become allocatable) and so may
    /// a merge of the log tree (its tombstones free fs tree blocks): the operation asks for
    /// one (`CommitNeeded`) before it starts, and fails if it still finds too little after.
    func admit(freeing: Bool) throws {
        // Changes wait in the item cache and take their log tree blocks at commit: room for
        // those must be there too, or the commit would be the edit that runs out.
        let estimate = UInt64(items.cache.commitBlockEstimate)
        // Far from full, the figures of the last release of the store lock do: a commit
        // writing meanwhile holds the lock, and an operation must not wait for it.
        let floor = Store.operationFloor(freeing: freeing) + estimate
        if items.space.metaAllocatable >= 2 * floor + 1024 { return }
        let store = items.store
        let (enough, commitMayHelp) = items.withStore {
            (store.allocatableMetaBlocks >= floor,
             store.pendingFreeMetaBlocks > 0)
        }
        if enough { return }
        let merge = items.hasLogItems
        if !spaceCommitted && (commitMayHelp || merge) { throw CommitNeeded(merge: merge) }
        throw Errno.noSpace
    }

    // MARK: items

    /// The open transaction's seq as this operation first saw it: another client's commit may
    /// advance the store's meanwhile, and an inode's seqs must name its index items exactly.
    private(set) lazy var seq: UInt64 = items.seq

    // Every item call goes through the lock of the running operation that covers its key.

    func get(_ key: Key) throws -> Item? {
        try cluster.lookup(key, under: held.covering(key))
    }

    func put(_ key: Key, _ value: [UInt8]) throws {
        try cluster.insert(key, value, under: held.covering(key))
    }

    func remove(_ key: Key) throws {
        try cluster.delete(key, under: held.covering(key))
    }

    func addDelta(_ key: Key, _ fields: [Int64]) throws {
        try cluster.addDelta(key, fields, under: held.covering(key))
    }

    /// Calls `body` with each item of `[start, end]` (within one lock) in order until it
    /// returns false.
    func scan(_ start: Key, _ end: Key, _ body: (Item) throws -> Bool) throws {
        try cluster.forEach(from: start, through: end, under: held.covering(start), body)
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

    /// st_blocks counts offline blocks too, as the original's does: a released file looks to
    /// du and to tools that skip sparse files as big as it was, which it is once staged.
    func attributes(_ ino: UInt64, _ r: InodeRecord) -> Attributes {
        Attributes(ino: ino, mode: r.mode, nlink: r.nlink, uid: r.uid, gid: r.gid, rdev: r.rdev, size: r.size,
                   blocks: ((r.onlineBlocks &+ r.offlineBlocks) << UInt64(Layout.dataBlockShift)) / 512,
                   atime: r.atime, mtime: r.mtime, ctime: r.ctime, crtime: r.crtime,
                   dataVersion: r.dataVersion, metaSeq: r.metaSeq, dataSeq: r.dataSeq,
                   onlineBlocks: r.onlineBlocks, offlineBlocks: r.offlineBlocks)
    }

    func allocateIno(parent: UInt64, directory: Bool) throws -> UInt64 {
        try items.allocateInode(parent: parent, directory: directory)
    }

    func directory(_ ino: UInt64) throws -> InodeRecord {
        let r = try inode(ino)
        guard r.isDirectory else { throw Errno.notDirectory }
        return r
    }

    // MARK: lifetime of unlinked inodes

    /// The kernel now holds a reference to `ino`, found as `name` in `parent` when given.
    func noteLookup(_ ino: UInt64, in parent: UInt64? = nil, name: [UInt8]? = nil, directory: Bool = true) {
        shared.refs.noteLookup(ino, in: parent, name: name, prunable: !directory)
    }

    /// Deletes an inode with no links once no handle and no kernel reference remain (the
    /// caller holds the locks `LockPlan.mayFree` names). References are taken only under
    /// the inode's group lock, which this operation holds for writing, so none can appear
    /// between the check and the delete.
    func freeIfUnused(_ ino: UInt64) throws {
        guard ino != Self.rootIno, shared.refs.withLock(ino, { $0.isUnused(ino) }), try !shared.heldElsewhere(ino) else { return }
        guard let r = try? inode(ino), r.nlink == 0 else {
            shared.refs.withLock(ino) { _ = $0.unlinked.remove(ino) }
            return
        }
        try deleteInode(ino)
    }

    func deleteInode(_ ino: UInt64) throws {
        shared.refs.withLock(ino) { _ = $0.unlinked.remove(ino) }
        if let r = try? inode(ino) { try removeIndexItems(ino, r) }
        try truncateExtents(ino, fromBlock: 0)
        for it in try range(Keys.first(ino), Keys.last(ino)) {
            if it.key.type == ItemType.xattr && it.key.fourth == 0 { try dropTags(ofXattrItem: it) }
            try remove(it.key)
        }
        try remove(Keys.orphan(ino))
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
