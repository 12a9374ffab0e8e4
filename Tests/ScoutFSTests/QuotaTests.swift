#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import SystemPackage
import Testing

/// Quota rules and their enforcement, as the original's tests/golden/quota has them.
@Suite struct QuotaTests {
    let devices = MemoryMount()
    static let uid: UInt32 = 22222
    static let gid: UInt32 = 44444
    let user = Caller(uid: QuotaTests.uid, gid: 100)
    let group = Caller(uid: 1000, gid: QuotaTests.gid)

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    func rule(_ prio: UInt8, _ names: [(UInt64, UInt8, Bool)], _ op: UInt8, _ limit: UInt64, count: Bool = false) -> QuotaRule {
        QuotaRule(priority: prio, names: names.map { QuotaRule.Name(value: $0.0, source: $0.1, flags: $0.2 ? QuotaRule.select : 0) },
                  op: op, limit: limit, flags: count ? QuotaRule.totlCount : 0)
    }

    func literal(_ v: UInt64) -> (UInt64, UInt8, Bool) { (v, QuotaRule.literal, false) }

    func errno(_ body: () throws -> Void) -> Errno? {
        do {
            try body()
            return nil
        } catch let e as ArchiveError {
            return e.errno
        } catch {
            return error as? Errno
        }
    }

    /// A directory everyone may create in.
    func open(_ fs: Filesystem) throws -> UInt64 {
        let d = try fs.mkdir(1, name("dir"), mode: 0o777, caller: .root)
        return d.ino
    }

    func touch(_ fs: Filesystem, _ dir: UInt64, _ caller: Caller, _ n: String = "file") -> Errno? {
        errno {
            let f = try fs.create(dir, name(n), mode: 0o644, flags: O_RDWR, caller: caller)
            try fs.release(f.ino)
        }
    }

    @Test func rulesAreAddedListedAndDeletedWhole() throws {
        let fs = try devices.mount()
        #expect(try fs.quotaRules().rules.isEmpty)
        let r = rule(7, [literal(13), literal(15), literal(17)], QuotaRule.inodeOp, 33)
        try fs.addQuotaRule(r)
        #expect(errno { try fs.addQuotaRule(r) } == .fileExists)
        var other = r
        other.limit = 34
        #expect(errno { try fs.deleteQuotaRule(other) } == .noSuchFileOrDirectory, "deleting needs every field equal")
        try fs.addQuotaRule(other)
        #expect(Set(try fs.quotaRules().rules) == [r, other])
        try fs.deleteQuotaRule(r)
        #expect(try fs.quotaRules().rules == [other])
        // Selecting a literal, or two values of one attribute, is refused.
        #expect(errno { try fs.addQuotaRule(rule(1, [(5, QuotaRule.literal, true), literal(0), literal(0)], QuotaRule.inodeOp, 1)) } == .invalidArgument)
        #expect(errno { try fs.addQuotaRule(rule(1, [(5, QuotaRule.uid, true), (6, QuotaRule.uid, true), literal(0)], QuotaRule.inodeOp, 1)) } == .invalidArgument)
        // Many rules page whole.
        for a in UInt64(100)..<UInt64(2200) { try fs.addQuotaRule(rule(1, [(a, QuotaRule.uid, true), literal(1), literal(1)], QuotaRule.inodeOp, 1)) }
        var all: [QuotaRule] = []
        var from = QuotaRulePosition(hash: 0, index: 0)
        while true {
            let page = try fs.quotaRules(from: from, limit: 500)
            all += page.rules
            guard let next = page.next else { break }
            from = next
        }
        #expect(all.count == 2101 && Set(all).count == 2101)
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }

