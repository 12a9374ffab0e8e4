public import ScoutFormat
public import ScoutStore

/// The items a mount reads and writes. Writes go into this client's own **log tree**; reads see
/// the forest of that log tree over the fs tree, newest version winning, so a change is visible
/// the moment it is made and durable once the server records the log tree at a commit. The
/// server later merges the log tree into the fs tree and the client starts a new one.
///
/// Deleting an item the fs tree holds writes a tombstone into the log tree; deleting one that
/// only the log tree holds just removes it there.
///
/// Not thread-safe: the filesystem serializes calls with its own lock.
public final class ClientItems {
    public let store: Store
    public let server: any ServerLink
    /// This mount's id among the server's clients.
    public let rid: UInt64
    private var log: BTree
    /// Items written into the log tree since it was started (rewrites count again).
    private var logWrites: UInt64 = 0
    /// A merge of this log tree stopped part way (see `addDelta`); cleared with a new log tree.
    private var partlyMerged = false
    /// Inode numbers granted by the server and not yet used.
    private var inodes: Range<UInt64> = 0..<0
    /// How many inode numbers to ask for at a time: one inode group, so one mount's files
    /// share lock ranges and different mounts' files do not.
    public static let inodeBatch: UInt64 = 1024

    public init(store: Store, server: any ServerLink, rid: UInt64) {
        self.store = store
        self.server = server
        self.rid = rid
        log = BTree(root: .empty, name: "log tree of client \(String(rid, radix: 16))")
    }

    /// The seq items written now carry.
    public var seq: UInt64 { server.transactionSeq }

    private var forest: Forest { Forest(trees: [log, store.tree(.fs)]) }

    // MARK: reading

    /// The visible item for `key`, or nil.
    public func lookup(_ key: Key) throws -> Item? {
        if log.root.isEmpty {
            guard let it = try store.tree(.fs).lookup(key, in: store), !it.isDeletion else { return nil }
            return it
        }
        return try forest.lookup(key, in: store)
    }

    /// Calls `body` with each visible item in `[start, end]` in key order until it returns false.
    public func forEach(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        let trees = log.root.isEmpty ? [store.tree(.fs)] : [log, store.tree(.fs)]
        try Forest(trees: trees).forEach(from: start, through: end, in: store, body)
    }

    // MARK: writing

    public func insert(_ key: Key, _ value: [UInt8]) throws {
        try log.insert(Item(key: key, seq: seq, value: value), in: store)
        logWrites += 1
    }

    /// Makes `key` invisible.
    public func delete(_ key: Key) throws {
        if let below = try store.tree(.fs).lookup(key, in: store), !below.isDeletion {
            try log.insert(Item(key: key, seq: seq, flags: .deletion, value: []), in: store)
            logWrites += 1
        } else {
            try log.delete(key, in: store)
        }
    }

    /// Adds `fields` (little-endian Int64s) to the item at `key` without reading the forest, so
    /// many writers can change one total at once. The log tree keeps one version per key, so a
    /// second change in it folds into the first.
    public func addDelta(_ key: Key, _ fields: [Int64]) throws {
        var w = ByteWriter(capacity: fields.count * 8)
        for f in fields { w.i64(f) }
        let mine = Item(key: key, seq: seq, flags: .delta, value: w.bytes)
        var next = mine
        if let have = try log.lookup(key, in: store) {
            if have.isDelta, partlyMerged, let below = try store.tree(.fs).lookup(key, in: store), below.seq >= have.seq {
                // A merge cut short already added `have` into the fs tree's sum (its seq says
                // so). Folding into it would make the next merge add it again: the new delta
                // replaces it instead, and counts once.
                next.seq = seq
                try log.insert(next, in: store)
                logWrites += 1
                return
            }
            if have.isDeletion {
                // Nothing below the tombstone counts any more: the sum starts again from zero.
                next.flags = []
            } else if have.isDelta {
                next = Forest.combine(base: nil, deltas: [mine, have])
                next.flags = .delta
            } else {
                next = Forest.combine(base: have, deltas: [mine])
            }
            next.seq = seq
        }
        try log.insert(next, in: store)
        logWrites += 1
    }

    /// An inode number never used before.
    public func allocateInode() throws -> UInt64 {
        if inodes.isEmpty { inodes = try server.allocateInodes(Self.inodeBatch) }
        return inodes.popFirst()!
    }

    // MARK: transactions

    /// The log tree holds items (a merge would move them into the fs tree).
    public var hasLogItems: Bool { !log.root.isEmpty }

    /// True when the open transaction holds anything a commit would write.
    public var hasChanges: Bool { store.hasChanges }

    /// Blocks the open transaction has dirtied.
    public var dirtyBlocks: Int { store.dirtyBlocks }

    /// Makes every change so far durable: the server records the log tree and commits. If the
    /// server merged the tree (asked to with `merge`, or because it grew big), a new empty one
    /// starts.
    @discardableResult
    public func commit(merge: Bool = false) throws -> UInt64 {
        guard store.hasChanges || (merge && !log.root.isEmpty) else { return server.committedSeq }
        let reply = try server.commitLogTree(rid: rid, LogTreeRecord(root: log.root, items: logWrites), merge: merge)
        if reply.merged {
            log = BTree(root: .empty, name: log.name)
            logWrites = 0
            partlyMerged = false
        } else if reply.partlyMerged {
            partlyMerged = true
        }
        return reply.seq
    }

    /// Items written since the log tree started; tests and `status` read it.
    public var logTreeWrites: UInt64 { logWrites }
}
