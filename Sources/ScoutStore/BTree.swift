public import ScoutFormat

/// One change of a batch (`BTree.apply(sorted:)`).
public enum TreeEdit: Sendable, Equatable {
    case put(Item)
    case remove(Key)

    public var key: Key {
        switch self {
        case .put(let it): it.key
        case .remove(let k): k
        }
    }
}

/// A copy-on-write btree of items in 64 KiB blocks.
///
/// Writers never modify a block that a committed root can reach: the first change to a block in
/// a transaction copies it to a newly allocated block (`Store.dirtyNode`) and frees the old one,
/// which the allocator will not hand out again before this transaction commits. So a crash at any
/// point leaves the last committed root and everything under it intact.
///
/// A parent entry's key is the largest key its child's subtree may hold (the right spine holds
/// `Key.max`), so descending picks the first entry whose key is ≥ the search key. Splits and
/// merges happen bottom-up after each change along the path the change dirtied.
public struct BTree: Sendable {
    public var root: BTreeRoot
    /// Names the tree in error messages ("fs tree", "meta-free tree").
    public let name: String

    public init(root: BTreeRoot, name: String) {
        self.root = root
        self.name = name
    }

    // MARK: reading

    /// The item stored under `key`, if any (deletion items are returned as stored).
    public func lookup(_ key: Key, in store: some NodeSource) throws -> Item? {
        guard !root.isEmpty else { return nil }
        let leaf = try descend(to: key, in: store).leaf
        let i = leaf.block.lowerBound(key)
        guard i < leaf.block.count, leaf.block.key(at: i) == key else { return nil }
        return leaf.block.item(at: i)
    }

    /// Looks up each of `keys` (ascending) and calls `body` with it and what the tree holds
    /// there. A key that falls in the leaf of the one before it is found in that leaf: a
    /// commit's deletions, which come in order and cluster, descend once per leaf, not once
    /// per key.
    public func lookup<S: Sequence<Key>>(sorted keys: S, in store: some NodeSource, _ body: (Key, Item?) throws -> Void) throws {
        var last: Descent?
        var previous: Key?
        for key in keys {
            precondition(previous.map { $0 <= key } ?? true, "BTree.lookup(sorted:) needs ascending keys")
            previous = key
            guard !root.isEmpty else { try body(key, nil); continue }
            // Keys ascend, so the leaf still covers `key` while `key` is within its upper bound.
            if last == nil || last!.upperBound.map({ key > $0 }) == true {
                last = try descend(to: key, in: store)
            }
            let block = last!.leaf.block
            let i = block.lowerBound(key)
            try body(key, i < block.count && block.key(at: i) == key ? block.item(at: i) : nil)
        }
    }

    /// The first item whose key is ≥ `key`.
    public func next(from key: Key, in store: some NodeSource) throws -> Item? {
        var search = key
        while !root.isEmpty {
            let d = try descend(to: search, in: store)
            let i = d.leaf.block.lowerBound(search)
            if i < d.leaf.block.count { return d.leaf.block.item(at: i) }
            // Everything ≤ the leaf's bound has been seen; carry on in the next subtree.
            guard let bound = d.upperBound, let after = bound.successor else { return nil }
            search = after
        }
        return nil
    }

    /// The last item whose key is ≤ `key`.
    public func prev(from key: Key, in store: some NodeSource) throws -> Item? {
        var search = key
        while !root.isEmpty {
            let d = try descend(to: search, in: store)
            let i = d.leaf.block.upperBound(search)
            if i > 0 { return d.leaf.block.item(at: i - 1) }
            guard let below = d.lowerBound else { return nil }
            search = below
        }
        return nil
    }

    /// Calls `body` with each item in `[start, end]` in key order until it returns false.
    public func forEach(from start: Key = .min, through end: Key = .max, in store: some NodeSource, _ body: (Item) throws -> Bool) throws {
        var search = start
        while !root.isEmpty {
            let d = try descend(to: search, in: store)
            let block = d.leaf.block
            var i = block.lowerBound(search)
            while i < block.count {
                let key = block.key(at: i)
                if key > end { return }
                let v = block.value(at: i)
                if try !body(Item(key: key, seq: v.seq, flags: v.flags, value: v.value)) { return }
                i += 1
            }
            guard let bound = d.upperBound, bound < end, let after = bound.successor else { return }
            search = after
        }
    }

    /// Every item in `[start, end]`.
    public func items(from start: Key = .min, through end: Key = .max, in store: some NodeSource) throws -> [Item] {
        var out: [Item] = []
        try forEach(from: start, through: end, in: store) { out.append($0); return true }
        return out
    }

    // MARK: writing

