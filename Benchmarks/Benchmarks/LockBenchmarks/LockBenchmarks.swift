import Benchmark
import BenchmarkThreads
import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Figures for the cluster lock manager: the cost of locking a lock already granted, how it
// scales from one thread to two on different locks against the design before the refcount
// change (everything under one global mutex), and the server's grant and ping-pong rates over
// the in-memory transport.

/// The design before the change, for comparison only: one global mutex guards the lookup map
/// and every lock's user counts, so every lock and unlock of any lock takes it.
final class GlobalMutexLocks: Sendable {
    struct Entry {
        var granted: LockMode
        var users = 0
    }

    let table = Mutex<[Key: Entry]>([:])

    func grant(_ r: LockRange, _ mode: LockMode) {
        table.withLock { $0[r.start] = Entry(granted: mode) }
    }

    @inline(never)
    func lock(_ r: LockRange, _ mode: LockMode) -> Bool {
        table.withLock { t in
            guard var e = t[r.start], e.granted.satisfies(mode) else { return false }
            e.users += 1
            t[r.start] = e
            return true
        }
    }

    @inline(never)
    func unlock(_ r: LockRange) {
        table.withLock { t in t[r.start]!.users -= 1 }
    }
}

/// One client over an in-process server with the given ranges already granted in `mode`.
func grantedClient(_ ranges: [LockRange], _ mode: LockMode) -> LockClient {
    let net = InMemoryLockNetwork(immediate: true)
    let server = LockServer(links: net.clientLinks)
    net.attachServer { c, m in server.receive(from: c, m) }
    let client = LockClient(id: 1, link: net.serverLink(for: 1))
    net.attachClient(1) { m in client.receive(m) }
    for r in ranges { client.unlock(try! client.lock(r, mode)) }
    return client
}


/// Links that drop what the server sends (grant-rate figure: the server alone).
struct DiscardLinks: LockClientLinks {
    func send(_ message: LockServerMessage, to client: ClientID) {}
}

let pairsPerThread = 1_000_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .cpuTotal], warmupIterations: 1,
                                           maxDuration: .seconds(30), maxIterations: 10)

    let ranges = [LockRange.inodeGroup(0), LockRange.inodeGroup(1 << 20)]

    Benchmark("lock+unlock of a granted lock, 1 thread", configuration: .init(scalingFactor: .mega)) { benchmark in
        let c = grantedClient(ranges, .write)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let h = try! c.lock(ranges[0], .read)
            c.unlock(h)
        }
    }

    for threads in [1, 2] {
        Benchmark("refcounted: \(threads) thread(s) × 1M lock+unlock, different locks") { benchmark in
            let c = grantedClient(ranges, .write)
            benchmark.startMeasurement()
            onThreads(threads) { t in
                for _ in 0..<pairsPerThread {
                    let h = try! c.lock(ranges[t], .read)
                    c.unlock(h)
                }
            }
        }
        Benchmark("global mutex: \(threads) thread(s) × 1M lock+unlock, different locks") { benchmark in
            let g = GlobalMutexLocks()
            for r in ranges { g.grant(r, .write) }
            benchmark.startMeasurement()
            onThreads(threads) { t in
                for _ in 0..<pairsPerThread {
                    precondition(g.lock(ranges[t], .read))
                    g.unlock(ranges[t])
                }
            }
        }
    }

    Benchmark("server: uncontended write requests granted", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let server = LockServer(links: DiscardLinks())
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            server.receive(from: 1, .request(LockMessage(key: LockRange.inodeGroup(UInt64(i) << 10).start, oldMode: .null, newMode: .write)))
        }
    }

    Benchmark("ping-pong: one lock written alternately by two clients", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let net = InMemoryLockNetwork(immediate: true)
        let server = LockServer(links: net.clientLinks)
        net.attachServer { c, m in server.receive(from: c, m) }
        let clients = (1...2).map { id in LockClient(id: ClientID(id), link: net.serverLink(for: ClientID(id))) }
        for c in clients {
            net.attachClient(c.id) { m in c.receive(m) }
            c.startWorker()
        }
        let r = LockRange.inodeGroup(0)
        benchmark.startMeasurement()
        // Each pass moves the write lock to the other client: an invalidation and a grant.
        for i in benchmark.scaledIterations {
            let c = clients[i & 1]
            c.unlock(try! c.lock(r, .write))
        }
        benchmark.stopMeasurement()
        for c in clients { c.stopWorker() }
    }

    Benchmark("ping-pong over TCP: one lock written alternately by two clients", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let (server, clients, conns) = networkCluster(clients: 2)
        let r = LockRange.inodeGroup(0)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let c = clients[i & 1]
            c.unlock(try! c.lock(r, .write))
        }
        benchmark.stopMeasurement()
        for c in clients { c.stopWorker() }
        for c in conns { c.close() }
        server.stop()
    }

    Benchmark("call round trip over TCP (64-byte call and answer)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let (server, _, conns) = networkCluster(clients: 1)
        let body = [UInt8](repeating: 7, count: 64)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            _ = try! conns[0].call(body)
        }
        benchmark.stopMeasurement()
        for c in conns { c.close() }
        server.stop()
    }
}

/// The lock server behind a network server on loopback, for the TCP figures; calls are echoed.
final class LockService: NetServerHandler {
    let server = Mutex<LockServer?>(nil)
    func connected(_ client: ClientID) {}
    func disconnected(_ client: ClientID) {}
    func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws {
        server.withLock { $0 }?.receive(from: client, try LockClientMessage(fromNetwork: body))
    }
    func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8] { body }
}

/// `n` lock clients, each over its own TCP connection to one lock server on loopback.
func networkCluster(clients n: Int) -> (NetServer, [LockClient], [NetClient]) {
    let key = ClusterKey.generate()
    let service = LockService()
    let net = NetServer(fsid: 1, key: key, handler: service, log: { _ in })
    service.server.withLock { $0 = LockServer(links: NetLockClientLinks(net)) }
    let port = try! net.start(host: "127.0.0.1", port: 0)
    var clients: [LockClient] = []
    var conns: [NetClient] = []
    for id in 1...n {
        let box = Mutex<LockClient?>(nil)
        let conn = try! NetClient.connect(host: "127.0.0.1", port: port, fsid: 1, client: ClientID(id), key: key, onMessage: { _, body in
            box.withLock { $0 }?.receive(try LockServerMessage(fromNetwork: body))
        }, log: { _ in })
        let c = LockClient(id: ClientID(id), link: NetLockServerLink(conn))
        box.withLock { $0 = c }
        c.startWorker()
        clients.append(c)
        conns.append(conn)
    }
    return (net, clients, conns)
}
