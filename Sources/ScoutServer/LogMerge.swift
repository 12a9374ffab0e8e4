import ScoutFormat
public import ScoutStore

/// Moves the items of a finished log tree into the fs tree and frees the log tree's blocks.
///
/// Runs inside one store transaction: the fs tree edits and the log tree's freed blocks become
/// durable together at the next commit, so a crash before it leaves the log tree recorded and
/// the merge is simply done again.
public enum LogMerge {
    public struct Outcome: Equatable, Sendable {
        public var items = 0
        public var deletions = 0
        public var freedBlocks = 0
    }

    /// Applies `log`'s items to the fs tree (newest wins: the log tree holds newer versions than
    /// anything merged before it), then destroys `log`.
    public static func merge(_ log: inout BTree, into store: Store) throws -> Outcome {
        var out = Outcome()
        let items = try log.items(in: store)
        for it in items {
            if it.isDeletion {
                try store.delete(it.key, from: .fs)
                out.deletions += 1
            } else if it.isDelta {
                let base = try store.lookup(it.key, in: .fs)
                if let sum = Forest.resolve([it] + (base.map { [$0] } ?? [])) {
                    try store.insert(sum, into: .fs)
                }
                out.items += 1
            } else {
                try store.insert(it, into: .fs)
                out.items += 1
            }
        }
        out.freedBlocks = try log.destroy(in: store)
        return out
    }
}
