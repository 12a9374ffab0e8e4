@testable import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import ScoutTestSupport
import Synchronization

/// Clients and a server over the in-memory network, driven by hand.
final class LockCluster: @unchecked Sendable {
    // @unchecked: tests drive a cluster from one thread at a time; `server` is only replaced
    // between deliveries, and the network's handlers read it through the mutex.
    let net: InMemoryLockNetwork
    final class ServerBox: Sendable {
        let server: Mutex<LockServer>
        init(_ s: LockServer) { server = Mutex(s) }
    }
    let current: ServerBox
    var clients: [LockClient] = []
    var restarts = 0

    var server: LockServer { current.server.withLock { $0 } }

    init(clients n: Int, immediate: Bool = false, options: LockClientOptions = LockClientOptions()) {
        net = InMemoryLockNetwork(immediate: immediate)
        current = ServerBox(LockServer(links: net.clientLinks))
        net.attachServer { [current] c, m in
            let s = current.server.withLock { $0 }
            s.receive(from: c, m)
        }
        for i in 0..<n {
            let id = ClientID(i + 1)
            let c = LockClient(id: id, link: net.serverLink(for: id), options: options)
            net.attachClient(id) { m in c.receive(m) }
            clients.append(c)
        }
    }

    /// Delivers messages (oldest first, or at random with `rng`) and runs invalidations until
    /// nothing moves.
    func pump(_ rng: inout SplitMix64) {
        while true {
            var moved = false
            while net.deliverOne(using: &rng) { moved = true }
            for c in clients where c.processInvalidations() > 0 { moved = true }
            if !moved && net.inFlight == 0 { return }
        }
    }

    func pump() {
        var rng = SplitMix64(seed: 1)
        pump(&rng)
    }

    /// Replaces the server with a new one that recovers every client, losing messages in flight.
    func restartServer(startSeq: UInt64, now: UInt64 = 0, timeout: UInt64 = 30_000_000_000) {
        net.dropAll()
        let ids = Set(clients.map(\.id))
        let s = LockServer(links: net.clientLinks, term: UInt64(restarts + 2), startSeq: startSeq, recovering: ids, now: now,
                           options: LockServerOptions(recoveryTimeoutNanoseconds: timeout))
        current.server.withLock { $0 = s }
        restarts += 1
        s.startRecovery()
        for c in clients { c.resendRequests() }
    }
}

/// A lock taken through the non-blocking path, for single-threaded tests.
final class Pending: @unchecked Sendable {
    // @unchecked: set by the completion, read by the test on the same thread after pumping.
    var handle: LockHandle?
    func set(_ h: LockHandle) { handle = h }
}

extension LockClient {
    /// Starts a lock; the returned box holds the handle once granted.
    func start(_ range: LockRange, _ mode: LockMode) throws -> Pending {
        let p = Pending()
        if let h = try acquire(range, mode, { h in p.set(h) }) { p.handle = h }
        return p
    }
}

/// A lock range of its own for tests that need ranges the helpers do not make.
func testRange(_ a: UInt64, _ b: UInt64) -> LockRange {
    LockRange(start: Key(zone: Zone.fs, first: a), end: Key(zone: Zone.fs, first: b))
}

/// A flag one thread sets and another checks.
final class Flag: Sendable {
    private let value = Atomic(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}
