#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import ScoutClient
import ScoutFS
import ScoutFormat

/// Tells the kernel what to drop from its caches when this client gives a lock up, from a
/// thread of its own. A notification can wait inside the kernel: dropping a name takes its
/// directory's inode lock, which a request in that directory may hold while it waits in the
/// filesystem for the very lock being given up. So the lock hook only queues here and answers;
/// the notifier waits instead, never the hook.
final class KernelNotifier: KernelInvalidation, @unchecked Sendable {
    // @unchecked: `session` is only used through libfuse's notify calls, which are
    // thread-safe; the queue is behind its mutex.
    enum Note {
        case inode(UInt64)
        case entry(UInt64, [UInt8])
    }

    private let session: UInt
    private let queue = BlockingMutex<(notes: [Note], stopping: Bool)>(([], false))
    private let wake = Parker()
    private var thread: JoinableThread?

    init(session: OpaquePointer) throws(ThreadError) {
        self.session = UInt(bitPattern: session)
        thread = try JoinableThread("kernel cache notifier") { [self] in run() }
    }

    func invalidateInode(_ ino: UInt64) {
        queue.withLock { $0.notes.append(.inode(ino)) }
        wake.unpark()
    }

    func invalidateEntry(_ parent: UInt64, _ name: [UInt8]) {
        queue.withLock { $0.notes.append(.entry(parent, name)) }
        wake.unpark()
    }

    private func run() {
        while true {
            let (notes, stopping) = queue.withLock { q in
                defer { q.notes = [] }
                return (q.notes, q.stopping)
            }
            let se = OpaquePointer(bitPattern: session)
            for n in notes {
                // ENOENT (the kernel no longer holds it) is the common answer and needs nothing.
                switch n {
                case .inode(let ino):
                    _ = fuse_lowlevel_notify_inval_inode(se, ino, 0, 0)
                case .entry(let parent, let name):
                    _ = name.withUnsafeBufferPointer { b in
                        b.withMemoryRebound(to: CChar.self) { c in
                            fuse_lowlevel_notify_inval_entry(se, parent, c.baseAddress, c.count)
                        }
                    }
                }
            }
            if stopping { return }
            if notes.isEmpty { wake.park() }
        }
    }

    /// Sends what is queued and ends the thread; call before the session goes.
    func stop() {
        queue.withLock { $0.stopping = true }
        wake.unpark()
        thread?.join()
        thread = nil
    }
}
