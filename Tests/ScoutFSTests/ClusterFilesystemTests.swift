#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutNet
@testable import ScoutStore
import ScoutTestSupport
import Synchronization
import SystemPackage
import Testing

/// Several filesystem clients joined to one cluster: each has its own lock client, item
/// cache, log tree, transaction and data pool. Client 0 runs beside the server; the others
/// too, or (`overNetwork`) each on a node of its own: its own view of the devices, every
/// lock message and server call over TCP on loopback. What one client does, the others see
/// at their next call, as POSIX asks of one machine.
final class FilesystemCluster {
    let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
    let data = MemoryBlockDevice(name: "data", size: 256 << 20)
    let local: LocalCluster
    let overNetwork: Bool
    let key = ClusterKey.generate()
    private(set) var port = 0
    var clients: [Filesystem?] = []
    /// The node of each client on one (`overNetwork`).
    var nodes: [Int: NodeCluster] = [:]

    init(clients n: Int, mergeThreshold: UInt64 = 100_000, overNetwork: Bool = false) throws {
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        local = try LocalCluster(store: store, mergeThreshold: mergeThreshold, several: true)
        self.overNetwork = overNetwork
        for i in 0..<n {
            clients.append(try join(i))
            if i == 0 && overNetwork { port = try local.serve(host: "127.0.0.1", port: 0, key: key, log: { _ in }) }
        }
    }

    deinit { local.stopServing() }

    func join(_ i: Int) throws -> Filesystem {
        let options = FilesystemOptions(mergeThreshold: local.server.mergeThreshold, clientID: UInt64(i + 1))
        guard overNetwork && i > 0 else { return try Filesystem(joining: local, options: options) }
        let node = try NodeCluster(meta: meta, data: data, server: "127.0.0.1", port: port, key: key, id: UInt64(i + 1),
                                   cacheBlocks: 1024, cacheBytes: 64 << 20, log: { _ in })
        nodes[i] = node
        return try Filesystem(node: node, options: options)
    }

    subscript(_ i: Int) -> Filesystem { clients[i]! }

    /// Client `i` dies between commits and comes back with its id, as a remount does.
    func crashAndRejoin(_ i: Int) throws {
        try local.crash(self[i])
        clients[i] = nil
        clients[i] = try join(i)
    }

    /// Every client leaves cleanly; then the devices must check clean.
    func leaveAll() throws {
        for i in clients.indices {
            try clients[i]?.syncAndMerge()
            clients[i] = nil
        }
    }
}

@Suite struct ClusterFilesystemTests {
    static let root = FSCore.rootIno
    static let user = Caller(uid: 0, gid: 0)

    static func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    static func makeFile(_ fs: Filesystem, _ dir: UInt64, _ n: String, _ bytes: [UInt8]) throws -> UInt64 {
        let a = try fs.create(dir, name(n), mode: 0o644, flags: O_RDWR, caller: user)
        if !bytes.isEmpty { _ = try fs.write(a.ino, offset: 0, data: bytes) }
        try fs.release(a.ino)
        try fs.forget(a.ino, 1)
        return a.ino
    }

    static func names(_ fs: Filesystem, _ dir: UInt64) throws -> Set<String> {
        var out = Set<String>()
        var off: UInt64 = 0
        while true {
            let got = try fs.readdir(dir, offset: off, limit: 100)
            guard let last = got.last else { break }
            for e in got { out.insert(String(decoding: e.name, as: UTF8.self)) }
            off = last.nextOffset
        }
        out.subtract([".", ".."])
        return out
    }

    static func contents(_ fs: Filesystem, _ dir: UInt64, _ n: String) throws -> [UInt8] {
        let a = try fs.lookup(dir, name(n))
        defer { try? fs.forget(a.ino, 1) }
        return try fs.read(a.ino, offset: 0, count: Int(a.size) + 1)
    }

