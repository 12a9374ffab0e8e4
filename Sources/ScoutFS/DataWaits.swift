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

/// Thrown by an operation that found offline data: the filesystem lock is let go, the caller
/// waits on the ticket, then runs the operation again from the start.
struct DataWaitNeeded: Error {
    let ticket: DataWaits.Ticket
}

/// Requests blocked on offline (released) file data, the original's data-waiting tree.
///
/// A waiter registers under the filesystem lock, at the moment it finds offline data, so a
/// stage (which needs that lock) cannot slip in between unseen; it then sleeps without any
/// lock. Any change to the inode wakes its waiters, which retry and, if the data is still
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

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var nextID: UInt64 = 1
    }

    private let state = Mutex(State())
    private let count = Atomic(0)

    var hasWaiters: Bool { count.load(ordering: .relaxed) > 0 }

    func register(_ waiter: DataWaiter) -> Ticket {
        let p = Parker()
        let id = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            s.entries[id] = Entry(waiter: waiter, parker: p)
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
            t.parker.park()
        }
    }

    /// Wakes every waiter on `ino` (its data may be online now).
    func wake(_ ino: UInt64) {
        let parkers: [Parker] = state.withLock { s in
            var out: [Parker] = []
            for (id, e) in s.entries where e.waiter.ino == ino {
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
            return out
        }
        for p in parkers { p.unpark() }
        return parkers.count
    }
}
