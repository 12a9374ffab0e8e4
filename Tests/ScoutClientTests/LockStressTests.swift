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

/// Who holds each range right now, by client: the users themselves record it, so an
/// incompatible overlap between clients shows up whatever the lock code believes. (Users of one
/// client share its grant; keeping them apart is the filesystem's business, not the cluster's.)
final class Occupancy: Sendable {
    final class Slot: Sendable {
        /// Users per client and mode.
        let counts = Mutex<[ClientID: [LockMode: Int]]>([:])
    }

    let slots: [Slot]
    let violations = Atomic<Int>(0)
    /// Lock and unlock pairs `lockingThreads` completed.
    let operations = Atomic<Int>(0)

    init(ranges: Int) { slots = (0..<ranges).map { _ in Slot() } }

    func enter(_ i: Int, _ client: ClientID, _ mode: LockMode) {
        slots[i].counts.withLock { c in
            c[client, default: [:]][mode, default: 0] += 1
            for (other, modes) in c where other != client {
                for (m, n) in modes where n > 0 && !LockMode.compatibleAcrossClients(m, mode) {
                    violations.add(1, ordering: .relaxed)
                }
            }
        }
    }

    func leave(_ i: Int, _ client: ClientID, _ mode: LockMode) {
        slots[i].counts.withLock { c in c[client]![mode]! -= 1 }
    }

    /// The ranges the stress tests lock: six inode groups and two zone-wide ranges.
    static let stressRanges = (0..<6).map { LockRange.inodeGroup(UInt64($0) * 1024) } + [LockRange.orphan, LockRange.index(ItemType.dataSeq, seq: 0)]

    /// `threadsEach` threads per client (not started), each locking and unlocking `rounds`
    /// random ranges in random modes (six reads, three writes, one write-only in ten), seeded
    /// by client and thread, recording every holder here and counting each pair.
    func lockingThreads(_ clients: [LockClient], threadsEach: Int, rounds: Int, ranges: [LockRange]) -> [Thread] {
        var threads: [Thread] = []
        for (ci, c) in clients.enumerated() {
            for t in 0..<threadsEach {
                let seed = UInt64(ci * 10 + t + 1)
                threads.append(Thread { [self] in
                    var rng = SplitMix64(seed: seed)
                    for _ in 0..<rounds {
                        let i = Int.random(in: 0..<ranges.count, using: &rng)
                        let roll = Int.random(in: 0..<10, using: &rng)
                        let mode: LockMode = roll < 6 ? .read : roll < 9 ? .write : .writeOnly
                        let h = try! c.lock(ranges[i], mode)
                        enter(i, c.id, mode)
                        if Int.random(in: 0..<4, using: &rng) == 0 { sched_yield() }
                        leave(i, c.id, mode)
                        c.unlock(h)
                        operations.add(1, ordering: .relaxed)
                    }
                })
            }
        }
        return threads
    }
}

@Suite struct LockStressTests {
    /// Threads of several clients lock and unlock random ranges in random modes while each
    /// client's worker runs invalidations and another thread keeps shrinking. Users of one
    /// client never see another client's incompatible user at the same time; everything ends.
    @Test(.timeLimit(.minutes(2))) func threadsOfSeveralClientsStaySafe() throws {
        let cl = LockCluster(clients: 3, immediate: true, options: LockClientOptions(idleLimit: 4, shrinkInFlightLimit: 4))
        for c in cl.clients { c.startWorker() }
        let ranges = Occupancy.stressRanges
        let occ = Occupancy(ranges: ranges.count)
        let done = Flag()
        let threads = occ.lockingThreads(cl.clients, threadsEach: 3, rounds: 1500, ranges: ranges)
        let shrinker = Thread {
            var i = 0
            while !done.isSet {
                cl.clients[i % 3].shrink(2)
                i += 1
                usleep(200)
            }
        }
        shrinker.start()
        for t in threads { t.start() }
        for t in threads { t.join() }
        done.set()
        shrinker.join()
        for c in cl.clients { c.stopWorker() }
        #expect(occ.violations.load(ordering: .relaxed) == 0)
        #expect(occ.operations.load(ordering: .relaxed) == 9 * 1500)
        let st = cl.clients.map(\.statistics)
        #expect(st.reduce(0) { $0 + $1.invalidations } > 100)
        #expect(st.reduce(0) { $0 + $1.shrinkRequests } > 0)
        // Nothing left half-done on the server.
        let q = cl.server.queueStatistics
        #expect(q.queuedRequests == 0 && q.outstandingInvalidations == 0)
        // Every lock given back: the server forgets every node, however the last uses raced.
        for c in cl.clients {
            // The workers have stopped: the server's invalidations of the shrunk grants are run here.
            for _ in 0..<20 where c.cachedCount > 0 {
                _ = c.shrink(100)
                _ = c.processInvalidations()
            }
            #expect(c.cachedCount == 0)
        }
        #expect(cl.server.queueStatistics.locks == 0)
    }

    /// One client, many threads on few locks: the per-lock paths under contention, with lookups
    /// racing removals (shrink gives locks back while other threads take them again).
    @Test(.timeLimit(.minutes(2))) func threadsOfOneClientRaceRemoval() throws {
        let cl = LockCluster(clients: 1, immediate: true, options: LockClientOptions(idleLimit: 2, shrinkInFlightLimit: 8))
        let c = cl.clients[0]
        c.startWorker()
        let ranges = (0..<4).map { LockRange.inodeGroup(UInt64($0) * 1024) }
        let held = Atomic<Int>(0)
        var threads: [Thread] = []
        for t in 0..<4 {
            threads.append(Thread {
                var rng = SplitMix64(seed: UInt64(100 + t))
                for n in 0..<4000 {
                    let h = try! c.lock(ranges.randomElement(using: &rng)!, .read)
                    held.add(1, ordering: .relaxed)
                    held.subtract(1, ordering: .relaxed)
                    c.unlock(h)
                    if n % 16 == 0 { c.shrink(4) }
                }
            })
        }
        for t in threads { t.start() }
        for t in threads { t.join() }
        c.stopWorker()
        c.processInvalidations()
        #expect(c.statistics.freed > 0)
        #expect(c.cachedCount <= 4)
        for r in ranges {
            if let refs = c.references(r) { #expect(refs >= 2 && refs <= 3) }
        }
    }
}
