#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutStore
public import SystemPackage

/// The first item of an xattr. Xattrs are items `(fs, ino, xattr, name hash, id, part)`; part 0
/// holds `name_len u8, value_len u32, name`, then as much of the value as fits, and further
/// parts continue the value, so values up to 64 KiB fit in items of at most 896 bytes.
struct XattrHead {
    var name: [UInt8]
    var valueLength: Int
    /// The part of the value this item holds.
    var valueStart: [UInt8]

    init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "xattr")
        let nameLen = Int(try r.u8())
        valueLength = Int(try r.u32())
        name = try r.raw(nameLen)
        valueStart = try r.raw(r.remaining)
    }

    /// The first item's bytes and how many bytes of the value they hold.
    static func encode(name: [UInt8], value: [UInt8]) -> (bytes: [UInt8], held: Int) {
        var w = ByteWriter()
        w.u8(UInt8(name.count))
        w.u32(UInt32(value.count))
        w.raw(name)
        let held = min(Item.maxValueLength - w.count, value.count)
        w.raw(value.prefix(held))
        return (w.bytes, held)
    }
}

extension FSCore {
    /// The original's `SCOUTFS_XATTR_MAX_VAL_LEN`: one byte under the kernel's own limit, so
    /// a 64 KiB value passes the syscall and is refused here, as there.
    static let maxXattrValue = 65535
    static let maxXattrName = 255

    struct FoundXattr {
        var hash: UInt64
        var id: UInt64
        var parts: Int
        var value: [UInt8]
    }

    /// Checks a name's namespace and returns its `scoutfs.` tags, if any. Tagged xattrs are
    /// for root only, as the original asks CAP_SYS_ADMIN of them.
    func checkXattrName(_ name: [UInt8], caller: Caller) throws -> XattrTags? {
        if name.isEmpty || name.count > Self.maxXattrName { throw name.isEmpty ? Errno.invalidArgument : Errno.outOfRange }
        if let tags = try XattrTags.parse(name) {
            if caller.uid != 0 { throw Errno.notPermitted }
            return tags
        }
        let known = ["user.", "trusted.", "security.", "system."].map { Array($0.utf8) }
        guard known.contains(where: { name.starts(with: $0) && name.count > $0.count }) else { throw Errno.notSupported }
        // Of the system. names only the POSIX ACLs are kept, and only when ACLs are on.
        if name.starts(with: Array("system.".utf8)) && !(shared.posixACLs && (name == PosixACL.accessName || name == PosixACL.defaultName)) {
            throw Errno.notSupported
        }
        return nil
    }

    func findXattr(_ ino: UInt64, _ name: [UInt8]) throws -> FoundXattr? {
        let h = nameHash(name)
        var found: FoundXattr?
        for it in try range(Keys.xattr(ino, h, 0, 0), Keys.xattr(ino, h, .max, .max)) {
            if it.key.fourth == 0 {
                if found != nil { break }
                let head = try XattrHead(decoding: it.value)
                guard head.name == name else { continue }
                found = FoundXattr(hash: h, id: it.key.third, parts: 1, value: head.valueStart)
                found!.value.reserveCapacity(head.valueLength)
            } else if found != nil, it.key.third == found!.id {
                found!.value += it.value
                found!.parts += 1
            }
        }
        return found
    }

