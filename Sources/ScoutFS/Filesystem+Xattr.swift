#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutStore
public import SystemPackage

/// Xattrs are items `(fs, ino, xattr, name hash, id, part)`. Part 0 holds `name_len u8,
/// value_len u32, name, value…`; further parts continue the value, so values up to 64 KiB fit
/// in items of at most 896 bytes.
extension FSCore {
    static let maxXattrValue = 65536
    static let maxXattrName = 255

    struct FoundXattr {
        var hash: UInt64
        var id: UInt64
        var parts: Int
        var value: [UInt8]
    }

    func checkXattrName(_ name: [UInt8]) throws {
        if name.isEmpty || name.count > Self.maxXattrName { throw name.isEmpty ? Errno.invalidArgument : Errno.outOfRange }
        let known = ["user.", "trusted.", "security.", "system."].map { Array($0.utf8) }
        guard known.contains(where: { name.starts(with: $0) && name.count > $0.count }) else { throw Errno.notSupported }
        // POSIX ACLs are not kept; the kernel's default_permissions checks the mode bits.
        if name.starts(with: Array("system.".utf8)) { throw Errno.notSupported }
    }

    func findXattr(_ ino: UInt64, _ name: [UInt8]) throws -> FoundXattr? {
        let h = nameHash(name)
        var found: FoundXattr?
        for it in try range(Keys.xattr(ino, h, 0, 0), Keys.xattr(ino, h, .max, .max)) {
            if it.key.fourth == 0 {
                if found != nil { break }
                var r = ByteReader(it.value, what: "xattr")
                let nameLen = Int(try r.u8())
                let valueLen = Int(try r.u32())
                let n = try r.raw(nameLen)
                guard n == name else { continue }
                found = FoundXattr(hash: h, id: it.key.third, parts: 1, value: try r.raw(r.remaining))
                found!.value.reserveCapacity(valueLen)
            } else if found != nil, it.key.third == found!.id {
                found!.value += it.value
                found!.parts += 1
            }
        }
        return found
    }

    func setXattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], flags: Int32) throws {
        try checkXattrName(name)
        if value.count > Self.maxXattrValue { throw Errno.noSpace }
        var rec = try inode(ino)
        let existing = try findXattr(ino, name)
        if flags & LinuxABI.xattrCreate != 0 && existing != nil { throw Errno.fileExists }
        if flags & LinuxABI.xattrReplace != 0 && existing == nil { throw Errno.noData }
        if let existing { try removeXattrItems(ino, existing) }
        let id = rec.nextXattrID
        rec.nextXattrID += 1
        var w = ByteWriter()
        w.u8(UInt8(name.count))
        w.u32(UInt32(value.count))
        w.raw(name)
        let firstRoom = Item.maxValueLength - w.count
        w.raw(value.prefix(firstRoom))
        try put(Keys.xattr(ino, nameHash(name), id, 0), w.bytes)
        var at = min(firstRoom, value.count)
        var part: UInt8 = 1
        while at < value.count {
            let n = min(Item.maxValueLength, value.count - at)
            try put(Keys.xattr(ino, nameHash(name), id, part), Array(value[at..<at + n]))
            at += n
            part += 1
        }
        rec.ctime = .now
        try putInode(ino, &rec)
    }

    func removeXattrItems(_ ino: UInt64, _ x: FoundXattr) throws {
        for part in 0..<x.parts { try remove(Keys.xattr(ino, x.hash, x.id, UInt8(part))) }
    }

    func listXattrs(_ ino: UInt64) throws -> [[UInt8]] {
        _ = try inode(ino)
        var names: [[UInt8]] = []
        for it in try range(Keys.xattr(ino, 0, 0, 0), Keys.xattr(ino, .max, .max, .max)) where it.key.fourth == 0 {
            var r = ByteReader(it.value, what: "xattr")
            let n = Int(try r.u8())
            try r.skip(4)
            names.append(try r.raw(n))
        }
        return names
    }
}

extension Filesystem {
    public func setXattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], flags: Int32) throws(Errno) {
        try run { try $0.setXattr(ino, name, value, flags: flags) }
    }

    public func getXattr(_ ino: UInt64, _ name: [UInt8]) throws(Errno) -> [UInt8] {
        try run(.reads) { c in
            _ = try c.inode(ino)
            if name.isEmpty || name.count > FSCore.maxXattrName { throw Errno.outOfRange }
            guard let x = try c.findXattr(ino, name) else { throw Errno.noData }
            return x.value
        }
    }

    public func listXattrs(_ ino: UInt64) throws(Errno) -> [[UInt8]] {
        try run(.reads) { try $0.listXattrs(ino) }
    }

    public func removeXattr(_ ino: UInt64, _ name: [UInt8]) throws(Errno) {
        try run(.frees) { c in
            var rec = try c.inode(ino)
            guard let x = try c.findXattr(ino, name) else { throw Errno.noData }
            try c.removeXattrItems(ino, x)
            rec.ctime = .now
            try c.putInode(ino, &rec)
        }
    }
}
