#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
import ScoutFormat
import SystemPackage
import Synchronization

/// The blocking record lock requests of one client (F_SETLKW, flock without LOCK_NB), each
/// waiting for the server's table to let it in. They wait here, on one thread of their own,
/// not on the thread that brought them: a FUSE worker that slept for a lock could leave none
/// to bring the request that lets it go. A request is tried again when the server says locks
/// on its inode changed (`changed`), when its waiter is interrupted, and each second in case
/// a notice was lost with a broken connection.
final class RecordLockWaits: Sendable {
    private struct Pending {
        let lock: RecordLock
        let cancel: WaitCancellation?
        let done: Callback<Errno?, Void>
        /// Set by a change on the inode since the last try.
        var due = true
        var nextTry = ContinuousClock.now
    }

    private struct State {
        var pending: [UInt64: Pending] = [:]
        var nextID: UInt64 = 1
        var running = false
        var stopped = false
    }

    private let state = Mutex(State())
    private let parker = Parker()
    /// One try of a lock: the lock in the way, or nil when taken.
    private let attempt: Callback<RecordLock, Result<RecordLock?, Errno>>
    private let log: Callback<String, Void>

    init(attempt: @escaping @Sendable (RecordLock) -> Result<RecordLock?, Errno>, log: @escaping @Sendable (String) -> Void) {
        self.attempt = Callback(attempt)
        self.log = Callback(log)
    }

    /// Waits for `lock` and calls `done` once: nil when it is taken, EINTR when `cancel` fires,
    /// another errno when the server cannot be asked.
    func wait(for lock: RecordLock, cancel: WaitCancellation?, done: @escaping @Sendable (Errno?) -> Void) {
        let start = state.withLock { s -> Bool? in
            if s.stopped { return nil }
            s.pending[s.nextID] = Pending(lock: lock, cancel: cancel, done: Callback(done))
            s.nextID += 1
            defer { s.running = true }
            return !s.running
        }
        guard let start else { return done(.ioError) }
        cancel?.attach(parker)
        if start {
            do {
                try JoinableThread.detach("record lock waits") { [self] in run() }
            } catch {
                log.call("error: \(error); blocking record locks fail until a thread can start")
                state.withLock { $0.running = false }
                failAll(Errno(rawValue: ENOLCK))
                return
            }
        }
        parker.unpark()
    }

    /// Locks on `ino` changed: its waiters try again now.
    func changed(_ ino: UInt64) {
        let any = state.withLock { s -> Bool in
            var any = false
            for (id, p) in s.pending where p.lock.ino == ino {
                s.pending[id]?.due = true
                any = true
            }
            return any
        }
        if any { parker.unpark() }
    }

    /// The client leaves: every waiter fails with EIO and new ones are refused.
    func stop() {
        state.withLock { $0.stopped = true }
        failAll(.ioError)
    }

    var waiting: Int { state.withLock { $0.pending.count } }

    private func failAll(_ e: Errno) {
        let all = state.withLock { s -> [Pending] in
            defer { s.pending.removeAll() }
            return Array(s.pending.values)
        }
        for p in all { finish(p, e) }
    }

    private func finish(_ p: Pending, _ e: Errno?) {
        p.cancel?.attach(nil)
        p.done.call(e)
    }

    private func run() {
        while true {
            let now = ContinuousClock.now
            let work = state.withLock { s -> [(UInt64, Pending)]? in
                if s.pending.isEmpty {
                    s.running = false
                    return nil
                }
                var work: [(UInt64, Pending)] = []
                for (id, p) in s.pending where p.due || p.nextTry <= now || p.cancel?.isCancelled == true {
                    s.pending[id]?.due = false
                    s.pending[id]?.nextTry = now + .seconds(1)
                    work.append((id, p))
                }
                return work
            }
            guard let work else { return }
            for (id, p) in work {
                let outcome: Errno?
                if p.cancel?.isCancelled == true {
                    outcome = .interrupted
                } else {
                    switch attempt.call(p.lock) {
                    case .success(nil): outcome = nil
                    case .success(.some): continue
                    case .failure(let e): outcome = e
                    }
                }
                // `stop` may have failed it already.
                guard state.withLock({ $0.pending.removeValue(forKey: id) }) != nil else { continue }
                finish(p, outcome)
            }
            if work.isEmpty { _ = parker.park(seconds: 1) }
        }
    }
}
