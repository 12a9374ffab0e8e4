#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import Synchronization
import SystemPackage
import Testing

/// release, stage, setattr and data waiting, on memory devices.
@Suite struct ArchiveTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)
    var meta: MemoryBlockDevice { devices.meta }
    var data: MemoryBlockDevice { devices.data }

    func mount() throws -> Filesystem { try devices.mount() }

    func pattern(_ n: Int, seed: UInt64 = 1) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    func file(_ fs: Filesystem, _ name: String, _ contents: [UInt8]) throws -> UInt64 {
        let f = try fs.create(1, Array(name.utf8), mode: 0o644, flags: O_RDWR, caller: user)
        if !contents.isEmpty { _ = try fs.write(f.ino, offset: 0, data: contents) }
        return f.ino
    }

    func archiveErrno(_ body: () throws(ArchiveError) -> Void) -> Errno? {
        do {
            try body()
            return nil
        } catch {
            return error.errno
        }
    }

    /// Runs `body` on a thread; `join` returns what it returned or threw.
    final class Background<T: Sendable>: Sendable {
        final class Slot: Sendable { let value = Mutex<Result<T, Errno>?>(nil) }
        let slot = Slot()
        let thread: ScoutTestSupport.Thread
        init(_ body: @escaping @Sendable () throws(Errno) -> T) {
            thread = ScoutTestSupport.Thread { [slot] in
                let r = Result { () throws(Errno) in try body() }
                slot.value.withLock { $0 = r }
            }
            thread.start()
        }
        var isDone: Bool { slot.value.withLock { $0 != nil } }
        func join() -> Result<T, Errno>? {
            thread.join()
            return slot.value.withLock { $0 }
        }
    }

    @Test func theAgentCycleReleasesBlocksAndStagingBringsTheBytesBack() throws {
        let fs = try mount()
        let contents = pattern((1 << 20) + 100)
        let ino = try file(fs, "f", contents)
        try fs.sync()
        let before = try fs.getattr(ino)
        let more = try fs.statMore(ino)
        let freeBefore = try fs.statfsMore().freeDataBlocks

        try fs.release(ino, dataVersion: more.dataVersion, offset: 0, length: UInt64(2 << 20))
        try fs.sync()
        let released = try fs.statMore(ino)
        #expect(released.onlineBlocks == 0 && released.offlineBlocks == 257)
        #expect(released.dataVersion == more.dataVersion && released.dataSeq == more.dataSeq)
        let a = try fs.getattr(ino)
        // st_blocks still counts the released blocks, as the original's does.
        #expect(a.size == before.size && a.mtime == before.mtime && a.blocks == before.blocks && a.blocks == 257 * 8)
        #expect(try fs.statfsMore().freeDataBlocks == freeBefore + 257)
        // Released blocks are still data to SEEK_DATA / SEEK_HOLE: a copy that skips holes
        // must read them (and wait), not write zeros.
        #expect(try fs.seek(ino, offset: 4096, whence: LinuxABI.seekData) == 4096)
        #expect(try fs.seek(ino, offset: 0, whence: LinuxABI.seekHole) == UInt64(contents.count))
        #expect(Checker.check(meta: meta, data: data).problems == [])

        // A reader blocks and is listed; staging wakes it with the original bytes.
        let reader = Background { () throws(Errno) in try fs.read(ino, offset: 4096, count: 8192) }
        #expect(eventually(within: 10, every: 0.005) { fs.dataWaiters(after: 0, 0, limit: 10) == [DataWaiter(ino: ino, iblock: 1, op: .read)] })
        #expect(!reader.isDone)
        var at = 0
        while at < contents.count {
            let n = min(300 * 4096, contents.count - at)
            try fs.stage(ino, dataVersion: more.dataVersion, offset: UInt64(at), data: Array(contents[at..<at + n]))
            at += n
        }
        #expect(try reader.join()?.get() == Array(contents[4096..<12288]))
        #expect(fs.dataWaiters(after: 0, 0, limit: 10).isEmpty)
        #expect(try fs.read(ino, offset: 0, count: contents.count + 10) == contents)
        let staged = try fs.statMore(ino)
        #expect(staged.onlineBlocks == 257 && staged.offlineBlocks == 0)
        #expect(staged.dataVersion == more.dataVersion && staged.dataSeq == more.dataSeq)
        #expect(try fs.getattr(ino).mtime == before.mtime)
        try fs.sync()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    /// fiemap in pages: every extent once, whole (a run is never cut where a page ends), in
    /// order, `last` only on the file's last one; offline runs merge by logical blocks alone.
    @Test func fiemapPagesCoverEveryExtentOnceAndWhole() throws {
        let fs = try mount()
        let ino = try file(fs, "sparse", [])
        // 40 one-block extents with a hole after each (none can merge), then 6 blocks released
        // in two calls (one offline run).
        for b in 0..<40 { _ = try fs.write(ino, offset: UInt64(b * 2 * 4096), data: pattern(4096, seed: UInt64(b))) }
        _ = try fs.write(ino, offset: 100 * 4096, data: pattern(6 * 4096))
        try fs.sync()
        let v = try fs.statMore(ino).dataVersion
        try fs.release(ino, dataVersion: v, offset: 100 * 4096, length: 3 * 4096)
        try fs.release(ino, dataVersion: v, offset: 103 * 4096, length: 3 * 4096)
        let whole = try fs.fiemap(ino, fromBlock: 0, limit: 1000)
        #expect(whole.end && whole.extents.count == 41)
        #expect(whole.extents.last == FiemapExtent(logical: 100 * 4096, physical: 0, length: 6 * 4096, flags: FiemapExtent.unknown | FiemapExtent.last))
        #expect(whole.extents.dropLast().allSatisfy { $0.length == 4096 && $0.flags == 0 && $0.physical > 0 && $0.logical % 8192 == 0 })
        var paged: [FiemapExtent] = []
        var from: UInt64 = 0
        while true {
            let page = try fs.fiemap(ino, fromBlock: from, limit: 7)
            #expect(page.extents.count <= 7)
            paged += page.extents
            if page.end { break }
            from = (page.extents.last!.logical + page.extents.last!.length) / 4096
        }
        #expect(paged == whole.extents)
        #expect(try fs.fiemap(ino, fromBlock: 200, limit: 10) == ([], true))
    }

    @Test func aWriteBetweenStatAndReleaseMakesTheReleaseStale() throws {
        let fs = try mount()
        let ino = try file(fs, "f", pattern(64 << 10))
        let seen = try fs.statMore(ino).dataVersion
        _ = try fs.write(ino, offset: 10, data: [1])
        #expect(archiveErrno { () throws(ArchiveError) in try fs.release(ino, dataVersion: seen, offset: 0, length: 64 << 10) } == .staleNFSFileHandle)
        #expect(try fs.statMore(ino).onlineBlocks == 16)
        #expect(archiveErrno { () throws(ArchiveError) in try fs.stage(ino, dataVersion: seen + 5, offset: 0, data: [1]) } == .staleNFSFileHandle)
    }

    @Test func badRangesAreRefusedAndChangeNothing() throws {
        let fs = try mount()
        let contents = pattern(40_000)
        let ino = try file(fs, "f", contents)
        let dir = try fs.mkdir(1, Array("d".utf8), mode: 0o755, caller: user)
        let v = try fs.statMore(ino).dataVersion
        let start = try fs.statMore(ino)
        func refused(_ body: () throws(ArchiveError) -> Void) -> Errno? { archiveErrno(body) }
        #expect(refused { () throws(ArchiveError) in try fs.release(ino, dataVersion: v, offset: 100, length: 4096) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.release(ino, dataVersion: v, offset: 0, length: 4095) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.release(ino, dataVersion: v, offset: .max - 4095, length: 8192) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.release(dir.ino, dataVersion: 0, offset: 0, length: 4096) } == .invalidArgument)
        // Staging past EOF, or ending inside a block before EOF.
        #expect(refused { () throws(ArchiveError) in try fs.stage(ino, dataVersion: v, offset: 0, data: [1, 2]) } == .invalidArgument)
        try fs.release(ino, dataVersion: v, offset: 0, length: 8192)
        #expect(refused { () throws(ArchiveError) in try fs.stage(ino, dataVersion: v, offset: 0, data: [UInt8](repeating: 1, count: 100)) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.stage(ino, dataVersion: v, offset: 36864, data: [UInt8](repeating: 1, count: 4000)) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.stage(ino, dataVersion: v, offset: 2048, data: [1]) } == .invalidArgument)
        let after = try fs.statMore(ino)
        #expect(after.onlineBlocks == start.onlineBlocks - 2 && after.offlineBlocks == 2)
        // Releasing again is harmless; the bytes outside stay.
        try fs.release(ino, dataVersion: v, offset: 0, length: 8192)
        #expect(try fs.statMore(ino).offlineBlocks == 2)
        #expect(try fs.read(ino, offset: 8192, count: 100) == Array(contents[8192..<8292]))
        // The last partial block stages up to EOF.
        try fs.release(ino, dataVersion: v, offset: 36864, length: 8192)
        try fs.stage(ino, dataVersion: v, offset: 36864, data: Array(contents[36864...]))
        #expect(try fs.read(ino, offset: 36864, count: 10_000) == Array(contents[36864...]))
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    /// As the original's stage: a region mixing released blocks, a hole and online blocks is
    /// staged whole: released blocks and the hole get blocks, online ones are written over in
    /// place, and data_version, data_seq and mtime stay.
    @Test func stagingOverOnlineBlocksAndHolesWritesThemAsTheOriginalDoes() throws {
        let fs = try mount()
        let contents = pattern(10 * 4096)
        let ino = try file(fs, "f", contents)
        // A hole at block 8 (punched by truncating and writing the tail back).
        _ = try fs.setattr(ino, AttributeChanges(size: 8 * 4096))
        _ = try fs.write(ino, offset: 9 * 4096, data: Array(contents[(9 * 4096)...]))
        let v = try fs.statMore(ino).dataVersion
        try fs.release(ino, dataVersion: v, offset: 2 * 4096, length: 3 * 4096)
        let before = try fs.statMore(ino)
        let mtime = try fs.getattr(ino).mtime
        #expect(before.onlineBlocks == 6 && before.offlineBlocks == 3)

        let fresh = pattern(10 * 4096, seed: 9)
        #expect(try fs.stage(ino, dataVersion: v, offset: 0, data: fresh) == fresh.count)
        #expect(try fs.read(ino, offset: 0, count: fresh.count + 1) == fresh)
        let after = try fs.statMore(ino)
        #expect(after.onlineBlocks == 10 && after.offlineBlocks == 0)
        #expect(after.dataVersion == before.dataVersion && after.dataSeq == before.dataSeq)
        #expect(try fs.getattr(ino).mtime == mtime)
        // Online blocks alone stage as a plain overwrite.
        #expect(try fs.stage(ino, dataVersion: v, offset: 4096, data: Array(contents[4096..<8192])) == 4096)
        #expect(try fs.read(ino, offset: 0, count: 3 * 4096) == Array(fresh[0..<4096]) + Array(contents[4096..<8192]) + Array(fresh[8192..<12288]))
        #expect(try fs.statMore(ino).onlineBlocks == 10)
        try fs.sync()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    @Test func writesAndTruncatesWaitButTruncatingToZeroDoesNot() throws {
        let fs = try mount()
        let contents = pattern(32_768)
        let ino = try file(fs, "f", contents)
        let v = try fs.statMore(ino).dataVersion
        try fs.release(ino, dataVersion: v, offset: 16384, length: 4096)

        let writer = Background { () throws(Errno) in try fs.write(ino, offset: 0, data: [9]) }
        // A truncate waits when offline data lies below the new size.
        let truncater = Background { () throws(Errno) in try fs.setattr(ino, AttributeChanges(size: 30_000)).size }
        #expect(eventually(within: 10, every: 0.005) { fs.dataWaiters(after: 0, 0, limit: 10).count == 2 })
        let ops = Set(fs.dataWaiters(after: 0, 0, limit: 10).map(\.op.rawValue))
        #expect(ops == [DataWaitOperation.write.rawValue, DataWaitOperation.changeSize.rawValue])
        #expect(fs.dataWaiters(after: 0, 0, limit: 10).allSatisfy { $0.iblock == 4 })
        // Reads of online data go on.
        #expect(try fs.read(ino, offset: 0, count: 4) == Array(contents[0..<4]))
        try fs.stage(ino, dataVersion: v, offset: 16384, data: Array(contents[16384..<20480]))
        #expect(try writer.join()?.get() == 1)
        #expect(try truncater.join()?.get() == 30_000)
        // One that keeps only online data below the new size does not wait.
        try fs.release(ino, dataVersion: try fs.statMore(ino).dataVersion, offset: 16384, length: 4096)
        #expect(try fs.setattr(ino, AttributeChanges(size: 100)).size == 100)
        #expect(try fs.statMore(ino).offlineBlocks == 0)

        let other = try file(fs, "g", pattern(20_000))
        try fs.release(other, dataVersion: try fs.statMore(other).dataVersion, offset: 0, length: 20480)
        _ = try fs.setattr(other, AttributeChanges(size: 0))
        let m = try fs.statMore(other)
        #expect(m.offlineBlocks == 0 && m.onlineBlocks == 0)
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    @Test func dataWaitErrAndInterruptsEndWaits() throws {
        let fs = try mount()
        let ino = try file(fs, "f", pattern(16_384))
        try fs.release(ino, dataVersion: try fs.statMore(ino).dataVersion, offset: 0, length: 16384)
        let r1 = Background { () throws(Errno) in try fs.read(ino, offset: 0, count: 10) }
        let r2 = Background { () throws(Errno) in try fs.read(ino, offset: 8192, count: 10) }
        #expect(eventually(within: 10, every: 0.005) { fs.dataWaiters(after: 0, 0, limit: 10).count == 2 })
        // Only the waiter in the given range and operation fails.
        #expect(try fs.failDataWaiters(ino: ino, offset: 8192, count: 4096, ops: .write, error: EIO) == 0)
        #expect(try fs.failDataWaiters(ino: ino, offset: 8192, count: 4096, ops: .read, error: EIO) == 1)
        #expect(r2.join()?.errorValue == .ioError)
        #expect(!r1.isDone)
        #expect(throws: ArchiveError.self) { _ = try fs.failDataWaiters(ino: ino, offset: 0, count: 1, ops: .read, error: -5) }

        let cancel = WaitCancellation()
        let r3 = Background { () throws(Errno) in try fs.read(ino, offset: 0, count: 10, cancel: cancel) }
        #expect(eventually(within: 10, every: 0.005) { fs.dataWaiters(after: 0, 0, limit: 10).count == 2 })
        cancel.cancel()
        #expect(r3.join()?.errorValue == .interrupted)
        #expect(try fs.failDataWaiters(ino: ino, offset: 0, count: 16384, ops: [.read, .write], error: ENOENT) == 1)
        #expect(r1.join()?.errorValue == .noSuchFileOrDirectory)
        #expect(fs.dataWaiters(after: 0, 0, limit: 10).isEmpty)
    }

    @Test func setattrRestoresAnOfflineStubThatStagingFills() throws {
        let fs = try mount()
        let contents = pattern(10_000)
        let ino = try file(fs, "restored", [])
        let ctime = Timestamp(seconds: 1_600_000_000, nanoseconds: 5)
        try fs.setattrMore(ino, SetattrMore(dataVersion: 42, size: 10_000, offline: true, ctime: ctime, crtime: ctime))
        let m = try fs.statMore(ino)
        #expect(m.dataVersion == 42 && m.offlineBlocks == 3 && m.onlineBlocks == 0 && m.crtime == ctime)
        #expect(try fs.getattr(ino).size == 10_000)
        #expect(try fs.getattr(ino).ctime == ctime)
        try fs.stage(ino, dataVersion: 42, offset: 0, data: contents)
        #expect(try fs.read(ino, offset: 0, count: 20_000) == contents)
        // Only a new file, and a size needs a version.
        #expect(archiveErrno { () throws(ArchiveError) in try fs.setattrMore(ino, SetattrMore(dataVersion: 1, size: 1, offline: false, ctime: nil, crtime: nil)) } == .invalidArgument)
        let fresh = try file(fs, "fresh", [])
        #expect(archiveErrno { () throws(ArchiveError) in try fs.setattrMore(fresh, SetattrMore(dataVersion: 0, size: 5, offline: false, ctime: nil, crtime: nil)) } == .invalidArgument)
        #expect(archiveErrno { () throws(ArchiveError) in try fs.setattrMore(fresh, SetattrMore(dataVersion: 3, size: 0, offline: true, ctime: nil, crtime: nil)) } == .invalidArgument)
        try fs.sync()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }
}

extension Result {
    var errorValue: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}

/// set-attr-x restores a file as setattr does, under the same rules.
@Suite struct AttrXTests {
    let devices = MemoryMount()
    let t = ArchiveTests()

    @Test func setAttrXRestoresAnOfflineStubUnderSetattrsRules() throws {
        let fs = try devices.mount()
        let ino = try t.file(fs, "stub", [])
        func refused(_ x: InodeAttrX) -> Errno? { t.archiveErrno { () throws(ArchiveError) in try fs.setAttrX(ino, x) } }
        var x = InodeAttrX(mask: InodeAttrX.sizeMask, flags: InodeAttrX.sizeOffline)
        x.size = 10_000
        #expect(refused(x) == .invalidArgument, "a non-zero size needs a data version")
        x.mask |= InodeAttrX.dataVersionMask
        #expect(refused(x) == .invalidArgument, "a data version must not be 0")
        x.dataVersion = 5
        x.size = 0
        #expect(refused(x) == .invalidArgument, "offline needs a non-zero size")
        x.size = UInt64(Int64.max) + 1
        #expect(refused(x) == .fileTooLarge)
        x.size = 10_000
        try fs.setAttrX(ino, x)
        let more = try fs.statMore(ino)
        #expect(more.dataVersion == 5 && more.offlineBlocks == 3 && more.onlineBlocks == 0)
        #expect(try fs.getattr(ino).size == 10_000)
        #expect(refused(x) == .invalidArgument, "only a never written file")
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }
}

/// punch-offline and move-blocks, the original's PUNCH_OFFLINE and MOVE_BLOCKS.
@Suite struct ExtentMoveTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)
    let t = ArchiveTests()

    func fiemap(_ fs: Filesystem, _ ino: UInt64) throws -> [String] {
        try fs.fiemap(ino, fromBlock: 0, limit: 1000).extents.map {
            "\($0.logical / 4096)+\($0.length / 4096)\($0.flags & FiemapExtent.unknown != 0 ? "O" : "")"
        }
    }

    @Test func punchingTurnsOfflineExtentsIntoHolesAndRefusesMappedOnes() throws {
        let fs = try devices.mount()
        let contents = t.pattern(7 * 4096)
        let ino = try t.file(fs, "f", contents)
        let v = try fs.statMore(ino).dataVersion
        // A mapped block in the region refuses it whole.
        #expect(t.archiveErrno { () throws(ArchiveError) in try fs.punchOffline(ino, dataVersion: v, offset: 0, length: 8192) } == .invalidArgument)
        try fs.release(ino, dataVersion: v, offset: 0, length: 7 * 4096)
        #expect(try fiemap(fs, ino) == ["0+7O"])
        for b: UInt64 in [1, 3, 5] { try fs.punchOffline(ino, dataVersion: v, offset: b * 4096, length: 4096) }
        #expect(try fiemap(fs, ino) == ["0+1O", "2+1O", "4+1O", "6+1O"])
        // Across holes and offline extents alike.
        try fs.punchOffline(ino, dataVersion: v, offset: 2 * 4096, length: 3 * 4096)
        #expect(try fiemap(fs, ino) == ["0+1O", "6+1O"])
        let more = try fs.statMore(ino)
        #expect(more.offlineBlocks == 2 && more.dataVersion == v)
        #expect(try fs.getattr(ino).size == 7 * 4096)
        // Punched blocks are holes: they read as zeros without waiting for a stage.
        #expect(try fs.read(ino, offset: 4096, count: 4 * 4096) == [UInt8](repeating: 0, count: 4 * 4096))
        // Unaligned or wrapping ranges are EOVERFLOW, a stale version ESTALE; a zero length does nothing.
        for (off, len): (UInt64, UInt64) in [(4095, 4096), (4096, 4097), (4096, 1), (.max - 4095, 8192)] {
            #expect(t.archiveErrno { () throws(ArchiveError) in try fs.punchOffline(ino, dataVersion: v, offset: off, length: len) } == .overflow)
        }
        #expect(t.archiveErrno { () throws(ArchiveError) in try fs.punchOffline(ino, dataVersion: v + 1, offset: 0, length: 4096) } == .staleNFSFileHandle)
        try fs.punchOffline(ino, dataVersion: v, offset: 0, length: 0)
        #expect(try fiemap(fs, ino) == ["0+1O", "6+1O"])
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }

    @Test func movedBlocksChangeOwnerWithoutACopy() throws {
        let fs = try devices.mount()
        let src = t.pattern(8 * 4096 + 123, seed: 2)
        let from = try t.file(fs, "from", src)
        let to = try t.file(fs, "to", [])
        try fs.sync()
        let fromBefore = try fs.statMore(from)
        let toBefore = try fs.statMore(to)
        let freeBefore = try fs.statfsMore().freeDataBlocks
        let fromBlocks = try fs.fiemap(from, fromBlock: 0, limit: 10).extents.map(\.physical)

        // Blocks 2..<5 to the destination's block 1; the source keeps a hole there.
        try fs.moveBlocks(from: from, fromOffset: 2 * 4096, length: 3 * 4096, to: to, toOffset: 4096)
        #expect(try fs.read(to, offset: 0, count: 1 << 20) == [UInt8](repeating: 0, count: 4096) + Array(src[8192..<(5 * 4096)]))
        var expected = src
        expected.replaceSubrange(8192..<(5 * 4096), with: [UInt8](repeating: 0, count: 3 * 4096))
        #expect(try fs.read(from, offset: 0, count: 1 << 20) == expected)
        #expect(try fs.statfsMore().freeDataBlocks == freeBefore, "nothing is allocated or freed by a move")
        #expect(try fs.fiemap(to, fromBlock: 0, limit: 10).extents.first?.physical == fromBlocks[0] + 2 * 4096)
        try fs.sync()
        let fromAfter = try fs.statMore(from)
        let toAfter = try fs.statMore(to)
        #expect(fromAfter.onlineBlocks == fromBefore.onlineBlocks - 3 && toAfter.onlineBlocks == 3)
        #expect(fromAfter.dataVersion > fromBefore.dataVersion && toAfter.dataVersion > toBefore.dataVersion)
        #expect(fromAfter.dataSeq > fromBefore.dataSeq && toAfter.dataSeq > toBefore.dataSeq)

        // The final partial block moves with the source's size kept partial in the destination.
        let other = try t.file(fs, "other", [])
        try fs.moveBlocks(from: from, fromOffset: 8 * 4096, length: 123, to: other, toOffset: 0)
        #expect(try fs.getattr(other).size == 123)
        #expect(try fs.read(other, offset: 0, count: 4096) == Array(src[(8 * 4096)...]))

        // Refusals change nothing.
        func refused(_ body: () throws(ArchiveError) -> Void) -> Errno? { t.archiveErrno(body) }
        let mapBefore = try fiemap(fs, to)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 0, length: 2 * 4096, to: to, toOffset: 0) } == .invalidArgument,
                "the destination's block 1 holds data")
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 1, length: 4096, to: to, toOffset: 8 * 4096) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 0, length: 4095, to: to, toOffset: 8 * 4096) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 0, length: 4096, to: from, toOffset: 8 * 4096) } == .invalidArgument)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 0xFFFF_FFFF_FFFF_F000, length: 8192, to: to, toOffset: 0) } == .overflow)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: 1, fromOffset: 0, length: 4096, to: to, toOffset: 8 * 4096) } == .isDirectory)
        #expect(try fiemap(fs, to) == mapBefore)
        #expect(try fs.read(from, offset: 0, count: 2 * 4096) == Array(src[0..<8192]))

        // Offline data on either side is ENODATA; staging moves blocks into an offline region.
        let v = try fs.statMore(to).dataVersion
        try fs.release(to, dataVersion: v, offset: 0, length: 8 * 4096)
        #expect(refused { () throws(ArchiveError) in try fs.moveBlocks(from: from, fromOffset: 0, length: 4096, to: to, toOffset: 6 * 4096) } == .noData)
        let toTimes = try fs.getattr(to)
        try fs.moveBlocks(from: from, fromOffset: 0, length: 2 * 4096, to: to, toOffset: 0, stage: true, dataVersion: v)
        #expect(try fs.statMore(to).dataVersion == v && fs.statMore(to).offlineBlocks == 2)
        #expect(try fs.getattr(to).mtime == toTimes.mtime)
        #expect(try fs.read(to, offset: 0, count: 8192) == Array(src[0..<8192]))
        #expect(refused { () throws(ArchiveError) in
            try fs.moveBlocks(from: from, fromOffset: 5 * 4096, length: 4096, to: to, toOffset: 0, stage: true, dataVersion: v)
        } == .invalidArgument, "staging needs an offline destination")
        #expect(refused { () throws(ArchiveError) in
            try fs.moveBlocks(from: from, fromOffset: 5 * 4096, length: 4096, to: to, toOffset: 4 * 4096, stage: true, dataVersion: v + 1)
        } == .staleNFSFileHandle)
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }
}