    /// Inserts `item`, replacing any item with the same key.
    public mutating func insert(_ item: Item, in store: some NodeWriter) throws {
        guard item.value.count <= Item.maxValueLength else {
            throw StoreError(.invalid, "\(name) tree: item \(item.key) value of \(item.value.count) bytes exceeds \(Item.maxValueLength)")
        }
        let value = LeafValue(seq: item.seq, flags: item.flags, value: item.value)
        if root.isEmpty {
            let leaf = try store.newNode(level: 0)
            leaf.block.insertLeaf(item.key, value, at: 0)
            root = BTreeRoot(ref: leaf.ref, height: 1)
            return
        }
        var (path, leaf) = try dirtyPath(to: item.key, in: store)
        try put(item.key, value, &path, &leaf, in: store)
    }

    /// Puts one entry into the dirtied `leaf` (replacing one with the same key) and splits what
    /// overflowed on `path`.
    private mutating func put(_ key: Key, _ value: LeafValue, _ path: inout [(node: CachedNode, index: Int)],
                              _ leaf: inout CachedNode, in store: some NodeWriter) throws {
        let i = leaf.block.lowerBound(key)
        if i < leaf.block.count && leaf.block.key(at: i) == key {
            leaf.block.replaceLeaf(at: i, with: value)
        } else {
            leaf.block.insertLeaf(key, value, at: i)
        }
        try splitUpwards(&path, &leaf, changedAt: i, in: store)
    }

    /// Applies `edits` (sorted by key, no key twice) a leaf's share at a time, as much of it
    /// as fits; a put that does not fit goes in alone and splits the leaf as `insert` would,
    /// so puts alone leave the tree block for block as one `insert` each leaves it. A commit
    /// writes thousands of items in key order into a log tree that already holds earlier
    /// commits' items, mostly between them (names go by hash), and a merge moves them on into
    /// the fs tree: one insert or delete at a time descended the tree and shifted the rest of
    /// the leaf for each. A removal of a key the tree does not hold changes nothing, but its
    /// leaf's path is copied like the others': callers that know leave it out. `beforeLeaf`
    /// runs with the tree as it is before each leaf is changed (a room check); `applied`
    /// counts the edits made, so a caller that sees it throw knows which.
    public mutating func apply(sorted edits: ArraySlice<TreeEdit>, in store: some NodeWriter, applied: inout Int,
                               beforeLeaf: (BTree) throws -> Void) throws {
        for n in edits.indices.dropFirst() where !(edits[n - 1].key < edits[n].key) {
            throw StoreError(.invalid, "\(name) tree: edits are not in key order (\(edits[n - 1].key) then \(edits[n].key))")
        }
        for case .put(let it) in edits where it.value.count > Item.maxValueLength {
            throw StoreError(.invalid, "\(name) tree: item \(it.key) value of \(it.value.count) bytes exceeds \(Item.maxValueLength)")
        }
        var i = edits.startIndex
        while i < edits.endIndex {
            try beforeLeaf(self)
            if root.isEmpty {
                if case .put(let it) = edits[i] { try insert(it, in: store) }
                i += 1
                applied += 1
                continue
            }
            var (path, leaf) = try dirtyPath(to: edits[i].key, in: store)
            let bound = path.last.map { $0.node.block.key(at: $0.index) } ?? .max
            var used = leaf.block.usedBytes
            var replaced: [(index: Int, value: LeafValue)] = []
            var added: [(key: Key, value: LeafValue)] = []
            var removed: [Int] = []
            var j = i
            collect: while j < edits.endIndex, edits[j].key <= bound {
                let key = edits[j].key
                let at = leaf.block.lowerBound(key)
                let present = at < leaf.block.count && leaf.block.key(at: at) == key
                switch edits[j] {
                case .remove:
                    if present {
                        removed.append(at)
                        used -= BTreeBlock.leafEntrySize(leaf.block.valueLength(at: at))
                    }
                case .put(let it):
                    let grows = present ? it.value.count - leaf.block.valueLength(at: at) : BTreeBlock.leafEntrySize(it.value.count)
                    // What does not fit goes in alone below, and splits the leaf as it would have.
                    if used + grows > store.nodeCapacity { break collect }
                    used += grows
                    let value = LeafValue(seq: it.seq, flags: it.flags, value: it.value)
                    if present { replaced.append((at, value)) } else { added.append((key, value)) }
                }
                j += 1
            }
            if j == i {
                // A put that does not fit the leaf as it is.
                guard case .put(let it) = edits[i] else { preconditionFailure("a removal always fits") }
                try put(it.key, LeafValue(seq: it.seq, flags: it.flags, value: it.value), &path, &leaf, in: store)
                i += 1
                applied += 1
                continue
            }
            // Replacements and removals by the indexes found before anything moved.
            leaf.block.editLeaves(replacing: replaced, removing: removed, inserting: added)
            if !removed.isEmpty { try joinUpwards(&path, leaf, in: store) }
            applied += j - i
            i = j
        }
    }

