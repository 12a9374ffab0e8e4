#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutStore
public import SystemPackage

/// A located directory entry.
struct FoundEntry {
    var hash: UInt64
    var pos: UInt64
    var record: DirentRecord
}

extension FSCore {
    func checkName(_ name: [UInt8]) throws {
        if name.isEmpty || name.contains(0) || name.contains(UInt8(ascii: "/")) { throw Errno.invalidArgument }
        if name.count > DirentRecord.maxNameLength { throw Errno.fileNameTooLong }
    }

    /// Finds `name` in `dir` through its hash: every entry with that hash is compared by name.
    func findEntry(_ dir: UInt64, _ name: [UInt8]) throws -> FoundEntry? {
        let h = nameHash(name)
        for it in try range(Keys.dirent(dir, h, 0), Keys.dirent(dir, h, .max)) {
            let rec = try DirentRecord(decoding: it.value)
            if rec.name == name { return FoundEntry(hash: h, pos: it.key.third, record: rec) }
        }
        return nil
    }

    /// Adds `name → ino` to `dir` at the directory's next readdir position, with its backref.
    func addEntry(_ dir: UInt64, _ dirRec: inout InodeRecord, _ name: [UInt8], _ ino: UInt64, type: UInt8) throws {
        let pos = dirRec.nextReaddirPos
        dirRec.nextReaddirPos = try pos.adding(1, "next readdir position of directory \(dir)")
        let rec = DirentRecord(ino: ino, type: type, name: name).encoded
        try put(Keys.dirent(dir, nameHash(name), pos), rec)
        try put(Keys.readdir(dir, pos), rec)
        try put(Keys.backref(ino, dir, pos), name)
    }

    func removeEntry(_ dir: UInt64, _ e: FoundEntry) throws {
        try remove(Keys.dirent(dir, e.hash, e.pos))
        try remove(Keys.readdir(dir, e.pos))
        try remove(Keys.backref(e.record.ino, dir, e.pos))
    }

    func isEmptyDirectory(_ dir: UInt64) throws -> Bool {
        try range(Keys.readdir(dir, 0), Keys.readdir(dir, .max), limit: 1).isEmpty
    }

    /// The directory holding `dir` (directories have exactly one link, so one backref).
    func parent(of dir: UInt64) throws -> UInt64? {
        try range(Keys.backref(dir, 0, 0), Keys.backref(dir, .max, .max), limit: 1).first?.key.second
    }

    /// The inode `name` in `dir` leads to, for the locks of a lookup: nil when there is none
    /// (the lookup then fails on its own).
    func lookupTarget(_ dir: UInt64, _ name: [UInt8]) throws -> UInt64? {
        if name == [UInt8(ascii: ".")] { return dir }
        guard (try? directory(dir)) != nil else { return nil }
        if name == [UInt8(ascii: "."), UInt8(ascii: ".")] { return try parent(of: dir) ?? Self.rootIno }
        guard (try? checkName(name)) != nil else { return nil }
        return try findEntry(dir, name)?.record.ino
    }

    /// The locks a rename needs beyond its two directories: the inodes of both names, and
    /// (for a directory moving elsewhere) every ancestor the cycle check reads, found one
    /// level per round as their groups come to be held.
    func discoverRename(_ oldDir: UInt64, _ oldName: [UInt8], _ newDir: UInt64, _ newName: [UInt8], _ p: inout LockPlan) throws {
        guard held.canRead(oldDir), held.canRead(newDir),
              (try? directory(oldDir)) != nil, (try? directory(newDir)) != nil,
              (try? checkName(oldName)) != nil, (try? checkName(newName)) != nil else { return }
        let src = try findEntry(oldDir, oldName)?.record.ino
        let dst = try findEntry(newDir, newName)?.record.ino
        if let src { p.write(src) }
        if let dst { p.mayFree(dst) }
        guard oldDir != newDir else { return }
        for (moving, into) in [(src, newDir), (dst, oldDir)] {
            guard let moving, held.canRead(moving), (try? inode(moving))?.isDirectory == true else { continue }
            var cur: UInt64? = into
            while let c = cur, c != Self.rootIno, c != moving {
                guard held.canRead(c) else {
                    p.read(c)
                    break
                }
                cur = try parent(of: c)
                if let up = cur { p.read(up) }
            }
        }
    }

    // MARK: operations

