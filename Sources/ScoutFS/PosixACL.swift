/// A POSIX ACL in the form the kernel passes it as the `system.posix_acl_access` and
/// `system.posix_acl_default` xattrs: a little-endian version 2, then (tag, perm, id) entries.
///
/// With FUSE_CAP_POSIX_ACL the kernel caches ACLs and enforces them, and leaves the rest to
/// the filesystem (libfuse's words): keeping the mode in sync with the access ACL both ways,
/// and giving new inodes their directory's default ACL. This is that rest, as the kernel's own
/// posix_acl_update_mode, posix_acl_chmod and posix_acl_create do it for disk filesystems.
struct PosixACL: Equatable {
    struct Entry: Equatable {
        var tag: UInt16
        var perm: UInt16
        var id: UInt32
    }

    var entries: [Entry]

    static let version: UInt32 = 2
    static let userObj: UInt16 = 0x01
    static let user: UInt16 = 0x02
    static let groupObj: UInt16 = 0x04
    static let group: UInt16 = 0x08
    static let mask: UInt16 = 0x10
    static let other: UInt16 = 0x20
    static let undefinedID: UInt32 = .max

    static let accessName = Array("system.posix_acl_access".utf8)
    static let defaultName = Array("system.posix_acl_default".utf8)

    /// A well-formed ACL: one owner, owning-group and other entry, a mask whenever there are
    /// named users or groups, permissions of at most rwx. Nil for anything else.
    init?(xattr: [UInt8]) {
        guard xattr.count >= 4, (xattr.count - 4) % 8 == 0 else { return nil }
        func u16(_ at: Int) -> UInt16 { UInt16(xattr[at]) | UInt16(xattr[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        guard u32(0) == Self.version else { return nil }
        var entries: [Entry] = []
        var at = 4
        while at < xattr.count {
            entries.append(Entry(tag: u16(at), perm: u16(at + 2), id: u32(at + 4)))
            at += 8
        }
        func count(_ tag: UInt16) -> Int { entries.filter { $0.tag == tag }.count }
        let known: Set<UInt16> = [Self.userObj, Self.user, Self.groupObj, Self.group, Self.mask, Self.other]
        guard entries.allSatisfy({ known.contains($0.tag) && $0.perm <= 7 }),
              count(Self.userObj) == 1, count(Self.groupObj) == 1, count(Self.other) == 1, count(Self.mask) <= 1,
              count(Self.user) + count(Self.group) == 0 || count(Self.mask) == 1
        else { return nil }
        self.entries = entries
    }

    var encoded: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + 8 * entries.count)
        func put16(_ v: UInt16) { out += [UInt8(v & 0xff), UInt8(v >> 8)] }
        func put32(_ v: UInt32) { put16(UInt16(v & 0xffff)); put16(UInt16(v >> 16)) }
        put32(Self.version)
        for e in entries {
            put16(e.tag)
            put16(e.perm)
            put32(e.id)
        }
        return out
    }

    private func perm(_ tag: UInt16) -> UInt32 { UInt32(entries.first { $0.tag == tag }?.perm ?? 0) }

    /// The rwx bits of the mode the ACL stands for: owner, mask (or owning group), other.
    var modeBits: UInt32 {
        let groupTag = entries.contains { $0.tag == Self.mask } ? Self.mask : Self.groupObj
        return perm(Self.userObj) << 6 | perm(groupTag) << 3 | perm(Self.other)
    }

    /// Nothing beyond what the mode says: no need to keep it.
    var isEquivalentToMode: Bool { entries.allSatisfy { [Self.userObj, Self.groupObj, Self.other].contains($0.tag) } }

    /// A chmod: the owner, mask (or owning group) and other entries take the mode's bits.
    mutating func chmod(_ mode: UInt32) {
        let groupTag = entries.contains { $0.tag == Self.mask } ? Self.mask : Self.groupObj
        for i in entries.indices {
            switch entries[i].tag {
            case Self.userObj: entries[i].perm = UInt16(mode >> 6 & 7)
            case groupTag: entries[i].perm = UInt16(mode >> 3 & 7)
            case Self.other: entries[i].perm = UInt16(mode & 7)
            default: break
            }
        }
    }

    /// A directory's default ACL meeting the mode a creator asked for (the kernel's
    /// posix_acl_create_masq): each of owner, mask (or owning group) and other keeps only what
    /// both allow, and so does the mode. Returns the new inode's permission bits.
    mutating func create(mode: UInt32) -> UInt32 {
        var m = mode & 0o777
        let groupTag = entries.contains { $0.tag == Self.mask } ? Self.mask : Self.groupObj
        for i in entries.indices {
            switch entries[i].tag {
            case Self.userObj:
                entries[i].perm &= UInt16(m >> 6 & 7)
                m &= UInt32(entries[i].perm) << 6 | ~UInt32(0o700)
            case groupTag:
                entries[i].perm &= UInt16(m >> 3 & 7)
                m &= UInt32(entries[i].perm) << 3 | ~UInt32(0o070)
            case Self.other:
                entries[i].perm &= UInt16(m & 7)
                m &= UInt32(entries[i].perm) | ~UInt32(0o007)
            default:
                break
            }
        }
        return (mode & ~UInt32(0o777)) | m
    }
}
