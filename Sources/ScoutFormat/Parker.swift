#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A thread blocks in `park()` until another thread calls `unpark()`; an `unpark` that comes
/// first is remembered, so a wake-up between "decide to wait" and "wait" is never lost. Used for
/// lock waiters (FUSE worker threads block synchronously: a hop into Swift concurrency would cost
/// more than the lock) and for the invalidation worker.
public final class Parker: @unchecked Sendable {
    // @unchecked: the pthread objects live at fixed heap addresses and are only touched through
    // pthread calls, which do their own synchronization; `permit` is guarded by `mutex`.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var permit = false

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    public func park() {
        pthread_mutex_lock(mutex)
        while !permit { pthread_cond_wait(cond, mutex) }
        permit = false
        pthread_mutex_unlock(mutex)
    }

    /// Waits at most `seconds`; true when unparked, false on timeout.
    public func park(seconds: Double) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let total = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + seconds
        var deadline = timespec(tv_sec: Int(total), tv_nsec: Int((total - total.rounded(.down)) * 1e9))
        pthread_mutex_lock(mutex)
        while !permit {
            if pthread_cond_timedwait(cond, mutex, &deadline) == ETIMEDOUT { break }
        }
        let woke = permit
        permit = false
        pthread_mutex_unlock(mutex)
        return woke
    }

    public func unpark() {
        pthread_mutex_lock(mutex)
        permit = true
        pthread_cond_signal(cond)
        pthread_mutex_unlock(mutex)
    }
}
