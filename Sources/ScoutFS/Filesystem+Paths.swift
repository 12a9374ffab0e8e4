public import ScoutFormat
public import SystemPackage

extension FSCore {
    /// Entries naming `ino`, from its link backrefs, after `(dir, pos)` in (dir, pos) order.
    func referringEntries(_ ino: UInt64, after dir: UInt64, _ pos: UInt64, limit: Int) throws -> [ReferringEntry] {
        guard let start = pos == .max ? (dir == .max ? nil : Keys.backref(ino, dir + 1, 0)) : Keys.backref(ino, dir, pos + 1) else {
            return []
        }
        // No entries is an empty answer, as in the original, whether the inode is unlinked
        // (open still), never was, or is gone.
        let found = try range(start, Keys.backref(ino, .max, .max), limit: limit)
        guard !found.isEmpty else { return [] }
        let rec = try inode(ino)
        return found.map { ReferringEntry(dir: $0.key.second, pos: $0.key.third, type: rec.direntType, name: $0.value) }
    }

    /// The path of directory `dir` from the root, following each directory's one backref.
    func directoryPath(_ dir: UInt64) throws -> [UInt8] {
        var parts: [[UInt8]] = []
        var at = dir
        while at != Self.rootIno {
            guard parts.count < 4096,
                  let it = try range(Keys.backref(at, 0, 0), Keys.backref(at, .max, .max), limit: 1).first else {
                log("inode \(at): no link back to the root while resolving a path")
                throw Errno.ioError
            }
            parts.append(it.value)
            at = it.key.second
        }
        return Array(parts.reversed().joined(separator: [UInt8(ascii: "/")]))
    }
}

extension FSCore {
    /// Read locks for every directory on the way from `ino`'s entries up to the root, found
    /// one level per round as their groups come to be held.
    func discoverPaths(_ ino: UInt64, after dir: UInt64, _ pos: UInt64, limit: Int, _ p: inout LockPlan) throws {
        guard held.canRead(ino), (try? inode(ino)) != nil else { return }
        for e in try referringEntries(ino, after: dir, pos, limit: limit) {
            var at = e.dir
            var steps = 0
            while at != Self.rootIno, steps < 4096 {
                p.read(at)
                guard held.canRead(at),
                      let it = try range(Keys.backref(at, 0, 0), Keys.backref(at, .max, .max), limit: 1).first else { break }
                at = it.key.second
                steps += 1
            }
        }
    }
}

extension Filesystem {
    /// Directory entries that refer to `ino` (get-referring-entries).
    public func referringEntries(_ ino: UInt64, after dir: UInt64 = 0, _ pos: UInt64 = 0, limit: Int = 1024) throws(Errno) -> [ReferringEntry] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { try $0.referringEntries(ino, after: dir, pos, limit: limit) }
    }

    /// Paths from the root to `ino`, one per entry naming it, with the entry's (dir, pos).
    public func inoPaths(_ ino: UInt64, after dir: UInt64 = 0, _ pos: UInt64 = 0, limit: Int = 1024) throws(Errno) -> [InodePath] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan, discover: { c, p in
            try c.discoverPaths(ino, after: dir, pos, limit: limit, &p)
        }) { c in
            let entries = try c.referringEntries(ino, after: dir, pos, limit: limit)
            // A path of no inode is ENOENT (get-referring-entries answers nothing instead).
            if entries.isEmpty && dir == 0 && pos == 0 { _ = try c.inode(ino) }
            return try entries.map { e in
                let base = try c.directoryPath(e.dir)
                return InodePath(dir: e.dir, pos: e.pos, path: base.isEmpty ? e.name : base + [UInt8(ascii: "/")] + e.name)
            }
        }
    }
}
