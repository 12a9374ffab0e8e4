#if canImport(Glibc)
import Glibc
#endif

/// A thread running a closure, joinable (Foundation's Thread cannot be joined).
public final class Thread: @unchecked Sendable {
    // @unchecked: `body` is only read by the started thread; `tid` only by the starter.
    let body: @Sendable () -> Void
    var tid = pthread_t()

    public init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    public func start() {
        let me = Unmanaged.passRetained(self)
        pthread_create(&tid, nil, { arg in
            let t = Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, me.toOpaque())
    }

    public func join() { pthread_join(tid, nil) }
}
