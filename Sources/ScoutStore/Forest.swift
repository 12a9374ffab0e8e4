public import ScoutFormat

/// Reads several btrees as one: the fs tree plus committed log trees. For each key the version
/// with the highest item seq wins; a deletion item hides every older version; delta items add
/// their Int64 fields to the version below them. Ties in seq go to the tree listed first, so
/// callers list newer trees first.
///
/// The fs tree (`mergedIndex`) is special for deltas: a delta still in a log tree is never part
/// of the fs tree's sum, whatever the seqs, because a merge removes from the log tree what it
/// adds to the fs tree in the same commit. (Seqs cannot say it: clients' log trees are merged
/// one at a time, so a merged sum may carry a seq above deltas other clients committed and
/// have not had merged.) A sum in a log tree, written by a client that read the total under
/// its write lock, does include the deltas older than itself.
///
/// Reads that hit a stale block (the roots moved while reading) fetch new roots and retry once;
/// stale again on the same roots is an I/O error, since the device no longer holds what the
/// newest superblock points at.
public struct Forest {
    public var trees: [BTree]
    /// The tree holding merged items (the fs tree), if the forest has one.
    public var mergedIndex: Int?

    /// `mergedIndex`: the position of the fs tree in `trees`, whose sums never hold a delta
    /// found in another tree.
    public init(trees: [BTree], mergedIndex: Int? = nil) {
        self.trees = trees
        self.mergedIndex = mergedIndex
    }

    public init(roots: [BTreeRoot], name: String = "forest") {
        trees = roots.enumerated().map { BTree(root: $1, name: "\(name)[\($0)]") }
    }

    /// The visible item for `key`, or nil if absent or deleted.
    public func lookup(_ key: Key, in store: some NodeSource) throws -> Item? {
        var versions: [Item] = []
        var merged: Item?
        for (i, t) in trees.enumerated() {
            guard let it = try t.lookup(key, in: store) else { continue }
            if i == mergedIndex { merged = it } else { versions.append(it) }
        }
        return Self.resolve(versions, merged: merged)
    }

    /// The first visible item with a key ≥ `key`.
    public func next(from key: Key, in store: some NodeSource) throws -> Item? {
        var search = key
        while true {
            var best: Key?
            var versions: [Item] = []
            var merged: Item?
            for (i, t) in trees.enumerated() {
                guard let it = try t.next(from: search, in: store) else { continue }
                if best == nil || it.key < best! {
                    best = it.key
                    versions = []
                    merged = nil
                } else if it.key != best! {
                    continue
                }
                if i == mergedIndex { merged = it } else { versions.append(it) }
            }
            guard let k = best else { return nil }
            if let visible = Self.resolve(versions, merged: merged) { return visible }
            guard let after = k.successor else { return nil }
            search = after
        }
    }

    /// Calls `body` with each visible item in `[start, end]` in key order until it returns false.
    ///
    /// Walks every tree in batches and merges them, so a long scan costs about one leaf visit
    /// per batch per tree rather than a descent of every tree per item.
    public func forEach(from start: Key = .min, through end: Key = .max, in store: some NodeSource, _ body: (Item) throws -> Bool) throws {
        if trees.count == 1 {
            try trees[0].forEach(from: start, through: end, in: store) { it in it.isDeletion ? true : try body(it) }
            return
        }
        let batch = 128
        var search = start
        while true {
            var lists: [[Item]] = []
            // Items up to `complete` are all present in every list: a tree whose batch filled
            // up may have more keys after its last one.
            var complete = end
            var more = false
            for t in trees {
                var got: [Item] = []
                got.reserveCapacity(batch)
                try t.forEach(from: search, through: end, in: store) { it in
                    got.append(it)
                    return got.count < batch
                }
                if got.count == batch, let last = got.last?.key {
                    more = true
                    if last < complete { complete = last }
                }
                lists.append(got)
            }
            var heads = [Int](repeating: 0, count: lists.count)
            while true {
                var key: Key?
                for (i, l) in lists.enumerated() where heads[i] < l.count {
                    let k = l[heads[i]].key
                    if k <= complete && (key == nil || k < key!) { key = k }
                }
                guard let k = key else { break }
                var versions: [Item] = []
                var merged: Item?
                for i in lists.indices where heads[i] < lists[i].count && lists[i][heads[i]].key == k {
                    if i == mergedIndex { merged = lists[i][heads[i]] } else { versions.append(lists[i][heads[i]]) }
                    heads[i] += 1
                }
                if let visible = Self.resolve(versions, merged: merged), try !body(visible) { return }
            }
            guard more, let after = complete.successor else { return }
            search = after
        }
    }

