#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
import ScoutFormat
import SystemPackage
import Synchronization

/// Lets a blocked request give up when the kernel interrupts it (FUSE INTERRUPT, sent when
/// the waiting process gets a signal).
public final class WaitCancellation: Sendable {
    private let cancelled = Atomic(false)
    private let parker = Mutex<Parker?>(nil)

    public init() {}

    public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }

    public func cancel() {
        cancelled.store(true, ordering: .releasing)
        parker.withLock { $0 }?.unpark()
    }

    func attach(_ p: Parker?) { parker.withLock { $0 = p } }
}

/// Thrown by an operation that found offline data: its locks and the transaction are let go,
/// the caller waits on the ticket, then runs the operation again from the start.
struct DataWaitNeeded: Error {
    let ticket: DataWaits.Ticket
}

/// Requests blocked on offline (released) file data, the original's data-waiting tree.
///
/// A waiter registers during its operation's turn at the inode, at the moment it finds
/// offline data, so a stage (which writes the inode and so waits for that turn) cannot slip
/// in between unseen; it then sleeps without any lock. Any change to the inode wakes its waiters, which retry and, if the data is still
/// offline, register again. `fail` (data-wait-err) makes matching waiters return an errno.
final class DataWaits: Sendable {
    struct Entry {
        var waiter: DataWaiter
        let parker: Parker
        var woken = false
        var error: Int32?
    }

    struct Ticket {
        let id: UInt64
        let parker: Parker
    }

    /// An injected error also fails requests that arrive soon after for the same region: the
    /// kernel answers a failed readahead by reading the page again, and that second request must
    /// not wait anew. A rule ends when the inode changes or after `errorRuleSeconds`.
    struct ErrorRule {
        var ino: UInt64
        var blocks: ClosedRange<UInt64>
        var ops: DataWaitOperation
        var error: Int32
        var expires: UInt64
    }

    static let errorRuleSeconds: UInt64 = 5

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var nextID: UInt64 = 1
        var rules: [ErrorRule] = []
    }

    private static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec)
    }

    private let state = Mutex(State())
    private let count = Atomic(0)
    /// Says when the mount is going away: waiters then give up (EIO) instead of holding the
    /// request threads that the session's shutdown joins.
    private let abandoned = Mutex<Callback<Void, Bool>?>(nil)

    func setAbandonCheck(_ check: @escaping @Sendable () -> Bool) { abandoned.withLock { $0 = Callback(check) } }

    var hasWaiters: Bool { count.load(ordering: .relaxed) > 0 }
    /// Requests waiting for offline data now.
    var waiting: Int { count.load(ordering: .relaxed) }

    func register(_ waiter: DataWaiter) -> Ticket {
        let p = Parker()
        let id = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            var e = Entry(waiter: waiter, parker: p)
            if !s.rules.isEmpty {
                let now = Self.now()
                s.rules.removeAll { $0.expires <= now }
                e.error = s.rules.first { $0.ino == waiter.ino && $0.blocks.contains(waiter.iblock) && !$0.ops.isDisjoint(with: waiter.op) }?.error
            }
            s.entries[id] = e
            return id
        }
        count.add(1, ordering: .relaxed)
        return Ticket(id: id, parker: p)
    }

    /// Sleeps until the inode changes, an error is injected, or `cancel` fires.
    func wait(_ t: Ticket, cancel: WaitCancellation?) throws(Errno) {
        cancel?.attach(t.parker)
        defer {
            cancel?.attach(nil)
            state.withLock { _ = $0.entries.removeValue(forKey: t.id) }
            count.subtract(1, ordering: .relaxed)
        }
        while true {
            let (woken, error) = state.withLock { s in (s.entries[t.id]?.woken ?? true, s.entries[t.id]?.error) }
            if let error { throw Errno(rawValue: error) }
            if woken { return }
            if cancel?.isCancelled == true { throw Errno.interrupted }
            if abandoned.withLock({ $0 })?.call(()) == true { throw Errno.ioError }
            // Woken by a change, an error or a cancel; the timeout only notices a shutdown.
            _ = t.parker.park(seconds: 1)
        }
    }

    /// Wakes every waiter on `ino` (its data may be online now).
    func wake(_ ino: UInt64) {
        wake(dropRules: true) { $0 == ino }
    }

    /// Wakes every waiter on an inode of inode group `group`: another client took the
    /// group's lock from this one, and may be staging what they wait for.
    func wake(inGroup group: UInt64) {
        guard hasWaiters else { return }
        wake(dropRules: false) { $0 / LockRange.groupSize == group }
    }

    private func wake(dropRules: Bool, _ matches: (UInt64) -> Bool) {
        let parkers: [Parker] = state.withLock { s in
            if dropRules { s.rules.removeAll { matches($0.ino) } }
            var out: [Parker] = []
            for (id, e) in s.entries where matches(e.waiter.ino) {
                s.entries[id]!.woken = true
                out.append(e.parker)
            }
            return out
        }
        for p in parkers { p.unpark() }
    }

    /// Waiters after `(ino, iblock)` in (ino, iblock) order.
    func list(after ino: UInt64, _ iblock: UInt64, limit: Int) -> [DataWaiter] {
        let all = state.withLock { s in s.entries.values.map(\.waiter) }
        return Array(all.filter { ($0.ino, $0.iblock) > (ino, iblock) }
            .sorted { ($0.ino, $0.iblock, $0.op.rawValue) < ($1.ino, $1.iblock, $1.op.rawValue) }
            .prefix(limit))
    }

    /// Fails waiters on `ino` whose block is in `[first, last]` and whose operation is one of
    /// `ops` with `error`; returns how many.
    func fail(ino: UInt64, blocks: ClosedRange<UInt64>, ops: DataWaitOperation, error: Int32) -> Int {
        let parkers: [Parker] = state.withLock { s in
            var out: [Parker] = []
            for (id, e) in s.entries where e.waiter.ino == ino && blocks.contains(e.waiter.iblock)
                && !e.waiter.op.isDisjoint(with: ops) && e.error == nil {
                s.entries[id]!.error = error
                out.append(e.parker)
            }
            s.rules.append(ErrorRule(ino: ino, blocks: blocks, ops: ops, error: error, expires: Self.now() + Self.errorRuleSeconds))
            return out
        }
        for p in parkers { p.unpark() }
        return parkers.count
    }
}
