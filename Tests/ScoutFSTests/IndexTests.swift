#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import Synchronization
import Testing

/// The meta_seq and data_seq indexes and walk-inodes, on memory devices.
@Suite struct IndexTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)
    var meta: MemoryBlockDevice { devices.meta }
    var data: MemoryBlockDevice { devices.data }

    func mount() throws -> Filesystem { try devices.mount() }

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    func all(_ fs: Filesystem, _ index: SeqIndex) throws -> [IndexPosition] {
        try fs.walkInodes(index, from: IndexPosition(seq: 0, ino: 0), through: IndexPosition(seq: .max, ino: .max), limit: .max)
    }

    @Test func entriesFollowTheInodesSeqsAndWaitForTheCommit() throws {
        let fs = try mount()
        var inos: [UInt64] = []
        for i in 0..<5 {
            let f = try fs.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            inos.append(f.ino)
        }
        // Not committed: the open transaction's seq is above the stable seq.
        #expect(try all(fs, .metaSeq).allSatisfy { !inos.contains($0.ino) })
        try fs.sync()
        let metaEntries = try all(fs, .metaSeq)
        for ino in inos + [1] {
            let a = try fs.getattr(ino)
            #expect(metaEntries.filter { $0.ino == ino } == [IndexPosition(seq: a.metaSeq, ino: ino)])
            // Only regular files are in the data_seq index (the root directory is not).
            #expect(try all(fs, .dataSeq).filter { $0.ino == ino } == (ino == 1 ? [] : [IndexPosition(seq: a.dataSeq, ino: ino)]))
        }
        #expect(metaEntries == metaEntries.sorted())

        // A write moves the file in both indexes; the old entries go.
        let before = try fs.getattr(inos[2])
        _ = try fs.write(inos[2], offset: 0, data: [1, 2, 3])
        try fs.sync()
        let after = try fs.getattr(inos[2])
        #expect(after.dataSeq > before.dataSeq && after.metaSeq > before.metaSeq)
        #expect(try all(fs, .dataSeq).filter { $0.ino == inos[2] } == [IndexPosition(seq: after.dataSeq, ino: inos[2])])
        #expect(try all(fs, .metaSeq).filter { $0.ino == inos[2] } == [IndexPosition(seq: after.metaSeq, ino: inos[2])])
        // A chmod moves only the meta entry.
        _ = try fs.setattr(inos[3], AttributeChanges(mode: 0o600))
        try fs.sync()
        let chmodded = try fs.getattr(inos[3])
        #expect(try all(fs, .dataSeq).filter { $0.ino == inos[3] }.map(\.seq) == [chmodded.dataSeq])
        #expect(chmodded.metaSeq > chmodded.dataSeq)

        // Deleted files leave both indexes, and the entries survive a remount.
        try fs.unlink(1, name("f0"))
        try fs.forget(inos[0], 1)  // the kernel's reference from create; the inode goes with it
        try fs.sync()
        #expect(!(try all(fs, .metaSeq)).contains { $0.ino == inos[0] })
        #expect(!(try all(fs, .dataSeq)).contains { $0.ino == inos[0] })
        let again = try mount()
        #expect(try all(again, .metaSeq) == all(fs, .metaSeq))
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }

    /// As in the original, directories, symlinks and other inodes that hold no file data are
    /// in the meta_seq index only; removing them leaves no data_seq item behind.
    @Test func onlyRegularFilesAreInTheDataSeqIndex() throws {
        let fs = try mount()
        let d = try fs.mkdir(1, name("d"), mode: 0o755, caller: user)
        let s = try fs.symlink(1, name("s"), target: name("d"), caller: user)
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        try fs.release(f.ino)
        try fs.sync()
        let meta = try all(fs, .metaSeq).map(\.ino), data = try all(fs, .dataSeq).map(\.ino)
        #expect(meta.contains(d.ino) && meta.contains(s.ino) && meta.contains(f.ino))
        #expect(data == [f.ino], "data_seq holds \(data)")
        #expect(try fs.statMore(d.ino).dataSeq > 0)
        try fs.rmdir(1, name("d"))
        try fs.unlink(1, name("s"))
        // The kernel's references from mkdir and symlink: the inodes go with them.
        try fs.forget(d.ino, 1)
        try fs.forget(s.ino, 1)
        try fs.sync()
        #expect(try all(fs, .dataSeq).map(\.ino) == [f.ino])
        #expect(Checker.check(meta: self.meta, data: self.data).problems == [])
    }

    @Test func walkPagesAndClampsToItsRange() throws {
        let fs = try mount()
        for i in 0..<50 {
            let f = try fs.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            if i % 10 == 9 { try fs.sync() }
        }
        let full = try all(fs, .metaSeq)
        var paged: [IndexPosition] = []
        var from = IndexPosition(seq: 0, ino: 0)
        while true {
            let page = try fs.walkInodes(.metaSeq, from: from, through: IndexPosition(seq: .max, ino: .max), limit: 7)
            paged += page
            guard page.count == 7, let next = page.last?.next else { break }
            from = next
        }
        #expect(paged == full)
        let seqs = Set(full.map(\.seq)).sorted()
        let mid = seqs[seqs.count / 2]
        let slice = try fs.walkInodes(.metaSeq, from: IndexPosition(seq: mid, ino: 0), through: IndexPosition(seq: mid, ino: .max))
        #expect(slice == full.filter { $0.seq == mid })
        #expect(try fs.walkInodes(.metaSeq, from: IndexPosition(seq: 5, ino: 0), through: IndexPosition(seq: 4, ino: 0)).isEmpty)
    }

    /// Writers change files and commit while an agent walks: whatever the agent saw at or below
    /// a stable seq stays exactly what a later walk shows there, minus files that moved up.
    @Test func walkNeverGoesBackwardsUnderWriters() throws {
        let fs = try mount()
        var inos: [UInt64] = []
        for i in 0..<40 {
            let f = try fs.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            inos.append(f.ino)
        }
        try fs.sync()
        let stop = Atomic(false)
        let writer = Thread { [inos] in
            var rng = SplitMix64(seed: 7)
            var n = 0
            while !stop.load(ordering: .relaxed) {
                let ino = inos[Int.random(in: 0..<inos.count, using: &rng)]
                _ = try! fs.write(ino, offset: UInt64.random(in: 0..<8192, using: &rng), data: [UInt8(n & 0xff)])
                n += 1
                if n % 13 == 0 { try! fs.sync() }
            }
        }
        writer.start()
        // As an agent does: walk everything, remember how far the answer went.
        var previous: Set<IndexPosition> = []
        var scanned: UInt64 = 0
        var violations = 0
        // At least 300 walks, and on until the writer has committed often enough (walks served
        // from the item cache can outrun the writer's commits).
        let deadline = ContinuousClock.now + .seconds(60)
        var walks = 0
        while walks < 300 || (scanned <= 20 && ContinuousClock.now < deadline) {
            walks += 1
            let walk = try all(fs, .dataSeq)
            // Nothing new may appear at or below a seq already scanned.
            violations += walk.filter { $0.seq <= scanned && !previous.contains($0) }.count
            previous = Set(walk)
            scanned = max(scanned, walk.map(\.seq).max() ?? 0)
        }
        stop.store(true, ordering: .relaxed)
        writer.join()
        #expect(violations == 0)
        #expect(scanned > 20)  // the writer really committed while we walked
    }
}
