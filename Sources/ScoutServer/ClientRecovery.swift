#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// The nodes a server must settle with before it may reclaim anything of theirs: at a
/// takeover, every node its predecessor had (recorded in the mounted-clients tree); while it
/// serves, every node whose session ended without a farewell. A node that comes back
/// (`join(rid:rejoin:)`) keeps its log tree and pools. One that does not within the recovery
/// timeout is fenced, and only once the fence agent reports success is it reclaimed: its locks
/// dropped, its log tree merged, its pools freed (`reclaim`). A fence that fails is tried again
/// every `retryInterval`, and the node's locks stay where they were — others wait rather than
/// run beside a node that may still write.
public final class ClientRecovery: Sendable {
    public enum Phase: Sendable, Equatable {
        /// Not back yet; fenced and reclaimed once the deadline passes.
        case waiting(deadline: UInt64)
        /// Back: nothing of it is reclaimed.
        case returned
        /// Given up: fenced (or being fenced) and reclaimed. It must remount.
        case fencing
    }

    struct Entry {
        var client: MountedClient
        var phase: Phase
    }

    let fencer: Fencer
    let timeoutNanos: UInt64
    let retryInterval: Duration
    let reclaim: @Sendable (MountedClient) throws -> Void
    let log: @Sendable (String) -> Void
    private let table = Mutex<[UInt64: Entry]>([:])
    /// Nodes given up and reclaimed: nothing they send is taken any more (a call queued before
    /// the node died would write its record back over the reclaim), until a new mount of the
    /// id joins.
    private let reclaimed = Mutex<Set<UInt64>>([])
    private let wake = Parker()
    private let stopping = Atomic(false)
    private let thread = Mutex<JoinableThread?>(nil)
    /// Nodes fenced and reclaimed, and fences that failed (tries).
    private let counts = Mutex<(reclaimed: Int, fenceFailures: Int)>((0, 0))

