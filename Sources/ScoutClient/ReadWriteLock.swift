#if canImport(Glibc)
import Glibc
#endif

/// A reader-writer lock that lets a waiting writer in before new readers: a commit (the
/// writer) must not starve behind a stream of operations (the readers), each of which is short.
// @unchecked Sendable: the rwlock is the synchronization; its storage never moves.
public final class ReadWriteLock: @unchecked Sendable {
    private let rw: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        rw = .allocate(capacity: 1)
        rw.initialize(to: pthread_rwlock_t())
        var attr = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(rw, &attr)
        pthread_rwlockattr_destroy(&attr)
    }

    deinit {
        pthread_rwlock_destroy(rw)
        rw.deallocate()
    }

    public func lockShared() { pthread_rwlock_rdlock(rw) }
    public func lockExclusive() { pthread_rwlock_wrlock(rw) }
    public func unlock() { pthread_rwlock_unlock(rw) }

    /// Takes the lock shared if nobody holds or waits for it exclusively; never waits.
    public func tryLockShared() -> Bool { pthread_rwlock_tryrdlock(rw) == 0 }
    /// Takes the lock exclusively if nobody holds it; never waits.
    public func tryLockExclusive() -> Bool { pthread_rwlock_trywrlock(rw) == 0 }

    public func withShared<T>(_ body: () throws -> T) rethrows -> T {
        lockShared()
        defer { unlock() }
        return try body()
    }

    public func withExclusive<T>(_ body: () throws -> T) rethrows -> T {
        lockExclusive()
        defer { unlock() }
        return try body()
    }
}
