public import ScoutFormat
public import SystemPackage

/// The two inode indexes archive agents walk instead of the namespace.
public enum SeqIndex: String, Sendable, CaseIterable {
    case metaSeq = "meta_seq"
    case dataSeq = "data_seq"

    var itemType: UInt8 { self == .metaSeq ? ItemType.metaSeq : ItemType.dataSeq }
}

extension FSCore {
    /// Moves an inode's entry in one index from `old` to the open transaction's seq. An inode
    /// changed again in the same transaction keeps its entry, so a busy inode costs one move per
    /// commit, not per change.
    func moveIndex(_ type: UInt8, _ ino: UInt64, from old: UInt64) throws {
        guard old != seq else { return }
        if old != 0 { try remove(Keys.seqIndex(type, old, ino)) }
        try put(Keys.seqIndex(type, seq, ino), [])
    }

    /// Records a change of contents or size: the inode's data seq becomes the transaction's.
    /// Only regular files are in the data_seq index, as in the original (its agents walk it
    /// for file data); other inodes keep the seq in their record alone.
    func markDataChanged(_ ino: UInt64, _ rec: inout InodeRecord) throws {
        if rec.isRegular { try moveIndex(ItemType.dataSeq, ino, from: rec.dataSeq) }
        rec.dataSeq = seq
    }

    func removeIndexItems(_ ino: UInt64, _ rec: InodeRecord) throws {
        if rec.metaSeq != 0 { try remove(Keys.seqIndex(ItemType.metaSeq, rec.metaSeq, ino)) }
        if rec.dataSeq != 0 && rec.isRegular { try remove(Keys.seqIndex(ItemType.dataSeq, rec.dataSeq, ino)) }
    }

    /// The highest seq no open transaction of any client can still write: entries at or below
    /// it are final, so an agent that has walked up to it never sees an entry appear below it
    /// later. (Entries other clients wrote at or below it and have not committed yet are made
    /// visible by the walk's read locks, which make them commit.)
    var stableSeq: UInt64 {
        let floor = items.uncommittedSeqFloor
        return min(seq - 1, items.server.stableSeq, floor == .max ? .max : floor - 1)
    }

    /// The entries of one index lock range from `from` through `end` (both inside it), at most
    /// `limit`, under the caller's read lock on the range.
    func walkRange(_ index: SeqIndex, from: Key, through end: Key, limit: Int) throws -> [IndexPosition] {
        var out: [IndexPosition] = []
        try scan(from, end) { it in
            out.append(IndexPosition(seq: it.key.second, ino: it.key.third))
            return out.count < limit
        }
        return out
    }
}

extension Filesystem {
    /// Inodes whose meta or data seq lies between two positions, in index order, at most
    /// `limit`; never past the stable seq. Continue from the last entry's `next`.
    ///
    /// One index lock range at a time, each under a read lock (which makes every client
    /// commit what it wrote there, as the original's walk does); ranges with nothing in them
    /// are skipped by a look at the next occupied key.
    public func walkInodes(_ index: SeqIndex, from first: IndexPosition, through last: IndexPosition,
                           limit: Int = 1024) throws(Errno) -> [IndexPosition] {
        // A node knows the server's stable seq as of its last grant or commit: a walk asks
        // for the newest, or it would stop short of what others committed since.
        do { try host.refreshServerFigures() } catch { throw errno(of: error) }
        let stop = min(last, IndexPosition(seq: withCore { $0.stableSeq }, ino: .max))
        guard first <= stop, limit > 0 else { return [] }
        let stopKey = Keys.seqIndex(index.itemType, stop.seq, stop.ino)
        var pos = Keys.seqIndex(index.itemType, first.seq, first.ino)
        var out: [IndexPosition] = []
        while out.count < limit {
            let range = LockRange.index(index.itemType, seq: pos.second)
            var plan = LockPlan()
            plan.add(range, .read)
            let from = pos
            let want = limit - out.count
            out += try locked(.reads, commit: false, plan) { c in
                try c.walkRange(index, from: from, through: min(stopKey, range.end), limit: want)
            }
            guard out.count < limit, range.end < stopKey, let next = range.end.successor else { break }
            let hint: Key?? = try runOperation(held: HeldLocks()) { c in try c.items.cache.nextOccupied(from: next, through: stopKey) }
            guard let on = hint ?? nil else { break }
            pos = on
        }
        return out
    }

    /// The highest seq whose index entries can no longer change (see `walkInodes`).
    public var stableSeq: UInt64 {
        try? host.refreshServerFigures()
        return withCore { $0.stableSeq }
    }
}
