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
///
/// Attribute and xattr reads are marked apart (`Kind.inodeLock`): the kernel may hold the
/// inode's lock for them (a directory whose permissions a create checks), never its pages,
/// so they hold back a name in that directory but not the dropping of the inode's pages.
final class BusyInodes: Sendable {
    enum Kind {
        /// A lookup, create, listing, read, write, …: the directory's lock or the pages.
        case held
        /// An attribute or xattr read: at most the inode's lock.
        case inodeLock
    }

    private struct Counts {
        var held: [UInt64: Int] = [:]
        var inodeLock: [UInt64: Int] = [:]
    }
    private let counts = BlockingMutex(Counts())
    private let watchers = BlockingMutex<[Parker]>([])
    /// Checked on every request without the mutex: watchers are rare (a hand-over's flush).
    private let watched = Atomic<Int>(0)

    func enter(_ ino: UInt64, _ kind: Kind = .held) {
        counts.withLock { c in
            switch kind {
            case .held: c.held[ino, default: 0] += 1
            case .inodeLock: c.inodeLock[ino, default: 0] += 1
            }
        }
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

    func leave(_ ino: UInt64, _ kind: Kind = .held) {
        counts.withLock { c in
            switch kind {
            case .held: Self.drop(ino, from: &c.held)
            case .inodeLock: Self.drop(ino, from: &c.inodeLock)
            }
        }
    }

    private static func drop(_ ino: UInt64, from m: inout [UInt64: Int]) {
        if let n = m[ino], n > 1 { m[ino] = n - 1 } else { m[ino] = nil }
    }

    /// A request may hold directory `ino`'s lock: dropping a name in it may wait for it.
    func holdsDirectory(_ ino: UInt64) -> Bool { counts.withLock { $0.held[ino] != nil || $0.inodeLock[ino] != nil } }

    /// A request may hold pages of `ino`: dropping them may wait for it.
    func holdsPages(_ ino: UInt64) -> Bool { counts.withLock { $0.held[ino] != nil } }
}