    /// A lock handed back and forth between a node and a client beside the server: the node
    /// reads what the other wrote each time, through the roots the server sent with the grant,
    /// without asking for them (a round trip per hand-over).
    @Test func aGrantBringsTheRootsThatHoldThePreviousHoldersWrites() throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: true)
        let f = try Self.makeFile(c[0], Self.root, "f", [0])
        _ = try Self.contents(c[1], Self.root, "f")
        let link = try #require(c.nodes[1]).link
        let asked = link.rootsAsked
        for i in 1...20 {
            _ = try c[0].write(f, offset: 0, data: [UInt8(2 * i)])
            #expect(try c[1].read(f, offset: 0, count: 1) == [UInt8(2 * i)])
            _ = try c[1].write(f, offset: 0, data: [UInt8(2 * i + 1)])
            #expect(try c[0].read(f, offset: 0, count: 1) == [UInt8(2 * i + 1)])
        }
        #expect(link.rootsAsked - asked <= 2, "the node asked for roots at its grants")
        try c.leaveAll()
    }

    /// A node that holds a lock reads through the roots its grant brought; meanwhile the other
    /// client's commits free the blocks of its log tree those roots reach (parents shared with
    /// the leaves it changes), and the server hands them out again. The node's next read of a
    /// block it does not cache meets a reused one: it asks for newer roots and reads again,
    /// where it once failed with EIO (two mounts creating, one of them listing). The limit
    /// bounds the hang this was without the fix; the thread sanitizer's build needs three
    /// minutes for the commits that reuse the block (9 s in a plain debug build).
    @Test(.timeLimit(.minutes(6))) func aNodeReadingThroughRootsWhoseBlocksWereReusedAsksForNewerOnes() throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: true)
        let d = try c[0].mkdir(Self.root, Self.name("d"), mode: 0o755, caller: Self.user).ino
        let busy = try c[0].mkdir(Self.root, Self.name("busy"), mode: 0o755, caller: Self.user).ino
        var made: Set<String> = []
        for i in 0..<300 {
            _ = try Self.makeFile(c[0], d, "f\(i)", [])
            made.insert("f\(i)")
        }
        try c[0].commitIfDirty()
        // The node takes the directory's lock and caches one name of it, not its listing.
        let f0 = try c[1].lookup(d, Self.name("f0"))
        try c[1].forget(f0.ino, 1)
        let node = try #require(c.nodes[1])
        let asked = node.link.rootsAsked
        let records = try node.store.committed.roots.records.get()
        let held = try #require(records.first { $0.rid == 1 }).record.root.ref
        func reused() throws -> Bool {
            let bytes = try c.meta.read(at: held.blkno << UInt64(Layout.metaBlockShift), count: Layout.metaBlockSize)
            return BlockHeader.verify(bytes, magic: BlockMagic.btree, fsid: nil, blkno: held.blkno, seq: held.seq) != .valid
        }
        var round = 0
        while try !reused() && round < 1000 {
            for i in 0..<20 { _ = try Self.makeFile(c[0], busy, "r\(round)-\(i)", [1]) }
            try c[0].commitIfDirty()
            round += 1
        }
        let wasReused = try reused()
        try #require(wasReused, "the other client's commits never reused the root the node reads through")
        // What the node cached of those roots leaves its cache, as under memory pressure.
        node.store.committed.cache.removeAll()
        #expect(try Self.names(c[1], d) == made)
        #expect(node.link.rootsAsked > asked, "the node listed through the roots it had")
        try c.leaveAll()
    }

    @Test(arguments: [false, true]) func aFileMadeOnOneClientIsReadAndWrittenOnAnother(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        let d = try c[0].mkdir(Self.root, Self.name("d"), mode: 0o755, caller: Self.user).ino
        try c[0].forget(d, 1)
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let f = try Self.makeFile(c[0], d, "f", bytes)

        let seen = try c[1].lookup(Self.root, Self.name("d"))
        #expect(seen.ino == d && seen.isDirectory)
        try c[1].forget(d, 1)
        #expect(try Self.contents(c[1], d, "f") == bytes)
        #expect(try c[1].getattr(f).size == 10_000)

        // B writes past the end; A sees the new size and bytes, and A's cached view of the
        // old size is gone.
        _ = try c[1].write(f, offset: 12_288, data: [1, 2, 3])
        #expect(try c[0].getattr(f).size == 12_291)
        let all = try Self.contents(c[0], d, "f")
        #expect(all.count == 12_291)
        #expect(Array(all[0..<10_000]) == bytes)
        #expect(all[10_000..<12_288].allSatisfy { $0 == 0 })
        #expect(Array(all[12_288...]) == [1, 2, 3])

        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    @Test(arguments: [false, true]) func aDirectoryRenamedOnOneClientMovesForTheOtherWhileItLists(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        let d = try c[0].mkdir(Self.root, Self.name("old"), mode: 0o755, caller: Self.user).ino
        try c[0].forget(d, 1)
        for i in 0..<150 { _ = try Self.makeFile(c[0], d, "n\(i)", []) }

        // B lists half, A renames the directory, B goes on from its offset.
        let first = try c[1].readdir(d, offset: 0, limit: 75)
        try c[0].rename(Self.root, Self.name("old"), Self.root, Self.name("new"))
        var rest: [String] = []
        var off = first.last!.nextOffset
        while true {
            let got = try c[1].readdir(d, offset: off, limit: 50)
            guard let last = got.last else { break }
            rest += got.map { String(decoding: $0.name, as: UTF8.self) }
            off = last.nextOffset
        }
        let listed = Set(first.map { String(decoding: $0.name, as: UTF8.self) } + rest).subtracting([".", ".."])
        #expect(listed == Set((0..<150).map { "n\($0)" }))

        #expect(throws: Errno.noSuchFileOrDirectory) { try c[1].lookup(Self.root, Self.name("old")) }
        #expect(try c[1].lookup(Self.root, Self.name("new")).ino == d)
        try c[1].forget(d, 1)
        #expect(try Self.names(c[1], Self.root) == ["new"])
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    @Test(arguments: [false, true]) func modeXattrsAndTotalsMadeOnOneClientAreSeenByTheOther(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 3, overNetwork: overNetwork)
        let f = try Self.makeFile(c[0], Self.root, "f", [])
        let g = try Self.makeFile(c[1], Self.root, "g", [])
        _ = try c[0].setattr(f, AttributeChanges(mode: 0o600))
        #expect(try c[1].getattr(f).mode & 0o7777 == 0o600)
        try c[0].setXattr(f, Self.name("user.k"), Self.name("v1"), flags: 0, caller: Self.user)
        #expect(try c[1].getXattr(f, Self.name("user.k")) == Self.name("v1"))
        try c[1].setXattr(f, Self.name("user.k"), Self.name("v2"), flags: 0, caller: Self.user)
        #expect(try c[0].getXattr(f, Self.name("user.k")) == Self.name("v2"))

        // Totals: each client adds to one sum without reading it; any client reads the sum.
        let total = Self.name("scoutfs.totl.1.2.3")
        try c[0].setXattr(f, total, Self.name("40"), flags: 0, caller: Self.user)
        try c[1].setXattr(g, total, Self.name("2"), flags: 0, caller: Self.user)
        let want = [XattrTotal(name: XattrTotalName(a: 1, b: 2, c: 3), total: 42, count: 2)]
        #expect(try c[2].xattrTotals() == want)
        try c[2].removeXattr(g, total, caller: Self.user)
        #expect(try c[0].xattrTotals() == [XattrTotal(name: XattrTotalName(a: 1, b: 2, c: 3), total: 40, count: 1)])
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    /// A client's delta to a total, not yet committed when another client's log tree holding
    /// deltas to the same total is merged, still counts once it commits: the merged sum's seq
    /// says nothing of deltas in other clients' log trees.
    @Test(arguments: [false, true]) func aTotalCountsADeltaCommittedAfterAnotherClientsMerge(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        let f = try Self.makeFile(c[0], Self.root, "f", [])
        let g = try Self.makeFile(c[1], Self.root, "g", [])
        try c[0].sync()
        try c[1].sync()
        let total = Self.name("scoutfs.totl.1.2.3")
        try c[1].setXattr(g, total, Self.name("5"), flags: 0, caller: Self.user)
        try c[0].setXattr(f, total, Self.name("7"), flags: 0, caller: Self.user)
        try c[0].syncAndMerge()
        let want = [XattrTotal(name: XattrTotalName(a: 1, b: 2, c: 3), total: 12, count: 2)]
        #expect(try c[0].xattrTotals() == want)
        #expect(try c[1].xattrTotals() == want)
        try c[1].syncAndMerge()
        #expect(try c[0].xattrTotals() == want)
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    @Test(arguments: [false, true]) func aFileUnlinkedOnOneClientLivesWhileAnotherHasItOpen(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        #expect((c[1].host is NodeCluster) == overNetwork)
        let bytes = [UInt8](repeating: 9, count: 40_000)
        let f = try Self.makeFile(c[0], Self.root, "f", bytes)
        let onB = try c[1].lookup(Self.root, Self.name("f"))
        try c[1].open(f, flags: O_RDONLY)

        try c[0].unlink(Self.root, Self.name("f"))
        #expect(throws: Errno.noSuchFileOrDirectory) { try c[0].lookup(Self.root, Self.name("f")) }
        #expect(try c[1].read(f, offset: 0, count: 50_000) == bytes)
        #expect(try c[0].getattr(f).nlink == 0)
        try c[0].sync()
        #expect(try c[1].read(f, offset: 0, count: 50_000) == bytes)

        // B's last close and forget free it: its items and data blocks go.
        try c[1].release(f)
        try c[1].forget(onB.ino, 1)
        #expect(throws: Errno.noSuchFileOrDirectory) { try c[0].getattr(f) }
        try c.leaveAll()
        let report = Checker.check(meta: c.meta, data: c.data)
        #expect(report.problems == [])
        #expect(report.dataReferenced == 0)
    }

    /// The other way round: a node unlinks what the server's own client and another node hold
    /// open; the server asks both, and the last of them to let go frees it.
    @Test func aFileUnlinkedOnANodeLivesWhileOthersHaveItOpen() throws {
        let c = try FilesystemCluster(clients: 3, overNetwork: true)
        let bytes = [UInt8](repeating: 5, count: 20_000)
        let f = try Self.makeFile(c[1], Self.root, "f", bytes)
        for i in [0, 2] {
            _ = try c[i].lookup(Self.root, Self.name("f"))
            try c[i].open(f, flags: O_RDONLY)
        }
        try c[1].unlink(Self.root, Self.name("f"))
        try c[1].sync()
        try c[0].release(f)
        try c[0].forget(f, 1)
        #expect(try c[2].read(f, offset: 0, count: 30_000) == bytes, "freed while a node still had it open")
        #expect(try c[0].getattr(f).nlink == 0)
        try c[2].release(f)
        try c[2].forget(f, 1)
        #expect(throws: Errno.noSuchFileOrDirectory) { try c[0].getattr(f) }
        try c.leaveAll()
        let report = Checker.check(meta: c.meta, data: c.data)
        #expect(report.problems == [])
        #expect(report.dataReferenced == 0)
    }

    /// What a blocking lock request's `done` reported, once it has.
    final class Outcome: Sendable {
        let result = Mutex<Errno??>(nil)
        func done(_ e: Errno?) { result.withLock { $0 = .some(e) } }
        var finished: Bool { result.withLock { $0 != nil } }
        var error: Errno? { result.withLock { $0 ?? nil } }
    }

    /// POSIX record locks and flock on one file from three clients (the third on a node when
    /// `overNetwork`): a lock held on one keeps the others out, a blocking request waits until
    /// it is let go and no longer, a signal ends the wait, and a client that leaves lets go of
    /// everything it held.
    @Test(.timeLimit(.minutes(1)), arguments: [false, true]) func recordLocksAreOneSetForTheWholeCluster(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 3, overNetwork: overNetwork)
        let f = try Self.makeFile(c[0], Self.root, "locked", [1, 2, 3])
        let end = RecordLock.toEnd

        // Client 0 holds bytes 0-99 for writing; the others cannot read-lock into them.
        try c[0].setRecordLock(f, kind: .posix, type: .write, start: 0, end: 99, owner: 10, pid: 111)
        #expect(throws: Errno.resourceTemporarilyUnavailable) {
            try c[2].setRecordLock(f, kind: .posix, type: .read, start: 50, end: 50, owner: 30, pid: 333)
        }
        try c[2].setRecordLock(f, kind: .posix, type: .read, start: 100, end: end, owner: 30, pid: 333)
        // F_GETLK names the holder; a holder on another client has no pid here.
        let seen = try c[1].testRecordLock(f, kind: .posix, type: .write, start: 0, end: end, owner: 20, pid: 222)
        #expect(seen?.start == 0 && seen?.end == 99 && seen?.type == .write && seen?.pid == 0)
        let sameClient = try c[0].testRecordLock(f, kind: .posix, type: .write, start: 0, end: 9, owner: 11, pid: 112)
        #expect(sameClient?.pid == 111, "another owner on the holder's own client sees its pid")
        #expect(try c[0].testRecordLock(f, kind: .posix, type: .write, start: 0, end: 9, owner: 10, pid: 111) == nil)
        // flock is another set of locks: POSIX locks do not keep it out.
        try c[1].setRecordLock(f, kind: .flock, type: .write, start: 0, end: end, owner: 21, pid: 222)

        // A blocking request waits while the lock is held and is granted when it goes.
        let waiter = Outcome()
        c[2].waitForRecordLock(f, kind: .posix, type: .write, start: 10, end: 19, owner: 31, pid: 334, cancel: nil,
                               done: waiter.done)
        usleep(300_000)
        #expect(!waiter.finished, "granted while another client held the bytes")
        #expect(c[2].recordLockWaiters == 1)
        try c[0].setRecordLock(f, kind: .posix, type: .unlock, start: 0, end: 9, owner: 10, pid: 111)
        usleep(300_000)
        #expect(!waiter.finished, "granted while another client still held part of the bytes")
        try c[0].releaseRecordLocks(f, kind: .posix, owner: 10)
        #expect(eventually { waiter.finished })
        #expect(waiter.error == nil)
        #expect(throws: Errno.resourceTemporarilyUnavailable) {
            try c[0].setRecordLock(f, kind: .posix, type: .read, start: 15, end: 15, owner: 10, pid: 111)
        }

        // A signal ends a wait with EINTR, and the lock is not taken.
        let cancel = WaitCancellation()
        let interrupted = Outcome()
        c[0].waitForRecordLock(f, kind: .flock, type: .read, start: 0, end: end, owner: 12, pid: 113, cancel: cancel,
                               done: interrupted.done)
        usleep(200_000)
        #expect(!interrupted.finished)
        cancel.cancel()
        #expect(eventually { interrupted.finished })
        #expect(interrupted.error == .interrupted)
        #expect(c[0].recordLockWaiters == 0)

        // A client that leaves lets go of its locks, and a waiter on another client gets them.
        let second = Outcome()
        c[0].waitForRecordLock(f, kind: .flock, type: .write, start: 0, end: end, owner: 13, pid: 114, cancel: nil,
                               done: second.done)
        usleep(200_000)
        #expect(!second.finished)
        c[1].leave()
        c.clients[1] = nil
        #expect(eventually { second.finished })
        #expect(second.error == nil)
        try c[0].releaseRecordLocks(f, kind: .flock, owner: 13)
        try c[2].releaseRecordLocks(f, kind: .posix, owner: 30)
        try c[2].releaseRecordLocks(f, kind: .posix, owner: 31)
        #expect(try c[0].testRecordLock(f, kind: .posix, type: .write, start: 0, end: end, owner: 99, pid: 1) == nil)
        #expect(c.local.recordLocks.count == 0)
        try c.leaveAll()
    }

    /// The node's connection to the server breaks again and again while it creates, writes
    /// and commits, and while the server's own client works beside it: every call and lock
    /// message goes through once, nothing is lost, and the filesystem checks clean.
    @Test(.timeLimit(.minutes(2))) func aNodeWhoseConnectionBreaksUnderLoadLosesNothing() throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: true)
        let d = try c[1].mkdir(Self.root, Self.name("d"), mode: 0o755, caller: Self.user).ino
        let node = c[1]
        let failures = Mutex<[String]>([])
        let worker = ScoutTestSupport.Thread {
            for i in 0..<400 {
                do {
                    _ = try Self.makeFile(node, d, "f\(i)", Array("node \(i)".utf8))
                    if i % 50 == 49 { try node.sync() }
                } catch {
                    failures.withLock { $0.append("f\(i): \(error)") }
                }
            }
        }
        worker.start()
        var made: Set<String> = []
        for i in 0..<40 {
            c.local.dropConnection(of: 2)
            _ = try Self.makeFile(c[0], Self.root, "s\(i)", [])
            made.insert("s\(i)")
            usleep(20_000)
        }
        worker.join()
        let reconnects = try #require(c[1].host as? NodeCluster).net.reconnects
        #expect(reconnects >= 10, "the connection broke only \(reconnects) times")
        #expect(failures.withLock { $0 } == [])
        #expect(try Self.names(c[0], d) == Set((0..<400).map { "f\($0)" }))
        #expect(try Self.contents(c[0], d, "f399") == Array("node 399".utf8))
        #expect(try Self.names(c[1], Self.root) == made.union(["d"]))
        try c[1].forget(d, 1)
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    /// A read of released data on one client waits; staging it on another wakes the reader
    /// (it learns by losing the inode group's lock) with the staged bytes.
    @Test(.timeLimit(.minutes(1)), arguments: [false, true]) func aReadOfReleasedDataWaitsForAStageOnAnotherClient(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        let contents = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let f = try Self.makeFile(c[0], Self.root, "f", contents)
        try c[0].sync()
        let version = try c[0].statMore(f).dataVersion
        try c[0].release(f, dataVersion: version, offset: 0, length: UInt64(contents.count))
        _ = try c[1].lookup(Self.root, Self.name("f"))
        let other = c[1]
        let reader = ArchiveTests.Background { () throws(Errno) in try other.read(f, offset: 4096, count: 8192) }
        var listed = false
        for _ in 0..<2000 where !listed {
            listed = c[1].dataWaiters(after: 0, 0, limit: 10) == [DataWaiter(ino: f, iblock: 1, op: .read)]
            if !listed { usleep(5000) }
        }
        #expect(listed, "the reader on the other client never waited")
        #expect(!reader.isDone)
        _ = try c[0].stage(f, dataVersion: version, offset: 0, data: contents)
        #expect(try reader.join()?.get() == Array(contents[4096..<12288]))
        try c[1].forget(f, 1)
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    @Test(arguments: [false, true]) func walkInodesOnOneClientListsTheOthersChangesAndNeverGoesBack(overNetwork: Bool) throws {
        let c = try FilesystemCluster(clients: 2, overNetwork: overNetwork)
        var seen: [IndexPosition] = []
        var next = IndexPosition(seq: 0, ino: 0)
        let end = IndexPosition(seq: .max, ino: .max)
        for round in 0..<4 {
            var made = Set<UInt64>()
            let writer = c[round % 2 == 0 ? 0 : 1]
            for i in 0..<10 { made.insert(try Self.makeFile(writer, Self.root, "r\(round)-\(i)", [1])) }
            // Not yet committed: above the stable seq, so not listed (an agent that went past
            // them could never come back for them).
            let early = try c[1].walkInodes(.metaSeq, from: next, through: end)
            #expect(made.isDisjoint(with: early.map(\.ino)), "round \(round)")
            try writer.sync()
            let got = try c[1].walkInodes(.metaSeq, from: next, through: end)
            #expect(made.isSubset(of: Set(got.map(\.ino))), "round \(round)")
            #expect(got.allSatisfy { $0 >= next })
            seen += got
            if let last = got.last {
                next = last.ino == .max ? IndexPosition(seq: last.seq + 1, ino: 0) : IndexPosition(seq: last.seq, ino: last.ino + 1)
            }
        }
        #expect(seen == seen.sorted())
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    /// The stable seq is every client's, not the walker's: a commit in flight raises its own
    /// client's seq past the seq other clients still write at, and a walk that went up to the
    /// walker's seq would pass entries that appear below it afterwards.
    @Test func theStableSeqStaysBelowEveryClientsOpenTransaction() throws {
        let meta = HeldFlushDevice(MemoryBlockDevice(name: "meta", size: 256 << 20))
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let local = try LocalCluster(store: store, several: true)
        let a = try Filesystem(joining: local, options: FilesystemOptions(clientID: 1))
        let b = try Filesystem(joining: local, options: FilesystemOptions(clientID: 2))
        let fa = try Self.makeFile(a, Self.root, "a", [])
        let fb = try Self.makeFile(b, Self.root, "b", [])
        try a.sync()
        try b.sync()

        _ = try a.setattr(fa, AttributeChanges(mode: 0o600))
        meta.hold()
        let syncing = ScoutTestSupport.Thread { try? a.sync() }
        syncing.start()
        #expect(meta.waitUntilHeld(), "the commit never reached the device")
        let stableDuringCommit = a.stableSeq
        let bWritesAt = b.cluster.items.seq
        #expect(stableDuringCommit < bWritesAt, "a's walk would stop at \(stableDuringCommit) while b still writes at \(bWritesAt)")
        meta.release()
        syncing.join()

        // What b writes now lands above what a could have walked past.
        _ = try b.setattr(fb, AttributeChanges(mode: 0o600))
        try b.sync()
        #expect(try b.getattr(fb).metaSeq > stableDuringCommit)
        let listed = try a.walkInodes(.metaSeq, from: IndexPosition(seq: stableDuringCommit + 1, ino: 0), through: IndexPosition(seq: .max, ino: .max))
        #expect(listed.contains { $0.ino == fb })
        try a.syncAndMerge()
        try b.syncAndMerge()
    }

    @Test func aCrashedClientLosesOnlyWhatItHadNotCommittedAndItsPoolComesBack() throws {
        let c = try FilesystemCluster(clients: 2)
        let kept = try Self.makeFile(c[0], Self.root, "kept", [UInt8](repeating: 1, count: 70_000))
        try c[0].sync()
        _ = try Self.makeFile(c[0], Self.root, "lost", [UInt8](repeating: 2, count: 70_000))
        #expect(c[0].cluster.items.poolBlocks > 0)
        try c.crashAndRejoin(0)
        #expect(try Self.names(c[1], Self.root) == ["kept"])
        #expect(try Self.contents(c[1], Self.root, "kept") == [UInt8](repeating: 1, count: 70_000))
        #expect(try c[0].getattr(kept).size == 70_000)
        try c.leaveAll()
        let report = Checker.check(meta: c.meta, data: c.data)
        #expect(report.problems == [])
        // One file of 70,000 bytes: 18 blocks; the crashed client's pool and the blocks of
        // "lost" are free again.
        #expect(report.dataReferenced == 18)
        #expect(report.dataPooled == 0)
    }

    /// A log tree past the merge threshold is merged by the server's own thread, a chunk and a
    /// commit at a time, while its client goes on: never inside the client's commit.
    @Test func logTreesPastTheThresholdAreMergedInTheBackground() throws {
        let c = try FilesystemCluster(clients: 2, mergeThreshold: 200)
        let server = c.local.server
        let testThread = pthread_self()
        let chunks = Mutex<(onTestThread: Int, elsewhere: Int)>((0, 0))
        // The merge thread reads both with the store lock held.
        c.local.storeLock.withLock(c.local.store) {
            server.backgroundChunk = 50
            server.commitMergeChunk = { s in
                let here = pthread_equal(pthread_self(), testThread) != 0
                chunks.withLock { here ? ($0.onTestThread += 1) : ($0.elsewhere += 1) }
                try s.commit()
            }
        }
        var made = Set<String>()
        for round in 0..<4 {
            for i in 0..<150 {
                _ = try Self.makeFile(c[0], Self.root, "r\(round)-\(i)", [])
                made.insert("r\(round)-\(i)")
            }
            try c[0].sync()
        }
        var waited = 0
        while c[0].merges == 0 && waited < 1000 {
            usleep(10_000)
            waited += 1
        }
        #expect(c[0].merges > 0, "no background merge in 10 s")
        let seen = chunks.withLock { $0 }
        #expect(seen.onTestThread == 0 && seen.elsewhere > 0, "merge chunks: \(seen)")
        #expect(try Self.names(c[1], Self.root) == made)
        #expect(try Self.names(c[0], Self.root) == made)
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    /// A node's log tree past the threshold is merged inside its commit (the server's
    /// background steps cannot keep out of a tree the node builds between calls), again and
    /// again, while the node writes and rewrites one file the other client reads.
    @Test func aNodesTreePastTheThresholdMergesInsideItsCommits() throws {
        let c = try FilesystemCluster(clients: 2, mergeThreshold: 200, overNetwork: true)
        let f = try Self.makeFile(c[1], Self.root, "f", [])
        _ = try c[1].lookup(Self.root, Self.name("f"))
        var model = [UInt8]()
        var rng = SplitMix64(seed: 7)
        for round in 0..<60 {
            for _ in 0..<20 {
                let off = Int(rng.next() % 200_000)
                let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: rng.next()), count: 1 + Int(rng.next() % 9000))
                _ = try c[1].write(f, offset: UInt64(off), data: bytes)
                if model.count < off + bytes.count { model += [UInt8](repeating: 0, count: off + bytes.count - model.count) }
                model.replaceSubrange(off..<off + bytes.count, with: bytes)
            }
            for i in 0..<10 { _ = try Self.makeFile(c[1], Self.root, "r\(round)-\(i)", []) }
            try c[1].sync()
            #expect(try c[0].read(f, offset: 0, count: model.count + 1) == model, "round \(round)")
        }
        #expect(c[0].merges > 5, "the node's tree was merged only \(c[0].merges) times")
        try c[1].forget(f, 1)
        try c.leaveAll()
        #expect(Checker.check(meta: c.meta, data: c.data).problems == [])
    }

    @Test func twoClientsCannotShareOneID() throws {
        let c = try FilesystemCluster(clients: 1)
        #expect(throws: StoreError.self) { try c.join(0) }
        _ = try Self.makeFile(c[0], Self.root, "f", [])
        #expect(try Self.names(c[0], Self.root) == ["f"])
    }
}

