#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import Synchronization
import Testing

@Suite struct CommitterTests {
    /// `stop` returns only after a commit in flight has published: a status record written
    /// after unmount removed it would make a dead mount look alive.
    @Test(.timeLimit(.minutes(1))) func stopWaitsForTheCommitInFlight() throws {
        let fs = try MemoryMount().mount()
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        let started = Atomic(0)
        let finished = Atomic(0)
        let committer = Committer(fs: fs, interval: .milliseconds(20)) { _ in
            started.add(1, ordering: .relaxed)
            usleep(300_000)
            finished.add(1, ordering: .relaxed)
        }
        try committer.start()
        _ = try fs.write(f.ino, offset: 0, data: [1])
        while started.load(ordering: .relaxed) == 0 { usleep(1000) }
        committer.stop()
        let atStop = finished.load(ordering: .relaxed)
        #expect(atStop == started.load(ordering: .relaxed), "stop returned while a publish was still running")
        // Nothing more after stop, whatever changes.
        _ = try fs.write(f.ino, offset: 0, data: [2])
        usleep(200_000)
        #expect(started.load(ordering: .relaxed) == atStop)
        #expect(finished.load(ordering: .relaxed) == atStop)
    }
}
