#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import ScoutFormat
public import ScoutNet
import Synchronization

/// Settings of a mount's lock client.
public struct LockClientOptions: Sendable {
    /// Cached locks beyond this are given back, oldest idle first (the original's
    /// `lock_idle_count` mount option, 32–100 000).
    public var idleLimit: Int
    /// Null requests that shrinking may have outstanding at once, so that shrinking can never
    /// flood the server (the original's bulk shrinker backed up for minutes).
    public var shrinkInFlightLimit: Int
    /// Locks per recovery answer.
    public var recoverBatch: Int
    /// A lock in use when another client asks for it is kept while its users come back within
    /// `linger` of each other, up to `maxHold` after it was granted, before it is given up:
    /// handing a lock over costs a commit and several messages, and two clients working in
    /// one directory would otherwise trade it for every single operation. Zero (the default)
    /// gives a lock up as soon as its users leave. Needs the worker thread (`startWorker`).
    public var linger: Duration
    public var maxHold: Duration
    /// Ask for write where a read was twice in a row followed by an upgrade (see
    /// `LockClient.noteUpgrade`).
    public var predictsUpgrades: Bool

    public static let idleLimitRange = 32...100_000

    public init(idleLimit: Int = 10_000, shrinkInFlightLimit: Int = 64, recoverBatch: Int = LockRecoverReply.maxEntries,
                linger: Duration = .zero, maxHold: Duration = .zero, predictsUpgrades: Bool = false) {
        self.idleLimit = idleLimit
        self.shrinkInFlightLimit = max(1, shrinkInFlightLimit)
        self.recoverBatch = max(1, min(recoverBatch, LockRecoverReply.maxEntries))
        self.linger = linger
        self.maxHold = maxHold
        self.predictsUpgrades = predictsUpgrades
    }

    /// What a mount uses: a lock lingers while its users come back within 200 µs, for at most
    /// 10 ms, and reads that keep being upgraded are asked for as writes.
    public static let mount = LockClientOptions(linger: .microseconds(200), maxHold: .milliseconds(10), predictsUpgrades: true)
}

/// A lock request the client refuses.
public enum LockError: Error, Equatable, CustomStringConvertible {
    /// The range overlaps a different range this client already holds. Every caller names locks
    /// through `LockRange`'s helpers, which never overlap, so this is a bug in the caller.
    case overlappingRange(requested: LockRange, held: LockRange)

    public var description: String {
        switch self {
        case .overlappingRange(let r, let h):
            "lock range \(r) overlaps the held lock \(h); lock ranges must come from LockRange's helpers"
        }
    }
}

/// What a caller holds between `lock` and `unlock`.
public struct LockHandle: Sendable {
    let lock: ClientLock
    public let mode: LockMode
    /// The seq the server gave the latest write or write-only grant of this lock.
    public let writeSeq: UInt64
    public var range: LockRange { lock.range }
}

/// Runs during an invalidation, in registration order, with the range and the modes it goes
/// between: write back dirty state (the transaction commit hook), then drop caches unless the
/// change is write → read. A hook that throws (a commit that failed) stops the invalidation
/// unanswered: the server must never hear that a lock was given back when what was written
/// under it is not durable. The lock keeps its mode and stays blocked for new users the
/// invalidation would not allow.
public typealias LockInvalidationHook = @Sendable (_ range: LockRange, _ from: LockMode, _ to: LockMode) throws -> Void

/// Reader/write-only/writer counts of one lock.
struct UserCounts {
    var read = 0
    var write = 0
    var writeOnly = 0

    subscript(mode: LockMode) -> Int {
        get {
            switch mode {
            case .read: read
            case .write: write
            case .writeOnly: writeOnly
            case .null: 0
            }
        }
        set {
            switch mode {
            case .read: read = newValue
            case .write: write = newValue
            case .writeOnly: writeOnly = newValue
            case .null: break
            }
        }
    }

    var total: Int { read + write + writeOnly }

    /// Whether every current user could keep going under `mode`.
    func allowed(under mode: LockMode) -> Bool {
        (read == 0 || mode.satisfies(.read)) && (write == 0 || mode.satisfies(.write))
            && (writeOnly == 0 || mode.satisfies(.writeOnly))
    }
}

/// A caller waiting for a mode the lock does not have yet.
struct LockWaiter {
    var mode: LockMode
    var completion: @Sendable (LockHandle) -> Void
}

