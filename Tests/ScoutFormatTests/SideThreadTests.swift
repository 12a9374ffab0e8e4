import Testing
import ScoutFormat
import Synchronization

@Suite struct SideThreadTests {
    struct Refused: Error, Equatable { var n: Int }

    /// A job runs while its caller goes on (it waits for something only the caller does after
    /// `start`), `finish` gives back what it threw, and the thread takes one job after another.
    @Test(.timeLimit(.minutes(1))) func jobsRunBesideTheCallerAndTheirErrorsComeBack() throws {
        let side = try SideThread("a test")
        let callerWent = Parker()
        let ran = Mutex<[Int]>([])
        side.start {
            callerWent.park()
            ran.withLock { $0.append(1) }
        }
        // Were the job run on this thread, it would wait here for ever.
        callerWent.unpark()
        try side.finish()
        #expect(ran.withLock { $0 } == [1])

        side.start { throw Refused(n: 2) }
        #expect(throws: Refused(n: 2)) { try side.finish() }

        for n in 3..<50 {
            side.start { ran.withLock { $0.append(n) } }
            try side.finish()
        }
        #expect(ran.withLock { $0 } == [1] + Array(3..<50))
    }
}
