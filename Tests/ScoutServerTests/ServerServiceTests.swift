import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import ScoutStore
import ScoutTestSupport
import Synchronization
import Testing

@Suite(.serialized) struct ServerServiceTests {
    static let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)]

    /// A store and its server behind the network; nodes call it as clients 1 and 2.
    final class Fixture: Sendable {
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        nonisolated(unsafe) let store: Store
        nonisolated(unsafe) let server: LocalServer
        let storeLock = StoreLock()
        let net: NetServer
        let port: Int
        let key = ClusterKey.generate()

        init() throws {
            store = try Store.format(meta: meta, data: data, quorumSlots: ServerServiceTests.slots)
            server = LocalServer(store: store)
            let lock = storeLock
            // nonisolated(unsafe): the store is only used under `lock`.
            nonisolated(unsafe) let locked = store
            let service = ServerService(server: server, serialize: { body in try lock.withLock(locked, body) }, log: { _ in })
            net = NetServer(fsid: store.fsid, key: key, handler: service, log: { _ in })
            service.serveLocks(LockServer(links: NetLockClientLinks(net)))
            port = try net.start(host: "127.0.0.1", port: 0)
        }

        func node(_ id: ClientID) throws -> NetClient {
            try NetClient.connect(host: "127.0.0.1", port: port, fsid: store.fsid, client: id, key: key, onMessage: { _, _ in }, log: { _ in })
        }

        func call(_ c: NetClient, _ call: ServerCall) throws -> ServerAnswer {
            try ServerAnswer(decoding: c.call(call.encoded))
        }
    }

    /// A node builds its log tree in metadata blocks the server gave it over the network,
    /// commits it with a call, and reads it back through the roots the answer carries; the
    /// record is its own, not the other node's.
    @Test func aNodeCommitsALogTreeItWroteItselfThroughCalls() throws {
        let f = try Fixture()
        defer { f.net.stop() }
        let a = try f.node(1)
        let b = try f.node(2)
        defer { a.close(); b.close() }

        guard case .roots(let before) = try f.call(a, .roots) else { Issue.record("no roots"); return }
        #expect(before.seq == f.store.superblock.seq)
        #expect(before.transactionSeq == f.store.txnSeq)

        // Inode batches are whole groups and never overlap.
        guard case .inodes(let i1) = try f.call(a, .allocateInodes(count: 10)),
              case .inodes(let i2) = try f.call(b, .allocateInodes(count: 10)) else { Issue.record("no inodes"); return }
        #expect(i1.upperBound % LockRange.groupSize == 0 && i2.upperBound % LockRange.groupSize == 0)
        #expect(!i1.overlaps(i2))

        guard case .metaPool(let pool) = try f.call(a, .refillMetaPool(atLeast: 16)) else { Issue.record("no pool"); return }
        let blocks = pool.flatMap { $0.start..<$0.end }
        #expect(blocks.count >= 16)
        // The node writes its tree into those blocks itself.
        let builder = LogTreeBuilder(store: f.store, pool: blocks) { _ in throw NetError("pool ran dry in a test") }
        var tree = BTree(root: .empty, name: "log tree of client 1")
        for n in 0..<300 as Range<UInt64> {
            try tree.insert(Item(key: Key(zone: Zone.fs, first: i1.lowerBound + n % 10, type: ItemType.inode, second: n), seq: before.transactionSeq, value: [UInt8(n & 0xff)]), in: builder)
        }
        try builder.write()
        let left = LogTreeBuilder.extents(builder.pool)
        let record = LogTreeRecord(root: tree.root, items: 300, dataPool: [], metaPool: left)
        guard case .committed(let c, let after, let records) = try f.call(a, .commitLogTree(record, freed: [], freedMeta: [], merge: false)) else {
            Issue.record("no commit")
            return
        }
        builder.committedBlocks()
        #expect(c.seq > before.seq && !c.merged)
        #expect(after.seq == c.seq)
        // The answer carries the commit's records, so the node need not read them.
        #expect(records?[1] == record)
        #expect(after.logTrees != before.logTrees)
        // Recorded for node 1 alone; node 2 has none.
        #expect(try f.call(a, .recordedLogTree) == .recordedLogTree(record))
        #expect(try f.call(b, .recordedLogTree) == .recordedLogTree(nil))
        // The tree reads back from the device through the committed blocks.
        let back = try BTree(root: record.root, name: "log tree").items(in: f.store.committed)
        #expect(back.count == 300)
        #expect(back.first?.value == [0])
        #expect(Checker.check(meta: f.meta, data: f.data).problems == [])
    }

    /// A client on a node of its own (its own view of the devices, every server call over the
    /// network) and a client in the server's process: each reads what the other committed, the
    /// node's log tree merges into the fs tree, and the store checks clean.
    @Test func aClientOnAnotherNodeAndAClientBesideTheServerSeeEachOther() throws {
        let f = try Fixture()
        defer { f.net.stop() }
        func key(_ n: UInt64) -> Key { Key(zone: Zone.fs, first: 1 << 20 + n, type: ItemType.inode) }
        let local = ClientItems(store: f.store, server: f.server, rid: 1, sharesStore: true, storeLock: f.storeLock)
        let conn = try f.node(2)
        defer { conn.close() }
        let nodeStore = try NodeStore(meta: f.meta, data: f.data)
        let link = try NetServerLink(net: conn, store: nodeStore)
        let node = ClientItems(store: nodeStore, server: link, rid: 2, sharesStore: true)

        for n in 0..<400 as Range<UInt64> { try node.insert(key(n), [UInt8(n & 0xff), 2]) }
        try node.commit()
        #expect(nodeStore.roots.seq == f.store.superblock.seq, "the node reads through the commit it made")
        for n in stride(from: 0, to: 400, by: 7) as StrideTo<UInt64> {
            #expect(try local.lookup(key(n))?.value == [UInt8(n & 0xff), 2], "key \(n) from the node")
        }
        for n in 400..<800 as Range<UInt64> { try local.insert(key(n), [UInt8(n & 0xff), 1]) }
        try local.commit()
        // The node learns of the other client's commit when it asks (a lock grant will say when).
        try link.refreshRoots()
        for n in stride(from: 400, to: 800, by: 7) as StrideTo<UInt64> {
            #expect(try node.lookup(key(n))?.value == [UInt8(n & 0xff), 1], "key \(n) from beside the server")
        }
        // The node's tree merged into the fs tree: still one answer for every key, anywhere.
        try f.storeLock.withLock(f.store) { _ = try f.server.commitLogTree(rid: 2, f.server.recordedLogTree(rid: 2)!, merge: true) }
        #expect(try f.call(conn, .recordedLogTree) == .recordedLogTree(LogTreeRecord(root: .empty, items: 0, dataPool: [], metaPool: try f.server.recordedLogTree(rid: 2)!.metaPool, commits: 1)))
        try link.refreshRoots()
        let fresh = ClientItems(store: nodeStore, server: link, rid: 3, sharesStore: true)
        var seen = 0
        try fresh.forEach(from: key(0), through: key(799)) { it in
            seen += 1
            return true
        }
        #expect(seen == 800)
        #expect(Checker.check(meta: f.meta, data: f.data).problems == [])
    }

    @Test func dataPoolsComeOutOfTheFreeSpaceAndFreedBlocksGoBack() throws {
        let f = try Fixture()
        defer { f.net.stop() }
        let a = try f.node(1)
        defer { a.close() }
        guard case .dataSpace(let free0, _) = try f.call(a, .dataSpace),
              case .dataPool(let pool) = try f.call(a, .refillDataPool(atLeast: 100)),
              case .dataSpace(let free1, _) = try f.call(a, .dataSpace) else { Issue.record("no answers"); return }
        let got = pool.reduce(0) { $0 + $1.length }
        #expect(got >= 100)
        #expect(free1 == free0 - got)
        // The node gives part of it back at its next commit.
        let back = [Extent(start: pool[0].start, length: 10)]
        let rest = [Extent(start: pool[0].start + 10, length: pool[0].length - 10)] + pool.dropFirst()
        let record = LogTreeRecord(root: .empty, items: 0, dataPool: rest.filter { $0.length > 0 }, metaPool: [])
        guard case .committed = try f.call(a, .commitLogTree(record, freed: back, freedMeta: [], merge: false)),
              case .dataSpace(let free2, let pending2) = try f.call(a, .dataSpace) else { Issue.record("no commit"); return }
        #expect(free2 + pending2 == free1 + 10)
        #expect(Checker.check(meta: f.meta, data: f.data).problems == [])
    }

    @Test func malformedOrImpossibleCallsFailTheCallNotTheServer() throws {
        let f = try Fixture()
        defer { f.net.stop() }
        let a = try f.node(1)
        defer { a.close() }
        #expect { try a.call([99]) } throws: { "\($0)".contains("server call of unknown kind 99") }
        #expect { try f.call(a, .refillMetaPool(atLeast: .max)) } throws: { "\($0)".contains("metadata blocks at once") }
        // More than the device has gives what it has.
        guard case .dataSpace(let free, _) = try f.call(a, .dataSpace),
              case .dataPool(let all) = try f.call(a, .refillDataPool(atLeast: 1 << 40)) else { Issue.record("no pool"); return }
        #expect(all.reduce(0) { $0 + $1.length } == free)
        // The connection and the server are fine after it.
        guard case .roots = try f.call(a, .roots) else { Issue.record("no roots"); return }
        #expect(a.isConnected)
    }
}

