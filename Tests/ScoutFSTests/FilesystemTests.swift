#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import SystemPackage
import Synchronization
import Testing

/// The filesystem layer on memory devices, without FUSE.
@Suite struct FilesystemTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)
    var meta: MemoryBlockDevice { devices.meta }
    var data: MemoryBlockDevice { devices.data }

    func mount() throws -> Filesystem { try devices.mount() }

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// The errno `body` fails with (nil if it succeeds; a non-errno failure fails the test).
    func errno(_ body: () throws -> Void) -> Errno? {
        do {
            try body()
            return nil
        } catch let e as Errno {
            return e
        } catch {
            Issue.record("not an errno: \(error)")
            return nil
        }
    }

    /// Hooks kept in a mutex are read on hot paths (the log sink on every line, the commit
    /// wake-up on every operation past the dirty limit): a read must leave the hook as it was.
    /// Kept as a bare closure, each read wrapped it in two more thunks (`Callback`), so after
    /// a million reads one call went two million calls deep and overflowed the stack.
    @Test func hooksStayAsTheyWereHoweverOftenRead() throws {
        let fs = try mount()
        let lines = Mutex<[String]>([])
        fs.logSink = { line in lines.withLock { $0.append(line) } }
        for _ in 0..<1_000_000 { _ = fs.logSink }
        fs.logSink?("one line")
        #expect(lines.withLock { $0 } == ["one line"])
    }

    /// readdirplus hands the kernel references; they must be taken while the entries are read,
    /// or an unlink in between frees an inode the kernel then holds.
    @Test func readdirPlusTakesItsReferencesUnderTheSameLock() throws {
        let fs = try mount()
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        try fs.release(f.ino)
        try fs.forget(f.ino, 1)  // the create's lookup reference
        let listed = try fs.readdirPlus(1, offset: 0, limit: 10).filter { $0.0.name != name(".") && $0.0.name != name("..") }
        #expect(listed.map(\.0.ino) == [f.ino])
        try fs.unlink(1, name("f"))
        // The kernel holds the entry from readdirplus: the inode lives until it forgets it.
        #expect(try fs.getattr(f.ino).nlink == 0)
        try fs.forget(f.ino, 1)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try fs.getattr(f.ino) }
    }

    /// An entry's d_off is the position of the entry after it, gaps and all, as the original's
    /// (the kernel resumes a listing there); past the last, one beyond its own position.
    @Test func readdirOffsetsAreTheNextEntrysPosition() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("gaps"), mode: 0o755, caller: user)
        for n in ["a", "b", "c", "d", "e"] { try fs.release(try fs.create(d.ino, name(n), mode: 0o644, flags: 0, caller: user).ino) }
        try fs.unlink(d.ino, name("b"))
        try fs.unlink(d.ino, name("d"))
        let all = try fs.readdir(d.ino, offset: 0, limit: 100)
        #expect(all.map { String(decoding: $0.name, as: UTF8.self) } == [".", "..", "a", "c", "e"])
        let offs = all.map(\.nextOffset)
        #expect(offs[0] == 1)
        // a, c and e sit at consecutive positions with b's and d's left empty.
        #expect([offs[2] - offs[1], offs[3] - offs[2], offs[4] - offs[3]] == [2, 2, 1], "\(offs)")
        // Resumed at any entry's offset, the listing goes on with the entry after it.
        for k in 0..<all.count - 1 {
            #expect(try fs.readdir(d.ino, offset: offs[k], limit: 1).first?.name == all[k + 1].name)
        }
        #expect(try fs.readdir(d.ino, offset: offs[4], limit: 10).isEmpty)
        // Cut short by its limit, a page still gives its last entry the next one's position.
        #expect(try fs.readdir(d.ino, offset: 0, limit: 3).last?.nextOffset == offs[2])
        #expect(try fs.readdir(d.ino, offset: 0, limit: 2).last?.nextOffset == offs[1])
        let empty = try fs.mkdir(1, name("empty"), mode: 0o755, caller: user)
        #expect(try fs.readdir(empty.ino, offset: 0, limit: 10).map(\.nextOffset) == [1, 2])
    }

    @Test func createWriteReadAndRemount() throws {
        let fs = try mount()
        let f = try fs.create(1, name("file"), mode: 0o666, flags: O_RDWR, caller: user)
        #expect(f.mode == UInt32(S_IFREG) | 0o644)  // umask applied
        #expect(f.uid == 1000 && f.gid == 100)
        let payload = (0..<20000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        #expect(try fs.write(f.ino, offset: 100, data: payload) == payload.count)
        #expect(try fs.read(f.ino, offset: 100, count: payload.count) == payload)
        #expect(try fs.read(f.ino, offset: 0, count: 100) == [UInt8](repeating: 0, count: 100))
        #expect(try fs.getattr(f.ino).size == 20100)
        let v1 = try fs.getattr(f.ino).dataVersion
        _ = try fs.write(f.ino, offset: 5000, data: [1, 2, 3])
        #expect(try fs.getattr(f.ino).dataVersion == v1 + 1)
        try fs.release(f.ino)
        try fs.sync()

        let again = try mount()
        let a = try again.lookup(1, name("file"))
        var expected = [UInt8](repeating: 0, count: 100) + payload
        expected.replaceSubrange(5000..<5003, with: [1, 2, 3])
        #expect(try again.read(a.ino, offset: 0, count: 1 << 20) == expected)
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    @Test func directoriesLinksAndCounts() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("d"), mode: 0o755, caller: user)
        #expect(d.nlink == 2)
        #expect(try fs.getattr(1).nlink == 3)
        let f = try fs.create(d.ino, name("f"), mode: 0o644, flags: O_WRONLY, caller: user)
        try fs.release(f.ino)
        let l = try fs.link(f.ino, 1, name("hard"))
        #expect(l.nlink == 2)
        #expect(errno { _ = try fs.link(d.ino, 1, name("dirlink")) } == .notPermitted)
        #expect(errno { _ = try fs.mkdir(1, name("d"), mode: 0o755, caller: user) } == .fileExists)
        #expect(errno { try fs.rmdir(1, name("d")) } == .directoryNotEmpty)
        #expect(errno { try fs.unlink(1, name("d")) } == .isDirectory)
        #expect(errno { try fs.rmdir(d.ino, name("f")) } == .notDirectory)
        #expect(errno { _ = try fs.lookup(1, name(String(repeating: "x", count: 256))) } == .fileNameTooLong)
        try fs.unlink(d.ino, name("f"))
        #expect(try fs.getattr(f.ino).nlink == 1)
        try fs.rmdir(1, name("d"))
        #expect(try fs.getattr(1).nlink == 2)
        #expect(errno { _ = try fs.lookup(1, name("d")) } == .noSuchFileOrDirectory)
        let entries = try fs.readdir(1, offset: 0, limit: 100).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(entries == [".", "..", "hard"])
    }

    @Test func renameCornerCases() throws {
        let fs = try mount()
        let a = try fs.mkdir(1, name("a"), mode: 0o755, caller: user)
        let b = try fs.mkdir(1, name("b"), mode: 0o755, caller: user)
        let sub = try fs.mkdir(a.ino, name("sub"), mode: 0o755, caller: user)
        let x = try fs.create(a.ino, name("x"), mode: 0o644, flags: 0, caller: user)
        let y = try fs.create(b.ino, name("y"), mode: 0o644, flags: 0, caller: user)
        // Into its own subtree: EINVAL.
        #expect(errno { try fs.rename(1, name("a"), sub.ino, name("a2")) } == .invalidArgument)
        // NOREPLACE onto an existing name.
        #expect(errno { try fs.rename(a.ino, name("x"), b.ino, name("y"), flags: LinuxABI.renameNoReplace) } == .fileExists)
        // Directory over a file and file over a directory.
        #expect(errno { try fs.rename(a.ino, name("sub"), b.ino, name("y")) } == .notDirectory)
        #expect(errno { try fs.rename(b.ino, name("y"), a.ino, name("sub")) } == .isDirectory)
        // Exchange a file and a directory across parents: link counts follow the directory.
        try fs.rename(a.ino, name("sub"), b.ino, name("y"), flags: LinuxABI.renameExchange)
        #expect(try fs.lookup(b.ino, name("y")).ino == sub.ino)
        #expect(try fs.lookup(a.ino, name("sub")).ino == y.ino)
        #expect(try fs.getattr(a.ino).nlink == 2)
        #expect(try fs.getattr(b.ino).nlink == 3)
        #expect(try fs.readdir(sub.ino, offset: 1, limit: 1).first?.ino == b.ino)  // ".." moved
        // Replace an existing file: the victim loses its link.
        try fs.rename(a.ino, name("x"), a.ino, name("sub"))
        #expect(try fs.lookup(a.ino, name("sub")).ino == x.ino)
        #expect(try fs.getattr(y.ino).nlink == 0)
        // Renaming onto a hard link of itself does nothing.
        _ = try fs.link(x.ino, b.ino, name("xl"))
        try fs.rename(a.ino, name("sub"), b.ino, name("xl"))
        #expect(try fs.lookup(a.ino, name("sub")).ino == x.ino)
        #expect(try fs.getattr(x.ino).nlink == 2)
    }

    @Test func readdirPositionsSurviveChanges() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("big"), mode: 0o755, caller: user)
        for i in 0..<3000 {
            let f = try fs.create(d.ino, name("f\(i)"), mode: 0o644, flags: 0, caller: user)
            try fs.release(f.ino)
        }
        // Read in pages while removing already-seen entries and adding new ones.
        var seen = Set<String>()
        var offset: UInt64 = 0
        var added = 0
        while true {
            let page = try fs.readdir(d.ino, offset: offset, limit: 97)
            if page.isEmpty { break }
            for e in page {
                let n = String(decoding: e.name, as: UTF8.self)
                #expect(seen.insert(n).inserted, "\(n) returned twice")
                if n.hasPrefix("f"), Int(n.dropFirst())! % 3 == 0 { try fs.unlink(d.ino, e.name) }
            }
            offset = page.last!.nextOffset
            if added < 500 {
                let f = try fs.create(d.ino, name("new\(added)"), mode: 0o644, flags: 0, caller: user)
                try fs.release(f.ino)
                added += 1
            }
        }
        #expect((0..<3000).allSatisfy { seen.contains("f\($0)") })
        #expect(seen.count == 3000 + 2 + added)
    }

    /// A renamed name gets a new position; an open directory's pass must not meet it again,
    /// or a reader that renames what it reads never ends (xfstests generic/736). A rewind
    /// starts a pass that sees everything.
    @Test func aPassEndsAtThePositionsThatExistedWhenItStarted() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("ren"), mode: 0o755, caller: user)
        for i in 0..<300 {
            let f = try fs.create(d.ino, name("f\(i)"), mode: 0o644, flags: 0, caller: user)
            try fs.release(f.ino)
        }
        let stream = DirectoryStream()
        var returned = 0
        var offset: UInt64 = 0
        while returned < 3 * 302 {
            let page = try fs.readdir(d.ino, offset: offset, limit: 17, stream: stream)
            if page.isEmpty { break }
            for e in page where e.name != name(".") && e.name != name("..") {
                try fs.rename(d.ino, e.name, d.ino, name("TEMP"))
                try fs.rename(d.ino, name("TEMP"), d.ino, e.name)
            }
            returned += page.count
            offset = page.last!.nextOffset
        }
        #expect(returned == 302)
        // Without a stream (or before this change) the same loop would go on past 3 × 302.
        let late = try fs.create(d.ino, name("late"), mode: 0o644, flags: 0, caller: user)
        try fs.release(late.ino)
        #expect(try fs.readdir(d.ino, offset: offset, limit: 1000, stream: stream).isEmpty)
        let rewound = try fs.readdir(d.ino, offset: 0, limit: 1000, stream: stream).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(rewound.count == 303 && rewound.contains("late"))
    }

    /// The kernel opens a file handle of an inode it no longer caches by looking up "." in
    /// it, and finds a directory's parent by "..".
    @Test func dotAndDotDotLookupsServeFileHandles() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("d"), mode: 0o755, caller: user)
        let f = try fs.create(d.ino, name("f"), mode: 0o644, flags: 0, caller: user)
        try fs.release(f.ino)
        #expect(try fs.lookup(f.ino, name(".")).ino == f.ino)
        #expect(try fs.lookup(d.ino, name(".")).ino == d.ino)
        #expect(try fs.lookup(d.ino, name("..")).ino == 1)
        #expect(try fs.lookup(1, name("..")).ino == 1)
        #expect(errno { _ = try fs.lookup(f.ino, name("..")) } == .notDirectory)
        // Once gone, the handle is stale: the lookup fails and the kernel says ESTALE.
        try fs.unlink(d.ino, name("f"))
        try fs.forget(f.ino, 3)
        #expect(errno { _ = try fs.lookup(f.ino, name(".")) } == .noSuchFileOrDirectory)
    }

    @Test func unlinkedOpenFileLivesUntilCloseAndOrphansAreFreedAtMount() throws {
        let fs = try mount()
        let f = try fs.create(1, name("victim"), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 9, count: 50000))
        try fs.unlink(1, name("victim"))
        try fs.forget(f.ino, 1)
        #expect(try fs.read(f.ino, offset: 49990, count: 100) == [UInt8](repeating: 9, count: 10))
        try fs.sync()
        // A crash now (no release) leaves an orphan; the next mount frees it.
        let before = Checker.check(meta: meta, data: data)
        #expect(before.dataReferenced == 13)
        _ = try mount()
        let after = Checker.check(meta: meta, data: data)
        #expect(after.problems == [])
        #expect(after.dataReferenced == 0)
        // And a close after unlink frees at once.
        let fs2 = try mount()
        let g = try fs2.create(1, name("g"), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs2.write(g.ino, offset: 0, data: [1])
        try fs2.unlink(1, name("g"))
        try fs2.forget(g.ino, 1)
        try fs2.release(g.ino)
        #expect(errno { _ = try fs2.getattr(g.ino) } == .noSuchFileOrDirectory)
    }

    @Test func truncateSparseFallocateAndSeek() throws {
        let fs = try mount()
        let f = try fs.create(1, name("sparse"), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs.write(f.ino, offset: 1 << 20, data: [UInt8](repeating: 7, count: 10000))
        #expect(try fs.getattr(f.ino).blocks == 3 * 8)  // three 4 KiB blocks, in 512-byte units
        #expect(try fs.seek(f.ino, offset: 0, whence: LinuxABI.seekData) == 1 << 20)
        #expect(try fs.seek(f.ino, offset: 0, whence: LinuxABI.seekHole) == 0)
        #expect(try fs.seek(f.ino, offset: 1 << 20, whence: LinuxABI.seekHole) == (1 << 20) + 10000)
        // Shrink into the middle of a block, then grow: the cut tail reads as zeros.
        _ = try fs.setattr(f.ino, AttributeChanges(size: (1 << 20) + 10))
        _ = try fs.setattr(f.ino, AttributeChanges(size: (1 << 20) + 5000))
        #expect(try fs.read(f.ino, offset: 1 << 20, count: 5000) == [UInt8](repeating: 7, count: 10) + [UInt8](repeating: 0, count: 4990))
        // Preallocate, then punch a hole in the middle.
        try fs.fallocate(f.ino, mode: 0, offset: 0, length: 40960)
        #expect(try fs.read(f.ino, offset: 0, count: 40960) == [UInt8](repeating: 0, count: 40960))
        _ = try fs.write(f.ino, offset: 0, data: [UInt8](repeating: 5, count: 40960))
        try fs.fallocate(f.ino, mode: LinuxABI.fallocPunchHole | LinuxABI.fallocKeepSize, offset: 5000, length: 10000)
        let back = try fs.read(f.ino, offset: 0, count: 40960)
        #expect(back[0..<5000].allSatisfy { $0 == 5 })
        #expect(back[5000..<15000].allSatisfy { $0 == 0 })
        #expect(back[15000...].allSatisfy { $0 == 5 })
        #expect(errno { try fs.fallocate(f.ino, mode: 0x10, offset: 0, length: 1) } == .notSupported)
        try fs.sync()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    @Test func xattrs() throws {
        let fs = try mount()
        let f = try fs.create(1, name("x"), mode: 0o644, flags: 0, caller: user)
        let big = (0..<65535).map { UInt8(truncatingIfNeeded: $0) }
        try fs.setXattr(f.ino, name("user.big"), big, flags: 0, caller: user)
        try fs.setXattr(f.ino, name("user.small"), [1], flags: 0, caller: user)
        #expect(try fs.getXattr(f.ino, name("user.big")) == big)
        #expect(Set(try fs.listXattrs(f.ino).map { String(decoding: $0, as: UTF8.self) }) == ["user.big", "user.small"])
        #expect(errno { try fs.setXattr(f.ino, name("user.small"), [2], flags: LinuxABI.xattrCreate, caller: user) } == .fileExists)
        #expect(errno { try fs.setXattr(f.ino, name("user.none"), [2], flags: LinuxABI.xattrReplace, caller: user) } == .noData)
        #expect(errno { try fs.setXattr(f.ino, name("bogus.ns"), [2], flags: 0, caller: user) } == .notSupported)
        // The original's limits and errnos: a value over 65,535 bytes is E2BIG, create and
        // replace together EINVAL (before the name or the existing value is looked at).
        #expect(errno { try fs.setXattr(f.ino, name("user.huge"), [UInt8](repeating: 0, count: 65536), flags: 0, caller: user) } == .argListTooLong)
        #expect(errno { try fs.setXattr(f.ino, name("user.small"), [2], flags: LinuxABI.xattrCreate | LinuxABI.xattrReplace, caller: user) } == .invalidArgument)
        #expect(errno { try fs.setXattr(f.ino, name("bogus.ns"), [2], flags: LinuxABI.xattrCreate | LinuxABI.xattrReplace, caller: user) } == .invalidArgument)
        try fs.setXattr(f.ino, name("user.big"), [3, 4], flags: LinuxABI.xattrReplace, caller: user)
        #expect(try fs.getXattr(f.ino, name("user.big")) == [3, 4])
        try fs.removeXattr(f.ino, name("user.small"), caller: user)
        #expect(errno { _ = try fs.getXattr(f.ino, name("user.small")) } == .noData)
        try fs.sync()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    @Test func symlinksAndSetattr() throws {
        let fs = try mount()
        let target = Array(String(repeating: "t/", count: 1000).utf8)  // several items long
        let l = try fs.symlink(1, name("l"), target: target, caller: user)
        #expect(l.size == UInt64(target.count))
        #expect(try fs.readlink(l.ino) == target)
        #expect(errno { _ = try fs.readlink(1) } == .invalidArgument)
        let f = try fs.create(1, name("f"), mode: 0o600, flags: 0, caller: user)
        let a = try fs.setattr(f.ino, AttributeChanges(mode: 0o4755, uid: 5, gid: 6, mtime: .set(Timestamp(seconds: 1000, nanoseconds: 5))))
        #expect(a.mode == UInt32(S_IFREG) | 0o4755)
        #expect(a.uid == 5 && a.gid == 6)
        #expect(a.mtime == Timestamp(seconds: 1000, nanoseconds: 5))
        #expect(errno { _ = try fs.setattr(1, AttributeChanges(size: 0)) } == .isDirectory)
    }

    /// File data is read outside the filesystem lock; a block freed by a truncate must not be
    /// handed to another file while such a read of it is in flight. A reader of `x` sees only
    /// its bytes (or a shorter file), never those of `y`, which keeps taking `x`'s old blocks.
    @Test func readsNeverSeeBlocksReusedByAnotherFile() throws {
        // Slow reads of file data widen the window in which a missing gate would show.
        let slow = SlowReadDevice(data)
        let store = try Store.format(meta: meta, data: slow, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let fs = try Filesystem(store: store)
        let size = 256 << 10
        let x = try fs.create(1, name("x"), mode: 0o644, flags: O_RDWR, caller: user)
        _ = try fs.write(x.ino, offset: 0, data: [UInt8](repeating: 0x11, count: size))
        try fs.sync()
        let stop = Mutex(false)
        let leaked = Mutex(0)
        let reads = Mutex(0)
        let reader = Thread {
            while !stop.withLock({ $0 }) {
                guard let got = try? fs.read(x.ino, offset: 0, count: size) else { continue }
                if got.contains(where: { $0 != 0x11 && $0 != 0 }) { leaked.withLock { $0 += 1 } }
                reads.withLock { $0 += 1 }
            }
        }
        reader.start()
        for round in 0..<150 {
            _ = try fs.setattr(x.ino, AttributeChanges(size: 0))
            try fs.sync()
            let y = try fs.create(1, name("y\(round)"), mode: 0o644, flags: O_RDWR, caller: user)
            _ = try fs.write(y.ino, offset: 0, data: [UInt8](repeating: 0x22, count: size))
            _ = try fs.write(x.ino, offset: 0, data: [UInt8](repeating: 0x11, count: size))
            try fs.release(y.ino)
            try fs.unlink(1, name("y\(round)"))
            try fs.sync()
        }
        stop.withLock { $0 = true }
        while !reader.isFinished { usleep(1000) }
        #expect(leaked.withLock { $0 } == 0)
        #expect(reads.withLock { $0 } > 0)
    }

    /// A full metadata device gives ENOSPC; unlinking still works there, and once a commit has
    /// made the space reusable, creating works again.
    @Test func fullMetadataDeviceGivesENOSPCAndRecovers() throws {
        // Small split size: the device fills with a few thousand files instead of millions.
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)],
                                     options: StoreOptions(cacheBlocks: 256, nodeCapacity: 4096))
        let fs = try Filesystem(store: store)
        var made: [String] = []
        var failure: Errno?
        while failure == nil && made.count < 1_000_000 {
            let n = "file-\(made.count)-" + String(repeating: "x", count: 200)
            do {
                let f = try fs.create(1, name(n), mode: 0o644, flags: O_RDWR, caller: user)
                try fs.release(f.ino)
                made.append(n)
            } catch {
                failure = error
            }
        }
        #expect(failure == .noSpace, "stopped after \(made.count) files with \(String(describing: failure))")
        #expect(made.count > 1000)
        // Deleting must not need space the full device lacks.
        for (i, n) in made.prefix(made.count / 2).enumerated() {
            do { try fs.unlink(1, name(n)) } catch { Issue.record("unlink \(i) of \(made.count / 2): \(error)"); throw error }
        }
        try fs.sync()
        for i in 0..<100 {
            let f: Attributes
            do { f = try fs.create(1, name("again-\(i)"), mode: 0o644, flags: O_RDWR, caller: user) } catch { Issue.record("create again \(i): \(error)"); throw error }
            try fs.release(f.ino)
        }
        try fs.syncAndMerge()
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    /// A corrupted metadata block fails the operations that need it with EIO and a log line
    /// naming the block; the filesystem keeps serving what does not depend on it.
    @Test func corruptMetadataGivesEIOAndALogLine() throws {
        let fs = try mount()
        for i in 0..<2000 {
            let f = try fs.create(1, name("file-\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
        }
        try fs.syncAndMerge()
        let sb = try Store.readSuperblock(meta)
        let root = sb.root(.fs)
        try #require(root.height == 2)
        // Damage the last leaf: it holds the newest inodes, while the root directory's items
        // sit in the first leaves.
        let rootBlock = try BTreeBlock(decoding: meta.read(at: root.ref.blkno * UInt64(Layout.metaBlockSize), count: Layout.metaBlockSize))
        let leaf = try #require(rootBlock.children.last).blkno
        let at = leaf * UInt64(Layout.metaBlockSize) + 30000
        var byte = try meta.read(at: at, count: 1)
        byte[0] ^= 0xff
        try meta.write(at: at, byte)

        let again = try mount()
        let lines = Mutex<[String]>([])
        again.logSink = { line in lines.withLock { $0.append(line) } }
        #expect(errno { _ = try again.lookup(1, name("file-1999")) } == .ioError)
        #expect(lines.withLock { $0 }.contains { $0.contains("metadata block \(leaf)") && $0.contains("fs tree") })
        #expect(try again.lookup(1, name("file-0")).ino > 1)
        #expect(try again.getattr(1).isDirectory)
        #expect(!Checker.check(meta: meta, data: data).isClean)
    }
}

/// A device whose reads of more than one block take a while, like a disk's.
final class SlowReadDevice: BlockDevice {
    let inner: MemoryBlockDevice
    init(_ inner: MemoryBlockDevice) { self.inner = inner }
    var name: String { inner.name }
    var size: UInt64 { inner.size }
    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        if count > 4096 { usleep(2000) }
        return try inner.read(at: offset, count: count)
    }
    func write(at offset: UInt64, _ bytes: [UInt8]) throws { try inner.write(at: offset, bytes) }
    func flush() throws {}
}
