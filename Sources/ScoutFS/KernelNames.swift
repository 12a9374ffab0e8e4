import ScoutFormat

/// The inodes and names this client has handed to the kernel, by inode group, so that giving
/// a group's lock up can drop exactly them from the kernel's caches: another client may change
/// them next, and the kernel would otherwise answer from its cache for up to a minute. An
/// inode's attributes and pages belong to its own group's lock; a name belongs to its
/// directory's. Entries stay until the kernel forgets the inode (a rename or unlink made here
/// leaves a stale one behind, whose invalidation the kernel ignores).
///
/// Kept only when other clients exist: alone, nothing changes behind the kernel's back.
struct KernelNames {
    struct Name: Hashable {
        var parent: UInt64
        var name: [UInt8]
        var child: UInt64
    }

    private var inodes: [UInt64: Set<UInt64>] = [:]
    private var names: [UInt64: Set<Name>] = [:]
    /// Each inode's names, the first apart: nearly every inode has one name, and an array per
    /// inode cost one more allocation for each of the millions the kernel may hold (a name's
    /// bytes are shared with its copy in `names`).
    private var firstNameOf: [UInt64: Name] = [:]
    private var moreNamesOf: [UInt64: [Name]] = [:]

    private static func group(_ ino: UInt64) -> UInt64 { ino / LockRange.groupSize }

    mutating func note(_ ino: UInt64, in parent: UInt64?, name: [UInt8]?) {
        inodes[Self.group(ino), default: []].insert(ino)
        guard let parent, let name else { return }
        // The name the kernel was given first, again (every entry of a directory listed
        // again): known, and spares hashing it into its directory's set.
        if let first = firstNameOf[ino], first.parent == parent, first.name == name { return }
        let n = Name(parent: parent, name: name, child: ino)
        guard names[Self.group(parent), default: []].insert(n).inserted else { return }
        if firstNameOf[ino] == nil { firstNameOf[ino] = n } else { moreNamesOf[ino, default: []].append(n) }
    }

    /// One inode's name moved by a rename made here: it leaves `from` and takes `to` (nil for
    /// a replaced target, whose name is gone).
    typealias Move = (ino: UInt64, from: (parent: UInt64, name: [UInt8]), to: (parent: UInt64, name: [UInt8])?)

    /// Names moved by a rename made here, as the kernel moves its entries: each leaves `from`
    /// (if it had one) and, if the kernel holds its inode, takes `to`. All leave first, so an
    /// exchange's two names can cross.
    mutating func move(_ moves: [Move]) {
        for m in moves { drop(m.ino, in: m.from.parent, name: m.from.name) }
        for m in moves {
            guard let to = m.to, inodes[Self.group(m.ino)]?.contains(m.ino) == true else { continue }
            note(m.ino, in: to.parent, name: to.name)
        }
    }

    private mutating func drop(_ ino: UInt64, in parent: UInt64, name: [UInt8]) {
        let n = Name(parent: parent, name: name, child: ino)
        let g = Self.group(parent)
        guard names[g]?.remove(n) != nil else { return }
        if names[g]?.isEmpty == true { names[g] = nil }
        var more = moreNamesOf.removeValue(forKey: ino) ?? []
        if firstNameOf[ino] == n {
            firstNameOf[ino] = more.isEmpty ? nil : more.removeFirst()
        } else {
            more.removeAll { $0 == n }
        }
        if !more.isEmpty { moreNamesOf[ino] = more }
    }

    /// The kernel dropped its last reference to `ino`: nothing of it is cached there now.
    mutating func forget(_ ino: UInt64) {
        let g = Self.group(ino)
        inodes[g]?.remove(ino)
        if inodes[g]?.isEmpty == true { inodes[g] = nil }
        var gone = moreNamesOf.removeValue(forKey: ino) ?? []
        if let first = firstNameOf.removeValue(forKey: ino) { gone.append(first) }
        for n in gone {
            let pg = Self.group(n.parent)
            names[pg]?.remove(n)
            if names[pg]?.isEmpty == true { names[pg] = nil }
        }
    }

    /// The names the kernel was given for `ino`.
    func names(of ino: UInt64) -> [(parent: UInt64, name: [UInt8])] {
        guard let first = firstNameOf[ino] else { return [] }
        return [(first.parent, first.name)] + (moreNamesOf[ino] ?? []).map { ($0.parent, $0.name) }
    }

    /// What the kernel caches under inode group `group`'s lock.
    func cached(inGroup group: UInt64) -> (inodes: [UInt64], names: [(parent: UInt64, name: [UInt8])]) {
        (Array(inodes[group] ?? []), (names[group] ?? []).map { ($0.parent, $0.name) })
    }
}

/// Where the filesystem sends what the kernel must forget; the FUSE layer drains it from a
/// thread of its own, since a notification may wait for a request that waits for a lock.
public protocol KernelInvalidation: Sendable {
    /// Drop the attributes of `ino` now (never blocks).
    func invalidateAttributes(_ ino: UInt64)
    /// Drop the attributes and pages of `ino` (queued).
    func invalidateInode(_ ino: UInt64)
    /// Drop the name `name` in directory `parent` (queued).
    func invalidateEntry(_ parent: UInt64, _ name: [UInt8])
    /// Drop the name `name` in directory `parent` if the kernel does not use it, when nothing
    /// else waits to be sent (queued apart: `flush` does not wait for it; may be dropped).
    func pruneEntry(_ parent: UInt64, _ name: [UInt8])
    /// Calls `body` from time to time while nothing is queued.
    func whenIdle(_ body: @escaping @Sendable () -> Void)
    /// Waits up to `seconds` until everything queued so far has reached the kernel; false if
    /// the time ran out (a request holds what a notification needs).
    func flush(within seconds: Double) -> Bool
}

extension Filesystem {
    /// Sends to `target`, from now on, what the kernel must drop whenever this client gives
    /// up an inode group's lock, when other clients can change what it covers (nothing is
    /// tracked for a client alone in its cluster).
    /// With `kernelInodes` above 0, the kernel is asked to drop the names of the oldest
    /// inodes it holds past that many (`InodeReferences.prune`).
    public func invalidateKernelCaches(through target: any KernelInvalidation, kernelInodes: Int = 0) {
        guard host.several else { return }
        shared.refs.trackKernel()
        let refs = shared.refs
        if kernelInodes > 0 {
            refs.prune(through: target, limit: kernelInodes)
            target.whenIdle { [weak refs] in refs?.pruneOldest(upTo: 256) }
        }
        let timeouts = shared
        cluster.addDropHook { [weak timeouts] range in
            guard let group = range.inodeGroupNumber else { return }
            let (inodes, names) = refs.kernelCached(inGroup: group)
            guard !inodes.isEmpty || !names.isEmpty else { return }
            for ino in inodes { target.invalidateAttributes(ino) }
            // Pages first: a name may have to wait for its directory (see `flush`).
            for ino in inodes { target.invalidateInode(ino) }
            for n in names { target.invalidateEntry(n.parent, n.name) }
            // The lock goes to another client once this returns, and its change may be in
            // the next syscall here: names and pages must be gone by then. A request here
            // holding what a notification needs waits for this very lock; past the bound
            // the notification completes after that request.
            if !target.flush(within: 0.5) { timeouts?.kernelFlushTimeouts.add(1, ordering: .relaxed) }
        }
    }
}
