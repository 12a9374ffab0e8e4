#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import SystemPackage
import Testing

/// The mount as a cluster client: what each operation locks, what it may touch under its
/// locks, and what giving a lock back does.
@Suite struct OperationLockTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// Waits (up to 10 s) for the lock worker to have answered what the lock client was asked.
    @discardableResult
    func eventually(_ what: String, _ done: () -> Bool) -> Bool {
        let ok = ScoutTestSupport.eventually(within: 10, done)
        #expect(ok, "\(what)")
        return ok
    }

    @Test func aCreateTakesTheGroupsAndIndexRangesItWritesAndLeavesThemCached() throws {
        let fs = try devices.mount()
        let d = try fs.mkdir(1, name("d"), mode: 0o755, caller: user)
        let f = try fs.create(d.ino, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        let locks = fs.cluster.locks
        #expect(locks.grantedMode(.inodeGroup(d.ino)) == .write)
        #expect(locks.grantedMode(.inodeGroup(f.ino)) == .write)
        let seq = fs.withCore { $0.seq }
        #expect(locks.grantedMode(.index(ItemType.metaSeq, seq: seq)) == .writeOnly)
        #expect(locks.grantedMode(.index(ItemType.dataSeq, seq: seq)) == .writeOnly)
        // The orphan zone is held as the mount's scan for orphans left it: read.
        #expect(locks.grantedMode(.orphan) == .read)
        let before = fs.lockStatistics.requests
        // Cached locks serve the next operations without a word to the server.
        for i in 0..<50 { _ = try fs.create(d.ino, name("g\(i)"), mode: 0o644, flags: O_RDWR, caller: user) }
        #expect(fs.lockStatistics.requests == before)
        // An unlink adds an orphan item: the read lock is converted to write-only.
        try fs.unlink(d.ino, name("f"))
        #expect(locks.grantedMode(.orphan) == .writeOnly)
    }

    @Test func itemCallsOutsideTheOperationsLocksAreRefused() throws {
        let log = DamagedMetadataTests.Log()
        let fs = try devices.mount()
        fs.logSink = { line in log.lines.withLock { $0.append(line) } }
        let a = try fs.create(1, name("a"), mode: 0o644, flags: O_RDWR, caller: user)
        var plan = LockPlan()
        plan.read(a.ino)
        // A change under a read lock.
        #expect(throws: Errno.ioError) {
            try fs.locked(.grows, plan) { c in try c.put(Keys.xattr(a.ino, 1, 1, 0), []) }
        }
        // A read of an inode in a group the operation did not lock.
        let other = a.ino + LockRange.groupSize
        #expect(throws: Errno.ioError) {
            try fs.locked(.reads, plan) { c in _ = try c.get(Keys.inode(other)) }
        }
        #expect(log.all.contains { $0.contains("under a read lock") })
        #expect(log.all.contains { $0.contains("no lock held covers") })
        #expect(try fs.getattr(a.ino).nlink == 1)
    }

    /// The hooks of the mount's own lock client: a lock given back from write commits what was
    /// written under it (durable without any sync) and drops its cached items, which later
    /// operations read back from the forest.
    @Test func givingLocksBackCommitsAndDropsTheirCachedItems() throws {
        let fs = try devices.mount()
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        let payload = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        _ = try fs.write(f.ino, offset: 0, data: payload)
        try fs.release(f.ino)
        let committed = fs.committedSeq
        let locks = fs.cluster.locks
        let cachedRanges = fs.cluster.items.cache.rangeCount
        #expect(cachedRanges > 0)
        // Two passes: the shrinker gives a lock used since its last look a second chance.
        for _ in 0..<2 { locks.shrink(10_000) }
        // A lock whose invalidation failed would block every later operation on it.
        guard eventually("every lock given back", { locks.cachedCount == 0 }) else { return }
        #expect(fs.committedSeq > committed)
        #expect(fs.cluster.items.cache.rangeCount < cachedRanges)
        #expect(fs.cluster.items.cache.hasDirty == false)
        #expect(try fs.read(f.ino, offset: 0, count: payload.count) == payload)
        // Durable without a sync: the hook's commit is all that wrote it.
        let again = try devices.mount()
        #expect(try again.lookup(1, name("f")).size == UInt64(payload.count))
        #expect(try again.read(f.ino, offset: 0, count: payload.count) == payload)
    }

    /// A read of an index range is a read lock on it: the writer's write-only lock goes back
    /// first, committing the entries written there.
    @Test func walkingTheOpenTransactionsRangeCommitsIt() throws {
        let fs = try devices.mount()
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        let committed = fs.committedSeq
        _ = try fs.walkInodes(.metaSeq, from: IndexPosition(seq: 0, ino: 0), through: IndexPosition(seq: .max, ino: .max))
        #expect(fs.committedSeq > committed)
        // The next walk sees the entry the commit made final.
        let all = try fs.walkInodes(.metaSeq, from: IndexPosition(seq: 0, ino: 0), through: IndexPosition(seq: .max, ino: .max))
        #expect(all.contains { $0.ino == f.ino })
        // And the writer takes its write-only lock back for the next change.
        _ = try fs.create(1, name("g"), mode: 0o644, flags: O_RDWR, caller: user)
        let seq = fs.withCore { $0.seq }
        #expect(fs.cluster.locks.grantedMode(.index(ItemType.metaSeq, seq: seq)) == .writeOnly)
    }
}

extension OperationLockTests {
    /// Fills the rest of the current inode group, so the next inode comes from a new group.
    func nextGroup(_ fs: Filesystem, _ dir: UInt64, _ tag: String) throws {
        var last = try fs.create(dir, name("\(tag)-0"), mode: 0o644, flags: O_RDWR, caller: user).ino
        var i = 1
        while (last + 1) % LockRange.groupSize != 0 {
            last = try fs.create(dir, name("\(tag)-\(i)"), mode: 0o644, flags: O_RDWR, caller: user).ino
            i += 1
        }
    }

    /// A directory moving between directories is checked against every ancestor of its new
    /// parent: those in other inode groups are locked (one level per round) before the walk.
    @Test func aRenameLocksEveryAncestorItsCycleCheckReads() throws {
        let log = DamagedMetadataTests.Log()
        let fs = try devices.mount()
        fs.logSink = { line in log.lines.withLock { $0.append(line) } }
        let a = try fs.mkdir(1, name("a"), mode: 0o755, caller: user)
        try nextGroup(fs, 1, "pad1")
        let b = try fs.mkdir(a.ino, name("b"), mode: 0o755, caller: user)
        try nextGroup(fs, 1, "pad2")
        let c = try fs.mkdir(b.ino, name("c"), mode: 0o755, caller: user)
        try nextGroup(fs, 1, "pad3")
        let m = try fs.mkdir(1, name("m"), mode: 0o755, caller: user)
        #expect(Set([a.ino, b.ino, c.ino, m.ino].map { $0 / LockRange.groupSize }).count == 4)
        // Give the locks back, so none of the ancestors' groups is held when the rename starts.
        for _ in 0..<2 { fs.cluster.locks.shrink(10_000) }
        guard eventually("every lock given back", { fs.cluster.locks.cachedCount == 0 }) else { return }
        try fs.rename(1, name("m"), c.ino, name("m"))
        #expect(try fs.lookup(c.ino, name("m")).ino == m.ino)
        // And the cycle is found through groups it had to lock.
        #expect(throws: Errno.invalidArgument) { try fs.rename(1, name("a"), m.ino, name("a")) }
        #expect(log.all.filter { $0.contains("no lock held") } == [])
    }
}