    func lookup(_ dir: UInt64, _ name: [UInt8]) throws -> Attributes {
        // The kernel asks for "." of any inode and ".." of a directory when it opens a file
        // handle (open_by_handle_at, NFS export) of an inode it no longer caches.
        if name == [UInt8(ascii: ".")] {
            let attr = attributes(dir, try inode(dir))
            noteLookup(dir)
            return attr
        }
        if name == [UInt8(ascii: "."), UInt8(ascii: ".")] {
            _ = try directory(dir)
            let up = try parent(of: dir) ?? Self.rootIno
            let attr = attributes(up, try inode(up))
            noteLookup(up)
            return attr
        }
        _ = try directory(dir)
        try checkName(name)
        guard let e = try findEntry(dir, name) else { throw Errno.noSuchFileOrDirectory }
        let attr = attributes(e.record.ino, try inode(e.record.ino))
        noteLookup(e.record.ino, in: dir, name: name, directory: attr.isDirectory)
        return attr
    }

    /// Creates a file, directory, device, fifo, socket or symlink named `name` in `dir`; with
    /// no name, a regular file that no directory holds (O_TMPFILE), an orphan from the start:
    /// freed at its last close unless a link names it first. `ino` comes from
    /// `allocateIno`, taken before the operation's locks (its group is one of them).
    func makeNode(_ dir: UInt64, _ name: [UInt8]?, ino: UInt64, mode: UInt32, rdev: UInt64 = 0, symlinkTarget: [UInt8]? = nil,
                  caller: Caller) throws -> Attributes {
        var parent = try directory(dir)
        if let name { try checkName(name) }
        if parent.nlink == 0 { throw Errno.noSuchFileOrDirectory }
        if let name, try findEntry(dir, name) != nil { throw Errno.fileExists }
        let now = Timestamp.now
        var perms = mode & 0o7777
        let isLink = mode & UInt32(S_IFMT) == UInt32(S_IFLNK)
        // A directory's default ACL replaces the umask for what is made in it (the kernel
        // leaves both to us once ACLs are on).
        var inherited: PosixACL?
        if !isLink && shared.posixACLs && parent.nextXattrID > 1, let x = try findXattr(dir, PosixACL.defaultName) {
            inherited = PosixACL(xattr: x.value)
        }
        var access = inherited
        if var acl = access {
            perms = acl.create(mode: perms)
            access = acl.isEquivalentToMode ? nil : acl
        } else if !isLink {
            perms &= ~caller.umask
        }
        var rec = InodeRecord(mode: (mode & UInt32(S_IFMT)) | perms, uid: caller.uid, gid: caller.gid, now: now)
        // A setgid directory passes its group on, and its setgid bit to subdirectories.
        if parent.mode & UInt32(S_ISGID) != 0 {
            rec.gid = parent.gid
            if rec.isDirectory { rec.mode |= UInt32(S_ISGID) }
        }
        rec.rdev = rdev
        // Project ids are inherited at creation and never follow a rename or link.
        rec.projectID = parent.projectID
        try checkQuota(op: QuotaRule.inodeOp, project: rec.projectID, uid: rec.uid, gid: rec.gid)
        if let target = symlinkTarget {
            guard !target.isEmpty, target.count < Int(PATH_MAX) else { throw target.isEmpty ? Errno.noSuchFileOrDirectory : Errno.fileNameTooLong }
            rec.size = UInt64(target.count)
        }
        if rec.isDirectory {
            rec.nlink = 2
            parent.nlink = try parent.nlink.adding(1, "link count of directory \(dir)")
        }
        // The entry first: a damaged parent fails before anything of the new inode is written.
        if let name {
            try addEntry(dir, &parent, name, ino, type: rec.direntType)
        } else {
            rec.nlink = 0
            try put(Keys.orphan(ino), [])
            shared.refs.withLock(ino) { _ = $0.unlinked.insert(ino) }
        }
        if let target = symlinkTarget {
            for (nr, start) in stride(from: 0, to: target.count, by: Item.maxValueLength).enumerated() {
                try put(Keys.symlink(ino, UInt64(nr)), Array(target[start..<min(start + Item.maxValueLength, target.count)]))
            }
        }
        // The new inode's ACLs are its first xattrs: written with it, its mode already theirs.
        for (name, acl) in [(PosixACL.accessName, access), (PosixACL.defaultName, rec.isDirectory ? inherited : nil)] {
            guard let acl else { continue }
            try putXattrItems(ino, name, id: rec.nextXattrID, acl.encoded)
            rec.nextXattrID += 1
        }
        try putInode(ino, &rec)
        if name != nil {
            parent.mtime = now
            parent.ctime = now
            try putInode(dir, &parent)
        }
        noteLookup(ino, in: name == nil ? nil : dir, name: name, directory: rec.isDirectory)
        return attributes(ino, rec)
    }

