#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import ScoutClient
import ScoutFS
import ScoutFormat
import Synchronization

/// Drops the kernel's cached attributes of `ino` on `session`. A negative offset: attributes
/// only, which the kernel drops by bumping a version under a spinlock, so this never waits
/// on a request.
func dropKernelAttributes(_ session: OpaquePointer?, _ ino: UInt64) {
    _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)
}

/// Drops the kernel's entry `name` in directory `parent` on `session`: takes the directory's
/// inode lock in the kernel, so it waits for a request that holds it.
func dropKernelEntry(_ session: OpaquePointer?, _ parent: UInt64, _ name: [UInt8]) {
    _ = name.withUnsafeBufferPointer { b in
        b.withMemoryRebound(to: CChar.self) { c in
            fuse_lowlevel_notify_inval_entry(session, parent, c.baseAddress, c.count)
        }
    }
}

/// Tells the kernel what to drop from its caches when this client gives a lock up. Attributes
/// are dropped on the spot: the kernel only bumps a version under a spinlock. Names and pages
/// go through a thread of its own, because those notifications can wait inside the kernel:
/// dropping a name takes its directory's inode lock, and dropping pages their page locks,
/// which a request may hold while it waits in the filesystem for the very lock being given
/// up. The hook waits for the thread a bounded time (`flush`): long enough that the next
/// syscall after the lock moved finds nothing stale, short enough that such a request only
/// delays it.
final class KernelNotifier: KernelInvalidation, @unchecked Sendable {
    // @unchecked: `session` is only used through libfuse's notify calls, which are
    // thread-safe; the queue is behind its mutex.
    enum Note {
        case inode(UInt64)
        case entry(UInt64, [UInt8])
    }

    private let session: UInt
    /// Inodes whose directory or page locks a request of this mount holds in the kernel now.
    private let busy: BusyInodes
    private struct Queue {
        var notes: [Note] = []
        /// The batch the thread is sending (a name in it may be waiting for its directory).
        var sending: [Note] = []
        var sendingDone = 0
        var stopping = false
        /// Notes queued and notes sent since the start, and the hooks waiting for a count.
        var queued: UInt64 = 0
        var sent: UInt64 = 0
        var waiting: [(upTo: UInt64, parker: Parker)] = []
        /// Names to drop to keep the kernel's inodes within their bound: sent when no hook's
        /// notes wait, never waited for, and dropped past `pruneLimit` (a later pass over the
        /// bound asks again).
        var prunes = FIFO<(parent: UInt64, name: [UInt8])>()
    }
    private static let pruneLimit = 1 << 16
    /// Behind a reference: a closure kept as the mutex's value itself grows two conversion
    /// thunks at each read (`Callback`), and this one is read at every turn of the thread;
    /// after about 260,000 turns (a million creates) a call overflowed the stack.
    private let idle = Mutex<Callback<Void, Void>?>(nil)
    /// Prunes sent before the queue is looked at again for a hook's notes.
    private static let pruneBatch = 32
    private let queue = BlockingMutex(Queue())
    private let wake = Parker()
    private var thread: JoinableThread?

    init(session: OpaquePointer, busy: BusyInodes) throws(ThreadError) {
        self.session = UInt(bitPattern: session)
        self.busy = busy
        thread = try JoinableThread("kernel cache notifier") { [self] in run() }
    }

    func invalidateAttributes(_ ino: UInt64) {
        dropKernelAttributes(OpaquePointer(bitPattern: session), ino)
    }

    func invalidateInode(_ ino: UInt64) {
        queue.withLock { q in
            q.notes.append(.inode(ino))
            q.queued += 1
        }
        wake.unpark()
    }

    func invalidateEntry(_ parent: UInt64, _ name: [UInt8]) {
        queue.withLock { q in
            q.notes.append(.entry(parent, name))
            q.queued += 1
        }
        wake.unpark()
    }

    func whenIdle(_ body: @escaping @Sendable () -> Void) {
        idle.withLock { $0 = Callback(body) }
        wake.unpark()
    }

    func pruneEntry(_ parent: UInt64, _ name: [UInt8]) {
        let queued = queue.withLock { q in
            guard q.prunes.count < Self.pruneLimit else { return false }
            q.prunes.append((parent, name))
            return true
        }
        if queued { wake.unpark() }
    }

