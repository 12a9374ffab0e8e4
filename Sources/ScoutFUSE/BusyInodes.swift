import ScoutFormat
import Synchronization

/// Inodes with a request of this mount in flight that the kernel made while holding a lock of
/// theirs: a directory's inode lock (a lookup, create, unlink or rename in it, a listing of it,
/// a change of its attributes or xattrs), a file's page locks (a read or write of it, which
/// keeps the pages it covers locked until answered). Dropping a name in such a directory, or
/// the pages of such a file, from the kernel's cache takes those locks, so it waits until the
/// request is answered; and the request may itself be waiting for the very cluster lock being
/// given up. The kernel notifier does not make a lock hand-over wait for them
/// (`KernelNotifier.flush`).
///
/// The kernel takes a directory's lock before the request reaches the daemon, and keeps it
/// from a lookup through the create that follows: a hand-over can start while the kernel
/// holds a lock that no request marks yet. Whoever waits on the marks (`watch`) is woken at
/// each new one, to look again.
final class BusyInodes: Sendable {
    private let counts = BlockingMutex<[UInt64: Int]>([:])
    private let watchers = BlockingMutex<[Parker]>([])
    /// Checked on every request without the mutex: watchers are rare (a hand-over's flush).
    private let watched = Atomic<Int>(0)

    func enter(_ ino: UInt64) {
        counts.withLock { $0[ino, default: 0] += 1 }
        guard watched.load(ordering: .acquiring) > 0 else { return }
        for p in watchers.withLock({ $0 }) { p.unpark() }
    }

    /// Unparks `p` at every `enter` until `unwatch`.
    func watch(_ p: Parker) {
        watchers.withLock { $0.append(p) }
        watched.add(1, ordering: .releasing)
    }

    func unwatch(_ p: Parker) {
        watchers.withLock { $0.removeAll { $0 === p } }
        watched.subtract(1, ordering: .releasing)
    }

    func leave(_ ino: UInt64) {
        counts.withLock { c in
            if let n = c[ino], n > 1 { c[ino] = n - 1 } else { c[ino] = nil }
        }
    }

    func contains(_ ino: UInt64) -> Bool { counts.withLock { $0[ino] != nil } }
}