/// What a mount would send the kernel, recorded.
final class RecordedInvalidations: KernelInvalidation, @unchecked Sendable {
    private let pruned = Mutex<[(parent: UInt64, name: String)]>([])
    private let dropped = Mutex<[(parent: UInt64, name: String)]>([])
    var prunes: [(parent: UInt64, name: String)] { pruned.withLock { $0 } }
    var entries: [(parent: UInt64, name: String)] { dropped.withLock { $0 } }
    func invalidateAttributes(_ ino: UInt64) {}
    func invalidateInode(_ ino: UInt64) {}
    func invalidateEntry(_ parent: UInt64, _ name: [UInt8]) {
        dropped.withLock { $0.append((parent, String(decoding: name, as: UTF8.self))) }
    }
    func pruneEntry(_ parent: UInt64, _ name: [UInt8]) {
        pruned.withLock { $0.append((parent, String(decoding: name, as: UTF8.self))) }
    }
    func flush(within seconds: Double) -> Bool { true }
    func whenIdle(_ body: @escaping @Sendable () -> Void) {}
}

@Suite struct KernelInodeBoundTests {
    /// Creates and closes each of `names` in `dir` (the kernel holds each new file): their
    /// inode numbers.
    static func created(_ fs: Filesystem, _ dir: UInt64, _ names: [String]) throws -> [UInt64] {
        try names.map { n in
            let a = try fs.create(dir, Array(n.utf8), mode: 0o644, flags: O_RDWR, caller: ClusterFilesystemTests.user)
            try fs.release(a.ino)
            return a.ino
        }
    }

