#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutStore

/// What the streamed items of one inode add up to. An inode's items come in key order: the
/// inode, xattrs, its entries by name hash, by position, the backrefs of its own links, then
/// symlink parts and extents.
struct InodeTally {
    var ino: UInt64
    var record: InodeRecord?
    var undecodable = false
    /// Its link backrefs: the links to it that exist.
    var links: UInt64 = 0
    /// Entries of this directory that are directories (each holds a ".." link to it).
    var subdirectories: UInt64 = 0
    var firstParent: UInt64?
}

extension FilesystemCheck.Walk {
    func entryText(_ dir: UInt64, _ pos: UInt64, _ name: [UInt8]) -> String {
        "entry \"\(String(decoding: name, as: UTF8.self))\" of directory \(dir) at position \(pos)"
    }

    func direntRecord(_ key: Key) throws -> DirentRecord? {
        try forest.lookup(key, in: store).flatMap { try? DirentRecord(decoding: $0.value) }
    }

    /// An entry by name hash: its readdir twin, its target's backref and the target inode must
    /// all be there and agree.
    mutating func dirent(_ it: Item) throws {
        let dir = it.key.first, hash = it.key.second, pos = it.key.third
        guard let e = try? DirentRecord(decoding: it.value) else {
            problem("bad entry", "directory \(dir): lookup item at position \(pos) does not decode")
            return
        }
        let what = entryText(dir, pos, e.name)
        if nameHash(e.name) != hash { problem("entry hash", "\(what): stored under hash \(String(hash, radix: 16)), its name hashes to \(String(nameHash(e.name), radix: 16))") }
        if try direntRecord(Keys.readdir(dir, pos)) != e {
            problem("entry twins", "\(what): the lookup item and the readdir item disagree (or the readdir item is missing)")
        }
        if try forest.lookup(Keys.backref(e.ino, dir, pos), in: store)?.value != e.name {
            problem("entry backref", "\(what): inode \(e.ino) has no link backref for it")
        }
        if try forest.lookup(Keys.inode(e.ino), in: store) == nil {
            problem("dangling entry", "\(what): points at inode \(e.ino), which does not exist")
        }
    }

    /// An entry by position: it must have its lookup twin (the other direction is checked with
    /// the lookup item), a position the directory has handed out, and counts toward the
    /// directory's link count when it is a directory.
    mutating func readdirItem(_ it: Item) throws {
        let dir = it.key.first, pos = it.key.second
        guard let e = try? DirentRecord(decoding: it.value) else {
            problem("bad entry", "directory \(dir): readdir item at position \(pos) does not decode")
            return
        }
        if e.type == UInt8(DT_DIR) { current.subdirectories += 1 }
        let what = entryText(dir, pos, e.name)
        if try direntRecord(Keys.dirent(dir, nameHash(e.name), pos)) == nil {
            problem("entry twins", "\(what): readdir item without its lookup item")
        }
        if let rec = current.record, pos < 2 || pos >= rec.nextReaddirPos {
            problem("entry position", "\(what): position outside 2..<\(rec.nextReaddirPos), the positions the directory handed out")
        }
    }

    /// One link of this inode: the entry it names must exist and point back here.
    mutating func backref(_ it: Item) throws {
        let ino = it.key.first, dir = it.key.second, pos = it.key.third
        current.links += 1
        if current.firstParent == nil { current.firstParent = dir }
        let e = try direntRecord(Keys.readdir(dir, pos))
        if e?.ino != ino || e?.name != it.value {
            let text = "inode \(ino): link backref to \(entryText(dir, pos, it.value)), which " + (e == nil ? "does not exist" : "names inode \(e!.ino)")
            problem("stray backref", text)
        }
    }

    /// Link counts and reachability of the inode whose items just ended.
    mutating func finishInode() throws {
        let t = current
        guard t.ino != 0 else { return }
        guard let rec = t.record else {
            if !t.undecodable {
                problem("items without inode", "inode \(t.ino): items exist but the inode item does not")
            }
            return
        }
        let isRoot = t.ino == FSCore.rootIno
        let orphan = try forest.lookup(Keys.orphan(t.ino), in: store) != nil
        if rec.isDirectory {
            if let p = t.firstParent { parents[t.ino] = p }
            if rec.nlink == 0 {
                if !orphan { problem("unlinked directory", "directory \(t.ino): link count 0, yet not an orphan") }
            } else if UInt64(rec.nlink) != 2 + t.subdirectories {
                problem("link count", "directory \(t.ino): link count \(rec.nlink), but it has \(t.subdirectories) subdirectories (expected \(2 + t.subdirectories))")
            }
            if !isRoot && rec.nlink > 0 && t.links != 1 {
                problem("directory links", "directory \(t.ino): \(t.links) entries name it; a directory has exactly one")
            }
        } else if UInt64(rec.nlink) != t.links {
            problem("link count", "inode \(t.ino): link count \(rec.nlink), but \(t.links) entries name it")
        }
        if !isRoot && t.links == 0 && !orphan {
            problem("unreachable inode", "inode \(t.ino): no directory names it and it is not an orphan")
        }
    }

    /// Every directory's chain of parents ends at the root: a directory moved below itself
    /// would be linked yet unreachable.
    mutating func reachability() {
        var reaches: [UInt64: Bool] = [FSCore.rootIno: true]
        for start in parents.keys.sorted() {
            var path: [UInt64] = []
            var seen = Set<UInt64>()
            var at = start
            var ok = false
            while true {
                if let known = reaches[at] { ok = known; break }
                if !seen.insert(at).inserted { break }
                path.append(at)
                // Not the root (it is known to reach itself) and no parent: the chain ends here.
                guard let up = parents[at] else { break }
                at = up
            }
            for p in path { reaches[p] = ok }
            if !ok { problem("unreachable directory", "directory \(start): its parents never reach the root directory") }
        }
    }
}
