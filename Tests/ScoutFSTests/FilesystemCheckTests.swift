#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import Testing

/// `check` as a real fsck: each kind of namespace damage, planted in a small tree, gives
/// exactly its own lines.
@Suite struct FilesystemCheckTests {
    let devices = MemoryMount()
    let root = Caller.root

    struct Tree { var d: UInt64; var a: UInt64; var f: UInt64; var l: UInt64 }

    /// root/{d/{a}, f, f2 (a second link of f), l → f}, merged and unmounted.
    func build() throws -> Tree {
        let fs = try devices.mount()
        let d = try fs.mkdir(1, Array("d".utf8), mode: 0o755, caller: root)
        let a = try fs.create(d.ino, Array("a".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        let f = try fs.create(1, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: root)
        _ = try fs.link(f.ino, 1, Array("f2".utf8))
        let l = try fs.symlink(1, Array("l".utf8), target: Array("f".utf8), caller: root)
        for ino in [a.ino, f.ino] { try fs.release(ino) }
        try fs.syncAndMerge()
        return Tree(d: d.ino, a: a.ino, f: f.ino, l: l.ino)
    }

    /// The check's problems after `plant` edits a copy of the devices.
    func problems(_ plant: (Store) throws -> Void) throws -> [String] {
        let meta = devices.meta.snapshot(), data = devices.data.snapshot()
        let s = try Store.open(meta: meta, data: data)
        try plant(s)
        try s.commit()
        return FilesystemCheck.check(try Store.open(meta: meta, data: data)).problems
    }

    func record(_ s: Store, _ ino: UInt64) throws -> InodeRecord {
        try InodeRecord(decoding: try #require(try s.lookup(Keys.inode(ino), in: .fs)).value)
    }

    func put(_ s: Store, _ key: Key, _ value: [UInt8]) throws {
        try s.insert(Item(key: key, seq: s.superblock.seq, value: value), into: .fs)
    }

    func putInode(_ s: Store, _ ino: UInt64, _ change: (inout InodeRecord) -> Void) throws {
        var r = try record(s, ino)
        change(&r)
        try put(s, Keys.inode(ino), r.encoded)
    }

    /// The readdir position of `name` in `dir`.
    func position(_ s: Store, _ dir: UInt64, _ name: String) throws -> UInt64 {
        try #require(try s.tree(.fs).items(in: s).first {
            $0.key.first == dir && $0.key.type == ItemType.readdir && (try? DirentRecord(decoding: $0.value))?.name == Array(name.utf8)
        }).key.second
    }

    @Test func aCleanTreeIsClean() throws {
        _ = try build()
        #expect(try problems { _ in } == [])
    }

    @Test func anEntryPointingAtAMissingInode() throws {
        _ = try build()
        let ghost: UInt64 = 900
        let name = Array("ghost".utf8)
        let p = try problems { s in
            let e = DirentRecord(ino: ghost, type: UInt8(DT_REG), name: name).encoded
            try put(s, Keys.dirent(1, nameHash(name), 100), e)
            try put(s, Keys.readdir(1, 100), e)
            try put(s, Keys.backref(ghost, 1, 100), name)
            try putInode(s, 1) { $0.nextReaddirPos = 101 }
        }
        #expect(p == [
            "entry \"ghost\" of directory 1 at position 100: points at inode 900, which does not exist",
            "inode 900: items exist but the inode item does not",
        ])
    }

    @Test func lookupAndReaddirItemsThatDisagree() throws {
        let t = try build()
        let p = try problems { s in
            let pos = try position(s, 1, "f2")
            try put(s, Keys.readdir(1, pos), DirentRecord(ino: t.l, type: UInt8(DT_LNK), name: Array("f2".utf8)).encoded)
        }
        // The backref of f's second link now finds an entry naming another inode, too.
        #expect(p.count == 2, "\(p)")
        #expect(p.first?.contains("entry \"f2\" of directory 1") == true && p.first?.contains("the lookup item and the readdir item disagree") == true, "\(p)")
        #expect(p.last?.contains("inode \(t.f): link backref to entry \"f2\" of directory 1") == true && p.last?.contains("names inode \(t.l)") == true, "\(p)")
    }

    @Test func aBackrefWithoutItsEntry() throws {
        let t = try build()
        let p = try problems { s in try put(s, Keys.backref(t.f, t.d, 77), Array("nowhere".utf8)) }
        #expect(p.contains("inode \(t.f): link backref to entry \"nowhere\" of directory \(t.d) at position 77, which does not exist"), "\(p)")
        #expect(p.contains("inode \(t.f): link count 2, but 3 entries name it"), "\(p)")
        #expect(p.count == 2)
    }

    @Test func aWrongLinkCount() throws {
        let t = try build()
        #expect(try problems { s in try putInode(s, t.f) { $0.nlink = 5 } } == ["inode \(t.f): link count 5, but 2 entries name it"])
        #expect(try problems { s in try putInode(s, 1) { $0.nlink = 2 } } == ["directory 1: link count 2, but it has 1 subdirectories (expected 3)"])
    }

    @Test func aDirectoryWithLinkCountZero() throws {
        let t = try build()
        #expect(try problems { s in try putInode(s, t.d) { $0.nlink = 0 } } == ["directory \(t.d): link count 0, yet not an orphan"])
    }

    @Test func anImpossibleModeOrSize() throws {
        let t = try build()
        #expect(try problems { s in try putInode(s, t.l) { $0.mode = 0o170777 } } == ["inode \(t.l): mode 170777 has no known file type"])
        #expect(try problems { s in try putInode(s, t.a) { $0.size = .max } } == ["inode \(t.a): size \(UInt64.max) is larger than any file may be"])
    }

    @Test func anInodeNoDirectoryNamesThatIsNoOrphan() throws {
        let t = try build()
        let p = try problems { s in
            let pos = try position(s, t.d, "a")
            try s.delete(Keys.dirent(t.d, nameHash(Array("a".utf8)), pos), from: .fs)
            try s.delete(Keys.readdir(t.d, pos), from: .fs)
            try s.delete(Keys.backref(t.a, t.d, pos), from: .fs)
        }
        #expect(p == ["inode \(t.a): link count 1, but 0 entries name it", "inode \(t.a): no directory names it and it is not an orphan"])
    }

    @Test func aDirectoryLoopUnreachableFromTheRoot() throws {
        let t = try build()
        let p = try problems { s in
            // d claims to live inside itself: its one backref now names d.
            let pos = try position(s, 1, "d")
            try s.delete(Keys.dirent(1, nameHash(Array("d".utf8)), pos), from: .fs)
            try s.delete(Keys.readdir(1, pos), from: .fs)
            try s.delete(Keys.backref(t.d, 1, pos), from: .fs)
            let e = DirentRecord(ino: t.d, type: UInt8(DT_DIR), name: Array("self".utf8)).encoded
            try put(s, Keys.dirent(t.d, nameHash(Array("self".utf8)), 50), e)
            try put(s, Keys.readdir(t.d, 50), e)
            try put(s, Keys.backref(t.d, t.d, 50), Array("self".utf8))
            try putInode(s, t.d) { $0.nlink = 3; $0.nextReaddirPos = 51 }
            try putInode(s, 1) { $0.nlink = 2 }
        }
        #expect(p == ["directory \(t.d): its parents never reach the root directory"], "\(p)")
    }
}
