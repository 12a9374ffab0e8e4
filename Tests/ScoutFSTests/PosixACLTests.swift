#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import SystemPackage
import Testing

/// POSIX ACLs: kept as the kernel hands them over, the mode in step with the access ACL,
/// default ACLs handed down (the parts FUSE leaves to the filesystem).
@Suite struct PosixACLTests {
    let devices = MemoryMount()
    let user = Caller(uid: 1000, gid: 100, umask: 0o022)

    func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    func acl(_ entries: [(UInt16, UInt16, UInt32)]) -> PosixACL {
        var bytes: [UInt8] = [2, 0, 0, 0]
        for (tag, perm, id) in entries {
            bytes += [UInt8(tag & 0xff), UInt8(tag >> 8), UInt8(perm), 0]
            bytes += withUnsafeBytes(of: id.littleEndian, Array.init)
        }
        return PosixACL(xattr: bytes)!
    }

    let none = PosixACL.undefinedID
    var richDefault: PosixACL {
        acl([(PosixACL.userObj, 7, none), (PosixACL.user, 5, 22222), (PosixACL.groupObj, 5, none), (PosixACL.mask, 7, none), (PosixACL.other, 0, none)])
    }

    @Test func malformedACLsAreRefused() {
        #expect(PosixACL(xattr: [2, 0, 0, 0]) == nil, "no entries")
        #expect(PosixACL(xattr: [1, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]) == nil, "version 1")
        var noMask = acl([(PosixACL.userObj, 7, none), (PosixACL.groupObj, 5, none), (PosixACL.other, 0, none)]).encoded
        noMask += [2, 0, 5, 0, 1, 0, 0, 0]
        #expect(PosixACL(xattr: noMask) == nil, "a named user needs a mask")
        #expect(PosixACL(xattr: Array(richDefault.encoded.dropLast())) == nil)
    }

    @Test func defaultACLsAreHandedDownInPlaceOfTheUmask() throws {
        let fs = try devices.mount()
        let dir = try fs.mkdir(1, name("d"), mode: 0o777, caller: .root).ino
        try fs.setXattr(dir, PosixACL.defaultName, richDefault.encoded, flags: 0, caller: .root)
        // A file asked for 0666: the default's owner rwx, mask rwx and other --- meet it; the
        // umask (022) plays no part.
        let f = try fs.create(dir, name("f"), mode: 0o666, flags: O_RDWR, caller: user)
        #expect(f.mode & 0o777 == 0o660)
        let access = try #require(PosixACL(xattr: try fs.getXattr(f.ino, PosixACL.accessName)))
        #expect(access.entries.first { $0.tag == PosixACL.user }?.perm == 5 && access.modeBits == 0o660)
        #expect((try? fs.getXattr(f.ino, PosixACL.defaultName)) == nil, "files get no default ACL")
        // A directory gets both.
        let sub = try fs.mkdir(dir, name("sub"), mode: 0o755, caller: user)
        #expect(sub.mode & 0o777 == 0o750)
        #expect(try fs.getXattr(sub.ino, PosixACL.defaultName) == richDefault.encoded)
        // Without a default ACL the umask applies.
        let plain = try fs.create(1, name("plain"), mode: 0o666, flags: O_RDWR, caller: user)
        #expect(plain.mode & 0o777 == 0o644)
        #expect((try? fs.getXattr(plain.ino, PosixACL.accessName)) == nil)
        // A default ACL the mode says all of leaves no access ACL behind.
        let simple = acl([(PosixACL.userObj, 6, none), (PosixACL.groupObj, 4, none), (PosixACL.other, 4, none)])
        let d2 = try fs.mkdir(1, name("d2"), mode: 0o777, caller: .root).ino
        try fs.setXattr(d2, PosixACL.defaultName, simple.encoded, flags: 0, caller: .root)
        let g = try fs.create(d2, name("g"), mode: 0o666, flags: O_RDWR, caller: user)
        #expect(g.mode & 0o777 == 0o644 && (try? fs.getXattr(g.ino, PosixACL.accessName)) == nil)
        try fs.sync()
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }

    @Test func theModeAndTheAccessACLFollowEachOther() throws {
        let fs = try devices.mount()
        let f = try fs.create(1, name("f"), mode: 0o644, flags: O_RDWR, caller: user)
        try fs.setXattr(f.ino, PosixACL.accessName, richDefault.encoded, flags: 0, caller: user)
        #expect(try fs.getattr(f.ino).mode & 0o7777 == 0o770, "owner rwx, mask rwx, other ---")
        var ch = AttributeChanges()
        ch.mode = 0o640
        _ = try fs.setattr(f.ino, ch)
        let after = try #require(PosixACL(xattr: try fs.getXattr(f.ino, PosixACL.accessName)))
        #expect(after.modeBits == 0o640 && after.entries.first { $0.tag == PosixACL.user }?.perm == 5,
                "chmod sets the owner, mask and other entries; named entries stay")
        // An ACL with nothing beyond the mode sets the mode and is not kept.
        let plain = acl([(PosixACL.userObj, 6, none), (PosixACL.groupObj, 0, none), (PosixACL.other, 0, none)])
        try fs.setXattr(f.ino, PosixACL.accessName, plain.encoded, flags: 0, caller: user)
        #expect(try fs.getattr(f.ino).mode & 0o777 == 0o600)
        #expect((try? fs.getXattr(f.ino, PosixACL.accessName)) == nil)
        #expect(throws: Errno.invalidArgument) { try fs.setXattr(f.ino, PosixACL.accessName, [2, 0, 0, 0], flags: 0, caller: user) }
    }

    @Test func noaclRefusesTheACLXattrs() throws {
        let store = try Store.format(meta: devices.meta, data: devices.data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        let fs = try Filesystem(store: store, options: FilesystemOptions(posixACLs: false))
        #expect(!fs.posixACLs)
        #expect(throws: Errno.notSupported) { try fs.setXattr(1, PosixACL.accessName, richDefault.encoded, flags: 0, caller: .root) }
    }
}
