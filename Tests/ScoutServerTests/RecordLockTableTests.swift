import ScoutFormat
import ScoutServer
import Testing

@Suite struct RecordLockTableTests {
    func lock(_ client: UInt64, _ owner: UInt64, _ type: RecordLockType, _ range: ClosedRange<UInt64>,
              ino: UInt64 = 7, kind: RecordLockKind = .posix) -> RecordLock {
        RecordLock(ino: ino, kind: kind, type: type, start: range.lowerBound, end: range.upperBound,
                   holder: RecordLockOwner(client: client, owner: owner), pid: UInt32(owner))
    }

    func ranges(_ t: RecordLockTable, ino: UInt64 = 7) -> [String] {
        t.locks(on: ino).map { "\($0.holder.client).\($0.holder.owner) \($0.type) \($0.start)-\($0.end)" }.sorted()
    }

    /// Records who was told that which inode's locks changed.
    final class Told: Sendable {
        let seen = Mutex<[String]>([])
        func sink(_ c: UInt64, _ ino: UInt64) { seen.withLock { $0.append("\(c)@\(ino)") } }
        func take() -> [String] { seen.withLock { s in defer { s = [] }; return s.sorted() } }
    }

    @Test func writersExcludeEveryoneAndReadersShare() {
        let t = RecordLockTable()
        #expect(t.set(lock(1, 1, .read, 0...99), wait: false) == nil)
        #expect(t.set(lock(2, 1, .read, 50...149), wait: false) == nil)
        // Another owner on the same client conflicts as one on another client does.
        #expect(t.set(lock(1, 2, .write, 90...95), wait: false)?.holder == RecordLockOwner(client: 1, owner: 1))
        #expect(t.set(lock(3, 1, .write, 100...120), wait: false)?.holder == RecordLockOwner(client: 2, owner: 1))
        #expect(t.set(lock(3, 1, .write, 150...RecordLock.toEnd), wait: false) == nil)
        #expect(t.test(lock(1, 1, .read, 200...200))?.holder == RecordLockOwner(client: 3, owner: 1))
        #expect(t.test(lock(1, 1, .read, 0...10)) == nil)
        // Other inodes and the other kind are untouched by these.
        #expect(t.test(lock(4, 1, .write, 0...10, ino: 8)) == nil)
        #expect(t.test(lock(4, 1, .write, 0...10, kind: .flock)) == nil)
        #expect(t.count == 3)
    }

    @Test func anOwnersRangesSplitMergeAndChangeType() {
        let t = RecordLockTable()
        #expect(t.set(lock(1, 1, .write, 0...99), wait: false) == nil)
        // Unlocking the middle leaves both ends.
        #expect(t.set(lock(1, 1, .unlock, 40...59), wait: false) == nil)
        #expect(ranges(t) == ["1.1 write 0-39", "1.1 write 60-99"])
        // A read lock over the middle turns what it covers into read.
        #expect(t.set(lock(1, 1, .read, 30...69), wait: false) == nil)
        #expect(ranges(t) == ["1.1 read 30-69", "1.1 write 0-29", "1.1 write 70-99"])
        // Touching ranges of one type become one.
        #expect(t.set(lock(1, 1, .write, 30...69), wait: false) == nil)
        #expect(ranges(t) == ["1.1 write 0-99"])
        #expect(t.set(lock(1, 1, .write, 100...199), wait: false) == nil)
        #expect(ranges(t) == ["1.1 write 0-199"])
        // Another owner fits in the gap an unlock leaves, and not beside it.
        #expect(t.set(lock(1, 1, .unlock, 50...50), wait: false) == nil)
        #expect(t.set(lock(2, 9, .write, 50...50), wait: false) == nil)
        #expect(t.set(lock(2, 9, .write, 50...51), wait: false) != nil)
        #expect(ranges(t) == ["1.1 write 0-49", "1.1 write 51-199", "2.9 write 50-50"])
        #expect(t.set(lock(1, 1, .unlock, 0...RecordLock.toEnd), wait: false) == nil)
        #expect(ranges(t) == ["2.9 write 50-50"])
    }

    @Test func waitersHearOfReleasesAndOfLeavingClients() {
        let t = RecordLockTable()
        let told = Told()
        t.setNotifier { told.sink($0, $1) }
        #expect(t.set(lock(1, 1, .write, 0...RecordLock.toEnd), wait: false) == nil)
        #expect(t.set(lock(1, 1, .write, 0...RecordLock.toEnd, ino: 8), wait: false) == nil)
        #expect(t.set(lock(2, 1, .read, 0...0), wait: true) != nil)
        #expect(t.set(lock(3, 1, .write, 5...5), wait: true) != nil)
        #expect(t.set(lock(4, 1, .write, 5...5), wait: false) != nil)
        #expect(t.set(lock(3, 1, .read, 0...0, ino: 8), wait: true) != nil)
        // Taking more is no release: nobody is told.
        #expect(t.set(lock(1, 1, .write, 0...RecordLock.toEnd), wait: false) == nil)
        #expect(told.take() == [])
        // A release tells each waiter of that inode once; those that did not ask to wait are not told.
        #expect(t.set(lock(1, 1, .unlock, 100...200), wait: false) == nil)
        #expect(told.take() == ["2@7", "3@7"])
        #expect(t.set(lock(1, 1, .unlock, 300...400), wait: false) == nil)
        #expect(told.take() == [])
        // A client whose session ends loses its locks, and the waiters for them hear of it.
        t.clientGone(1)
        #expect(told.take() == ["3@8"])
        #expect(t.count == 0)
        #expect(t.set(lock(4, 1, .write, 5...5), wait: false) == nil)
    }

    /// A new server's table waits for the nodes of the old one: `recovering` until each has
    /// sent its locks (its last part) or is gone; reclaimed locks are held as they were, and
    /// the holder's client is the one that reclaimed them, whatever the lock says.
    @Test func reclaimedLocksAreHeldAndRecoveryEndsWithTheLastNode() {
        let t = RecordLockTable()
        #expect(!t.recovering)
        t.awaitReclaim(from: [1, 2])
        #expect(t.recovering)
        t.reclaim(1, [lock(9, 1, .write, 0...99), lock(9, 2, .read, 200...299, kind: .flock)], last: false)
        #expect(t.recovering)
        t.reclaim(1, [lock(9, 3, .read, 300...399)], last: true)
        #expect(t.recovering, "node 2 has not reclaimed yet")
        t.clientGone(2)
        #expect(!t.recovering)
        #expect(ranges(t) == ["1.1 write 0-99", "1.2 read 200-299", "1.3 read 300-399"])
        #expect(t.test(lock(2, 1, .read, 50...50))?.holder == RecordLockOwner(client: 1, owner: 1))
        #expect(t.test(lock(2, 1, .write, 250...250, kind: .flock))?.holder == RecordLockOwner(client: 1, owner: 2))
        #expect(t.set(lock(2, 1, .read, 350...350), wait: false) == nil)
        #expect(t.all.count == 4)
    }

    /// A node's own copy of its locks takes each granted request as the server did, without
    /// checking conflicts (the server checked); unlocks split and drop ranges the same way.
    @Test func installedLocksFollowWhatTheServerGranted() {
        let t = RecordLockTable()
        t.install(lock(1, 1, .write, 0...99))
        t.install(lock(1, 2, .write, 50...60))
        t.install(lock(1, 1, .unlock, 40...49))
        #expect(ranges(t) == ["1.1 write 0-39", "1.1 write 50-99", "1.2 write 50-60"])
    }
}
