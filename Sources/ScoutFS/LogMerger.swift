import ScoutClient
import ScoutFormat
import Synchronization

/// The server's background merges, on a thread of their own: woken when a log tree passes
/// the merge threshold, it runs merge steps (each one chunk and one commit, with the store
/// lock held only for that step) until none is wanted, so no client's operation or commit
/// ever runs a threshold merge. A step that fails (the device full) is retried after a pause.
final class LogMerger: Sendable {
    /// One merge step; true while more is wanted.
    private let step: @Sendable () throws -> Bool
    private let report: @Sendable (String) -> Void
    private let wake = Parker()
    private let running = Atomic(true)
    private let thread = Mutex<JoinableThread?>(nil)
    private let steps = Atomic<Int>(0)

    init(step: @escaping @Sendable () throws -> Bool, report: @escaping @Sendable (String) -> Void) {
        self.step = step
        self.report = report
    }

    func start() throws(ThreadError) {
        let t = try JoinableThread("the log tree merges") { [self] in loop() }
        thread.withLock { $0 = t }
    }

    /// A merge is wanted; must not block (the server calls it with the store lock held).
    func wakeUp() {
        wake.unpark()
    }

    /// Merge steps taken so far (tests).
    var stepsTaken: Int { steps.load(ordering: .relaxed) }

    /// Stops after the step in progress and waits for it.
    func stop() {
        running.store(false, ordering: .releasing)
        wake.unpark()
        let t = thread.withLock { t -> JoinableThread? in
            defer { t = nil }
            return t
        }
        t?.join()
    }

    private func loop() {
        var failures = 0
        while running.load(ordering: .acquiring) {
            // A wanted merge wakes this thread; the timer only covers a wake-up lost to a race.
            _ = wake.park(seconds: failures > 0 ? min(30, Double(failures)) : 5)
            var more = true
            while more && running.load(ordering: .acquiring) {
                do {
                    more = try step()
                    steps.add(1, ordering: .relaxed)
                    failures = 0
                    // The store lock does not queue its waiters: taken again at once, it went
                    // back to this thread step after step while a client's commit waited
                    // (an fsync took 620 ms in a 200,000-create run). A pause lets it in.
                    if more { _ = wake.park(seconds: 0.002) }
                } catch {
                    failures += 1
                    if failures == 1 || failures % 10 == 0 { report("background log tree merge failed (will retry): \(error)") }
                    more = false
                }
            }
        }
    }
}