    func readlink(_ ino: UInt64) throws -> [UInt8] {
        let r = try inode(ino)
        guard r.isSymlink else { throw Errno.invalidArgument }
        return try range(Keys.symlink(ino, 0), Keys.symlink(ino, .max)).flatMap(\.value)
    }

    func link(_ ino: UInt64, _ dir: UInt64, _ name: [UInt8]) throws -> Attributes {
        var target = try inode(ino)
        if target.isDirectory { throw Errno.notPermitted }
        var parent = try directory(dir)
        try checkName(name)
        if parent.nlink == 0 { throw Errno.noSuchFileOrDirectory }
        if try findEntry(dir, name) != nil { throw Errno.fileExists }
        if target.nlink >= UInt32(Int32.max) { throw Errno.tooManyLinks }
        let now = Timestamp.now
        let wasOrphan = target.nlink == 0
        try addEntry(dir, &parent, name, ino, type: target.direntType)
        target.nlink += 1
        target.ctime = now
        try putInode(ino, &target)
        if wasOrphan {
            try remove(Keys.orphan(ino))
            shared.refs.withLock(ino) { _ = $0.unlinked.remove(ino) }
        }
        parent.mtime = now
        parent.ctime = now
        try putInode(dir, &parent)
        noteLookup(ino, in: dir, name: name, directory: false)
        return attributes(ino, target)
    }

    /// Drops one link of `ino`; at zero it becomes an orphan until the last reference goes.
    func dropLink(_ ino: UInt64, _ rec: inout InodeRecord, now: Timestamp) throws {
        rec.nlink = rec.isDirectory ? 0 : try rec.nlink.subtracting(1, "link count of inode \(ino)")
        rec.ctime = now
        try putInode(ino, &rec)
        if rec.nlink == 0 {
            try put(Keys.orphan(ino), [])
            shared.refs.withLock(ino) { _ = $0.unlinked.insert(ino) }
            try freeIfUnused(ino)
        }
    }

    func unlink(_ dir: UInt64, _ name: [UInt8], directory wantDir: Bool) throws {
        var parent = try directory(dir)
        try checkName(name)
        guard let e = try findEntry(dir, name) else { throw Errno.noSuchFileOrDirectory }
        var target = try inode(e.record.ino)
        try checkRetention(target)
        if wantDir {
            if !target.isDirectory { throw Errno.notDirectory }
            if !(try isEmptyDirectory(e.record.ino)) { throw Errno.directoryNotEmpty }
        } else if target.isDirectory {
            throw Errno.isDirectory
        }
        let now = Timestamp.now
        if target.isDirectory { parent.nlink = try parent.nlink.subtracting(1, "link count of directory \(dir)") }
        try removeEntry(dir, e)
        parent.mtime = now
        parent.ctime = now
        try putInode(dir, &parent)
        try dropLink(e.record.ino, &target, now: now)
    }

