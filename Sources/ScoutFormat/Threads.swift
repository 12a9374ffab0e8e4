#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A plain POSIX thread. Background loops of the mount (heartbeat, commit timer, control
/// connections) block in syscalls, so they get threads of their own rather than tasks, which
/// would tie up Swift's small cooperative pool. Lives in the lowest layer so that every layer
/// shares one way to start a thread.
// @unchecked Sendable: `thread` is written once in init, before the value is shared, and
// `joined` only under `lock`.
public final class JoinableThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var joined = false

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread; `what` names it in the error when the system refuses.
    public init(_ what: String, _ body: @escaping @Sendable () -> Void) throws(ThreadError) {
        lock.initialize(to: pthread_mutex_t())
        pthread_mutex_init(lock, nil)
        let box = Unmanaged.passRetained(Box(body))
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            joined = true
            throw ThreadError(what: what, errno: rc)
        }
    }

    /// Waits for the thread to end; later calls return at once.
    public func join() {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !joined else { return }
        pthread_join(thread, nil)
        joined = true
    }

    deinit {
        // A thread nobody waited for must not stay joinable, or its resources stay too.
        if !joined { pthread_detach(thread) }
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` on a thread nobody waits for.
    public static func detach(_ what: String, _ body: @escaping @Sendable () -> Void) throws(ThreadError) {
        _ = try JoinableThread(what, body)
    }
}

/// The system would not start a thread (EAGAIN: too many threads or too little memory).
public struct ThreadError: Error, CustomStringConvertible, Sendable {
    public var what: String
    public var errno: Int32

    public var description: String { "cannot start a thread for \(what): \(String(cString: strerror(errno)))" }
}

/// A thread of its own that runs one job at a time beside its caller: `start` hands a job
/// over, `finish` waits for it and rethrows what it threw. The server's commit reads the
/// quorum blocks on one while its own flushes run, where the read came after them.
public final class SideThread: Sendable {
    private final class Shared: Sendable {
        struct State {
            var job: (@Sendable () throws -> Void)?
            var outcome: Result<Void, any Error>?
            var stopped = false
        }
        let state = Mutex(State())
        let wake = Parker()
        let done = Parker()

        func run() {
            while true {
                wake.park()
                let (job, stopped) = state.withLock { s in (s.job.take(), s.stopped) }
                if stopped { return }
                guard let job else { continue }
                let outcome = Result { try job() }
                state.withLock { $0.outcome = outcome }
                done.unpark()
            }
        }
    }
    private let shared = Shared()

    /// Starts the thread; `what` names it in the error when the system refuses.
    public init(_ what: String) throws(ThreadError) {
        try JoinableThread.detach(what) { [shared] in shared.run() }
    }

    deinit {
        shared.state.withLock { $0.stopped = true }
        shared.wake.unpark()
    }

    /// Hands `job` to the thread. One job at a time: `finish` before the next `start`.
    public func start(_ job: @escaping @Sendable () throws -> Void) {
        shared.state.withLock { s in
            precondition(s.job == nil && s.outcome == nil, "a side thread's job started before the last one finished")
            s.job = job
        }
        shared.wake.unpark()
    }

    /// Waits for the job `start` handed over, and rethrows what it threw.
    public func finish() throws {
        while true {
            if let outcome = shared.state.withLock({ $0.outcome.take() }) { return try outcome.get() }
            shared.done.park()
        }
    }
}