/// The per-lock state, guarded by the lock's own mutex.
struct LockState {
    var granted: LockMode = .null
    var writeSeq: UInt64 = 0
    var users = UserCounts()
    var waiters: [LockWaiter] = []
    /// A request is with the server (at most one per lock); it holds a reference.
    var requestPending = false
    var requestedMode: LockMode = .null
    /// The pending request is a null request sent by shrinking.
    var shrinking = false
    /// Invalidations from the server in arrival order; each holds a reference.
    var invalidations: [LockMessage] = []
    /// The mode held before the invalidation whose callbacks are running; recovery reports it,
    /// since the server must not yet count the lock as given back.
    var invalidating: LockMode?
    /// The mode the first queued invalidation goes to: new users it would not allow wait, so a
    /// stream of readers cannot hold an invalidation off forever.
    var blockedFor: LockMode?
    /// The invalidation worker is waiting for users to leave; the last one to go requeues it.
    var waitingForUsers = false
    /// On the worker's queue (which then holds a reference).
    var inWorkQueue = false
    /// Used since the shrinker last looked: a second chance before being given back.
    var recentlyUsed = false
    /// Its count went 3 → 1: it is leaving the index and must not be used again.
    var freeing = false
    /// When the last grant arrived and the last user left (monotonic ns), for lingering.
    var grantedAt: UInt64 = 0
    var lastUse: UInt64 = 0
    /// The invalidation (by id) whose lingering is over: it waits for users only.
    var lingerEnded: UInt64?
    /// The pending request asks for write where its waiters only read (`upgradeHints`), and
    /// whether a writer has used the lock since the last grant.
    var writePredicted = false
    var usedForWrite = false

    /// A new user asking for `mode` can proceed now.
    @inline(__always)
    func mayEnter(_ mode: LockMode) -> Bool {
        granted.satisfies(mode) && (blockedFor.map { $0.satisfies(mode) } ?? true)
    }

    /// Null, unused and with nothing in flight: the lock can leave the index.
    var isRemovable: Bool {
        granted == .null && users.total == 0 && waiters.isEmpty && !requestPending && invalidations.isEmpty
            && invalidating == nil && !freeing
    }

    var isIdleGranted: Bool {
        granted != .null && users.total == 0 && waiters.isEmpty && !requestPending && invalidations.isEmpty
            && invalidating == nil && !freeing
    }
}

/// One cluster lock as a client caches it.
///
/// **References.** `refs` counts holders: while the lock is in the client's index (by-start map,
/// range tree and LRU) it carries a base of 2; every user between lock and unlock, a pending
/// request, every queued invalidation, the worker's queue and every transient lookup add one. A
/// reference can be taken only while the count is ≥ 2; a count of 1 means the lock is leaving
/// the index, and lookups retry until it is gone. Removal is a compare-and-swap 3 → 1 by the
/// holder that finds the lock null and unused; it then unindexes the lock and the last put
/// brings the count to 0.
///
/// **Lock order**: this lock's `state` mutex → the client's index mutex → a shard mutex. The
/// shrinker walks the LRU under the index mutex and so only try-locks `state`.
public final class ClientLock: @unchecked Sendable {
    // @unchecked: `refs` is atomic, `state` is a Mutex, and `lruPrev`/`lruNext` are only read
    // or written with the owning client's index mutex held.
    public let range: LockRange
    let refs: Atomic<Int>
    let state = Mutex(LockState())
    var lruPrev: ClientLock?
    var lruNext: ClientLock?

    init(range: LockRange, refs: Int) {
        self.range = range
        self.refs = Atomic(refs)
    }

    /// Takes a reference unless the lock is being freed.
    @inline(__always)
    func tryGet() -> Bool {
        var c = refs.load(ordering: .relaxed)
        while c >= 2 {
            let (done, now) = refs.compareExchange(expected: c, desired: c + 1, ordering: .acquiring)
            if done { return true }
            c = now
        }
        return false
    }

    /// Adds a reference for something the caller (who holds one) hands it to.
    @inline(__always)
    func addRef() { refs.add(1, ordering: .relaxed) }

    /// Drops a reference that is not the caller's last chance to remove the lock (the caller
    /// still holds another, or the lock cannot be removable).
    @inline(__always)
    func dropRef() { refs.subtract(1, ordering: .releasing) }

    /// The removal step, with `state` held: null and unused and the caller's reference plus the
    /// base are the only ones.
    @inline(__always)
    func beginFreeing(_ s: inout LockState) -> Bool {
        guard s.isRemovable else { return false }
        guard refs.compareExchange(expected: 3, desired: 1, ordering: .acquiringAndReleasing).exchanged else { return false }
        s.freeing = true
        return true
    }

    /// The current count (tests).
    var referenceCount: Int { refs.load(ordering: .relaxed) }
}