    /// A cluster of `clients` whose first client tells `sent` what it would have the kernel
    /// drop, its kernel's inodes bounded at `kernelInodes`, and a directory "d" made there.
    static func bounded(clients: Int, kernelInodes: Int) throws -> (cluster: FilesystemCluster, sent: RecordedInvalidations, dir: UInt64) {
        let c = try FilesystemCluster(clients: clients)
        let sent = RecordedInvalidations()
        c[0].invalidateKernelCaches(through: sent, kernelInodes: kernelInodes)
        let dir = try c[0].mkdir(ClusterFilesystemTests.root, Array("d".utf8), mode: 0o755, caller: ClusterFilesystemTests.user).ino
        return (c, sent, dir)
    }

    /// Past the bound, each inode the kernel takes has it asked to drop the oldest names it
    /// holds, files only, oldest first; the kernel's forgets bring the count back under, and
    /// a name the kernel looks up again is held (and prunable) again.
    @Test func theOldestFilesTheKernelHoldsAreAskedBackPastTheBound() throws {
        let (c, sent, dir) = try Self.bounded(clients: 1, kernelInodes: 10)
        let fs = c[0]
        var inos = try Self.created(fs, dir, (0..<8).map { "f\($0)" })
        // The directory and eight files: under the bound, nothing asked.
        #expect(sent.prunes.isEmpty)
        #expect(fs.shared.refs.kernelInodeCount == 9)
        inos += try Self.created(fs, dir, (8..<12).map { "f\($0)" })
        // 13 held: the 11th, 12th and 13th each asked for up to two of the oldest files
        // (never the directory, which came first).
        let asked = sent.prunes.map(\.name)
        #expect(asked == ["f0", "f1", "f2", "f3", "f4", "f5"], "asked \(asked)")
        #expect(sent.prunes.allSatisfy { $0.parent == dir })
        // The kernel drops them: their forgets end their records.
        for i in 0..<6 { _ = try fs.forget(inos[i], 1) }
        #expect(fs.shared.refs.kernelInodeCount == 7)
        // Looked up again, f0 is held again and the newest.
        _ = try fs.lookup(dir, Array("f0".utf8))
        #expect(fs.shared.refs.kernelInodeCount == 8)
        _ = try Self.created(fs, dir, (12..<15).map { "f\($0)" })
        // 11 held: the next oldest go, and f0 (now newer than f6…f14) does not.
        #expect(sent.prunes.dropFirst(6).map(\.name) == ["f6", "f7"], "asked \(sent.prunes.map(\.name))")
        try c.leaveAll()
    }