    /// `reclaim` runs on this type's thread, after a successful fence, for each node given up.
    public init(fencer: Fencer, timeout: Duration = .seconds(30), retryInterval: Duration = .seconds(5),
                reclaim: @escaping @Sendable (MountedClient) throws -> Void, log: @escaping @Sendable (String) -> Void) {
        self.fencer = fencer
        timeoutNanos = UInt64(timeout.components.seconds) * 1_000_000_000 + UInt64(timeout.components.attoseconds / 1_000_000_000)
        self.retryInterval = retryInterval
        self.reclaim = reclaim
        self.log = log
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Starts the thread that fences and reclaims the nodes that do not come back.
    public func start() throws {
        let t = try JoinableThread("client recovery") { [self] in run() }
        thread.withLock { $0 = t }
    }

    public func stop() {
        stopping.store(true, ordering: .releasing)
        wake.unpark()
        thread.withLock { t -> JoinableThread? in defer { t = nil }; return t }?.join()
    }

    /// Nodes to wait for, from now until the timeout; those `isGone` says are gone already
    /// (their process here is not running) are given up at once.
    public func expect(_ clients: [MountedClient], isGone: (MountedClient) -> Bool = { _ in false }) {
        let now = Self.now()
        let deadline = now &+ timeoutNanos
        let gone = Set(clients.filter(isGone).map(\.rid))
        table.withLock { t in
            for c in clients where t[c.rid] == nil {
                t[c.rid] = Entry(client: c, phase: .waiting(deadline: gone.contains(c.rid) ? 0 : deadline))
            }
        }
        wake.unpark()
    }

    /// A node's session ended without a farewell: it is given up at once (its session's
    /// linger was its chance to come back) — fenced, then reclaimed.
    /// False once this recovery has stopped (its server is ending: nothing is given up then).
    @discardableResult
    public func lost(_ client: MountedClient) -> Bool {
        guard !stopping.load(ordering: .acquiring) else { return false }
        table.withLock { t in
            if case .fencing = t[client.rid]?.phase { return }
            t[client.rid] = Entry(client: client, phase: .waiting(deadline: 0))
        }
        wake.unpark()
        return true
    }

    /// A node says it is mounted (`rejoin` false: a new mount, which replaces any earlier
    /// mount of its id) or is back after a server change (`rejoin`). False when it was given
    /// up: it must not write again. A new mount of an id being given up waits for that to end
    /// (its earlier mount's tree must be merged before the new one builds on the record), for
    /// at most `wait`.
    public func join(_ client: MountedClient, rejoin: Bool, wait: Duration = .seconds(60)) -> Bool {
        let until = ContinuousClock.now + wait
        while true {
            let answer: Bool? = table.withLock { t in
                switch t[client.rid]?.phase {
                case nil:
                    // Unknown here: a new mount, or a node this server never had (it was
                    // given up by a server before, or never recorded).
                    if rejoin { return false }
                    reclaimed.withLock { _ = $0.remove(client.rid) }
                    return true
                case .waiting?, .returned?:
                    t[client.rid] = Entry(client: client, phase: .returned)
                    return true
                case .fencing?:
                    return rejoin ? false : nil
                }
            }
            if let answer { return answer }
            if ContinuousClock.now >= until { return false }
            usleep(50_000)
        }
    }

    /// Whether calls of `rid` must be refused: it is being given up, or was. The server asks
    /// under the store lock, which reclaiming takes too, so a call either lands before the
    /// reclaim (which then merges it) or is refused.
    public func refuses(_ rid: UInt64) -> Bool {
        if reclaimed.withLock({ $0.contains(rid) }) { return true }
        if case .fencing = table.withLock({ $0[rid]?.phase }) { return true }
        return false
    }

    /// A node left cleanly: nothing to wait for.
    public func left(_ rid: UInt64) {
        table.withLock { t in
            if case .fencing = t[rid]?.phase { return }
            t[rid] = nil
        }
    }

    /// Nodes not settled yet: waiting, or given up and not yet reclaimed.
    public var pending: [UInt64] {
        table.withLock { t in t.filter { if case .returned = $0.value.phase { false } else { true } }.keys.sorted() }
    }

    public func phase(of rid: UInt64) -> Phase? { table.withLock { $0[rid]?.phase } }

    public var statistics: (reclaimed: Int, fenceFailures: Int) { counts.withLock { $0 } }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let now = Self.now()
            let due: [MountedClient] = table.withLock { t in
                var out: [MountedClient] = []
                for (rid, e) in t {
                    if case .waiting(let d) = e.phase, d <= now {
                        t[rid]?.phase = .fencing
                        out.append(e.client)
                    }
                }
                return out.sorted { $0.rid < $1.rid }
            }
            for c in due { settle(c) }
            let next = table.withLock { t in
                t.values.compactMap { e -> UInt64? in if case .waiting(let d) = e.phase { d } else { nil } }.min()
            }
            let wait = next.map { $0 > now ? Double($0 - now) / 1e9 : 0 } ?? 1
            if wait > 0 { _ = wake.park(seconds: min(wait, 1)) }
        }
    }

    /// Fences `c` and reclaims it; a failure of either is tried again later.
    private func settle(_ c: MountedClient) {
        let request = FenceRequest(recovering: c)
        log("recovery: client \(String(c.rid, radix: 16)) did not come back in time; fencing it")
        guard !fencer.fence([request]).isEmpty else {
            counts.withLock { $0.fenceFailures += 1 }
            retryLater(c, "its fence failed")
            return
        }
        do {
            try reclaim(c)
        } catch {
            retryLater(c, "reclaiming its log tree and pools failed: \(error)")
            return
        }
        counts.withLock { $0.reclaimed += 1 }
        reclaimed.withLock { _ = $0.insert(c.rid) }
        table.withLock { _ = $0.removeValue(forKey: c.rid) }
        log("recovery: client \(String(c.rid, radix: 16)) was fenced; its locks are dropped, its log tree merged and its pools taken back")
    }

    private func retryLater(_ c: MountedClient, _ why: String) {
        let secs = Double(retryInterval.components.seconds) + Double(retryInterval.components.attoseconds) / 1e18
        log("error: recovery: client \(String(c.rid, radix: 16)): \(why); its locks stay held and nothing of it is reclaimed; trying again in \(secs) s")
        let at = Self.now() &+ UInt64(secs * 1e9)
        table.withLock { t in
            // Not fenced: it may come back (a rejoin) until the next try.
            t[c.rid]?.phase = .waiting(deadline: at)
        }
    }
}