    func rename(_ oldDir: UInt64, _ oldName: [UInt8], _ newDir: UInt64, _ newName: [UInt8], flags: UInt32) throws {
        let noReplace = flags & LinuxABI.renameNoReplace != 0
        let exchange = flags & LinuxABI.renameExchange != 0
        if flags & ~(LinuxABI.renameNoReplace | LinuxABI.renameExchange) != 0 || (noReplace && exchange) { throw Errno.invalidArgument }
        try checkName(oldName)
        try checkName(newName)
        _ = try directory(oldDir)
        _ = try directory(newDir)
        guard let src = try findEntry(oldDir, oldName) else { throw Errno.noSuchFileOrDirectory }
        let dst = try findEntry(newDir, newName)
        var srcRec = try inode(src.record.ino)
        try checkRetention(srcRec)
        if let dst { try checkRetention(try inode(dst.record.ino)) }
        if noReplace && dst != nil { throw Errno.fileExists }
        if exchange && dst == nil { throw Errno.noSuchFileOrDirectory }
        if let dst, dst.record.ino == src.record.ino { return }
        // A directory may not move below itself.
        for (moving, into) in [(src.record.ino, newDir)] + (exchange ? [(dst!.record.ino, oldDir)] : []) {
            if try inode(moving).isDirectory && oldDir != newDir {
                var cur: UInt64? = into
                while let c = cur, c != FSCore.rootIno {
                    if c == moving { throw Errno.invalidArgument }
                    cur = try parent(of: c)
                }
            }
        }
        let now = Timestamp.now
        var dstRec: InodeRecord? = try dst.map { try inode($0.record.ino) }
        if !exchange, let d = dstRec {
            if srcRec.isDirectory && !d.isDirectory { throw Errno.notDirectory }
            if !srcRec.isDirectory && d.isDirectory { throw Errno.isDirectory }
            if try d.isDirectory && !isEmptyDirectory(dst!.record.ino) { throw Errno.directoryNotEmpty }
        }

        // A damaged directory must fail before any entry moves: room for the positions the
        // entries take, and link counts that the move can adjust.
        for d in Set([oldDir, newDir]) {
            let r = try inode(d)
            _ = try r.nextReaddirPos.adding(2, "next readdir position of directory \(d)")
            _ = try r.nlink.subtracting(1, "link count of directory \(d)").adding(2, "link count of directory \(d)")
        }
        // Remove the entries involved, then add them back where they belong.
        try removeEntry(oldDir, src)
        if let dst { try removeEntry(newDir, dst) }
        var oldParent = try inode(oldDir)
        if oldDir == newDir {
            try addEntry(newDir, &oldParent, newName, src.record.ino, type: srcRec.direntType)
            if exchange, let d = dstRec { try addEntry(oldDir, &oldParent, oldName, dst!.record.ino, type: d.direntType) }
            if !exchange, var d = dstRec {
                if d.isDirectory { oldParent.nlink -= 1 }
                try dropLink(dst!.record.ino, &d, now: now)
                dstRec = d
            }
            oldParent.mtime = now
            oldParent.ctime = now
            try putInode(oldDir, &oldParent)
        } else {
            var newParent = try inode(newDir)
            try addEntry(newDir, &newParent, newName, src.record.ino, type: srcRec.direntType)
            if srcRec.isDirectory {
                oldParent.nlink -= 1
                newParent.nlink += 1
            }
            if exchange, let d = dstRec {
                try addEntry(oldDir, &oldParent, oldName, dst!.record.ino, type: d.direntType)
                if d.isDirectory {
                    newParent.nlink -= 1
                    oldParent.nlink += 1
                }
            } else if var d = dstRec {
                if d.isDirectory { newParent.nlink -= 1 }
                try dropLink(dst!.record.ino, &d, now: now)
            }
            for (ino, var rec) in [(oldDir, oldParent), (newDir, newParent)] {
                rec.mtime = now
                rec.ctime = now
                try putInode(ino, &rec)
            }
        }
        srcRec = try inode(src.record.ino)
        srcRec.ctime = now
        try putInode(src.record.ino, &srcRec)
        if exchange, let dst {
            var d = try inode(dst.record.ino)
            d.ctime = now
            try putInode(dst.record.ino, &d)
        }
        // The kernel moves its entries as the reply says: the names kept for dropping them
        // follow, or a later hand-over (or the bound on the kernel's inodes) would drop the
        // old name and leave the new one cached.
        var moves: [KernelNames.Move] = [(src.record.ino, (oldDir, oldName), (newDir, newName))]
        if let dst { moves.append((dst.record.ino, (newDir, newName), exchange ? (oldDir, oldName) : nil)) }
        shared.refs.renamed(moves)
    }

    /// Entries from `offset` on: 0 is ".", 1 is "..", then entries by readdir position.
    func readdir(_ dir: UInt64, offset: UInt64, limit: Int, stream: DirectoryStream?) throws -> [DirectoryEntry] {
        var out: [DirectoryEntry] = []
        guard limit > 0 else { return out }
        try forEachEntry(dir, offset: offset, stream: stream) { ino, type, name, next in
            out.append(DirectoryEntry(ino: ino, type: type, name: Array(name), nextOffset: next))
            return out.count < limit
        }
        return out
    }