    /// Removes the item stored under `key` and returns it; nil (and no block dirtied) if absent.
    @discardableResult
    public mutating func delete(_ key: Key, in store: some NodeWriter) throws -> Item? {
        guard let old = try lookup(key, in: store) else { return nil }
        var (path, leaf) = try dirtyPath(to: key, in: store)
        let i = leaf.block.lowerBound(key)
        leaf.block.removeLeaf(at: i)
        try joinUpwards(&path, leaf, in: store)
        return old
    }

    /// Hands `body` the items of the tree's first leaf in key order, at most `limit`, and
    /// removes those it took, all at once: `body` returns false to stop before an item, and an
    /// item it throws on stays (those before it go, then the error is rethrown). Returns how
    /// many were taken. A merge empties its log tree from the front, and taking items out one
    /// `delete` at a time descended the tree twice for each and shifted the rest of the leaf.
    public mutating func takeFirstLeaf(limit: Int, in store: some NodeWriter, _ body: (Item) throws -> Bool) throws -> Int {
        try takeFirstLeaf(limit: limit, in: store) { items in
            for (n, it) in items.enumerated() {
                do {
                    guard try body(it) else { return (n, nil) }
                } catch {
                    return (n, error)
                }
            }
            return (items.count, nil)
        }
    }

    /// The same with the leaf's items handed over together: `batch` says how many of them,
    /// from the front, it took, and the error that stopped it short, if one did.
    public mutating func takeFirstLeaf(limit: Int, in store: some NodeWriter,
                                       batch body: ([Item]) -> (taken: Int, failure: (any Error)?)) throws -> Int {
        guard !root.isEmpty, limit > 0 else { return 0 }
        var (path, leaf) = try dirtyPath(to: .min, in: store)
        let items = (0..<min(limit, leaf.block.count)).map { leaf.block.item(at: $0) }
        let (taken, failure) = body(items)
        precondition(taken >= 0 && taken <= items.count, "took \(taken) of \(items.count) items")
        if taken > 0 {
            leaf.block.removeLeaves(0..<taken)
            try joinUpwards(&path, leaf, in: store)
        }
        if let failure { throw failure }
        return taken
    }

    /// How many blocks the tree spans. Reads only parent blocks: leaves are counted from their
    /// parents' child lists.
    public func blockCount(in store: some NodeSource) throws -> Int {
        guard !root.isEmpty else { return 0 }
        if root.height == 1 { return 1 }
        var count = 0
        var pending = [(root.ref, root.height - 1)]
        while let (ref, level) = pending.popLast() {
            count += 1
            let n = try store.readNode(ref, level: level, tree: name)
            if level == 1 {
                count += n.block.count
            } else {
                for c in n.block.children { pending.append((c, level - 1)) }
            }
        }
        return count
    }

    /// Frees every block of the tree (committed ones once this transaction commits) and leaves
    /// it empty. Returns how many blocks it freed.
    @discardableResult
    public mutating func destroy(in store: some NodeWriter) throws -> Int {
        guard !root.isEmpty else { return 0 }
        var freed = 0
        var pending = [(root.ref, root.height - 1)]
        while let (ref, level) = pending.popLast() {
            let n = try store.readNode(ref, level: level, tree: name)
            if !n.block.isLeaf {
                for c in n.block.children { pending.append((c, level - 1)) }
            }
            store.freeNode(n)
            freed += 1
        }
        root = .empty
        return freed
    }

    // MARK: internals

    private struct Descent {
        var leaf: CachedNode
        /// The nearest parent key bounding the leaf from above (nil: the leaf is the root).
        var upperBound: Key?
        /// The bound of the leaf's left neighbour subtree (nil: nothing to the left).
        var lowerBound: Key?
    }

    private func descend(to key: Key, in store: some NodeSource) throws -> Descent {
        var node = try store.readNode(root.ref, level: root.height - 1, tree: name)
        var upper: Key? = nil
        var lower: Key? = nil
        while !node.block.isLeaf {
            let i = node.block.lowerBound(key)
            guard i < node.block.count else {
                throw StoreError(.corrupt, "\(name) tree: block \(node.blkno) has no child for key \(key) (right spine bound is not the maximum key); run `scoutfs check`")
            }
            upper = node.block.key(at: i)
            if i > 0 { lower = node.block.key(at: i - 1) }
            node = try store.readNode(node.block.children[i], level: node.block.level - 1, tree: name)
        }
        return Descent(leaf: node, upperBound: upper, lowerBound: lower)
    }

