#if SCOUT_TSAN
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex with `Synchronization.Mutex`'s interface, used only by thread-sanitizer
/// builds (`-Xswiftc -DSCOUT_TSAN`, see scripts/tsan.sh).
///
/// `Synchronization.Mutex` takes and hands over a contended lock in its futex slow path, which
/// lives in the uninstrumented standard library: the sanitizer sees the fast-path atomics but
/// not the handover, and reports races inside correctly locked sections (a two-thread counter
/// guarded by a Mutex is enough). The sanitizer intercepts pthread mutexes, so modules under test
/// alias `Mutex` to this type in those builds and every report left is about our own code.
public final class SanitizerMutex<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    public func withLockIfAvailable<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
#endif
