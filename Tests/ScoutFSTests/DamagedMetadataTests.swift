#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import SystemPackage
import Synchronization
import Testing

/// Metadata that checksums but holds impossible values (a crafted or buggy image): every
/// operation that meets it fails with EIO and a log line naming the item, the daemon never
/// traps, nothing is written where the item points, and `check` reports it.
@Suite struct DamagedMetadataTests {
    let devices = MemoryMount()
    let user = Caller(uid: 0, gid: 0)

    final class Log: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
    }

    func mount(_ log: Log? = nil) throws -> Filesystem {
        let fs = try devices.mount()
        if let log { fs.logSink = { line in log.lines.withLock { $0.append(line) } } }
        return fs
    }

    /// A file of two blocks, merged into the fs tree, on an unmounted filesystem.
    func fileOnDisk() throws -> UInt64 {
        let fs = try mount()
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 7, count: 8192))
        try fs.release(f.ino)
        try fs.syncAndMerge()
        return f.ino
    }

    /// Edits the fs tree of the unmounted filesystem directly, as a crafted image would.
    func plant(_ body: (Store) throws -> Void) throws {
        let store = try Store.open(meta: devices.meta, data: devices.data)
        try body(store)
        try store.commit()
    }

    func replaceExtents(_ ino: UInt64, with key: Key, blkno: UInt64) throws {
        try plant { s in
            for it in try s.tree(.fs).items(in: s) where it.key.first == ino && it.key.type == ItemType.dataExtent {
                try s.delete(it.key, from: .fs)
            }
            try s.insert(Item(key: key, seq: s.superblock.seq, value: FileExtent(blkno: blkno, flags: []).encoded), into: .fs)
        }
    }

    func expectEIO(_ what: String, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what) succeeded on damaged metadata")
        } catch let e as Errno {
            #expect(e == .ioError, "\(what): \(e)")
        } catch {
            Issue.record("\(what): not an errno: \(error)")
        }
    }

    func extentKey(_ ino: UInt64, last: UInt64, length: UInt64) -> Key {
        Key(zone: Zone.fs, first: ino, type: ItemType.dataExtent, second: last, third: length)
    }

    @Test(arguments: [
        (last: UInt64(0), length: UInt64(5), blkno: UInt64(100)),  // longer than the blocks before it
        (last: UInt64.max, length: UInt64(1), blkno: UInt64(100)),  // past the largest file
        (last: UInt64(0), length: UInt64(1), blkno: UInt64.max - 1),  // data block near 2^64
        (last: UInt64(1), length: UInt64(2), blkno: UInt64(65535)),  // runs off the data device
    ])
    func impossibleExtentsGiveEIOAndAreNeverWritten(last: UInt64, length: UInt64, blkno: UInt64) throws {
        let ino = try fileOnDisk()
        try replaceExtents(ino, with: extentKey(ino, last: last, length: length), blkno: blkno)
        let before = try devices.data.read(at: (65535 & ~0) * 4096, count: 4096)
        let log = Log()
        let fs = try mount(log)
        expectEIO("read") { _ = try fs.read(ino, offset: 0, count: 8192) }
        expectEIO("write") { _ = try fs.write(ino, offset: 0, data: [1, 2, 3]) }
        expectEIO("seek") { _ = try fs.seek(ino, offset: 0, whence: LinuxABI.seekData) }
        expectEIO("truncate") { _ = try fs.setattr(ino, AttributeChanges(size: 1)) }
        #expect(log.all.contains { $0.contains("data extent item of inode \(ino)") && $0.contains("scoutfs check") }, "\(log.all)")
        // The last block of the data device is where the crafted extent pointed.
        #expect(try devices.data.read(at: 65535 * 4096, count: 4096) == before)
        // Everything else still works.
        #expect(try fs.lookup(1, Array("f".utf8)).ino == ino)
        let g = try fs.create(1, Array("g".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs.write(g.ino, offset: 0, data: [9])
        #expect(try fs.read(g.ino, offset: 0, count: 1) == [9])
    }

    @Test func checkAndPrintReportImpossibleExtentsWithoutTrapping() throws {
        let ino = try fileOnDisk()
        try replaceExtents(ino, with: extentKey(ino, last: .max, length: 1), blkno: 100)
        let report = Checker.check(meta: devices.meta, data: devices.data)
        #expect(report.problems.contains { $0.contains("data extent item of inode \(ino)") && $0.contains("impossible") }, "\(report.problems)")
        let store = try Store.openMetadataOnly(meta: devices.meta, superblock: try Store.readSuperblock(devices.meta))
        #expect(!Checker.summarize(store).problems.isEmpty)
    }

    @Test func aDirectoryWithNoPositionsLeftRefusesCreatesCleanly() throws {
        let fs0 = try mount()
        let d = try fs0.mkdir(1, Array("d".utf8), mode: 0o755, caller: user)
        _ = try fs0.create(d.ino, Array("kept".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        try fs0.syncAndMerge()
        try plant { s in
            var rec = try InodeRecord(decoding: try #require(try s.lookup(Keys.inode(d.ino), in: .fs)).value)
            rec.nextReaddirPos = .max
            try s.insert(Item(key: Keys.inode(d.ino), seq: s.superblock.seq, value: rec.encoded), into: .fs)
        }
        let log = Log()
        let fs = try mount(log)
        let itemsBefore = try fs.withCore { c in try c.countItems(Key(zone: Zone.fs), Key.last(in: Zone.fs)) }
        expectEIO("create") { _ = try fs.create(d.ino, Array("new".utf8), mode: 0o644, flags: O_RDWR, caller: user) }
        expectEIO("mkdir") { _ = try fs.mkdir(d.ino, Array("sub".utf8), mode: 0o755, caller: user) }
        expectEIO("rename into it") { try fs.rename(d.ino, Array("kept".utf8), d.ino, Array("moved".utf8)) }
        #expect(log.all.contains { $0.contains("next readdir position of directory \(d.ino)") })
        // Nothing of the refused operations was left behind.
        #expect(try fs.withCore { c in try c.countItems(Key(zone: Zone.fs), Key.last(in: Zone.fs)) } == itemsBefore)
        #expect(try fs.readdir(d.ino, offset: 0, limit: 100).map { String(decoding: $0.name, as: UTF8.self) } == [".", "..", "kept"])
    }

    @Test func aNextInodeNumberAtOrBelowLiveInodesRefusesTheMount() throws {
        let ino = try fileOnDisk()
        for bad in [UInt64(0), ino] {
            try plant { s in s.nextIno = bad }
            do {
                _ = try mount()
                Issue.record("mounted with next inode number \(bad)")
            } catch let e as StoreError {
                #expect(e.code == .corrupt)
                #expect(e.message.contains("next inode number \(bad) is not above inode \(ino)"), "\(e.message)")
            }
            let report = FilesystemCheck.check(try Store.open(meta: devices.meta, data: devices.data))
            #expect(report.problems.contains { $0.contains("next inode number \(bad) is not above inode \(ino)") }, "\(report.problems)")
        }
    }

    /// Found by the fuzzer: a free count beyond the device made a merge's chunk size trap.
    @Test func freeCountsBeyondTheDevicesRefuseTheOpen() throws {
        _ = try fileOnDisk()
        var sb = try Store.readSuperblock(devices.meta)
        sb.metaFreeBlocks = .max - 10
        for copy in 0..<2 {
            try devices.meta.write(at: Layout.superOffset(copy: copy), sb.encode(smallBlkno: Layout.superSmallBlkno[copy]))
        }
        do {
            _ = try mount()
            Issue.record("mounted with a free count beyond the device")
        } catch let e as StoreError {
            #expect(e.code == .corrupt && e.message.contains("free block counts"), "\(e.message)")
        }
    }

    @Test func anUnreadableNewestSuperblockIsReported() throws {
        _ = try fileOnDisk()
        let sb = try Store.readSuperblock(devices.meta)
        // Damage the newest copy; the other one holds the commit before it.
        let off = Layout.superOffset(copy: Int(sb.seq % 2)) + 100
        var b = try devices.meta.read(at: off, count: 1)
        b[0] ^= 0xff
        try devices.meta.write(at: off, b)
        let store = try Store.open(meta: devices.meta, data: devices.data)
        #expect(store.superblock.seq == sb.seq - 1)
        #expect(store.superblockProblems.count == 1)
        #expect(store.superblockProblems.first?.contains("superblock copy \(sb.seq % 2)") == true)
        #expect(store.superblockProblems.first?.contains("commit seq \(sb.seq - 1)") == true)
    }
}