    /// Every visible item in `[start, end]`, in key order.
    public func items(from start: Key = .min, through end: Key = .max, in store: some NodeSource) throws -> [Item] {
        var out: [Item] = []
        var search = start
        while let it = try next(from: search, in: store), it.key <= end {
            out.append(it)
            guard let after = it.key.successor else { break }
            search = after
        }
        return out
    }

    /// Merges the versions of one key found in different trees: `versions` from log trees
    /// (newer trees first), `merged` from the fs tree.
    public static func resolve(_ versions: [Item], merged: Item? = nil) -> Item? {
        var logVersions = versions
        var merged = merged
        if let m = merged, m.isDelta {
            // The fs tree holds sums, never deltas; one found there counts like a log tree's.
            logVersions.append(m)
            merged = nil
        }
        if logVersions.isEmpty { return merged.flatMap { $0.isDeletion ? nil : $0 } }
        if logVersions.count == 1 && merged == nil {
            let v = logVersions[0]
            if v.isDeletion { return nil }
            if !v.isDelta { return v }
        }
        // Stable sort keeps the caller's tree order among equal seqs.
        let ordered = logVersions.enumerated().sorted {
            $0.element.seq != $1.element.seq ? $0.element.seq > $1.element.seq : $0.offset < $1.offset
        }.map(\.element)
        var deltas: [Item] = []
        var base: Item?
        for v in ordered {
            if v.isDelta {
                deltas.append(v)
            } else {
                base = v
                break
            }
        }
        if let b = base { deltas.removeAll { $0.seq <= b.seq } }
        // The newest log version below the deltas, unless the fs tree's is newer (log trees
        // win ties). Deltas older than a log tree's version are part of it (or were deleted
        // by it); every delta counts on top of the fs tree's sum.
        if let m = merged, base.map({ m.seq > $0.seq }) ?? true {
            base = m
            if !m.isDeletion {
                deltas = ordered.filter(\.isDelta)
            } else {
                deltas = ordered.filter { $0.isDelta && $0.seq > m.seq }
            }
        }
        let below = base.flatMap { $0.isDeletion ? nil : $0 }
        // `deltas` is newest first: a sum over nothing takes the newest delta's seq.
        return deltas.isEmpty ? below : combine(base: below, deltas: deltas)
    }

    /// Adds deltas' little-endian Int64 fields to the base (or to zero), keeping the newest seq.
    public static func combine(base: Item?, deltas: [Item]) -> Item {
        let width = ([base?.value.count ?? 0] + deltas.map(\.value.count)).max()! / 8
        var fields = [Int64](repeating: 0, count: width)
        func add(_ bytes: [UInt8]) {
            var r = ByteReader(bytes, what: "delta item")
            for i in 0..<bytes.count / 8 { fields[i] &+= (try? r.i64()) ?? 0 }
        }
        if let base { add(base.value) }
        for d in deltas { add(d.value) }
        var w = ByteWriter(capacity: width * 8)
        for f in fields { w.i64(f) }
        let top = deltas[0]
        return Item(key: top.key, seq: max(top.seq, base?.seq ?? 0), flags: [], value: w.bytes)
    }
}