    @Test func inodeRulesRefuseCreatesWhileTheirTotalIsAtTheLimit() throws {
        let fs = try devices.mount()
        let dir = try open(fs)
        // A rule with no selector applies to everyone.
        try fs.addQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        #expect(touch(fs, dir, user) == nil, "no total yet")
        try fs.unlink(dir, name("file"))
        try fs.setXattr(1, name("scoutfs.totl.test.1.1.1"), name("2"), flags: 0, caller: .root)
        #expect(touch(fs, dir, user) == .diskQuotaExceeded)
        #expect(errno { _ = try fs.mkdir(dir, name("sub"), mode: 0o755, caller: .root) } == .diskQuotaExceeded, "root too")
        try fs.removeXattr(1, name("scoutfs.totl.test.1.1.1"), caller: .root)
        #expect(touch(fs, dir, user) == nil, "a lower total lets creates in at once")
        try fs.unlink(dir, name("file"))
        try fs.deleteQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.inodeOp, 1))

        // Selecting rules apply to their uid or gid only; the totl name takes the attribute.
        try fs.addQuotaRule(rule(1, [(UInt64(Self.uid), QuotaRule.uid, true), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        try fs.addQuotaRule(rule(1, [(UInt64(Self.gid), QuotaRule.gid, true), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        try fs.setXattr(1, name("scoutfs.totl.test.\(Self.uid).1.1"), name("2"), flags: 0, caller: .root)
        try fs.setXattr(1, name("scoutfs.totl.test.\(Self.gid).1.1"), name("2"), flags: 0, caller: .root)
        #expect(touch(fs, dir, user) == .diskQuotaExceeded)
        #expect(touch(fs, dir, group) == .diskQuotaExceeded)
        #expect(touch(fs, dir, Caller(uid: 1000, gid: 100)) == nil)
    }

    @Test func allSelectorsMustMatchAndTheHighestPriorityWins() throws {
        let fs = try devices.mount()
        let dir = try open(fs)
        try fs.addQuotaRule(rule(1, [(UInt64(Self.uid), QuotaRule.uid, true), (UInt64(Self.gid), QuotaRule.gid, true), literal(1)], QuotaRule.inodeOp, 1))
        try fs.setXattr(1, name("scoutfs.totl.test.\(Self.uid).\(Self.gid).1"), name("2"), flags: 0, caller: .root)
        #expect(touch(fs, dir, user, "a") == nil)
        #expect(touch(fs, dir, group, "b") == nil)
        #expect(touch(fs, dir, Caller(uid: Self.uid, gid: Self.gid), "c") == .diskQuotaExceeded)

        // A data rule does not limit creates.
        try fs.addQuotaRule(rule(1, [(UInt64(Self.uid), QuotaRule.uid, true), literal(1), literal(1)], QuotaRule.dataOp, 1))
        try fs.setXattr(1, name("scoutfs.totl.test.\(Self.uid).1.1"), name("2"), flags: 0, caller: .root)
        #expect(touch(fs, dir, user, "d") == nil)

        // Of two rules for one uid, the higher priority's limit is the one enforced.
        try fs.addQuotaRule(rule(1, [(UInt64(Self.uid), QuotaRule.uid, true), literal(1), literal(1)], QuotaRule.inodeOp, 1000))
        #expect(touch(fs, dir, user, "e") == nil)
        try fs.addQuotaRule(rule(2, [(UInt64(Self.uid), QuotaRule.uid, true), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        #expect(touch(fs, dir, user, "f") == .diskQuotaExceeded)

        // Project ids select too, through the directory the inode is created in.
        try fs.addQuotaRule(rule(3, [(77, QuotaRule.project, true), literal(0), literal(0)], QuotaRule.inodeOp, 0, count: true))
        try fs.setXattr(1, name("scoutfs.totl.p.77.0.0"), name("0"), flags: 0, caller: .root)
        var x = InodeAttrX(mask: InodeAttrX.projectIDMask)
        x.projectID = 77
        try fs.setAttrX(dir, x)
        #expect(touch(fs, dir, Caller(uid: 1000, gid: 100), "g") == .diskQuotaExceeded, "a count of 1 reaches a limit of 0")
    }

    @Test func dataRulesRefuseWritesAndFallocate() throws {
        let fs = try devices.mount()
        let dir = try open(fs)
        let f = try fs.create(dir, name("file"), mode: 0o644, flags: O_RDWR, caller: .root)
        try fs.release(f.ino)
        try fs.addQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.dataOp, 1))
        try fs.setXattr(1, name("scoutfs.totl.test.1.1.1"), name("2"), flags: 0, caller: .root)
        #expect(errno { _ = try fs.write(f.ino, offset: 0, data: [1]) } == .diskQuotaExceeded)
        #expect(errno { try fs.fallocate(f.ino, mode: 0, offset: 0, length: 4096) } == .diskQuotaExceeded)
        try fs.deleteQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.dataOp, 1))
        #expect(try fs.write(f.ino, offset: 0, data: [1]) == 1)
        try fs.addQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.dataOp, 0, count: true))
        #expect(errno { _ = try fs.write(f.ino, offset: 0, data: [1]) } == .diskQuotaExceeded)
        #expect(errno { try fs.fallocate(f.ino, mode: 0, offset: 0, length: 4096) } == .diskQuotaExceeded)
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }

    /// A rule added on one client is enforced by another at its next check: the other
    /// loses the quota lock and reads the rules again.
    @Test func aRuleAddedOnOneClientBindsTheOthers() throws {
        let c = try FilesystemCluster(clients: 2)
        let dir = try c[0].mkdir(1, name("dir"), mode: 0o777, caller: .root).ino
        try c[0].setXattr(1, name("scoutfs.totl.test.1.1.1"), name("2"), flags: 0, caller: .root)
        try c[0].sync()
        #expect(touch(c[1], dir, user, "a") == nil)
        try c[0].addQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        #expect(touch(c[1], dir, user, "b") == .diskQuotaExceeded)
        try c[1].deleteQuotaRule(rule(1, [literal(1), literal(1), literal(1)], QuotaRule.inodeOp, 1))
        #expect(touch(c[0], dir, user, "c") == nil)
        try c.leaveAll()
    }
}