/// The client side of the cluster locks (DESIGN.md §3): callers lock key ranges in a mode; the
/// client asks the server for modes it does not hold, caches granted locks after unlock, gives
/// locks back when the server invalidates them or when too many are cached, and reports what it
/// holds to a recovering server.
///
/// The path of a lock already granted touches only a shard of the by-start map (one of 64, each
/// with its own mutex), the lock's own mutex and its atomic count: threads working on different
/// locks do not meet. The range tree and the LRU, under the index mutex, are touched only when a
/// lock enters or leaves them.
public final class LockClient: Sendable {
    final class Shard: Sendable {
        let map = Mutex<[Key: ClientLock]>([:])
        // Keeps neighbouring shards' mutexes off one cache line.
        let pad: (Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0)
    }

    struct Index {
        var tree = RangeTree<ClientLock>()
        var lruHead: ClientLock?
        var lruTail: ClientLock?

        mutating func lruAppend(_ l: ClientLock) {
            l.lruPrev = lruTail
            l.lruNext = nil
            if let t = lruTail { t.lruNext = l } else { lruHead = l }
            lruTail = l
        }

        mutating func lruRemove(_ l: ClientLock) {
            if let p = l.lruPrev { p.lruNext = l.lruNext } else if lruHead === l { lruHead = l.lruNext }
            if let n = l.lruNext { n.lruPrev = l.lruPrev } else if lruTail === l { lruTail = l.lruPrev }
            l.lruPrev = nil
            l.lruNext = nil
        }
    }

    struct Counters {
        var requests = 0
        var grants = 0
        var invalidations = 0
        var shrinkRequests = 0
        /// Lock calls that found no usable lock cached and waited for the server.
        var waits = 0
        var freed = 0
        var retries = 0
        var failedInvalidations: [String] = []
        var failedRanges = Set<Key>()
    }

    static let shardCount = 64

    public let id: ClientID
    public let options: LockClientOptions
    private let link: any LockServerLink
    private let shards: [Shard]
    private let index = Mutex(Index())
    private let work = Mutex<[ClientLock]>([])
    /// Locks whose reads this client recently upgraded to writes, by range start, with how
    /// many times in a row (`LockClientOptions.predictsUpgrades`).
    private let upgradeHints = Mutex<[Key: Int]>([:])
    /// Locks whose invalidation waits for their users to pause (`LockClientOptions.linger`),
    /// each with the time to look again; each holds the work queue's reference.
    private let lingering = Mutex<[(until: UInt64, lock: ClientLock)]>([])
    private let lingers: Bool
    private let linger: UInt64
    private let maxHold: UInt64
    private let hooks = Mutex<[LockInvalidationHook]>([])
    private let grantHooks = Mutex<[@Sendable (LockRange, LockMode) -> Void]>([])
    private let shrinkInFlight = Atomic<Int>(0)
    private let counters = Mutex(Counters())
    private let workerSignal = Parker()
    private let workerState = Mutex<(running: Bool, stop: Bool, thread: pthread_t?)>((false, false, nil))

    public init(id: ClientID, link: any LockServerLink, options: LockClientOptions = LockClientOptions()) {
        self.id = id
        self.link = link
        self.options = options
        shards = (0..<Self.shardCount).map { _ in Shard() }
        let ns = { (d: Duration) -> UInt64 in
            let (s, a) = d.components
            return s <= 0 && a <= 0 ? 0 : UInt64(s) &* 1_000_000_000 &+ UInt64(a / 1_000_000_000)
        }
        linger = ns(options.linger)
        maxHold = ns(options.maxHold)
        lingers = linger > 0 && maxHold > 0
    }

    /// Adds a callback run during every invalidation, after those registered earlier.
    public func addInvalidationHook(_ hook: @escaping LockInvalidationHook) {
        hooks.withLock { $0.append(hook) }
    }

    /// Adds a callback run at every grant (range and granted mode), before anyone waiting for
    /// it goes on: a client on another node takes the server's newest roots there, since the
    /// previous holder made its changes durable before it let the lock go. It runs on the
    /// thread that delivers the server's messages, with no lock of this client held.
    public func addGrantHook(_ hook: @escaping @Sendable (LockRange, LockMode) -> Void) {
        grantHooks.withLock { $0.append(hook) }
    }

    @inline(__always)
    private func shard(_ key: Key) -> Shard {
        var h = key.first &* 0x9E37_79B9_7F4A_7C15
        h ^= key.second &* 0xC2B2_AE3D_27D4_EB4F
        h ^= UInt64(key.zone) << 56 ^ UInt64(key.type) << 48
        h ^= h >> 29
        return shards[Int(h % UInt64(Self.shardCount))]
    }

    // MARK: finding locks

