@testable import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import ScoutStore
import ScoutTestSupport
import Testing

/// A memory device whose writes can be made to fail, as a dying disk's do.
final class FailableDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: `failWrites` is set by the test thread between operations.
    let inner: MemoryBlockDevice
    var failWrites = false
    init(_ inner: MemoryBlockDevice) { self.inner = inner }
    var name: String { inner.name }
    var size: UInt64 { inner.size }
    func read(at offset: UInt64, count: Int) throws -> [UInt8] { try inner.read(at: offset, count: count) }
    func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        if failWrites { throw StoreError(.io, "\(name): write failed (injected)") }
        try inner.write(at: offset, bytes)
    }
    func flush() throws {}
}

/// N cluster clients, each with its own lock client, item cache and log tree, over one lock
/// server and one item server sharing one store: the shape the network will be put under.
/// Driven from one thread: locks are taken by pumping the lock network until granted.
final class ItemCluster {
    let meta = FailableDevice(MemoryBlockDevice(name: "meta", size: 256 << 20))
    let data = MemoryBlockDevice(name: "data", size: 256 << 20)
    let store: Store
    let server: LocalServer
    let net: LockCluster
    var clients: [ClusterClient] = []
    var rng: SplitMix64

    init(clients n: Int, seed: UInt64 = 1, mergeThreshold: UInt64 = 100_000) throws {
        store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        server = LocalServer(store: store, mergeThreshold: mergeThreshold)
        net = LockCluster(clients: n)
        rng = SplitMix64(seed: seed)
        for i in 0..<n { clients.append(makeClient(i)) }
    }

    private func makeClient(_ i: Int) -> ClusterClient {
        ClusterClient(id: net.clients[i].id, locks: net.clients[i], store: store, server: server)
    }

    /// Locks on client `c`, delivering messages and running every client's invalidations
    /// (their hooks commit and drop caches) until the grant arrives.
    func lock(_ c: Int, _ range: LockRange, _ mode: LockMode) throws -> LockHandle {
        let p = try net.clients[c].start(range, mode)
        var rounds = 0
        while p.handle == nil {
            net.pump(&rng)
            rounds += 1
            if rounds > 1000 { throw LockCoverageError(description: "lock \(range) \(mode) on client \(c) never granted") }
        }
        return p.handle!
    }

    func unlock(_ c: Int, _ h: LockHandle) {
        net.clients[c].unlock(h)
    }

    /// Runs `body` on client `c` under one lock, with its transaction held.
    func with<T>(_ c: Int, _ range: LockRange, _ mode: LockMode, _ body: (ClusterClient, LockHandle) throws -> T) throws -> T {
        let h = try lock(c, range, mode)
        defer { unlock(c, h) }
        return try clients[c].withTransaction { try body(clients[c], h) }
    }

    /// Client `c` dies between commits: its locks are gone, its uncommitted changes with it;
    /// the server merges the log tree it committed, and the client comes back with its id.
    func crash(_ c: Int) throws {
        let id = net.clients[c].id
        net.net.detachClient(id)
        net.server.clientGone(id)
        try server.recoverLogTree(rid: id)
        let fresh = LockClient(id: id, link: net.net.serverLink(for: id))
        net.net.attachClient(id) { m in fresh.receive(m) }
        net.clients[c] = fresh
        clients[c] = makeClient(c)
        net.pump(&rng)
    }
}