    /// The kernel moves its entries at a rename made here; the names kept for it follow, so
    /// the bound asks for the name the kernel has (an exchange's two cross, a replaced
    /// target's goes), and so does a lock's hand-over.
    @Test func renamesMoveTheNamesKeptForTheKernel() throws {
        let (c, sent, dir) = try Self.bounded(clients: 2, kernelInodes: 5)
        let fs = c[0]
        _ = try Self.created(fs, dir, ["a", "b", "c", "x"])
        try fs.rename(dir, Array("a".utf8), dir, Array("a2".utf8))
        try fs.rename(dir, Array("b".utf8), dir, Array("c".utf8), flags: LinuxABI.renameExchange)
        try fs.rename(dir, Array("x".utf8), dir, Array("a2".utf8))
        // Five held (the directory and four files, "a2" now the file that was "x"): the next
        // asks for the two oldest files under the names they have now.
        _ = try Self.created(fs, dir, ["e"])
        #expect(Set(sent.prunes.map(\.name)) == ["c", "b"], "asked \(sent.prunes.map(\.name))")
        // Another client writing in the directory takes its lock: every name the kernel has
        // there is dropped, and none it no longer has.
        _ = try Self.created(c[1], dir, ["from-b"])
        let names = Set(sent.entries.filter { $0.parent == dir }.map(\.name))
        #expect(names == ["a2", "b", "c", "e"], "dropped \(names)")
        try c.leaveAll()
    }
}