/// Hooks kept in a mutex are asked on every unlink (the open-inode map) and every cache fill
/// after a grant (a node's refresher). A closure kept directly as a mutex's value grows two
/// conversion thunks at every read, so each call got slower and, after some hundred thousand,
/// overflowed the stack and killed the daemon: these calls must stay flat.
@Suite struct HookReadTests {
    @Test func theOpenInodeMapsLocalHookStaysFlatOverManyQuestions() {
        let map = OpenInodeMap()
        map.setLocal { ino, asker in ino == asker }
        var held = 0
        for i in 0..<300_000 as Range<UInt64> where map.heldElsewhere(i % 3, by: 1) { held += 1 }
        #expect(held == 100_000)
    }

    @Test func aNodeStoresRefresherStaysFlatOverManyRefreshes() throws {
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        _ = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let node = try NodeStore(meta: meta, data: data)
        let calls = Atomic(0)
        node.setRefresher { calls.add(1, ordering: .relaxed) }
        for _ in 0..<300_000 {
            node.markStale()
            try node.refreshIfStale()
        }
        #expect(calls.load(ordering: .relaxed) == 300_000)
    }
}

extension ServerServiceTests {
    /// What a node is given must survive its server: a server that takes over after a crash
    /// opens the store from the devices, and must not give the same inode numbers or blocks
    /// to anyone else.
    @Test func inodeBatchesAndPoolRefillsAreDurableBeforeTheNodeHearsOfThem() throws {
        let f = try Fixture()
        defer { f.net.stop() }
        let a = try f.node(1)
        defer { a.close() }
        guard case .inodes(let inodes) = try f.call(a, .allocateInodes(count: 10)),
              case .dataPool(let data) = try f.call(a, .refillDataPool(atLeast: 100)),
              case .metaPool(let meta) = try f.call(a, .refillMetaPool(atLeast: 10)) else {
            Issue.record("unexpected answers")
            return
        }
        // The server's process dies here: nothing else is committed. What the devices hold:
        let after = try Store.open(meta: f.meta, data: f.data)
        #expect(after.nextIno >= inodes.upperBound)
        let rec = try #require(try LocalServer(store: after).recordedLogTree(rid: 1))
        #expect(rec.dataPool == data)
        #expect(rec.metaPool == meta)
        #expect(Checker.check(meta: f.meta, data: f.data).problems == [])
    }
}

