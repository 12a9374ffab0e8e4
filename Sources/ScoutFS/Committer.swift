#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
public import ScoutFormat
import Synchronization

/// glibc's malloc_trim, which the Glibc module does not export.
let mallocTrim: (@convention(c) (Int) -> Int32)? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) (Int) -> Int32).self)
}()

/// Commits the open transaction every few seconds on its own thread, and at once when an
/// operation finds the transaction past its dirty limit; tells `published` each new committed
/// seq (the mount rewrites its status record with it).
public final class Committer: Sendable {
    let fs: Filesystem
    let interval: Duration
    let published: @Sendable (UInt64) -> Void
    private let wake = Parker()
    private let running = Atomic(false)
    private let thread = Mutex<JoinableThread?>(nil)

    public init(fs: Filesystem, interval: Duration, published: @escaping @Sendable (UInt64) -> Void) {
        self.fs = fs
        self.interval = interval
        self.published = published
    }

    public func start() throws(ThreadError) {
        running.store(true, ordering: .releasing)
        let t = try JoinableThread("the commit timer") { [self] in loop() }
        thread.withLock { $0 = t }
        // Operations past the dirty limit wake this thread instead of committing themselves.
        fs.backgroundCommit.withLock { $0 = wake }
    }

    /// Stops the timer and waits for a commit in progress and its `published` call, so nothing
    /// publishes a status record after unmount has removed it.
    public func stop() {
        fs.backgroundCommit.withLock { $0 = nil }
        running.store(false, ordering: .releasing)
        wake.unpark()
        let t = thread.withLock { t -> JoinableThread? in
            defer { t = nil }
            return t
        }
        t?.join()
    }

    private func loop() {
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        var last = fs.committedSeq
        while running.load(ordering: .acquiring) {
            _ = wake.park(seconds: seconds)
            guard running.load(ordering: .acquiring) else { return }
            do {
                try fs.commitIfDirty()
            } catch {
                fs.shared.log("periodic commit failed: \(error)")
            }
            let seq = fs.committedSeq
            if seq != last {
                last = seq
                published(seq)
            }
            // Commits turn dirty blocks into evictable clean ones and the kernel's FORGETs
            // shrink per-inode state; give what malloc holds unused back, so the daemon's RSS
            // follows its caches rather than its past peaks.
            _ = mallocTrim?(0)
        }
    }
}
