#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex with `Synchronization.Mutex`'s interface: the mutex of every module above
/// this one (each aliases `Mutex` to it).
///
/// Two reasons. `Synchronization.Mutex` spins before it sleeps, and on a machine with few
/// CPUs, two threads taking one contended mutex (two processes unlinking in their own
/// directories, whose inodes share one item cache partition) spent 42% of the daemon's time
/// spinning while the holder waited for a CPU: unlinks ran at a third of their one-process
/// rate; with this mutex, which sleeps at once, two processes ran 1.6× one. And the thread
/// sanitizer sees pthread mutexes, while `Synchronization.Mutex` hands a contended lock over
/// in its uninstrumented futex slow path, so the sanitizer reported races inside correctly
/// locked sections.
///
/// Keep a closure in it through a `Callback`, never as the value itself (`Callback` says why).
public final class BlockingMutex<Value>: @unchecked Sendable {
    // @unchecked: `storage` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// The value with a byte beside it: the sanitizer reports an access to a zero-sized value
    /// (a `Mutex<Void>`) at the object's own address, where it seems to race with every read of
    /// `mutex` made before locking it.
    private var storage: (value: Value, pad: UInt8)

    public init(_ value: Value) {
        storage = (value, 0)
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
        return try body(&storage.value)
    }

    public func withLockIfAvailable<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.value)
    }
}
