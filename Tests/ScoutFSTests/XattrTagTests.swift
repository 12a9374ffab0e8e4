#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import SystemPackage
import Testing

/// `scoutfs.` xattr tags: `.hide.`, `.srch.` and `.totl.`, on memory devices.
@Suite struct XattrTagTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)
    let root = Caller.root

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }
    func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    func errno(_ body: () throws -> Void) -> Errno? {
        do {
            try body()
            return nil
        } catch {
            return error as? Errno
        }
    }

    func allTotals(_ fs: Filesystem) throws -> [XattrTotalName: XattrTotal] {
        var out: [XattrTotalName: XattrTotal] = [:]
        var after: XattrTotalName?
        while true {
            let page = try fs.xattrTotals(after: after, limit: 3)
            for t in page { out[t.name] = t }
            guard let last = page.last else { return out }
            after = last.name
        }
    }

    @Test func namesParseAsTheOriginalDoes() throws {
        let good: [(String, XattrTags)] = [
            ("scoutfs.hide.x", XattrTags(hide: true)),
            ("scoutfs.srch.hide.x", XattrTags(hide: true, srch: true)),
            ("scoutfs.totl.disk.1.0x2.010", XattrTags(totl: true, totlName: XattrTotalName(a: 1, b: 2, c: 8))),
            ("scoutfs.hide.totl.18446744073709551615.0.0", XattrTags(hide: true, totl: true, totlName: XattrTotalName(a: .max, b: 0, c: 0))),
            ("scoutfs.hide.indx.test.255.18446744073709551615", XattrTags(hide: true, indx: true, indexPosition: XattrIndexPosition(major: 255, minor: .max))),
            ("scoutfs.indx.0x5.0", XattrTags(indx: true, indexPosition: XattrIndexPosition(major: 5, minor: 0))),
        ]
        for (n, tags) in good { #expect(try XattrTags.parse(name(n)) == tags, "\(n)") }
        #expect(try XattrTags.parse(name("user.scoutfs.hide.x")) == nil)
        let bad: [(String, Errno)] = [
            ("scoutfs.x", .invalidArgument), ("scoutfs.data.x", .invalidArgument),
            ("scoutfs.hide.hide.x", .invalidArgument), ("scoutfs.hide.", .invalidArgument),
            ("scoutfs.totl.1.2", .invalidArgument), ("scoutfs.totl.a.b.c", .invalidArgument),
            ("scoutfs.totl.x.1.2.+3", .invalidArgument), ("scoutfs.totl.x.1.2.18446744073709551616", .invalidArgument),
            ("scoutfs.totl.x.1.2.", .invalidArgument), ("scoutfs.totl.x.1.2.09", .invalidArgument),
            ("scoutfs.indx.x.1", .invalidArgument), ("scoutfs.indx.x.256.2", .invalidArgument),
            ("scoutfs.indx.x..2", .invalidArgument), ("scoutfs.indx.x.1.-1", .invalidArgument),
            ("scoutfs.indx.totl.x.1.2.3", .invalidArgument), ("scoutfs.indx.indx.x.1.2", .invalidArgument),
        ]
        for (n, e) in bad { #expect(errno { _ = try XattrTags.parse(name(n)) } == e, "\(n)") }
    }

    @Test func tagsAreForRootAndHideKeepsNamesOutOfListxattr() throws {
        let fs = try devices.mount()
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        try fs.release(f.ino)
        #expect(errno { try fs.setXattr(f.ino, name("scoutfs.hide.secret"), [1], flags: 0, caller: user) } == .notPermitted)
        try fs.setXattr(f.ino, name("scoutfs.hide.secret"), [1], flags: 0, caller: root)
        try fs.setXattr(f.ino, name("scoutfs.hide.srch.both"), [2], flags: 0, caller: root)
        try fs.setXattr(f.ino, name("user.plain"), [3], flags: 0, caller: user)
        #expect(try fs.listXattrs(f.ino).map(text) == ["user.plain"])
        #expect(Set(try fs.hiddenXattrs(f.ino).map(text)) == ["scoutfs.hide.secret", "scoutfs.hide.srch.both"])
        #expect(try fs.getXattr(f.ino, name("scoutfs.hide.secret")) == [1])
        #expect(errno { try fs.removeXattr(f.ino, name("scoutfs.hide.secret"), caller: user) } == .notPermitted)
        #expect(errno { try fs.setXattr(f.ino, name("scoutfs.bogus"), [1], flags: 0, caller: root) } == .invalidArgument)
        try fs.removeXattr(f.ino, name("scoutfs.hide.secret"), caller: root)
        #expect(try fs.hiddenXattrs(f.ino).map(text) == ["scoutfs.hide.srch.both"])
    }

    @Test func searchFindsEveryTaggedInodeUntilTheXattrOrTheFileGoes() throws {
        let fs = try devices.mount()
        let tag = name("scoutfs.srch.project")
        var tagged: [UInt64] = []
        var untagged: [UInt64] = []
        for i in 0..<40 {
            let f = try fs.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            if i % 3 == 0 {
                try fs.setXattr(f.ino, tag, name("p\(i)"), flags: 0, caller: root)
                tagged.append(f.ino)
            } else {
                try fs.setXattr(f.ino, name("scoutfs.srch.other"), [1], flags: 0, caller: root)
                untagged.append(f.ino)
            }
        }
        func search() throws -> [UInt64] {
            var out: [UInt64] = []
            var next: UInt64 = 0
            while true {
                let page = try fs.searchXattrs(tag, from: next, limit: 4)
                out += page.inos
                if page.end { return out }
                next = page.inos.last! + 1
            }
        }
        #expect(try search() == tagged)
        // Visible before the commit and after it, and after a merge and a remount.
        try fs.syncAndMerge()
        #expect(try search() == tagged)
        // A new value keeps one search item; removing the xattr or the file drops it.
        try fs.setXattr(tagged[0], tag, name("again"), flags: LinuxABI.xattrReplace, caller: root)
        #expect(try search() == tagged)
        try fs.removeXattr(tagged[1], tag, caller: root)
        try fs.unlink(1, name("f\(6)"))
        try fs.forget(tagged[2], 1)  // the kernel's reference from create; the inode goes with it
        #expect(try search() == [tagged[0]] + tagged[3...])
        #expect(try fs.searchXattrs(tag, from: tagged[4], through: tagged[5]).inos == [tagged[4], tagged[5]])
        #expect(errno { _ = try fs.searchXattrs(name("scoutfs.hide.project")) } == .invalidArgument)
        #expect(errno { _ = try fs.searchXattrs(name("user.project")) } == .invalidArgument)
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }

    /// Totals against a model through creates, value changes, removals, unlinks, merges and
    /// a remount, with bad values refused without changing anything.
    @Test(arguments: [21, 22])
    func totalsFollowEveryChange(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var fs: Filesystem? = try devices.mount()
        // A remount is a sync and a new mount of the devices.
        var files: [UInt64: [String: UInt64]] = [:]
        var names: [UInt64: String] = [:]
        for i in 0..<12 {
            let f = try fs!.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs!.release(f.ino)
            files[f.ino] = [:]
            names[f.ino] = "f\(i)"
        }
        let keys = ["scoutfs.totl.size.1.0.0", "scoutfs.totl.size.1.0.1", "scoutfs.hide.totl.x.2.5.7", "scoutfs.totl.srch.y.0.0.9"]
        func model() -> [XattrTotalName: XattrTotal] {
            var out: [XattrTotalName: XattrTotal] = [:]
            for (_, xs) in files {
                for (k, v) in xs {
                    let n = XattrTags.totlName(name(k))!
                    var t = out[n] ?? XattrTotal(name: n, total: 0, count: 0)
                    t.total &+= Int64(bitPattern: v)
                    t.count += 1
                    out[n] = t
                }
            }
            return out
        }
        for step in 0..<400 {
            let ino = Array(files.keys).sorted()[Int(rng.next() % UInt64(files.count))]
            if step % 50 == 25 {
                // Unlink and recreate: the deleted file's xattrs leave the totals.
                try fs!.unlink(1, name(names[ino]!))
                try fs!.forget(ino, 1)
                files[ino] = nil
                let f = try fs!.create(1, name("g\(step)"), mode: 0o644, flags: O_RDWR, caller: user)
                try fs!.release(f.ino)
                files[f.ino] = [:]
                names[f.ino] = "g\(step)"
                continue
            }
            if step % 40 == 39 { try fs!.syncAndMerge() }
            if step % 100 == 99 {
                try fs!.sync()
                fs = try devices.mount()
            }
            let k = keys[Int(rng.next() % UInt64(keys.count))]
            switch rng.next() % 8 {
            case 0:
                if files[ino]![k] != nil {
                    try fs!.removeXattr(ino, name(k), caller: root)
                    files[ino]![k] = nil
                } else {
                    #expect(errno { try fs!.removeXattr(ino, name(k), caller: root) } == .noData)
                }
            case 1:
                for bad in ["", "-1", "+1", "1\n", "x", String(repeating: "1", count: 24), "99999999999999999999"] {
                    #expect(errno { try fs!.setXattr(ino, name(k), name(bad), flags: 0, caller: root) } == .invalidArgument, "\(bad)")
                }
            default:
                let v = rng.next() % 3 == 0 ? rng.next() : rng.next() % 10_000
                let hex = rng.next() % 4 == 0
                try fs!.setXattr(ino, name(k), name(hex ? "0x" + String(v, radix: 16) : String(v)), flags: 0, caller: root)
                files[ino]![k] = v
            }
            if step % 20 == 0 {
                #expect(try allTotals(fs!) == model(), "seed \(seed) step \(step)")
            }
        }
        #expect(try allTotals(fs!) == model())
        // Everything gone: no total is left, though the zero items remain.
        for (ino, xs) in files { for k in xs.keys { try fs!.removeXattr(ino, name(k), caller: root) } }
        try fs!.syncAndMerge()
        #expect(try allTotals(fs!).isEmpty)
        try fs!.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }
    /// `.indx.` xattrs as the original's tests/golden/basic-xattr-indx: no value, an entry per
    /// inode and position however many xattrs put it there, gone with the last of them or
    /// with the inode, kept across commits and merges; `check` agrees.
    @Test func indexXattrsListTheirInodesAtTheirPositions() throws {
        let fs = try devices.mount()
        func make(_ n: String) throws -> UInt64 {
            let f = try fs.create(1, name(n), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            return f.ino
        }
        func all(_ first: XattrIndexEntry = XattrIndexEntry(major: 0, minor: 0, ino: 0),
                 _ last: XattrIndexEntry = XattrIndexEntry(major: 255, minor: .max, ino: .max)) throws -> [XattrIndexEntry] {
            var out: [XattrIndexEntry] = []
            var from = first
            while true {
                let page = try fs.xattrIndex(from: from, through: last, limit: 2)
                out += page
                guard var next = page.last else { return out }
                next.ino += 1
                from = next
            }
        }
        let a = try make("a"), b = try make("b"), c = try make("c")
        #expect(errno { try fs.setXattr(a, name("scoutfs.hide.indx.t.5.100"), [0x30], flags: 0, caller: root) } == .invalidArgument)
        #expect(errno { try fs.setXattr(a, name("scoutfs.hide.indx.t.5.100"), [], flags: 0, caller: user) } == .notPermitted)
        try fs.setXattr(a, name("scoutfs.hide.indx.t.5.100"), [], flags: 0, caller: root)
        try fs.setXattr(a, name("scoutfs.hide.indx.t.5.100"), [], flags: 0, caller: root)
        try fs.setXattr(b, name("scoutfs.hide.indx.t.5.100"), [], flags: 0, caller: root)
        try fs.setXattr(c, name("scoutfs.hide.indx.aa.5.200"), [], flags: 0, caller: root)
        try fs.setXattr(c, name("scoutfs.hide.indx.bb.5.200"), [], flags: 0, caller: root)
        try fs.setXattr(c, name("scoutfs.indx.x.0.0"), [], flags: 0, caller: root)
        try fs.setXattr(c, name("scoutfs.indx.y.255.18446744073709551615"), [], flags: 0, caller: root)
        let e = { (major: UInt8, minor: UInt64, ino: UInt64) in XattrIndexEntry(major: major, minor: minor, ino: ino) }
        let expected = [e(0, 0, c), e(5, 100, a), e(5, 100, b), e(5, 200, c), e(255, .max, c)]
        #expect(try all() == expected)
        try fs.syncAndMerge()
        #expect(try all() == expected)
        #expect(try all(e(5, 100, b), e(5, 200, .max)) == [e(5, 100, b), e(5, 200, c)])
        // One of two xattrs at a position keeps the entry; the last one and the inode take it.
        try fs.removeXattr(c, name("scoutfs.hide.indx.aa.5.200"), caller: root)
        #expect(try all(e(5, 200, 0), e(5, 200, .max)) == [e(5, 200, c)])
        #expect(errno { try fs.removeXattr(c, name("scoutfs.hide.indx.zz.5.999"), caller: root) } == .noData)
        try fs.removeXattr(a, name("scoutfs.hide.indx.t.5.100"), caller: root)
        try fs.unlink(1, name("c"))
        try fs.forget(c, 1)
        #expect(try all() == [e(5, 100, b)])
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
        let report = FilesystemCheck.check(try Store.open(meta: devices.meta, data: devices.data))
        #expect(report.problems == [])
    }
}

/// `FilesystemCheck` finds each kind of drift between index items and what they describe.
@Suite struct IndexCheckTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    func check() throws -> FilesystemCheck.Report {
        FilesystemCheck.check(try Store.open(meta: devices.meta, data: devices.data))
    }

    @Test func cleanFilesystemPassesAndEveryDriftIsNamed() throws {
        let fs = try devices.mount()
        var inos: [UInt64] = []
        for i in 0..<20 {
            let f = try fs.create(1, name("f\(i)"), mode: 0o644, flags: O_RDWR, caller: user)
            try fs.release(f.ino)
            try fs.setXattr(f.ino, name("scoutfs.srch.tag"), [1], flags: 0, caller: .root)
            try fs.setXattr(f.ino, name("scoutfs.totl.n.1.2.3"), name("\(i)"), flags: 0, caller: .root)
            inos.append(f.ino)
        }
        // Half merged into the fs tree, half in a log tree: the check reads both.
        try fs.syncAndMerge()
        for ino in inos.prefix(5) { try fs.setXattr(ino, name("scoutfs.totl.n.1.2.3"), name("1000"), flags: 0, caller: .root) }
        try fs.sync()
        var r = try check()
        #expect(r.problems == [])
        #expect(r.inodes == 21 && r.searchItems == 20 && r.totals == 1)

        let a = try fs.getattr(inos[0]), b = try fs.getattr(inos[1])
        try fs.setXattr(inos[4], name("scoutfs.totl.m.4.5.6"), name("3"), flags: 0, caller: .root)
        var plan = LockPlan()
        plan.read(inos[2])
        let found = try fs.locked(.reads, commit: false, plan) { try $0.findXattr(inos[2], name("scoutfs.srch.tag")) }
        let xattrID = try #require(found).id
        // Damage made straight in the item cache, past the locks no filesystem code goes
        // without.
        try fs.withCore { c in
            try c.items.delete(Keys.seqIndex(ItemType.metaSeq, a.metaSeq, inos[0]))
            try c.items.insert(Keys.seqIndex(ItemType.dataSeq, 7, 999_999), [])
            try c.items.insert(Keys.seqIndex(ItemType.dataSeq, b.dataSeq + 1000, inos[1]), [])
            try c.items.delete(Keys.srch(nameHash(name("scoutfs.srch.tag")), inos[2], xattrID))
            try c.items.insert(Keys.srch(nameHash(name("scoutfs.srch.gone")), inos[3], 77), [])
            try c.items.addDelta(Keys.totl(XattrTotalName(a: 1, b: 2, c: 3)), [5, 0])
            try c.items.addDelta(Keys.totl(XattrTotalName(a: 9, b: 9, c: 9)), [1, 1])
            try c.items.delete(Keys.totl(XattrTotalName(a: 4, b: 5, c: 6)))
        }
        try fs.sync()
        r = try check()
        let expected = [
            "inode \(inos[0]): meta_seq \(a.metaSeq) has no meta_seq index item",
            "inode \(inos[2]): .srch. xattr scoutfs.srch.tag has no search item",
            "data_seq index item (seq 7, inode 999999): no such inode",
            "data_seq index item (seq \(b.dataSeq + 1000), inode \(inos[1])): the inode's data_seq is \(b.dataSeq)",
            "search item (hash \(String(nameHash(name("scoutfs.srch.gone")), radix: 16)), inode \(inos[3]), xattr id 77): no such .srch. xattr",
            ".totl. 1.2.3: the item holds total \(5 + 5 * 1000 + (5..<20).reduce(0, +)) count 20; the xattrs add up to total \(5 * 1000 + (5..<20).reduce(0, +)) count 20",
            ".totl. 9.9.9: the item holds total 1 count 1; the xattrs add up to total 0 count 0",
            ".totl. 4.5.6: no total item; the xattrs add up to total 3 count 1",
        ]
        #expect(Set(r.problems) == Set(expected), "\(r.problems)")
        #expect(r.problems.count == expected.count)
    }
}