private func key(_ ino: UInt64, _ n: UInt64) -> Key { Key(zone: Zone.fs, first: ino, type: ItemType.dirent, second: n) }
private func value(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite struct ClusterClientTests {
    @Test func aChangeOnOneClientIsSeenByAnotherOnceItTakesTheLock() throws {
        let cl = try ItemCluster(clients: 2)
        let g = LockRange.inodeGroup(5)
        try cl.with(0, g, .write) { c, h in try c.insert(key(5, 1), value("a"), under: h) }
        // B's read lock makes A commit and come down to read; B then reads the forest.
        let seen = try cl.with(1, g, .read) { c, h in try c.lookup(key(5, 1), under: h)?.value }
        #expect(seen == value("a"))
        #expect(cl.clients[0].commitCount == 1)
        #expect(cl.net.clients[0].grantedMode(g) == .read)
        // B writes: A is asked down to null and drops what it cached.
        try cl.with(1, g, .write) { c, h in
            try c.delete(key(5, 1), under: h)
            try c.insert(key(5, 2), value("b"), under: h)
        }
        #expect(cl.net.clients[0].grantedMode(g) == nil || cl.net.clients[0].grantedMode(g) == .null)
        let afterB = try cl.with(0, g, .read) { c, h in
            var names: [Key] = []
            try c.forEach(from: key(5, 0), through: key(5, .max), under: h) { names.append($0.key); return true }
            return names
        }
        #expect(afterB == [key(5, 2)])
        #expect(cl.clients[1].commitCount == 1)
    }

    @Test func itemCallsOutsideTheirLockAreRefused() throws {
        let cl = try ItemCluster(clients: 1)
        let g = LockRange.inodeGroup(5)
        try cl.with(0, g, .read) { c, h in
            #expect(throws: LockCoverageError.self) { try c.insert(key(5, 1), [], under: h) }
            #expect(throws: LockCoverageError.self) { _ = try c.lookup(key(2000, 1), under: h) }
        }
        try cl.with(0, LockRange.orphan, .writeOnly) { c, h in
            let k = Key(zone: Zone.orphan, type: ItemType.orphan, second: 9)
            try c.insert(k, [], under: h)
            #expect(throws: LockCoverageError.self) { _ = try c.lookup(k, under: h) }
        }
        #expect(!cl.clients[0].items.cache.hasDirty(in: g))
    }

    /// A's older version and B's newer one sit in two log trees; whichever is merged first,
    /// the fs tree ends with B's.
    @Test(arguments: [false, true])
    func theNewerVersionWinsWhateverTheMergeOrder(bFirst: Bool) throws {
        let cl = try ItemCluster(clients: 2)
        let g = LockRange.inodeGroup(7)
        try cl.with(0, g, .write) { c, h in try c.insert(key(7, 1), value("old"), under: h) }
        try cl.with(1, g, .write) { c, h in try c.insert(key(7, 1), value("new"), under: h) }
        try cl.clients[1].commit()
        for rid in bFirst ? [cl.net.clients[1].id, cl.net.clients[0].id] : [cl.net.clients[0].id, cl.net.clients[1].id] {
            try cl.server.recoverLogTree(rid: rid)
        }
        #expect(try cl.store.lookup(key(7, 1), in: .fs)?.value == value("new"))
    }

    @Test func aFailedCommitLeavesTheInvalidationUnanswered() throws {
        let cl = try ItemCluster(clients: 2)
        let g = LockRange.inodeGroup(3)
        try cl.with(0, g, .write) { c, h in try c.insert(key(3, 1), value("x"), under: h) }
        // The server's next commit fails the way a dying device fails it.
        cl.meta.failWrites = true
        let p = try cl.net.clients[1].start(g, .read)
        cl.net.pump(&cl.rng)
        #expect(p.handle == nil, "B must not get the lock: A's changes are not durable")
        #expect(cl.net.clients[0].failedInvalidations.count == 1)
        #expect(cl.net.clients[0].grantedMode(g) == .write)
    }

    /// Random changes, reads and walks by several clients under their locks, with commits,
    /// lock shrinking, merges and clients dying at random, against a model. What any client
    /// reads must always be the model; at the end the devices pass `check`.
    @Test(arguments: [11, 12, 13, 14, 15])
    func randomClientsAgreeWithAModel(seed: UInt64) throws {
        let n = 3
        let cl = try ItemCluster(clients: n, seed: seed, mergeThreshold: 150)
        var rng = SplitMix64(seed: seed &* 7919)
        var model: [Key: [UInt8]] = [:]
        // What each client changed since its last commit, with the value before: a crash puts
        // that back (nobody else can have seen it, they would have needed the lock).
        var uncommitted = [[Key: [UInt8]?]](repeating: [:], count: n)
        let groups: [UInt64] = [0, 1024, 2048, 3072]
        var crashes = 0
        var steps = 0
        for step in 0..<3000 {
            steps = step
            let c = Int.random(in: 0..<n, using: &rng)
            let g = groups.randomElement(using: &rng)!
            let range = LockRange.inodeGroup(g)
            let k = key(g + UInt64.random(in: 0..<4, using: &rng), UInt64.random(in: 0..<12, using: &rng))
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<35:
                let v: [UInt8]? = Bool.random(using: &rng) ? value("\(step)") : nil
                try cl.with(c, range, .write) { cc, h in
                    if let v { try cc.insert(k, v, under: h) } else { try cc.delete(k, under: h) }
                }
                if uncommitted[c].index(forKey: k) == nil { uncommitted[c][k] = .some(model[k]) }
                model[k] = v
            case 35..<65:
                let mode: LockMode = Bool.random(using: &rng) ? .read : .write
                let got = try cl.with(c, range, mode) { cc, h in try cc.lookup(k, under: h)?.value }
                #expect(got == model[k], "seed \(seed) step \(step): client \(c) reads \(k)")
            case 65..<80:
                let got = try cl.with(c, range, .read) { cc, h in
                    var keys: [Key] = []
                    try cc.forEach(from: range.start, through: range.end, under: h) { keys.append($0.key); return true }
                    return keys
                }
                let want = model.keys.filter { range.contains($0) }.sorted()
                let same = got == want
                #expect(same, "seed \(seed) step \(step): client \(c) walks group \(g): \(got.count) keys, the model has \(want.count)")
            case 80..<88:
                try cl.clients[c].commit()
            case 88..<96:
                cl.net.clients[c].shrink(Int.random(in: 1...4, using: &rng))
                cl.net.pump(&cl.rng)
            default:
                for (k, before) in uncommitted[c] { model[k] = before }
                try cl.crash(c)
                crashes += 1
            }
            for i in 0..<n where !cl.clients[i].items.cache.hasDirty { uncommitted[i] = [:] }
        }
        #expect(crashes > 0 && steps == 2999)
        for c in 0..<n { try cl.clients[c].commit() }
        for c in 0..<n { try cl.server.recoverLogTree(rid: cl.net.clients[c].id) }
        var fs: [Key: [UInt8]] = [:]
        try cl.store.tree(.fs).forEach(in: cl.store) { it in
            if it.key.zone == Zone.fs, !it.isDeletion { fs[it.key] = it.value }
            return true
        }
        #expect(fs == model, "seed \(seed): the fs tree after every merge differs from the model")
        let report = Checker.check(meta: cl.meta, data: cl.data)
        #expect(report.isClean, "seed \(seed): \(report.problems.prefix(5))")
    }
}
