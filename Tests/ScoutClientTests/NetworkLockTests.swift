@testable import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import Synchronization
import ScoutTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The lock server's side of the network in these tests: lock messages to the lock server.
final class LockServerService: NetServerHandler {
    let server = Mutex<LockServer?>(nil)
    func connected(_ client: ClientID) {}
    func disconnected(_ client: ClientID) {}
    func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws {
        let m = try LockClientMessage(fromNetwork: body)
        server.withLock { $0 }?.receive(from: client, m)
    }
    func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8] {
        throw NetError("this test serves no calls")
    }
}

@Suite(.serialized) struct NetworkLockTests {
    /// The stress of `LockStressTests` with every lock message over TCP, each client its own
    /// connection, while the connections are broken again and again: no two clients ever hold
    /// incompatible modes at once, every lock is granted, and nothing is left half-done.
    @Test(.timeLimit(.minutes(4))) func locksOverTheNetworkStaySafeAcrossBrokenConnections() throws {
        let key = ClusterKey.generate()
        let service = LockServerService()
        let net = NetServer(fsid: 99, key: key, handler: service, log: { _ in })
        let lockServer = LockServer(links: NetLockClientLinks(net))
        service.server.withLock { $0 = lockServer }
        let port = try net.start(host: "127.0.0.1", port: 0)
        defer { net.stop() }

        var clients: [LockClient] = []
        var conns: [NetClient] = []
        for id in 1...3 as ClosedRange<ClientID> {
            let box = Mutex<LockClient?>(nil)
            let conn = try NetClient.connect(host: "127.0.0.1", port: port, fsid: 99, client: id, key: key, onMessage: { _, body in
                let m = try LockServerMessage(fromNetwork: body)
                box.withLock { $0 }?.receive(m)
            }, log: { _ in })
            let c = LockClient(id: id, link: NetLockServerLink(conn), options: LockClientOptions(idleLimit: 4, shrinkInFlightLimit: 4))
            box.withLock { $0 = c }
            c.startWorker()
            clients.append(c)
            conns.append(conn)
        }
        defer { for c in conns { c.close() } }

        let ranges = Occupancy.stressRanges
        let occ = Occupancy(ranges: ranges.count)
        let done = Flag()
        let threads = occ.lockingThreads(clients, threadsEach: 2, rounds: 400, ranges: ranges)
        let all = clients
        let breaker = Thread {
            var i = 0
            while !done.isSet {
                usleep(20_000)
                net.dropConnection(ClientID(i % 3 + 1))
                all[i % 3].shrink(2)
                i += 1
            }
        }
        breaker.start()
        for t in threads { t.start() }
        for t in threads { t.join() }
        done.set()
        breaker.join()
        for c in clients { c.stopWorker() }
        #expect(occ.violations.load(ordering: .relaxed) == 0)
        #expect(occ.operations.load(ordering: .relaxed) == 6 * 400)
        #expect(clients.map(\.statistics).reduce(0) { $0 + $1.invalidations } > 20)
        #expect(conns.map(\.reconnects).reduce(0, +) > 3, "the connections broke only \(conns.map(\.reconnects)) times")
        // Every lock given back over the network: the server forgets every node. Bounded by
        // time, not by passes: the whole suite on two vCPUs runs this ten times slower than
        // alone, and two seconds of passes once left a give-back still on its way.
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            for c in clients {
                _ = c.shrink(100)
                _ = c.processInvalidations()
            }
            if lockServer.queueStatistics.locks == 0 && clients.allSatisfy({ $0.cachedCount == 0 }) { break }
            usleep(20_000)
        }
        for c in clients { #expect(c.cachedCount == 0) }
        #expect(lockServer.queueStatistics.locks == 0)
    }

    @Test func lockMessagesForKeysThatStartNoRangeAreRefused() throws {
        let inside = Key(zone: Zone.fs, first: 5, type: ItemType.inode)
        let bad = LockClientMessage.request(LockMessage(key: inside, writeSeq: 0, oldMode: .null, newMode: .read))
        #expect(throws: FormatError.self) { try LockClientMessage(fromNetwork: bad.encoded) }
        let good = LockClientMessage.request(LockMessage(key: LockRange.inodeGroup(5).start, writeSeq: 0, oldMode: .null, newMode: .read))
        #expect(try LockClientMessage(fromNetwork: good.encoded) == good)
        let grant = LockServerMessage.grant(LockMessage(key: inside, writeSeq: 1, oldMode: .null, newMode: .write))
        #expect(throws: FormatError.self) { try LockServerMessage(fromNetwork: grant.encoded) }
    }
}
