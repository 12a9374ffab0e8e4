#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import SystemPackage
import Synchronization
import Testing

/// A data device that fails on command: writes, or reads (optionally after blocking until
/// released, to line a failure up with a commit).
final class FailingDataDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: the flags live in Mutexes; `base` is thread-safe.
    let base: MemoryBlockDevice
    let failWrites = Mutex(false)
    let failReads = Mutex(false)
    /// While set, a failing read waits here until `release` is called.
    let holdReads = Mutex(false)
    let readsHeld = Atomic(0)
    let released = Mutex(false)

    init(size: UInt64) { base = MemoryBlockDevice(name: "data", size: size) }

    var name: String { base.name }
    var size: UInt64 { base.size }

    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        if offset >= UInt64(Layout.dataFirstBlkno) * 4096 && failReads.withLock({ $0 }) {
            if holdReads.withLock({ $0 }) {
                readsHeld.add(1, ordering: .relaxed)
                while !released.withLock({ $0 }) { usleep(1000) }
            }
            throw StoreError(.io, "data: read at byte \(offset): Input/output error (test)")
        }
        return try base.read(at: offset, count: count)
    }

    func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        if offset >= UInt64(Layout.dataFirstBlkno) * 4096 && failWrites.withLock({ $0 }) {
            throw StoreError(.io, "data: write at byte \(offset): Input/output error (test)")
        }
        try base.write(at: offset, bytes)
    }

    func flush() throws {}
}

@Suite struct DeviceFailureTests {
    let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
    let data = FailingDataDevice(size: 256 << 20)
    let root = Caller.root

    func mount() throws -> Filesystem {
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        return try Filesystem(store: store)
    }

    /// A failing disk under a read, while a commit waits for that read to leave the data
    /// gate, gives the reader EIO and lets the commit finish: no deadlock.
    @Test(.timeLimit(.minutes(1))) func aFailingReadDuringACommitGivesEIONotAHang() throws {
        let fs = try mount()
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 3, count: 8192))
        try fs.sync()
        data.failReads.withLock { $0 = true }
        data.holdReads.withLock { $0 = true }
        let readResult = Mutex<Errno?>(nil)
        let reader = ScoutTestSupport.Thread {
            do { _ = try fs.read(f.ino, offset: 0, count: 8192) } catch { readResult.withLock { $0 = error as? Errno } }
        }
        reader.start()
        while data.readsHeld.load(ordering: .relaxed) == 0 { usleep(1000) }
        // A change and a commit: the commit takes the filesystem lock, then waits for the
        // reader to leave the gate.
        _ = try fs.setattr(f.ino, AttributeChanges(mode: 0o600))
        let committed = Atomic(false)
        let committer = ScoutTestSupport.Thread {
            try? fs.sync()
            committed.store(true, ordering: .releasing)
        }
        committer.start()
        usleep(100_000)
        data.released.withLock { $0 = true }
        var waited = 0
        while !committed.load(ordering: .acquiring) && waited < 10_000 { usleep(1000); waited += 1 }
        let finished = committed.load(ordering: .acquiring)
        #expect(finished, "the commit never finished: the mount deadlocked")
        guard finished else { return }
        reader.join()
        committer.join()
        #expect(readResult.withLock { $0 } == .ioError)
    }

    /// A write that fails after its holes were mapped leaves nothing: no extent, no size, and
    /// no block that shows what another file held before.
    @Test func aFailedWriteLeavesNothingBehind() throws {
        let fs = try mount()
        let secret = [UInt8](repeating: 0x5e, count: 64 << 10)
        let old = try fs.create(1, Array("old".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        _ = try fs.write(old.ino, offset: 0, data: secret)
        try fs.release(old.ino)
        try fs.unlink(1, Array("old".utf8))
        try fs.sync()  // its blocks are free and reusable now
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        _ = try fs.setattr(f.ino, AttributeChanges(size: UInt64(secret.count)))
        let before = try fs.getattr(f.ino)
        data.failWrites.withLock { $0 = true }
        #expect(throws: Errno.ioError) { _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 1, count: 64 << 10)) }
        #expect(throws: Errno.ioError) { try fs.fallocate(f.ino, mode: 0, offset: 0, length: 64 << 10) }
        data.failWrites.withLock { $0 = false }
        try fs.sync()
        let after = try fs.getattr(f.ino)
        #expect(after.size == before.size && after.onlineBlocks == 0 && after.dataVersion == before.dataVersion)
        #expect(try fs.read(f.ino, offset: 0, count: secret.count) == [UInt8](repeating: 0, count: secret.count))
        #expect(throws: Errno.noSuchAddressOrDevice) { _ = try fs.seek(f.ino, offset: 0, whence: LinuxABI.seekData) }
        try fs.release(f.ino)
        try fs.syncAndMerge()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    /// A stage whose device write fails leaves the region offline: readers keep waiting for a
    /// stage that works instead of reading blocks that never got their data.
    @Test func aFailedStageLeavesTheRegionOffline() throws {
        let fs = try mount()
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 9, count: 16384))
        let v = try fs.getattr(f.ino).dataVersion
        try fs.release(f.ino, dataVersion: v, offset: 0, length: 16384)
        data.failWrites.withLock { $0 = true }
        #expect(throws: ArchiveError.self) { try fs.stage(f.ino, dataVersion: v, offset: 0, data: [UInt8](repeating: 9, count: 16384)) }
        data.failWrites.withLock { $0 = false }
        let a = try fs.getattr(f.ino)
        #expect(a.offlineBlocks == 4 && a.onlineBlocks == 0)
        var plan = LockPlan()
        plan.read(f.ino)
        #expect(try fs.locked(.reads, commit: false, plan) { try $0.firstOffline(f.ino, from: 0, through: 3) } == 0)
        try fs.stage(f.ino, dataVersion: v, offset: 0, data: [UInt8](repeating: 9, count: 16384))
        #expect(try fs.read(f.ino, offset: 0, count: 16384) == [UInt8](repeating: 9, count: 16384))
        try fs.release(f.ino)
        try fs.syncAndMerge()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }
}
