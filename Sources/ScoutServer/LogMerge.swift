import ScoutFormat
public import ScoutStore

/// Moves the items of a finished log tree into the fs tree and frees the log tree's blocks.
///
/// A tree that fits one commit is applied whole and destroyed, and the caller's commit makes
/// both durable at once. A bigger one (or one on a nearly full device) goes in chunks that
/// each fit the free space, with a commit after each: every item leaves the log tree as it
/// enters the fs tree, so whichever commit lands last, no item is in both (a delta would count
/// twice: the fs tree's sums never hold a delta still in a log tree) and none is in neither.
/// After a crash the merge goes on with what the log tree still holds.
public enum LogMerge {
    public struct Outcome: Equatable, Sendable {
        public var items = 0
        public var deletions = 0
        public var freedBlocks = 0
        public var commits = 0
    }

    /// Applies `log`'s items to the fs tree, then destroys `log`. `commit` is called between
    /// chunks with what is left of the log tree, which the caller records before it commits;
    /// the caller commits after the return (the log tree's blocks are freed by then). If it
    /// throws, `log` is what is left: the caller records it with the items applied so far.
    ///
    /// `keepTombstones`: other clients' unmerged log trees may hold older versions of what this
    /// one deletes, so a deletion stays in the fs tree as a tombstone that hides them (deleting
    /// the fs item would let the older version show again).
    public static func merge(_ log: inout BTree, into store: Store, keepTombstones: Bool = false,
                             commit: (BTree) throws -> Void) throws -> Outcome {
        var out = Outcome()
        var budget = chunkItems(store)
        var whole: [Item] = []
        try log.forEach(in: store) { it in
            whole.append(it)
            return whole.count <= budget
        }
        if whole.count <= budget {
            if let failure = apply(whole, to: store, before: log, keepTombstones: keepTombstones, &out).failure { throw failure }
            out.freedBlocks = try log.destroy(in: store)
            return out
        }
        while try !mergeSome(&log, into: store, keepTombstones: keepTombstones, limit: budget, &out) {
            try commit(log)
            out.commits += 1
            budget = chunkItems(store)
        }
        out.freedBlocks = try log.destroy(in: store)
        return out
    }

    /// Moves up to `limit` items of `log`, in key order, into the fs tree, each leaving the log
    /// tree in the same transaction (room for both edits is checked before either is made), so
    /// a commit at any point has every item in exactly one of the two. True when the log tree
    /// holds no items any more (its blocks are the caller's to destroy). On a throw, `log` is
    /// what is left.
    public static func mergeSome(_ log: inout BTree, into store: Store, keepTombstones: Bool, limit: Int,
                                 _ out: inout Outcome) throws -> Bool {
        var moved = 0
        while moved < limit && !log.root.isEmpty {
            // Room for the log leaf's path before it is copied, then for each fs leaf's edits.
            try store.ensureRoom(editing: [log, store.tree(.fs)])
            // Taking items out never makes the log tree taller: its room is what it is now.
            let before = log
            moved += try log.takeFirstLeaf(limit: limit - moved, in: store) { items in
                apply(items, to: store, before: before, keepTombstones: keepTombstones, &out)
            }
        }
        return log.root.isEmpty
    }

    /// Items one chunk may hold: each may copy an fs tree leaf and its path and a log tree
    /// leaf, so about three blocks apiece out of what is free beyond what commits keep for
    /// themselves.
    static func chunkItems(_ store: Store) -> Int {
        let spare = Int(clamping: store.allocatableMetaBlocks) - Int(Store.commitMargin / 2) - 64
        return max(16, min(spare / 3, 50_000))
    }

    /// Applies `items` (a log tree's, in key order) to the fs tree, a leaf of it at a time.
    /// Returns how many of them, from the front, are in the fs tree (each one's change is
    /// made or needs none), and the error that stopped the rest; `out` counts those.
    static func apply(_ items: [Item], to store: Store, before log: BTree, keepTombstones: Bool,
                      _ out: inout Outcome) -> (taken: Int, failure: (any Error)?) {
        var edits: [TreeEdit] = []
        // The item each edit comes from; the items between two edits need none.
        var from: [Int] = []
        var isDeletion: [Bool] = []
        var failure: (any Error)?
        var considered = items.count
        for (n, it) in items.enumerated() {
            let base: Item?
            do {
                base = try store.lookup(it.key, in: .fs)
            } catch {
                failure = error
                considered = n
                break
            }
            isDeletion.append(it.isDeletion)
            let edit: TreeEdit?
            if !it.isDelta, let base, base.seq > it.seq {
                // Another client's log tree, merged first, held a newer version: it stays.
                edit = nil
            } else if it.isDeletion {
                edit = keepTombstones ? .put(it) : (base == nil ? nil : .remove(it.key))
            } else if it.isDelta {
                // Added to the fs tree's sum whatever its seq (see Forest); a tombstone newer
                // than the delta keeps hiding it.
                edit = Forest.resolve([it], merged: base).map { .put($0) }
            } else {
                edit = .put(it)
            }
            if let edit {
                edits.append(edit)
                from.append(n)
            }
        }
        var applied = 0
        var fs = store.tree(.fs)
        do {
            try fs.apply(sorted: edits[...], in: store, applied: &applied) { now in
                try store.ensureRoom(editing: [log, now])
            }
        } catch {
            failure = error
        }
        store.setTree(.fs, fs)
        let taken = applied < edits.count ? from[applied] : considered
        for n in 0..<taken {
            if isDeletion[n] { out.deletions += 1 } else { out.items += 1 }
        }
        return (taken, failure)
    }
}
