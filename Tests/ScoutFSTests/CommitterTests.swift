#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutClient
import ScoutTestSupport
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

/// A metadata device whose flushes can be held, as a slow disk holds a commit.
final class HeldFlushDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: `holding` is behind its mutex; the inner device is thread-safe.
    let inner: MemoryBlockDevice
    private let holding = Mutex(false)
    private let released = Parker()
    /// Flushes that found the device held.
    let heldFlushes = Atomic<Int>(0)
    init(_ inner: MemoryBlockDevice) { self.inner = inner }
    var name: String { inner.name }
    var size: UInt64 { inner.size }
    func read(at offset: UInt64, count: Int) throws -> [UInt8] { try inner.read(at: offset, count: count) }
    func write(at offset: UInt64, _ bytes: [UInt8]) throws { try inner.write(at: offset, bytes) }
    func flush() throws {
        while holding.withLock({ $0 }) {
            heldFlushes.add(1, ordering: .relaxed)
            released.park()
        }
    }
    func hold() { holding.withLock { $0 = true } }
    /// Waits (up to 5 s) until a flush is held: a commit is in flight. True if one is.
    func waitUntilHeld() -> Bool {
        var waited = 0
        while heldFlushes.load(ordering: .relaxed) == 0 && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        return heldFlushes.load(ordering: .relaxed) > 0
    }
    func release() {
        holding.withLock { $0 = false }
        released.unpark()
    }
}

@Suite struct CommitSwitchTests {
    /// While a commit waits for the device, operations go on: they wait only for its switch.
    @Test func operationsRunWhileACommitWaitsForTheDevice() throws {
        let meta = HeldFlushDevice(MemoryBlockDevice(name: "meta", size: 256 << 20))
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let fs = try Filesystem(store: store)
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: .root).ino
        _ = try fs.write(f, offset: 0, data: [UInt8](repeating: 7, count: 5000))
        try fs.sync()

        _ = try fs.setattr(f, AttributeChanges(mode: 0o600))
        meta.hold()
        let syncing = ScoutTestSupport.Thread { try? fs.sync() }
        syncing.start()
        // The commit is in flight once it waits for the device.
        let reached = meta.waitUntilHeld()
        #expect(reached, "the commit never reached the device")
        let done = Atomic<Bool>(false)
        let worker = ScoutTestSupport.Thread {
            // Cached items only: a read that must fill the cache from the device still waits
            // for the commit's store lock.
            _ = try? fs.write(f, offset: 5000, data: [9, 9, 9])
            _ = try? fs.setattr(f, AttributeChanges(mtime: .set(Timestamp(seconds: 1234, nanoseconds: 0))))
            _ = try? fs.getattr(f)
            _ = try? fs.read(f, offset: 0, count: 10)
            done.store(true, ordering: .releasing)
        }
        worker.start()
        var spins = 0
        while !done.load(ordering: .acquiring) && spins < 500 {
            usleep(10_000)
            spins += 1
        }
        let finished = done.load(ordering: .acquiring)
        #expect(finished, "operations waited for the commit's device writes")
        meta.release()
        syncing.join()
        worker.join()
        try fs.sync()
        let a = try fs.getattr(f)
        #expect(a.mode & 0o7777 == 0o600 && a.size == 5003 && a.mtime.seconds == 1234)
    }
}