    func setXattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], flags: Int32, caller: Caller) throws {
        // The original's order: the value's size, then the flags, then the name.
        if value.count > Self.maxXattrValue { throw Errno.argListTooLong }
        let both = LinuxABI.xattrCreate | LinuxABI.xattrReplace
        if flags & ~both != 0 || flags & both == both { throw Errno.invalidArgument }
        let tags = try checkXattrName(name, caller: caller)
        if tags?.totl == true && XattrTags.parseNumber(value[...]) == nil { throw Errno.invalidArgument }
        if tags?.indx == true && !value.isEmpty { throw Errno.invalidArgument }
        var rec = try inode(ino)
        try checkRetention(rec, xattr: name)
        let existing = try findXattr(ino, name)
        if name == PosixACL.accessName || name == PosixACL.defaultName {
            guard let acl = PosixACL(xattr: value) else { throw Errno.invalidArgument }
            if name == PosixACL.accessName {
                // The mode follows the ACL; the kernel left it to us. Setting an ACL drops
                // setgid for a caller outside the file's group (the kernel's
                // FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14 does not pass on; its owner
                // group is all we can test here).
                rec.mode = (rec.mode & ~UInt32(0o777)) | acl.modeBits
                if caller.uid != 0 && caller.gid != rec.gid { rec.mode &= ~UInt32(S_ISGID) }
                if acl.isEquivalentToMode {
                    // An ACL the mode says all of is not kept, as disk filesystems do.
                    if let existing { try removeXattrItems(ino, existing) }
                    rec.ctime = .now
                    try putInode(ino, &rec)
                    return
                }
            }
        }
        if flags & LinuxABI.xattrCreate != 0 && existing != nil { throw Errno.fileExists }
        if flags & LinuxABI.xattrReplace != 0 && existing == nil { throw Errno.noData }
        let id = existing?.id ?? rec.nextXattrID
        if existing == nil { rec.nextXattrID = try rec.nextXattrID.adding(1, "next xattr id of inode \(ino)") }
        // Tags first: a stored .totl. value that no longer parses fails here, before any item
        // changed. A replacement keeps its id and so its search item; only its total changes.
        if let tags {
            if let existing {
                try applyTotal(tags, ino: ino, value: existing.value, adding: false)
            } else {
                try applySearch(tags, ino: ino, name: name, id: id, adding: true)
                try applyIndex(tags, ino: ino, adding: true)
            }
            try applyTotal(tags, ino: ino, value: value, adding: true)
        }
        if let existing { try removeXattrItems(ino, existing) }
        try putXattrItems(ino, name, id: id, value)
        rec.ctime = .now
        try putInode(ino, &rec)
    }

    /// The items of xattr `name` with `value` under `id`; the caller updates the inode.
    func putXattrItems(_ ino: UInt64, _ name: [UInt8], id: UInt64, _ value: [UInt8]) throws {
        let head = XattrHead.encode(name: name, value: value)
        try put(Keys.xattr(ino, nameHash(name), id, 0), head.bytes)
        var at = head.held
        var part: UInt8 = 1
        while at < value.count {
            let n = min(Item.maxValueLength, value.count - at)
            try put(Keys.xattr(ino, nameHash(name), id, part), Array(value[at..<at + n]))
            at += n
            part += 1
        }
    }

    /// A new value for an existing untagged xattr, keeping its id.
    func replaceXattrValue(_ ino: UInt64, _ x: FoundXattr, _ name: [UInt8], _ value: [UInt8]) throws {
        try removeXattrItems(ino, x)
        try putXattrItems(ino, name, id: x.id, value)
    }

    func removeXattr(_ ino: UInt64, _ name: [UInt8], caller: Caller) throws {
        var rec = try inode(ino)
        let tags = try checkXattrName(name, caller: caller)
        try checkRetention(rec, xattr: name)
        guard let x = try findXattr(ino, name) else { throw Errno.noData }
        if let tags { try applyTags(tags, ino: ino, name: name, id: x.id, value: x.value, adding: false) }
        try removeXattrItems(ino, x)
        rec.ctime = .now
        try putInode(ino, &rec)
    }

    func removeXattrItems(_ ino: UInt64, _ x: FoundXattr) throws {
        for part in 0..<x.parts { try remove(Keys.xattr(ino, x.hash, x.id, UInt8(part))) }
    }

    /// The names of an inode's xattrs: the visible ones, or with `hidden` the `.hide.` ones.
    func listXattrs(_ ino: UInt64, hidden: Bool = false) throws -> [[UInt8]] {
        _ = try inode(ino)
        var names: [[UInt8]] = []
        for it in try range(Keys.xattr(ino, 0, 0, 0), Keys.xattr(ino, .max, .max, .max)) where it.key.fourth == 0 {
            let name = try XattrHead(decoding: it.value).name
            if ((try? XattrTags.parse(name))??.hide == true) == hidden { names.append(name) }
        }
        return names
    }
}

extension LockPlan {
    /// Writing xattr `name`: its inode, and the search, totals and index zones when it is tagged.
    mutating func xattr(_ ino: UInt64, _ name: [UInt8]) {
        write(ino)
        if let tags = try? XattrTags.parse(name), tags.srch || tags.totl || tags.indx { xattrTags() }
    }
}

extension Filesystem {
    public func setXattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], flags: Int32, caller: Caller) throws(Errno) {
        var plan = LockPlan()
        plan.xattr(ino, name)
        try locked(.grows, plan) { try $0.setXattr(ino, name, value, flags: flags, caller: caller) }
    }

    public func getXattr(_ ino: UInt64, _ name: [UInt8]) throws(Errno) -> [UInt8] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { c in
            _ = try c.inode(ino)
            if name.isEmpty || name.count > FSCore.maxXattrName { throw Errno.outOfRange }
            guard let x = try c.findXattr(ino, name) else { throw Errno.noData }
            return x.value
        }
    }

    public func listXattrs(_ ino: UInt64) throws(Errno) -> [[UInt8]] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { try $0.listXattrs(ino) }
    }

    public func removeXattr(_ ino: UInt64, _ name: [UInt8], caller: Caller) throws(Errno) {
        var plan = LockPlan()
        plan.xattr(ino, name)
        try locked(.frees, plan) { try $0.removeXattr(ino, name, caller: caller) }
    }
}
