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

/// Several clients and one server over the in-memory network, driven one random step at a time
/// from a seed: users lock and unlock, messages about different locks arrive out of order,
/// invalidation workers and shrinking run at random moments, and the server restarts and
/// recovers. After every step (and inside every invalidation callback) the checks run:
///
/// - no two clients hold incompatible modes of one lock (counting the old mode of an
///   invalidation still running);
/// - data written under a lock has been written back before any other client can read it;
/// - a write grant's seq is above the seq of every earlier write or write-only grant of that
///   lock, across server restarts (what recovery's seq raise must keep: the restarted server
///   only knows the last durable seq, which covers locks given back, since giving a lock back
///   commits);
/// - every request is granted within a bound (no starvation), and at the end every user gets
///   its lock (no deadlock).
///
/// A failure names its seed; `LOCK_SIM_SEED=<n>` replays just that one.
final class LockSimulation: @unchecked Sendable {
    // @unchecked: a simulation runs on one thread; the invalidation hooks it registers are
    // called synchronously from `processInvalidations` on that thread.
    struct Task {
        var client: Int
        var range: LockRange
        var mode: LockMode
        var started: Int
        let pending: Pending
    }

    let seed: UInt64
    var rng: SplitMix64
    let cluster: LockCluster
    let ranges: [LockRange] = [
        LockRange.inodeGroup(0), LockRange.inodeGroup(1024), LockRange.inodeGroup(2048),
        LockRange.index(ItemType.metaSeq, seq: 0), LockRange.orphan, LockRange.rename,
    ]
    var tasks: [Task] = []
    let trace = getenv("LOCK_SIM_TRACE") != nil
    var dirty: [Set<Key>]
    var step = 0
    var failures: [String] = []
    var maxWait = 0
    let waitBound: Int
    var grantsSeen = 0

    init(seed: UInt64, clients: Int = 4, waitBound: Int = 20_000) {
        self.seed = seed
        rng = SplitMix64(seed: seed)
        // A small idle limit keeps locks being given back and re-requested.
        cluster = LockCluster(clients: clients, options: LockClientOptions(idleLimit: 3, shrinkInFlightLimit: 2))
        dirty = Array(repeating: [], count: clients)
        self.waitBound = waitBound
        if trace { cluster.net.setTap { [unowned self] line in print("step \(self.step): \(line)") } }
        for (i, c) in cluster.clients.enumerated() {
            c.addInvalidationHook { [unowned self] range, from, to in
                self.check("inside an invalidation of \(range.start) on client \(i + 1)")
                if from.canWrite {
                    self.dirty[i].remove(range.start)
                    if let seq = self.cluster.clients[i].inspect(range)?.writeSeq { self.givenBackMax = max(self.givenBackMax, seq) }
                }
            }
        }
    }

    func fail(_ what: String) {
        if failures.count < 5 { failures.append("seed \(seed) step \(step): \(what)") }
    }

    func check(_ when: String = "") {
        let cs = cluster.clients
        for r in ranges {
            var eff: [(Int, LockMode)] = []
            for (i, c) in cs.enumerated() {
                guard let s = c.inspect(r) else { continue }
                let mode = s.invalidating ?? s.granted
                for m in [LockMode.read, .write, .writeOnly] where s.users[m] > 0 && !mode.satisfies(m) {
                    fail("client \(i + 1) has a \(m) user of \(r.start) holding only \(mode) \(when)")
                }
                if dirty[i].contains(r.start) && !mode.canWrite {
                    fail("client \(i + 1) went to \(mode) on \(r.start) without writing back \(when)")
                }
                if mode != .null { eff.append((i, mode)) }
            }
            for a in eff.indices {
                for b in eff.indices where b > a {
                    if !LockMode.compatibleAcrossClients(eff[a].1, eff[b].1) {
                        fail("clients \(eff[a].0 + 1) (\(eff[a].1)) and \(eff[b].0 + 1) (\(eff[b].1)) both hold \(r.start) \(when)")
                    }
                }
                if eff[a].1.canRead {
                    for (j, d) in dirty.enumerated() where j != eff[a].0 && d.contains(r.start) {
                        fail("client \(eff[a].0 + 1) can read \(r.start) while client \(j + 1) has unwritten changes \(when)")
                    }
                }
            }
        }
    }

    var givenBackMax: UInt64 = 0
    var wasRecovering = false
    var lastWriteGrant: [Key: (seq: UInt64, client: Int)] = [:]
    var waiting: Set<ObjectIdentifier> = []


    func granted(_ t: Task, _ h: LockHandle, fresh: Bool) {
        grantsSeen += 1
        if trace { print("step \(step): client \(t.client + 1) \(fresh ? "granted" : "cached") \(h.mode) \(t.range.start) seq \(h.writeSeq)") }
        guard h.mode.canWrite else { return }
        if h.writeSeq == 0 { fail("write grant of \(t.range.start) without a seq") }
        dirty[t.client].insert(t.range.start)
        guard fresh else { return }
        if let last = lastWriteGrant[t.range.start], h.mode == .write,
           h.writeSeq < last.seq || (h.writeSeq == last.seq && last.client != t.client) {
            fail("write grant of \(t.range.start) to client \(t.client + 1) has seq \(h.writeSeq), after seq \(last.seq) went to client \(last.client + 1)")
        }
        if h.writeSeq >= lastWriteGrant[t.range.start]?.seq ?? 0 {
            lastWriteGrant[t.range.start] = (h.writeSeq, t.client)
        }
    }

