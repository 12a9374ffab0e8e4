#if canImport(Glibc)
import Glibc
#endif

/// Runs `body(thread)` on `n` threads at once and waits for them.
public func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Job: @unchecked Sendable {
        // @unchecked: written before the thread starts, read only by it.
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ b: @escaping @Sendable (Int) -> Void, _ i: Int) { body = b; index = i }
    }
    var tids: [pthread_t] = []
    for i in 0..<n {
        var t = pthread_t()
        let job = Unmanaged.passRetained(Job(body, i)).toOpaque()
        pthread_create(&t, nil, { arg in
            let j = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
            j.body(j.index)
            return nil
        }, job)
        tids.append(t)
    }
    for t in tids { pthread_join(t, nil) }
}
