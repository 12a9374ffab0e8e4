import ScoutFormat
public import ScoutStore

/// Moves the items of a finished log tree into the fs tree and frees the log tree's blocks.
///
/// Items are applied in key order, in chunks that each fit the free space, with a commit after
/// each chunk; so a merge finishes on a nearly full device, where it is most needed. Until the
/// last commit the log tree stays recorded: after a crash the merge starts again from the
/// beginning, and applying an item twice changes nothing: the log tree's versions are newer
/// than anything in the fs tree, and a merged delta's sum takes the delta's seq, which tells
/// `Forest.resolve` the delta is already in it.
public enum LogMerge {
    public struct Outcome: Equatable, Sendable {
        public var items = 0
        public var deletions = 0
        public var freedBlocks = 0
        public var commits = 0
    }

    /// Applies `log`'s items to the fs tree, then destroys `log`. `commit` is called between
    /// chunks; the caller commits after the return (the log tree's blocks are freed by then).
    ///
    /// `keepTombstones`: other clients' unmerged log trees may hold older versions of what this
    /// one deletes, so a deletion stays in the fs tree as a tombstone that hides them (deleting
    /// the fs item would let the older version show again).
    public static func merge(_ log: inout BTree, into store: Store, keepTombstones: Bool = false,
                             commit: () throws -> Void) throws -> Outcome {
        var out = Outcome()
        var from = Key.min
        while true {
            let budget = chunkItems(store)
            var chunk: [Item] = []
            try log.forEach(from: from, in: store) { it in
                chunk.append(it)
                return chunk.count < budget
            }
            for it in chunk { try apply(it, to: store, keepTombstones: keepTombstones, &out) }
            guard chunk.count == budget, let last = chunk.last, let next = last.key.successor else { break }
            try commit()
            out.commits += 1
            from = next
        }
        out.freedBlocks = try log.destroy(in: store)
        return out
    }

    /// Items one chunk may hold: each may copy an fs tree leaf and its path, so about two
    /// blocks apiece out of what is free beyond what commits keep for themselves.
    static func chunkItems(_ store: Store) -> Int {
        let spare = Int(clamping: store.allocatableMetaBlocks) - Int(Store.commitMargin / 2) - 64
        return max(16, min(spare / 2, 50_000))
    }

    static func apply(_ it: Item, to store: Store, keepTombstones: Bool, _ out: inout Outcome) throws {
        if !it.isDelta, let base = try store.lookup(it.key, in: .fs), base.seq > it.seq {
            // Another client's log tree, merged first, held a newer version: it stays.
            out.items += 1
            return
        }
        if it.isDeletion {
            if keepTombstones {
                try store.insert(it, into: .fs, forCommit: true)
            } else {
                try store.delete(it.key, from: .fs, forCommit: true)
            }
            out.deletions += 1
        } else if it.isDelta {
            let base = try store.lookup(it.key, in: .fs)
            if let sum = Forest.resolve([it] + (base.map { [$0] } ?? [])) {
                try store.insert(sum, into: .fs, forCommit: true)
            }
            out.items += 1
        } else {
            try store.insert(it, into: .fs, forCommit: true)
            out.items += 1
        }
    }
}
