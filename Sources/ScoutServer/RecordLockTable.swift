public import ScoutFormat
import Synchronization

/// Every flock and POSIX record lock of the cluster, kept by the server (the original leaves
/// them to each node's kernel, where a lock taken on one node means nothing on another).
/// Nothing here is on disk: locks live as long as their client's session, and a client whose
/// session ends (it left, crashed or stayed away) loses them all, as a process that dies does.
///
/// A blocking request does not wait here: a conflict is answered at once, and the client is
/// told (`notify`) when locks on that inode change, then asks again. No request of one client
/// can hold up the server's handling of another's.
public final class RecordLockTable: Sendable {
    private struct State {
        /// By inode; both kinds, in the order taken.
        var locks: [UInt64: [RecordLock]] = [:]
        /// Clients with a request that conflicted and will ask again, by inode.
        var waiting: [UInt64: Set<UInt64>] = [:]
        /// Nodes an earlier server may have granted locks to that have not told this one
        /// which (`reclaim`) nor been given up.
        var recovering: Set<UInt64> = []
    }
    private let state = Mutex(State())
    /// Tells client `.0` that locks on inode `.1` changed. Behind a reference: a closure kept
    /// in a mutex grows a thunk at every read (`Callback`).
    private let notifier = Mutex<Callback<(UInt64, UInt64), Void>?>(nil)

    public init() {}

    /// How clients learn that locks they wait for may be free now.
    public func setNotifier(_ notify: @escaping @Sendable (_ client: UInt64, _ ino: UInt64) -> Void) {
        notifier.withLock { $0 = Callback { notify($0.0, $0.1) } }
    }

    /// Takes, changes or lets go of `lock` for its holder; the lock in the way if another
    /// owner's conflicts (nothing changes then). With `wait`, the holder's client is told
    /// when locks on the inode next change. An owner's locks of one kind never overlap: a new
    /// range replaces what it covers of the owner's others, and touching ranges of one type
    /// become one, as POSIX asks.
    public func set(_ lock: RecordLock, wait: Bool) -> RecordLock? {
        apply(lock, wait: wait, checked: true)
    }

    /// Takes `lock` as it stands, whatever else is held: a lock an earlier server granted
    /// (it found it free then), or one a node's own copy of what it holds records.
    public func install(_ lock: RecordLock) {
        _ = apply(lock, wait: false, checked: false)
    }

    private func apply(_ lock: RecordLock, wait: Bool, checked: Bool) -> RecordLock? {
        let (conflict, wake) = state.withLock { s -> (RecordLock?, Set<UInt64>) in
            let held = s.locks[lock.ino] ?? []
            if checked, lock.type != .unlock, let c = held.first(where: { $0.conflicts(with: lock) }) {
                if wait { s.waiting[lock.ino, default: []].insert(lock.holder.client) }
                return (c, [])
            }
            var kept: [RecordLock] = []
            kept.reserveCapacity(held.count + 1)
            var merged = lock
            var released = false
            for l in held {
                guard l.kind == lock.kind, l.holder == lock.holder else {
                    kept.append(l)
                    continue
                }
                let touches = l.overlaps(lock.start, lock.end) || l.end &+ 1 == lock.start || lock.end &+ 1 == l.start
                if lock.type != .unlock, l.type == lock.type, touches {
                    merged.start = min(merged.start, l.start)
                    merged.end = max(merged.end, l.end)
                    continue
                }
                guard l.overlaps(lock.start, lock.end) else {
                    kept.append(l)
                    continue
                }
                // What lies outside the new range stays as it was; what is inside is let go
                // or becomes the new type.
                if l.start < lock.start {
                    var head = l
                    head.end = lock.start - 1
                    kept.append(head)
                }
                if l.end > lock.end {
                    var tail = l
                    tail.start = lock.end + 1
                    kept.append(tail)
                }
                released = true
            }
            if lock.type != .unlock { kept.append(merged) }
            s.locks[lock.ino] = kept.isEmpty ? nil : kept
            guard released else { return (nil, []) }
            return (nil, s.waiting.removeValue(forKey: lock.ino) ?? [])
        }
        tell(wake, lock.ino)
        return conflict
    }

    /// The first lock of another owner that keeps `lock` from being taken (F_GETLK); nil if
    /// it could be taken now.
    public func test(_ lock: RecordLock) -> RecordLock? {
        guard lock.type != .unlock else { return nil }
        return state.withLock { $0.locks[lock.ino]?.first { $0.conflicts(with: lock) } }
    }

    /// A new server waits for `clients` (the nodes its predecessor had) to say which locks
    /// they hold before it takes or tests any (`recovering`): an answer given sooner could
    /// hand out a range a node still holds.
    public func awaitReclaim(from clients: some Sequence<UInt64>) {
        state.withLock { $0.recovering.formUnion(clients) }
    }

    /// Whether a node an earlier server had has not yet said which locks it holds (nor been
    /// given up). Once false it stays false.
    public var recovering: Bool { state.withLock { !$0.recovering.isEmpty } }

    /// `client`'s locks as an earlier server granted them, installed as they stand (that
    /// server found them free of conflicts, and nothing was granted since); `last` ends the
    /// client's part of the recovery.
    public func reclaim(_ client: UInt64, _ locks: [RecordLock], last: Bool) {
        for var l in locks where l.type != .unlock {
            l.holder.client = client
            install(l)
        }
        if last { state.withLock { _ = $0.recovering.remove(client) } }
    }

    /// Every lock held (a node's copy of its own, sent to a new server).
    public var all: [RecordLock] {
        state.withLock { s in s.locks.keys.sorted().flatMap { s.locks[$0] ?? [] } }
    }

    /// Client `client`'s session is over: its locks go, and whoever waits for them is told.
    public func clientGone(_ client: UInt64) {
        let wake = state.withLock { s -> [(UInt64, Set<UInt64>)] in
            s.recovering.remove(client)
            var wake: [(UInt64, Set<UInt64>)] = []
            for (ino, held) in s.locks where held.contains(where: { $0.holder.client == client }) {
                let kept = held.filter { $0.holder.client != client }
                s.locks[ino] = kept.isEmpty ? nil : kept
                if var w = s.waiting.removeValue(forKey: ino) {
                    w.remove(client)
                    wake.append((ino, w))
                }
            }
            for ino in Array(s.waiting.keys) {
                s.waiting[ino]?.remove(client)
                if s.waiting[ino]?.isEmpty == true { s.waiting[ino] = nil }
            }
            return wake
        }
        for (ino, clients) in wake { tell(clients, ino) }
    }

    /// Locks held, of every client (tests).
    public var count: Int { state.withLock { $0.locks.values.reduce(0) { $0 + $1.count } } }

    /// The locks held on `ino`, in the order taken (tests).
    public func locks(on ino: UInt64) -> [RecordLock] { state.withLock { $0.locks[ino] ?? [] } }

    private func tell(_ clients: Set<UInt64>, _ ino: UInt64) {
        guard !clients.isEmpty, let n = notifier.withLock({ $0 }) else { return }
        for c in clients { n.call((c, ino)) }
    }
}