    /// The lock starting at `start`, with a reference, or `nil`. A lock being freed is waited
    /// out: the caller must not get it, and must not create a new one while it is still indexed.
    func find(_ start: Key) -> ClientLock? {
        let s = shard(start)
        while true {
            var freeing = false
            let found: ClientLock? = s.map.withLock { m in
                guard let l = m[start] else { return nil }
                if l.tryGet() { return l }
                freeing = true
                return nil
            }
            if !freeing { return found }
            noteRetry()
            sched_yield()
        }
    }

    private enum InsertOutcome {
        case found(ClientLock)
        case inserted(ClientLock, count: Int)
        case retry
        case overlap(LockRange)
    }

    /// The lock for `range`, created (null, unrequested) if the client has none, with a
    /// reference for the caller.
    private func findOrInsert(_ range: LockRange) throws(LockError) -> ClientLock {
        while true {
            if let l = find(range.start) {
                if l.range == range { return l }
                let other = l.range
                put(l)
                throw LockError.overlappingRange(requested: range, held: other)
            }
            let outcome: InsertOutcome = index.withLock { ix in
                if let e = ix.tree.overlapping(range) {
                    let other = e.value
                    if other.range == range, other.tryGet() { return .found(other) }
                    if other.referenceCount < 2 { return .retry }
                    return .overlap(other.range)
                }
                let l = ClientLock(range: range, refs: 3)
                ix.tree.insert(range, l)
                ix.lruAppend(l)
                shard(range.start).map.withLock { $0[range.start] = l }
                return .inserted(l, count: ix.tree.count)
            }
            switch outcome {
            case .found(let l): return l
            case .inserted(let l, let count):
                // Too many cached: give back one idle lock per new one.
                if count > options.idleLimit { shrink(1) }
                return l
            case .retry:
                noteRetry()
                sched_yield()
            case .overlap(let other):
                throw LockError.overlappingRange(requested: range, held: other)
            }
        }
    }

    private func noteRetry() { counters.withLock { $0.retries += 1 } }

    /// Drops the caller's reference, removing the lock from the index when it is null and unused.
    private func put(_ l: ClientLock) {
        let remove = l.state.withLock { s in
            if l.beginFreeing(&s) { return true }
            l.dropRef()
            return false
        }
        if remove { unindex(l) }
    }

    /// Second half of removal, after the count went 3 → 1: out of every structure, then the last
    /// reference goes.
    func unindex(_ l: ClientLock) {
        index.withLock { ix in
            ix.tree.remove(start: l.range.start)
            ix.lruRemove(l)
            shard(l.range.start).map.withLock { m in
                if m[l.range.start] === l { m[l.range.start] = nil }
            }
        }
        counters.withLock { $0.freed += 1 }
        l.dropRef()
    }

    // MARK: locking

    /// Locks `range` in `mode`, blocking until the server has granted it. Must not be called
    /// while the caller holds a transaction open that an invalidation would have to commit.
    public func lock(_ range: LockRange, _ mode: LockMode) throws(LockError) -> LockHandle {
        if let h = try tryLock(range, mode) { return h }
        let parker = Parker()
        let box = HandleBox()
        if let h = try acquire(range, mode, { h in
            box.handle.withLock { $0 = h }
            parker.unpark()
        }) {
            return h
        }
        counters.withLock { $0.waits += 1 }
        parker.park()
        return box.handle.withLock { $0! }
    }

    final class HandleBox: Sendable {
        let handle = Mutex<LockHandle?>(nil)
    }

    /// Locks `range` in `mode` if the client already holds a mode that serves it; `nil` otherwise
    /// (the original's NONBLOCK flag), without asking the server.
    public func tryLock(_ range: LockRange, _ mode: LockMode) throws(LockError) -> LockHandle? {
        precondition(mode != .null, "locking in null mode")
        guard let l = find(range.start) else { return nil }
        guard l.range == range else {
            let other = l.range
            put(l)
            throw LockError.overlappingRange(requested: range, held: other)
        }
        let h: LockHandle? = l.state.withLock { s in
            guard !s.freeing, s.mayEnter(mode) else { return nil }
            s.users[mode] += 1
            s.recentlyUsed = true
            if mode == .write { s.usedForWrite = true }
            return LockHandle(lock: l, mode: mode, writeSeq: s.writeSeq)
        }
        if h == nil { put(l) }
        return h
    }