    /// Calls `emit` with each entry from `offset` on, as `readdir` lists them, until it returns
    /// false; the name is lent for the call only (see `DirentRecord.withFields`). Each entry's
    /// next offset (its d_off) is the position of the entry after it, as the original's, and
    /// one past its own for the last: so each entry is emitted once the next one is read.
    func forEachEntry(_ dir: UInt64, offset: UInt64, stream: DirectoryStream?, _ emit: DirectoryEntryVisitor) throws {
        let rec = try directory(dir)
        if let stream, offset == 0 || stream.end == 0 { stream.end = rec.nextReaddirPos }
        let end = stream?.end ?? .max
        if offset == 0 {
            guard try Self.dot.withUnsafeBytes({ try emit(dir, rec.direntType, $0, 1) }) else { return }
        }
        // The entry read and not yet emitted: its item's value (an array kept, not copied), or
        // "..", which has no item.
        var pendingValue: [UInt8]?
        var pendingDotDot = false
        var lastPos: UInt64 = 1
        func emitPending(next: UInt64) throws -> Bool {
            if pendingDotDot {
                pendingDotDot = false
                return try Self.dotDot.withUnsafeBytes { try emit(try parent(of: dir) ?? dir, UInt8(DT_DIR), $0, next) }
            }
            guard let value = pendingValue else { return true }
            pendingValue = nil
            return try DirentRecord.withFields(of: value) { ino, type, name in try emit(ino, type, name, next) }
        }
        if offset <= 1 { pendingDotDot = true }
        var stopped = false
        if max(offset, 2) < end {
            try scan(Keys.readdir(dir, max(offset, 2)), Keys.readdir(dir, end - 1)) { it in
                let pos = it.key.second
                guard try emitPending(next: pos) else {
                    stopped = true
                    return false
                }
                pendingValue = it.value
                lastPos = pos
                return true
            }
        }
        if !stopped { _ = try emitPending(next: lastPos + 1) }
    }

    static let dot: [UInt8] = [UInt8(ascii: ".")]
    static let dotDot: [UInt8] = [UInt8(ascii: "."), UInt8(ascii: ".")]
}

/// What a directory listing calls for each entry: its inode number, `DT_*` type, name (lent
/// for the call) and the offset that continues after it; returns whether to go on.
public typealias DirectoryEntryVisitor = (_ ino: UInt64, _ type: UInt8, _ name: UnsafeRawBufferPointer, _ nextOffset: UInt64) throws -> Bool

extension Filesystem {
    public func getattr(_ ino: UInt64) throws(Errno) -> Attributes {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { c in c.attributes(ino, try c.inode(ino)) }
    }

    /// Looks a name up and takes a kernel lookup reference on the result.
    public func lookup(_ dir: UInt64, _ name: [UInt8]) throws(Errno) -> Attributes {
        var plan = LockPlan()
        plan.read(dir)
        return try locked(.reads, plan, discover: { c, p in
            guard c.held.canRead(dir) else { return }
            if let target = try c.lookupTarget(dir, name) { p.read(target) }
        }) { try $0.lookup(dir, name) }
    }

    public func forget(_ ino: UInt64, _ count: UInt64) throws(Errno) {
        try forget([(ino, count)])
    }

    /// Many forgets at once (FUSE's batch forget): references only, no item and no lock,
    /// except for an inode whose last reference this was and which has no links left, freed
    /// by an operation of its own.
    public func forget(_ entries: [(ino: UInt64, count: UInt64)]) throws(Errno) {
        let freeable = entries.filter { shared.refs.forget($0.ino, $0.count) }.map(\.ino)
        for ino in freeable { try freeIfUnused(ino) }
    }

    /// Creates a node in `dir` under the locks of `dir` and of the new inode's group (a new
    /// `directory` starts a group of its own).
    func makeNode<T>(_ dir: UInt64, directory: Bool = false, _ body: (FSCore, UInt64) throws -> T) throws(Errno) -> T {
        try prepareQuota()
        var plan = LockPlan()
        plan.write(dir)
        var ino: UInt64?
        return try locked(.grows, plan, discover: { c, p in
            if ino == nil { ino = try c.allocateIno(parent: dir, directory: directory) }
            p.write(ino!)
        }) { c in try body(c, ino!) }
    }

    public func mknod(_ dir: UInt64, _ name: [UInt8], mode: UInt32, rdev: UInt64, caller: Caller) throws(Errno) -> Attributes {
        try makeNode(dir) { c, ino in try c.makeNode(dir, name, ino: ino, mode: mode, rdev: rdev, caller: caller) }
    }

    public func mkdir(_ dir: UInt64, _ name: [UInt8], mode: UInt32, caller: Caller) throws(Errno) -> Attributes {
        try makeNode(dir, directory: true) { c, ino in try c.makeNode(dir, name, ino: ino, mode: UInt32(S_IFDIR) | (mode & 0o7777), caller: caller) }
    }

