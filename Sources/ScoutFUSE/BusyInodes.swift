import ScoutFormat

/// Inodes with a request of this mount in flight that the kernel made while holding a lock of
/// theirs: a directory's inode lock (a lookup, create, unlink or rename in it, a listing of it,
/// a change of its attributes or xattrs), a file's page locks (a read or write of it, which
/// keeps the pages it covers locked until answered). Dropping a name in such a directory, or
/// the pages of such a file, from the kernel's cache takes those locks, so it waits until the
/// request is answered; and the request may itself be waiting for the very cluster lock being
/// given up. The kernel notifier does not make a lock hand-over wait for them
/// (`KernelNotifier.flush`).
final class BusyInodes: Sendable {
    private let counts = BlockingMutex<[UInt64: Int]>([:])

    func enter(_ ino: UInt64) {
        counts.withLock { $0[ino, default: 0] += 1 }
    }

    func leave(_ ino: UInt64) {
        counts.withLock { c in
            if let n = c[ino], n > 1 { c[ino] = n - 1 } else { c[ino] = nil }
        }
    }

    func contains(_ ino: UInt64) -> Bool { counts.withLock { $0[ino] != nil } }
}