    /// Locks without blocking the caller: returns the handle when the mode is already held;
    /// otherwise returns `nil` and calls `completion` (on the thread that receives the grant or
    /// finishes the invalidation) once it is.
    public func acquire(_ range: LockRange, _ mode: LockMode,
                        _ completion: @escaping @Sendable (LockHandle) -> Void) throws(LockError) -> LockHandle? {
        precondition(mode != .null, "locking in null mode")
        let l = try findOrInsert(range)
        var request: LockMessage?
        let h: LockHandle? = l.state.withLock { s in
            if s.mayEnter(mode) {
                s.users[mode] += 1
                s.recentlyUsed = true
                if mode == .write { s.usedForWrite = true }
                return LockHandle(lock: l, mode: mode, writeSeq: s.writeSeq)
            }
            // The lookup reference stays with the waiter and becomes the user's at grant.
            s.waiters.append(LockWaiter(mode: mode, completion: completion))
            request = nextRequest(l, &s)
            return nil
        }
        if let request { send(.request(request)) }
        return h
    }

    /// Ends a use of a lock.
    public func unlock(_ h: LockHandle) {
        let l = h.lock
        var requeue = false
        let now = lingers ? Self.monotonicNow() : 0
        let remove = l.state.withLock { s in
            s.users[h.mode] -= 1
            s.lastUse = now
            precondition(s.users[h.mode] >= 0, "unlock of \(l.range) in \(h.mode) without a matching lock")
            if s.waitingForUsers, let first = s.invalidations.first,
               s.users.allowed(under: target(first, granted: s.granted)) {
                s.waitingForUsers = false
                if !s.inWorkQueue {
                    s.inWorkQueue = true
                    l.addRef()
                    requeue = true
                }
            }
            if l.beginFreeing(&s) { return true }
            l.dropRef()
            return false
        }
        if requeue { queueWork(l) }
        if remove { unindex(l) }
    }

    /// The request to send for the first waiters, if none is out; marks it pending and gives it
    /// a reference (the caller holds one, so the lock cannot be freed meanwhile).
    private func nextRequest(_ l: ClientLock, _ s: inout LockState) -> LockMessage? {
        guard !s.requestPending, s.invalidations.isEmpty, s.invalidating == nil, let first = s.waiters.first else {
            return nil
        }
        var want = first.mode
        for w in s.waiters.dropFirst() {
            if let c = LockMode.covering(want, w.mode) { want = c }
        }
        guard !s.granted.satisfies(want) else { return nil }
        if s.granted == .read && want == .write {
            // An upgrade: the read was the first half of a write (a lookup before a create,
            // the kernel's getattr before a write), and its own hand-over was one too many.
            noteUpgrade(l.range.start)
        }
        s.writePredicted = false
        if s.granted == .null && want == .read && predictsUpgrade(l.range.start) {
            want = .write
            s.writePredicted = true
        }
        s.requestPending = true
        s.requestedMode = want
        l.addRef()
        return LockMessage(key: l.range.start, writeSeq: s.writeSeq, oldMode: s.granted, newMode: want)
    }

    /// Lets in every waiter the granted mode now serves; returns them with their handles.
    private func admitWaiters(_ l: ClientLock, _ s: inout LockState) -> [(LockWaiter, LockHandle)] {
        guard !s.waiters.isEmpty else { return [] }
        var admitted: [(LockWaiter, LockHandle)] = []
        var rest: [LockWaiter] = []
        for w in s.waiters {
            if s.mayEnter(w.mode) {
                s.users[w.mode] += 1
                s.recentlyUsed = true
                if w.mode == .write { s.usedForWrite = true }
                admitted.append((w, LockHandle(lock: l, mode: w.mode, writeSeq: s.writeSeq)))
            } else {
                rest.append(w)
            }
        }
        s.waiters = rest
        return admitted
    }

    private func send(_ m: LockClientMessage) {
        if case .request = m { counters.withLock { $0.requests += 1 } }
        link.send(m)
    }

    // MARK: messages from the server

    /// Handles a message from the server. Grants are applied at once (waking waiters on this
    /// thread); invalidations are queued for the worker, since they may have to wait for users
    /// and commit a transaction.
    public func receive(_ message: LockServerMessage) {
        switch message {
        case .grant(let m): receiveGrant(m)
        case .invalidate(let m): receiveInvalidate(m)
        case .recover(let from): answerRecovery(from: from)
        }
    }

    private func receiveGrant(_ m: LockMessage) {
        // The pending request holds a reference, so a lock with a request out is indexed.
        guard let l = find(m.key) else { return }
        let grantTime = lingers ? Self.monotonicNow() : 0
        var wake: [(LockWaiter, LockHandle)] = []
        var request: LockMessage?
        var wasShrink = false
        l.state.withLock { s in
            guard s.requestPending else { return }
            s.requestPending = false
            s.granted = m.newMode
            s.grantedAt = grantTime
            s.usedForWrite = false
            if m.newMode.canWrite { s.writeSeq = m.writeSeq }
            wasShrink = s.shrinking
            s.shrinking = false
            wake = admitWaiters(l, &s)
            request = nextRequest(l, &s)
            l.dropRef()
        }
        counters.withLock { $0.grants += 1 }
        if wasShrink { shrinkInFlight.subtract(1, ordering: .relaxed) }
        if m.newMode != .null {
            for hook in grantHooks.withLock({ $0 }) { hook(l.range, m.newMode) }
        }
        if let request { send(.request(request)) }
        for (w, h) in wake { w.completion(h) }
        put(l)
    }