    /// Waits for what is queued to reach the kernel, up to the first name in a directory, or
    /// pages of a file, that a request holds now (`BusyInodes`): dropping them waits for the
    /// request, which may wait for the lock this hand-over gives up. They are dropped as soon
    /// as the request is answered; a later syscall may find the pages still cached for that
    /// moment (attributes are dropped at once, names wait in the directory lock's queue).
    /// A request that arrives while this waits (the kernel held the directory's lock before
    /// sending it) moves that bound, so each new one is looked at.
    func flush(within seconds: Double) -> Bool {
        let p = Parker()
        busy.watch(p)
        defer {
            busy.unwatch(p)
            queue.withLock { q in q.waiting.removeAll { $0.parker === p } }
        }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let deadline = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + seconds
        while true {
            let done = queue.withLock { q -> Bool in
                q.waiting.removeAll { $0.parker === p }
                if q.sent >= q.queued || q.stopping { return true }
                // Not yet sent, in order: the rest of the thread's batch, then the queue.
                let pending = q.sending[q.sendingDone...] + q.notes
                let firstBusy = pending.firstIndex { note in
                    switch note {
                    case .entry(let parent, _): busy.holdsDirectory(parent)
                    case .inode(let ino): busy.holdsPages(ino)
                    }
                }
                let upTo = firstBusy.map { q.sent + UInt64($0 - pending.startIndex) } ?? q.queued
                if q.sent >= upTo { return true }
                q.waiting.append((upTo, p))
                return false
            }
            if done { return true }
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = deadline - (Double(now.tv_sec) + Double(now.tv_nsec) / 1e9)
            if left <= 0 { return false }
            _ = p.park(seconds: left)
        }
    }

    private func run() {
        let se = OpaquePointer(bitPattern: session)
        while true {
            let (notes, prunes, stopping) = queue.withLock { q in
                defer { q.notes = [] }
                q.sending = q.notes
                q.sendingDone = 0
                // Prunes only once the hooks' notes are out, a few at a time.
                let prunes = q.notes.isEmpty && !q.stopping ? q.prunes.popFirst(upTo: Self.pruneBatch) : []
                return (q.notes, prunes, q.stopping)
            }
            var deferred: [(parent: UInt64, name: [UInt8])] = []
            for p in prunes {
                // A directory a request holds would keep this waiting for its lock, and a
                // hook's notes behind it: its names go to the back of the queue.
                if busy.holdsDirectory(p.parent) {
                    deferred.append(p)
                    continue
                }
                dropKernelEntry(se, p.parent, p.name)
            }
            if !deferred.isEmpty {
                queue.withLock { q in
                    if q.prunes.count < Self.pruneLimit { q.prunes.append(contentsOf: deferred) }
                }
                // Every one deferred: their directories are in use; try again in a while
                // rather than spin.
                if deferred.count == prunes.count { _ = wake.park(seconds: 0.01) }
            }
            for n in notes {
                // ENOENT (the kernel no longer holds it) is the common answer and needs nothing.
                switch n {
                case .inode(let ino):
                    _ = fuse_lowlevel_notify_inval_inode(se, ino, 0, 0)
                case .entry(let parent, let name):
                    dropKernelEntry(se, parent, name)
                }
                let ready = queue.withLock { q -> [Parker] in
                    q.sendingDone += 1
                    q.sent += 1
                    let sent = q.sent
                    let ready = q.waiting.filter { $0.upTo <= sent }.map(\.parker)
                    q.waiting.removeAll { $0.upTo <= sent }
                    return ready
                }
                for r in ready { r.unpark() }
            }
            queue.withLock { q in
                q.sending = []
                q.sendingDone = 0
            }
            if stopping { return }
            if notes.isEmpty && prunes.isEmpty {
                // Idle: a pass of whoever asked, at most a few times a second.
                if let body = idle.withLock({ $0 }) {
                    if !wake.park(seconds: 0.2) { body.call(()) }
                } else {
                    wake.park()
                }
            }
        }
    }

    /// Sends what is queued and ends the thread; call before the session goes.
    func stop() {
        let waiting = queue.withLock { q -> [Parker] in
            q.stopping = true
            defer { q.waiting = [] }
            return q.waiting.map(\.parker)
        }
        for w in waiting { w.unpark() }
        wake.unpark()
        thread?.join()
        thread = nil
    }
}
