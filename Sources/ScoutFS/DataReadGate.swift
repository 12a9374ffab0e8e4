#if canImport(Glibc)
import Glibc
#endif

/// Lets file data be read from the data device without the filesystem lock, safely.
///
/// A reader maps its extents under the filesystem lock and enters the gate before letting the
/// lock go; it then reads the device and leaves. A commit — the moment blocks freed by a
/// truncate or unlink become allocatable again — closes the gate and waits for readers inside
/// to leave, so no read can see a block after another file has been given it. No reader can
/// enter while a commit waits: entering needs the filesystem lock, which the commit holds.
// @unchecked Sendable: the rwlock is the synchronization; its storage never moves.
final class DataReadGate: @unchecked Sendable {
    private let rw: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        rw = .allocate(capacity: 1)
        rw.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(rw, nil)
    }

    deinit {
        pthread_rwlock_destroy(rw)
        rw.deallocate()
    }

    func enter() { pthread_rwlock_rdlock(rw) }

    func leave() { pthread_rwlock_unlock(rw) }

    /// Runs `body` with no reader inside.
    func closed<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_wrlock(rw)
        defer { pthread_rwlock_unlock(rw) }
        return try body()
    }
}