    private func receiveInvalidate(_ m: LockMessage) {
        counters.withLock { $0.invalidations += 1 }
        guard let l = find(m.key) else {
            // Nothing cached: the client holds null, which is what it reports.
            send(.invalidated(LockMessage(key: m.key, oldMode: .null, newMode: .null, id: m.id)))
            return
        }
        var queue = false
        l.state.withLock { s in
            // Lingering, new users come in until the worker decides to give the lock up.
            if s.invalidations.isEmpty && !lingers { s.blockedFor = m.newMode }
            s.invalidations.append(m)
            l.addRef()
            if !s.inWorkQueue {
                s.inWorkQueue = true
                l.addRef()
                queue = true
            }
        }
        if queue { queueWork(l) }
        put(l)
    }

    /// The mode an invalidation takes the lock to: never up, whatever a stale message says.
    private func target(_ m: LockMessage, granted: LockMode) -> LockMode {
        if m.newMode == .null { return .null }
        return granted == .write ? m.newMode : (granted.satisfies(m.newMode) ? m.newMode : .null)
    }

    private func queueWork(_ l: ClientLock) {
        work.withLock { $0.append(l) }
        workerSignal.unpark()
    }

    /// Runs queued invalidations whose users have left; returns how many invalidations it
    /// answered. The worker thread calls this; simulations and tests call it directly.
    @discardableResult
    public func processInvalidations() -> Int {
        var answered = 0
        while let l = work.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            answered += invalidate(l)
        }
        return answered
    }

    /// Works through one lock's invalidation queue; the caller's reference is the work queue's.
    private func invalidate(_ l: ClientLock) -> Int {
        var answered = 0
        l.state.withLock { $0.inWorkQueue = false }
        while true {
            enum Step {
                case done
                case answer(LockMessage)
                case run(from: LockMode, to: LockMode, seq: UInt64, id: UInt64)
                case linger(until: UInt64)
            }
            let now = lingers ? Self.monotonicNow() : 0
            var mispredicted = false
            let step: Step = l.state.withLock { s in
                guard let m = s.invalidations.first else { return .done }
                let to = target(m, granted: s.granted)
                if lingers, s.lingerEnded != m.id, s.granted != .null {
                    let holdEnd = s.grantedAt &+ maxHold
                    let busy = s.users.total > 0 || now < s.lastUse &+ linger
                    if busy && now < holdEnd {
                        // Back on the queue when the users may be done, or the hold is over;
                        // the work queue's reference stays with it.
                        s.inWorkQueue = true
                        return .linger(until: min(holdEnd, max(now, s.lastUse) &+ linger))
                    }
                    s.lingerEnded = m.id
                }
                if s.granted == to || s.granted == .null || (to == .read && s.granted == .read) {
                    // Already there (a duplicate after recovery, or a stale message).
                    s.invalidations.removeFirst()
                    l.dropRef()
                    s.blockedFor = s.invalidations.first?.newMode
                    return .answer(LockMessage(key: l.range.start, writeSeq: s.writeSeq, oldMode: s.granted, newMode: s.granted, id: m.id))
                }
                guard s.users.allowed(under: to) else {
                    s.blockedFor = to
                    s.waitingForUsers = true
                    return .done
                }
                // A write asked for readers that no writer used: the guess was wrong.
                if s.writePredicted && s.granted == .write && !s.usedForWrite { mispredicted = true }
                s.writePredicted = false
                s.invalidating = s.granted
                let from = s.granted
                s.granted = to
                return .run(from: from, to: to, seq: s.writeSeq, id: m.id)
            }
            if mispredicted { forgetUpgrades(l.range.start) }
            let answer: LockMessage
            switch step {
            case .done:
                put(l)
                return answered
            case .linger(let until):
                lingering.withLock { $0.append((until, l)) }
                return answered
            case .answer(let m):
                answer = m
            case .run(let from, let to, let seq, let id):
                do {
                    for hook in hooks.withLock({ $0 }) { try hook(l.range, from, to) }
                } catch {
                    l.state.withLock { s in
                        s.invalidating = nil
                        s.granted = from
                    }
                    counters.withLock { c in
                        c.failedInvalidations.append("\(l.range): \(error)")
                        c.failedRanges.insert(l.range.start)
                    }
                    put(l)
                    return answered
                }
                l.state.withLock { s in
                    s.invalidating = nil
                    s.invalidations.removeFirst()
                    l.dropRef()
                    s.blockedFor = s.invalidations.first?.newMode
                }
                answer = LockMessage(key: l.range.start, writeSeq: seq, oldMode: from, newMode: to, id: id)
            }
            send(.invalidated(answer))
            answered += 1
            let (wake, request) = afterInvalidation(l)
            if let request { send(.request(request)) }
            for (w, h) in wake { w.completion(h) }
        }
    }

    /// Once no invalidation is left: waiters the mode serves go in, the rest get a request.
    private func afterInvalidation(_ l: ClientLock) -> ([(LockWaiter, LockHandle)], LockMessage?) {
        l.state.withLock { s in
            guard s.invalidations.isEmpty else { return ([], nil) }
            let wake = admitWaiters(l, &s)
            return (wake, nextRequest(l, &s))
        }
    }

    // MARK: cache size

    /// Number of locks in the index.
    public var cachedCount: Int { index.withLock { $0.tree.count } }

    /// Gives back up to `count` idle locks, oldest first (a lock used since the last pass gets a
    /// second chance), never having more than `shrinkInFlightLimit` null requests out. Returns
    /// how many it asked for. The locks leave the index when their null grants arrive.
    @discardableResult
    public func shrink(_ count: Int) -> Int {
        guard count > 0 else { return 0 }
        var picked: [LockMessage] = []
        index.withLock { ix in
            var budget = min(count, options.shrinkInFlightLimit - shrinkInFlight.load(ordering: .relaxed))
            // Two laps at most (the first may only take second chances), and bounded so one call
            // costs little however many locks are in use.
            var scan = min(2 * ix.tree.count, 4 * count + 64)
            // Every lock looked at goes to the tail, so the head is always the next to look at.
            while budget > 0, scan > 0, let l = ix.lruHead {
                scan -= 1
                // Index mutex held: the lock's own mutex may only be tried (lock order).
                let m: LockMessage?? = l.state.withLockIfAvailable { s -> LockMessage? in
                    if s.recentlyUsed {
                        s.recentlyUsed = false
                        return nil
                    }
                    guard s.isIdleGranted, l.tryGet() else { return nil }
                    s.requestPending = true
                    s.requestedMode = .null
                    s.shrinking = true
                    return LockMessage(key: l.range.start, writeSeq: s.writeSeq, oldMode: s.granted, newMode: .null)
                }
                ix.lruRemove(l)
                ix.lruAppend(l)
                if let m = m ?? nil {
                    picked.append(m)
                    budget -= 1
                }
            }
        }
        shrinkInFlight.add(picked.count, ordering: .relaxed)
        counters.withLock { $0.shrinkRequests += picked.count }
        for m in picked { send(.request(m)) }
        return picked.count
    }

    // MARK: recovery

    private func answerRecovery(from start: Key) {
        var entries: [LockRecoverEntry] = []
        var key: Key? = start
        while entries.count < options.recoverBatch, let from = key {
            var retry = false
            let got: [ClientLock] = index.withLock { ix in
                var got: [ClientLock] = []
                for e in ix.tree.entries(from: from, limit: options.recoverBatch - entries.count) {
                    guard e.value.tryGet() else {
                        retry = true
                        break
                    }
                    got.append(e.value)
                }
                if got.isEmpty && !retry { key = nil }
                return got
            }
            for l in got {
                let e: LockRecoverEntry = l.state.withLock { s in
                    LockRecoverEntry(key: l.range.start, writeSeq: s.writeSeq, mode: s.invalidating ?? s.granted)
                }
                if e.mode != .null { entries.append(e) }
                key = l.range.start.successor
                put(l)
            }
            if retry {
                // A lock in the slot is being freed: wait until it has left, then look again.
                noteRetry()
                sched_yield()
            }
        }
        send(.recoverReply(LockRecoverReply(entries: entries)))
    }

    /// After reconnecting to a new server: sends again every request still waiting for a grant.
    public func resendRequests() {
        let locks: [ClientLock] = index.withLock { ix in
            ix.tree.entries(from: .min, limit: .max).compactMap { $0.value.tryGet() ? $0.value : nil }
        }
        for l in locks {
            let m: LockMessage? = l.state.withLock { s in
                s.requestPending ? LockMessage(key: l.range.start, writeSeq: s.writeSeq, oldMode: s.granted, newMode: s.requestedMode) : nil
            }
            if let m { link.send(.request(m)) }
            put(l)
        }
    }

    // MARK: worker thread

    /// Starts a thread that runs invalidations as they arrive.
    public func startWorker() {
        let start = workerState.withLock { w -> Bool in
            guard !w.running else { return false }
            w.running = true
            w.stop = false
            return true
        }
        guard start else { return }
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let client = Unmanaged<LockClient>.fromOpaque(arg!).takeRetainedValue()
            client.workerLoop()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "lock client: cannot start the invalidation worker thread (errno \(rc))")
        workerState.withLock { $0.thread = t }
    }

    /// Stops the worker thread and waits for it.
    public func stopWorker() {
        let t: pthread_t? = workerState.withLock { w in
            w.stop = true
            return w.thread
        }
        workerSignal.unpark()
        if let t { pthread_join(t, nil) }
        workerState.withLock { w in
            w.running = false
            w.thread = nil
        }
    }

    private func workerLoop() {
        // Work queued before the stop is still answered: a server waits for every answer.
        while true {
            processInvalidations()
            let stopping = workerState.withLock { $0.stop }
            // Lingering locks whose time is up go back on the work queue (all of them at a
            // stop, which gives every lock up at once).
            let now = Self.monotonicNow()
            let (due, next) = lingering.withLock { list -> ([ClientLock], UInt64?) in
                var due: [ClientLock] = []
                var next: UInt64?
                list.removeAll { entry in
                    if stopping || entry.until <= now {
                        due.append(entry.lock)
                        return true
                    }
                    next = min(next ?? entry.until, entry.until)
                    return false
                }
                return (due, next)
            }
            if !due.isEmpty {
                if stopping { for l in due { l.state.withLock { $0.lingerEnded = $0.invalidations.first?.id } } }
                work.withLock { $0.append(contentsOf: due) }
                continue
            }
            if stopping { return }
            if let next {
                _ = workerSignal.park(seconds: Double(next &- now) / 1e9)
            } else {
                workerSignal.park()
            }
        }
    }

    /// Reads of a lock that this client upgraded to a write twice in a row are asked for as
    /// writes from then on, until such a write goes unused: each upgrade costs a second
    /// hand-over (the other client gives up its read), and the pattern repeats for a
    /// directory created in or a file written again and again. Bounded: past 4,096 locks the
    /// table starts over.
    private func noteUpgrade(_ key: Key) {
        guard options.predictsUpgrades else { return }
        upgradeHints.withLock { h in
            if h.count >= 4096 && h[key] == nil { h.removeAll() }
            h[key, default: 0] += 1
        }
    }

    private func predictsUpgrade(_ key: Key) -> Bool {
        options.predictsUpgrades && upgradeHints.withLock { ($0[key] ?? 0) >= 2 }
    }

    private func forgetUpgrades(_ key: Key) {
        upgradeHints.withLock { _ = $0.removeValue(forKey: key) }
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    public static func monotonicNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    // MARK: inspection

    /// What the client holds of a lock (tests, status).
    public func grantedMode(_ range: LockRange) -> LockMode? {
        guard let l = find(range.start) else { return nil }
        defer { put(l) }
        return l.state.withLock { $0.granted }
    }

    /// What the client holds of a lock right now: the granted mode, the old mode while an
    /// invalidation runs, the users by mode and the write seq (simulation checks).
    func inspect(_ range: LockRange) -> (granted: LockMode, invalidating: LockMode?, users: UserCounts, writeSeq: UInt64)? {
        guard let l = find(range.start) else { return nil }
        defer { put(l) }
        return l.state.withLock { s in (s.granted, s.invalidating, s.users, s.writeSeq) }
    }

    /// Reference count of the lock starting at `range.start`, not counting the look-up itself.
    func references(_ range: LockRange) -> Int? {
        guard let l = find(range.start) else { return nil }
        defer { put(l) }
        return l.referenceCount - 1
    }

    /// Invalidations a hook failed (range and error), left unanswered.
    public var failedInvalidations: [String] { counters.withLock { $0.failedInvalidations } }

    /// An invalidation of `range` stopped unanswered (its hook failed): whoever waits for the
    /// lock may wait forever, and should give up.
    public func invalidationFailed(_ range: LockRange) -> Bool {
        counters.withLock { $0.failedRanges.contains(range.start) }
    }

    /// Counts of requests sent, grants and invalidations received, shrink requests, locks freed
    /// and lookups that retried on a lock being freed.
    public var statistics: (requests: Int, grants: Int, invalidations: Int, shrinkRequests: Int, freed: Int, retries: Int, waits: Int) {
        counters.withLock { ($0.requests, $0.grants, $0.invalidations, $0.shrinkRequests, $0.freed, $0.retries, $0.waits) }
    }
}