    public func symlink(_ dir: UInt64, _ name: [UInt8], target: [UInt8], caller: Caller) throws(Errno) -> Attributes {
        try makeNode(dir) { c, ino in
            try c.makeNode(dir, name, ino: ino, mode: UInt32(S_IFLNK) | 0o777, symlinkTarget: target, caller: caller)
        }
    }

    public func readlink(_ ino: UInt64) throws(Errno) -> [UInt8] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { try $0.readlink(ino) }
    }

    public func link(_ ino: UInt64, _ dir: UInt64, _ name: [UInt8]) throws(Errno) -> Attributes {
        var plan = LockPlan()
        plan.write(ino)
        plan.write(dir)
        // Linking an orphan (an open, unlinked file) takes its orphan item away.
        plan.writeOnly(.orphan)
        return try locked(.grows, plan) { try $0.link(ino, dir, name) }
    }

    public func unlink(_ dir: UInt64, _ name: [UInt8]) throws(Errno) {
        try unlink(dir, name, directory: false)
    }

    public func rmdir(_ dir: UInt64, _ name: [UInt8]) throws(Errno) {
        try unlink(dir, name, directory: true)
    }

    private func unlink(_ dir: UInt64, _ name: [UInt8], directory: Bool) throws(Errno) {
        var plan = LockPlan()
        plan.write(dir)
        try locked(.frees, plan, discover: { c, p in
            guard c.held.canRead(dir), (try? c.directory(dir)) != nil, (try? c.checkName(name)) != nil,
                  let e = try c.findEntry(dir, name) else { return }
            p.mayFree(e.record.ino)
        }) { try $0.unlink(dir, name, directory: directory) }
    }

    public func rename(_ oldDir: UInt64, _ oldName: [UInt8], _ newDir: UInt64, _ newName: [UInt8], flags: UInt32 = 0) throws(Errno) {
        var plan = LockPlan()
        plan.write(oldDir)
        plan.write(newDir)
        // Between directories, a rename could make a cycle that the two directories' locks
        // cannot see: renames between directories take turns, cluster-wide.
        if oldDir != newDir { plan.renameBetweenDirectories() }
        try locked(.frees, plan, discover: { c, p in
            try c.discoverRename(oldDir, oldName, newDir, newName, &p)
        }) { try $0.rename(oldDir, oldName, newDir, newName, flags: flags) }
    }

    /// Entries from `offset`; with a `stream` (one per open directory), only those that existed
    /// when its pass started at offset 0.
    public func readdir(_ dir: UInt64, offset: UInt64, limit: Int, stream: DirectoryStream? = nil) throws(Errno) -> [DirectoryEntry] {
        var plan = LockPlan()
        plan.read(dir)
        return try locked(.reads, plan) { try $0.readdir(dir, offset: offset, limit: limit, stream: stream) }
    }

    /// readdir without an array: `emit` gets each entry in turn, under the directory's lock,
    /// until it returns false (a reply buffer that is full). It must not call the filesystem.
    public func readdir(_ dir: UInt64, offset: UInt64, stream: DirectoryStream? = nil, _ emit: DirectoryEntryVisitor) throws(Errno) {
        var plan = LockPlan()
        plan.read(dir)
        try locked(.reads, plan) { try $0.forEachEntry(dir, offset: offset, stream: stream, emit) }
    }

    /// readdir with attributes; takes a lookup reference on each entry returned except . and ..
    /// under the same hold of the transaction that read it, so an unlink cannot free an inode
    /// between the read and the reference. The caller gives back (`forget`) the references of
    /// entries it did not hand to the kernel.
    public func readdirPlus(_ dir: UInt64, offset: UInt64, limit: Int, stream: DirectoryStream? = nil) throws(Errno) -> [(DirectoryEntry, Attributes)] {
        var plan = LockPlan()
        plan.read(dir)
        // The entries read to find their inodes' locks, kept for the round that has them all:
        // the same hold of the transaction, so still what the directory holds.
        var found: [DirectoryEntry] = []
        return try locked(.reads, plan, discover: { c, p in
            guard c.held.canRead(dir) else { return }
            found = try c.readdir(dir, offset: offset, limit: limit, stream: stream)
            for e in found { p.read(e.ino) }
        }) { c in
            let entries = try found.map { e in (e, c.attributes(e.ino, try c.inode(e.ino))) }
            // Only once every entry read: a failure part way must not leave references behind.
            for (e, a) in entries where e.nextOffset > 2 { c.noteLookup(e.ino, in: dir, name: e.name, directory: a.isDirectory) }
            return entries
        }
    }
}