    /// Dirties (copies on write) every block from the root to the leaf for `key`.
    private mutating func dirtyPath(to key: Key, in store: some NodeWriter) throws -> ([(node: CachedNode, index: Int)], CachedNode) {
        var node = try store.dirtyNode(root.ref, level: root.height - 1, tree: name)
        root.ref = node.ref
        var path: [(node: CachedNode, index: Int)] = []
        path.reserveCapacity(Int(root.height))
        while !node.block.isLeaf {
            let i = node.block.lowerBound(key)
            guard i < node.block.count else {
                throw StoreError(.corrupt, "\(name) tree: block \(node.blkno) has no child for key \(key); run `scoutfs check`")
            }
            let child = try store.dirtyNode(node.block.children[i], level: node.block.level - 1, tree: name)
            node.block.children[i] = child.ref
            path.append((node, i))
            node = child
        }
        return (path, node)
    }

    private static func bound(of block: BTreeBlock) -> Key {
        block.lastKey ?? .min
    }

    /// Splits the blocks on the path that overflowed, from `node` (whose entry `changedAt`
    /// the edit inserted or replaced) up. A block overflowed by its last entry keeps all the
    /// others and gives the last one a new block: commits and merges insert in key order, and
    /// halving each block they fill would leave every block they wrote half empty for good
    /// (the tree twice the size, half as much of it in the cache).
    private mutating func splitUpwards(_ path: inout [(node: CachedNode, index: Int)], _ node: inout CachedNode, changedAt: Int,
                                       in store: some NodeWriter) throws {
        var changed = changedAt
        while node.block.usedBytes > store.nodeCapacity {
            let right = try store.newNode(level: node.block.level)
            let last = node.block.count - 1
            let lastBytes = node.block.isLeaf ? BTreeBlock.leafEntrySize(node.block.valueLength(at: last)) : BTreeBlock.parentEntrySize
            let appended = changed == last && last > 0 && node.block.usedBytes - lastBytes <= store.nodeCapacity
            let at = appended ? last : node.block.midpoint()
            right.block = node.block.split(at: at)
            let leftBound = Self.bound(of: node.block)
            if let (parent, i) = path.popLast() {
                let rightBound = parent.block.key(at: i)
                parent.block.setKey(leftBound, at: i)
                parent.block.insertChild(rightBound, right.ref, at: i + 1)
                changed = i + 1
                node = parent
            } else {
                guard root.height < BTreeBlock.maxLevel + 1 else {
                    throw StoreError(.invalid, "\(name) tree: would grow past the maximum height \(BTreeBlock.maxLevel + 1)")
                }
                let newRoot = try store.newNode(level: node.block.level + 1)
                newRoot.block.insertChild(leftBound, node.ref, at: 0)
                newRoot.block.insertChild(.max, right.ref, at: 1)
                root = BTreeRoot(ref: newRoot.ref, height: root.height + 1)
                return
            }
        }
    }

    private mutating func joinUpwards(_ path: inout [(node: CachedNode, index: Int)], _ start: CachedNode, in store: some NodeWriter) throws {
        var node = start
        let lowWater = store.nodeCapacity / 4
        while let (parent, i) = path.popLast() {
            if node.block.count > 0 && node.block.usedBytes >= lowWater { break }
            if parent.block.count < 2 {
                node = parent
                continue
            }
            let li = i + 1 < parent.block.count ? i : i - 1
            let left = try store.dirtyNode(parent.block.children[li], level: node.block.level, tree: name)
            let right = try store.dirtyNode(parent.block.children[li + 1], level: node.block.level, tree: name)
            parent.block.children[li] = left.ref
            parent.block.children[li + 1] = right.ref
            if left.block.usedBytes + right.block.usedBytes <= store.nodeCapacity {
                left.block.append(contentsOf: right.block)
                parent.block.setKey(parent.block.key(at: li + 1), at: li)
                parent.block.removeChild(at: li + 1)
                store.freeNode(right)
            } else {
                // Too much for one block: even the two out instead.
                var both = left.block
                both.append(contentsOf: right.block)
                let rightHalf = both.split(at: both.midpoint())
                left.block = both
                right.block = rightHalf
                parent.block.setKey(Self.bound(of: left.block), at: li)
            }
            node = parent
        }
        // Collapse a root that lost all but one child, or a root leaf that emptied.
        while true {
            let top = try store.readNode(root.ref, level: root.height - 1, tree: name)
            if top.block.isLeaf {
                if top.block.count == 0 {
                    store.freeNode(top)
                    root = .empty
                }
                return
            }
            guard top.block.count == 1 else { return }
            let child = top.block.children[0]
            store.freeNode(top)
            root = BTreeRoot(ref: child, height: root.height - 1)
        }
    }
}
