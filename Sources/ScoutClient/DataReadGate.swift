#if canImport(Glibc)
import Glibc
#endif

/// Lets file data be read from the data device outside the transaction, safely.
///
/// A reader maps its extents with the transaction held and enters the gate before letting it
/// go; it then reads the device and leaves. A commit — the moment blocks freed by a
/// truncate or unlink become allocatable again — closes the gate and waits for readers inside
/// to leave, so no read can see a block after another file has been given it. No reader can
/// enter while a commit waits: entering needs the transaction, which the commit holds.
// @unchecked Sendable: the rwlock is the synchronization; its storage never moves.
public final class DataReadGate: @unchecked Sendable {
    private let rw: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        rw = .allocate(capacity: 1)
        rw.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(rw, nil)
    }

    deinit {
        pthread_rwlock_destroy(rw)
        rw.deallocate()
    }

    public func enter() { pthread_rwlock_rdlock(rw) }

    public func leave() { pthread_rwlock_unlock(rw) }

    /// Runs `body` with no reader inside.
    public func closed<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_wrlock(rw)
        defer { pthread_rwlock_unlock(rw) }
        return try body()
    }
}