extension CommitSwitchTests {
    /// Changes a commit in flight is writing do not count toward the next commit's trigger:
    /// operations after its switch go on until their own changes pass the dirty limit. (When
    /// they counted, every operation while a commit wrote found the limit passed and waited
    /// for that commit to end so as to start the next.)
    @Test(.timeLimit(.minutes(2))) func aCommitInFlightDoesNotTriggerTheNext() throws {
        let meta = HeldFlushDevice(MemoryBlockDevice(name: "meta", size: 1 << 30))
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let fs = try Filesystem(store: store, options: FilesystemOptions(dirtyBlockLimit: 64))
        let a = try fs.mkdir(1, Array("a".utf8), mode: 0o755, caller: .root).ino
        let b = try fs.mkdir(1, Array("b".utf8), mode: 0o755, caller: .root).ino
        try fs.sync()

        meta.hold()
        // Creates until one of them passes the limit and commits, and waits at the device.
        let filler = ScoutTestSupport.Thread {
            for i in 0..<100_000 {
                guard (try? fs.create(a, Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: .root)) != nil else { return }
                if meta.heldFlushes.load(ordering: .relaxed) > 0 { return }
            }
        }
        filler.start()
        #expect(meta.waitUntilHeld(), "no create passed the dirty limit")
        let done = Atomic<Int>(0)
        let worker = ScoutTestSupport.Thread {
            for i in 0..<5 {
                guard let f = try? fs.create(b, Array("g\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: .root) else { return }
                try? fs.release(f.ino)
                done.add(1, ordering: .relaxed)
            }
        }
        worker.start()
        var spins = 0
        while done.load(ordering: .relaxed) < 5 && spins < 500 {
            usleep(10_000)
            spins += 1
        }
        #expect(done.load(ordering: .relaxed) == 5, "creates after the switch waited for the commit in flight")
        meta.release()
        filler.join()
        worker.join()
        try fs.sync()
        for i in 0..<5 { #expect((try? fs.lookup(b, Array("g\(i)".utf8))) != nil) }
    }
}

@Suite struct ColdReadTests {
    /// Reads that must fill the cache from the device do not wait for a commit in flight:
    /// they read the last commit's roots without the store lock.
    @Test(.timeLimit(.minutes(2))) func coldReadsRunWhileACommitWaitsForTheDevice() throws {
        let meta = HeldFlushDevice(MemoryBlockDevice(name: "meta", size: 256 << 20))
        let data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let names = (0..<300).map { Array("file-\($0)".utf8) }
        var inos: [UInt64] = []
        do {
            let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
            let fs = try Filesystem(store: store)
            for (i, n) in names.enumerated() {
                let f = try fs.create(1, n, mode: 0o644, flags: O_RDWR, caller: .root)
                _ = try fs.write(f.ino, offset: 0, data: [UInt8(i & 0xff)])
                inos.append(f.ino)
            }
            try fs.sync()
        }
        // A new mount: nothing of those files is in its cache.
        let fs = try Filesystem(store: try Store.open(meta: meta, data: data))
        let own = try fs.create(1, Array("own".utf8), mode: 0o644, flags: O_RDWR, caller: .root).ino
        try fs.sync()
        _ = try fs.setattr(own, AttributeChanges(mode: 0o600))
        meta.hold()
        let syncing = ScoutTestSupport.Thread { try? fs.sync() }
        syncing.start()
        #expect(meta.waitUntilHeld(), "the commit never reached the device")
        let found = Atomic<Int>(0)
        let expected = inos
        let worker = ScoutTestSupport.Thread {
            for (i, n) in names.enumerated() {
                guard let a = try? fs.lookup(1, n), a.ino == expected[i], a.size == 1,
                      let bytes = try? fs.read(a.ino, offset: 0, count: 1), bytes == [UInt8(i & 0xff)] else { return }
                found.add(1, ordering: .relaxed)
            }
        }
        worker.start()
        var spins = 0
        while found.load(ordering: .relaxed) < names.count && spins < 1000 {
            usleep(10_000)
            spins += 1
        }
        let readWhileHeld = found.load(ordering: .relaxed)
        meta.release()
        syncing.join()
        worker.join()
        #expect(readWhileHeld == names.count, "only \(readWhileHeld) of \(names.count) cold lookups finished while the commit waited")
        #expect(fs.committedSeq > 0)
        #expect(try fs.getattr(own).mode & 0o7777 == 0o600)
    }
}