extension ServerServiceTests {
    /// A server that answers like the real one until told to die in a refill: it makes the
    /// refill (committed, as always before an answer) and then never answers.
    final class DiesInARefill: NetServerHandler {
        let inner: ServerService
        let armed = Atomic(false)
        let made = Parker()
        let release = Parker()
        init(_ inner: ServerService) { self.inner = inner }
        func connected(_ client: ClientID) { inner.connected(client) }
        func disconnected(_ client: ClientID) { inner.disconnected(client) }
        func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws { try inner.received(kind, body, from: client) }
        func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8] {
            let answer = try inner.call(body, from: client)
            switch try ServerCall(decoding: body) {
            case .refillDataPool, .refillMetaPool:
                if armed.exchange(false, ordering: .acquiringAndReleasing) {
                    made.unpark()
                    release.park()
                    throw NetError("this server died before it answered")
                }
            default: break
            }
            return answer
        }
    }

    /// A refill its server made (and committed) but died before answering is the node's all
    /// the same: the node takes what the next server's record gained as the answer rather
    /// than asking again, so the blocks are in its pool and its next commit keeps them in the
    /// record (asked again, they would stay recorded until that commit and then be leaked).
    @Test(.timeLimit(.minutes(1)), arguments: [false, true]) func aRefillWhoseAnswerDiedWithItsServerIsStillTheNodes(meta isMeta: Bool) throws {
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let key = ClusterKey.generate()
        func serve(_ store: Store, port: Int) throws -> (NetServer, DiesInARefill, Int) {
            let lock = StoreLock()
            nonisolated(unsafe) let locked = store
            let service = ServerService(server: LocalServer(store: store), serialize: { body in try lock.withLock(locked, body) }, log: { _ in })
            let handler = DiesInARefill(service)
            let net = NetServer(fsid: store.fsid, key: key, handler: handler, log: { _ in })
            service.serveLocks(LockServer(links: NetLockClientLinks(net)))
            return (net, handler, try net.start(host: "127.0.0.1", port: port))
        }
        let first = try Store.format(meta: meta, data: data, quorumSlots: Self.slots)
        let (net1, dying, port) = try serve(first, port: TestPorts.block())
        let conn = try NetClient.connect(host: "127.0.0.1", port: port, fsid: first.fsid, client: 2, key: key, onMessage: { _, _ in }, log: { _ in })
        defer { conn.close() }
        let link = try NetServerLink(net: conn, store: try NodeStore(meta: meta, data: data))
        // One refill answered, to have a pool before the one whose answer is lost.
        let had = isMeta ? LogTreeBuilder.extents(try link.refillMetaPool(rid: 2, atLeast: 16)) : try link.refillDataPool(rid: 2, atLeast: 100)

        dying.armed.store(true, ordering: .releasing)
        let got = Mutex<Result<[Extent], any Error>?>(nil)
        let caller = ScoutTestSupport.Thread {
            got.withLock { $0 = Result { isMeta ? LogTreeBuilder.extents(try link.refillMetaPool(rid: 2, atLeast: 16)) : try link.refillDataPool(rid: 2, atLeast: 100) } }
        }
        caller.start()
        dying.made.park()
        net1.stop()
        // The next server reads what the first one committed from the devices.
        let second = try Store.open(meta: meta, data: data)
        let (net2, _, _) = try serve(second, port: port)
        defer { net2.stop() }
        caller.join()
        dying.release.unpark()
        let answer = try #require(try got.withLock { $0 }?.get())
        let rec = try #require(try LocalServer(store: second).recordedLogTree(rid: 2))
        let recorded = isMeta ? rec.metaPool : rec.dataPool
        // The record holds the first refill and the lost one's answer: exactly what the node has.
        #expect(!answer.isEmpty)
        #expect(Extent.difference(recorded, removing: had + answer).isEmpty, "blocks recorded in the pool that the node never heard of: \(Extent.difference(recorded, removing: had + answer))")
        #expect(Extent.difference(had + answer, removing: recorded).isEmpty, "blocks the node has that the record does not")
        #expect(Extent.difference(had, removing: answer) == had.sorted { $0.start < $1.start }, "the lost refill's answer gave blocks the pool had already")
    }

    /// Block arithmetic the refill's recovery relies on.
    @Test func extentDifferenceCutsWhatItRemoves() {
        let e = { (s: UInt64, l: UInt64) in Extent(start: s, length: l) }
        #expect(Extent.difference([e(0, 100)], removing: [e(10, 5), e(50, 60)]) == [e(0, 10), e(15, 35)])
        #expect(Extent.difference([e(40, 10), e(0, 10)], removing: []) == [e(0, 10), e(40, 10)])
        #expect(Extent.difference([e(0, 10)], removing: [e(0, 10)]).isEmpty)
        #expect(Extent.difference([e(5, 10)], removing: [e(0, 6), e(14, 1)]) == [e(6, 8)])
        #expect(Extent.difference([e(5, 10)], removing: [e(20, 1)]) == [e(5, 10)])
    }
}