    func startTask() {
        let ci = Int.random(in: 0..<cluster.clients.count, using: &rng)
        guard tasks.filter({ $0.client == ci }).count < 3 else { return }
        let r = ranges.randomElement(using: &rng)!
        let roll = Int.random(in: 0..<10, using: &rng)
        let mode: LockMode = roll < 5 ? .read : roll < 8 ? .write : .writeOnly
        do {
            let p = try cluster.clients[ci].start(r, mode)
            let t = Task(client: ci, range: r, mode: mode, started: step, pending: p)
            tasks.append(t)
            if let h = p.handle {
                granted(t, h, fresh: false)
            } else {
                waiting.insert(ObjectIdentifier(p))
            }
        } catch {
            fail("lock of \(r.start) refused: \(error)")
        }
    }

    /// Notices grants that arrived in the last step.
    func collectGrants() {
        for t in tasks {
            guard let h = t.pending.handle, waiting.remove(ObjectIdentifier(t.pending)) != nil else { continue }
            granted(t, h, fresh: true)
        }
    }

    func unlockOne() {
        let held = tasks.indices.filter { tasks[$0].pending.handle != nil }
        guard let i = held.randomElement(using: &rng) else { return }
        let t = tasks.remove(at: i)
        cluster.clients[t.client].unlock(t.pending.handle!)
    }

    func oneStep(starting: Bool) {
        step += 1
        let roll = Int.random(in: 0..<1000, using: &rng)
        switch roll {
        case 0..<400: cluster.net.deliverOne(using: &rng)
        case 400..<550: cluster.clients.randomElement(using: &rng)!.processInvalidations()
        case 550..<750: if starting { startTask() } else { unlockOne() }
        case 750..<960: unlockOne()
        case 960..<998: cluster.clients.randomElement(using: &rng)!.shrink(Int.random(in: 1...3, using: &rng))
        default:
            if starting && cluster.restarts < 3 {
                // The new server only knows the last durable seq: it may lag behind seqs of locks
                // still held, never behind those given back (giving back commits).
                let cur = cluster.server.currentSeq
                let lag = UInt64.random(in: 0...20, using: &rng)
                if trace {
                    print("step \(step): restart, seq \(cur), given back \(givenBackMax), lag \(lag)")
                    for (i, c) in cluster.clients.enumerated() {
                        for r in ranges { if let st = c.inspect(r) { print("  client \(i + 1) \(r.start): \(st.granted) inv \(String(describing: st.invalidating)) seq \(st.writeSeq) users \(st.users.total)") } }
                    }
                }
                cluster.restartServer(startSeq: max(cur &- min(lag, cur), givenBackMax))
            }
        }
        if trace && wasRecovering && !cluster.server.isRecovering {
            print("step \(step): recovery done, seq \(cluster.server.currentSeq), recovered \(cluster.server.statistics.recoveredLocks)")
        }
        wasRecovering = cluster.server.isRecovering
        collectGrants()
        check()
        for t in tasks where t.pending.handle == nil {
            let waited = step - t.started
            if waited > maxWait { maxWait = waited }
            if waited > waitBound {
                fail("client \(t.client + 1)'s \(t.mode) request of \(t.range.start) waited \(waited) steps")
            }
        }
    }

    /// Runs `ops` random steps, then lets every user finish.
    func run(ops: Int) {
        while step < ops && failures.isEmpty { oneStep(starting: true) }
        var drain = 0
        while !tasks.isEmpty && failures.isEmpty {
            oneStep(starting: false)
            drain += 1
            if drain > 200_000 {
                fail("deadlock: \(tasks.count) users never finished; waiting: "
                     + tasks.filter { $0.pending.handle == nil }.map { "client \($0.client + 1) \($0.mode) \($0.range.start)" }.joined(separator: ", "))
                break
            }
        }
    }
}

@Suite struct LockSimulationTests {
    @Test func randomizedClusterKeepsLocksSafeAndLive() {
        let seeds: [UInt64]
        if let s = getenv("LOCK_SIM_SEED").flatMap({ UInt64(String(cString: $0)) }) {
            seeds = [s]
        } else {
            seeds = Array(1...150)
        }
        var steps = 0
        var grants = 0
        var restarts = 0
        var worst = 0
        for seed in seeds {
            let sim = LockSimulation(seed: seed)
            sim.run(ops: 4000)
            for f in sim.failures { Issue.record(Comment(rawValue: "\(f) (replay: LOCK_SIM_SEED=\(seed) swift test --filter LockSimulationTests)")) }
            if !sim.failures.isEmpty { break }
            steps += sim.step
            grants += sim.grantsSeen
            restarts += sim.cluster.restarts
            worst = max(worst, sim.maxWait)
        }
        // The runs must have exercised what they claim to.
        #expect(grants > seeds.count * 300)
        #expect(restarts > seeds.count)
        print("lock simulation: \(seeds.count) seeds, \(steps) steps, \(grants) grants, \(restarts) server restarts, longest wait \(worst) steps")
    }
}
