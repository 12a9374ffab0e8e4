import ScoutFormat

/// Free space of one device as extents in a btree, indexed twice: by start (to merge a freed
/// extent with its neighbours) and by length (to find room for a large allocation).
///
/// Crash safety: blocks freed in a transaction go to `pendingFree` and enter the tree only at
/// commit, so nothing a committed root can reach is handed out again before the commit that
/// stopped referencing it. Blocks allocated and freed within the same transaction were never
/// committed and may be reused at once (the store returns those to `reserve`).
///
/// The metadata allocator copies its own tree on write. To avoid allocating from itself while
/// it edits its tree, it works from `reserve`, a small stack of blocks taken out of the tree
/// beforehand and persisted in the superblock; `busy` marks an edit in progress, during which
/// allocations come only from the reserve.
final class ExtentAllocator {
    enum Kind { case meta, data }

    let kind: Kind
    var tree: BTree
    /// Blocks in the tree (free and committed as free).
    var freeBlocks: UInt64
    var pendingFree: [Extent] = []
    /// What the open transaction has put into the tree from `pendingFree` (sorted, coalesced):
    /// free on disk only once the commit lands, so not to be handed out before then.
    private(set) var freedThisTransaction: [Extent] = []
    /// Metadata allocator only: blocks out of the tree, ready for use. `popLast` takes the lowest.
    var reserve: [UInt64]
    private var busy = false

    /// Keep at least this many reserve blocks before any tree edit: one edit dirties at most a
    /// couple of paths plus splits, far below this for any realistic height.
    static let reserveLowWater = 64
    static let reserveRefill = 160

    init(kind: Kind, root: BTreeRoot, freeBlocks: UInt64, reserve: [UInt64] = []) {
        self.kind = kind
        tree = BTree(root: root, name: kind == .meta ? "meta-free" : "data-free")
        self.freeBlocks = freeBlocks
        self.reserve = reserve.sorted(by: >)
    }

    // MARK: keys

    static func startKey(_ start: UInt64, _ length: UInt64) -> Key {
        Key(zone: Zone.freeExtent, type: ItemType.freeByStart, second: start, third: length)
    }

    static func lengthKey(_ length: UInt64, _ start: UInt64) -> Key {
        Key(zone: Zone.freeExtent, type: ItemType.freeByLength, second: length, third: start)
    }

    private func isExtentItem(_ item: Item?, _ type: UInt8) -> Item? {
        guard let item, item.key.zone == Zone.freeExtent, item.key.type == type else { return nil }
        return item
    }

    /// Counts blocks leaving the free tree; the count came from the superblock, and a count
    /// below what the tree holds means one of them is damaged.
    private func takeFree(_ n: UInt64) throws {
        guard freeBlocks >= n else {
            throw StoreError(.corrupt, "\(kind) free tree holds more blocks than the superblock's free count \(freeBlocks); run `scoutfs check`")
        }
        freeBlocks -= n
    }

    /// The free extent an item of either index describes, checked against the device: a
    /// damaged free tree fails the allocation instead of handing out blocks past the device or
    /// overflowing the arithmetic on them.
    private func freeExtent(_ item: Item, _ store: Store) throws -> Extent {
        let ext = item.key.type == ItemType.freeByStart
            ? Extent(start: item.key.second, length: item.key.third) : Extent(start: item.key.third, length: item.key.second)
        let total = kind == .meta ? store.superblock.metaTotalBlocks : store.superblock.dataTotalBlocks
        let first = kind == .meta ? Layout.metaFirstBlkno : Layout.dataFirstBlkno
        let (end, overflow) = ext.start.addingReportingOverflow(ext.length)
        guard ext.length > 0, ext.start >= first, !overflow, end <= total else {
            throw StoreError(.corrupt, "\(kind) free tree: free extent of \(ext.length) blocks at \(ext.start) lies outside the device's blocks \(first)..<\(total); run `scoutfs check`")
        }
        return ext
    }

    // MARK: metadata blocks

    /// One metadata block for the open transaction.
    func allocMeta(_ store: Store) throws -> UInt64 {
        precondition(kind == .meta)
        if !busy && reserve.count < Self.reserveLowWater {
            try refillReserve(store)
        }
        guard let b = reserve.popLast() else {
            throw StoreError(.noSpace, "metadata device is full: no free 64 KiB blocks left; free space or grow the device")
        }
        return b
    }

    /// Moves up to `reserveRefill` blocks from the lowest usable free extent into the reserve.
    /// Blocks freed in the open transaction are not usable: they enter the tree during the
    /// commit, and the previous committed root still references them until that commit lands.
    func refillReserve(_ store: Store) throws {
        try editing(store, refill: false) { t in
            var search = Self.startKey(0, 0)
            while let item = isExtentItem(try t.next(from: search, in: store), ItemType.freeByStart) {
                let ext = try freeExtent(item, store)
                let want = UInt64(max(0, Self.reserveRefill - reserve.count))
                guard want > 0 else { return }
                if let piece = Self.firstGap(in: ext, avoiding: freedThisTransaction, upTo: want) {
                    try carve(piece, from: ext, &t, store)
                    reserve.append(contentsOf: stride(from: piece.end - 1, through: piece.start, by: -1))
                    return
                }
                guard let after = item.key.successor else { return }
                search = after
            }
        }
    }

    /// Up to `count` contiguous metadata blocks for a client's pool: the smallest free extent
    /// that holds them all, else the front of the largest. A pool's record holds a bounded
    /// number of extents, so pools come from whole runs; the single blocks that copy-on-write
    /// frees scatter over the device are left to the reserve (which takes the lowest first)
    /// and to the server's own trees. Blocks freed in the open transaction are skipped.
    func allocMetaRun(_ count: UInt64, _ store: Store) throws -> Extent? {
        precondition(kind == .meta && count > 0)
        var got: Extent?
        try editing(store) { t in got = try bestFit(count, &t, store) }
        return got
    }

    /// Takes up to `count` blocks out of the tree: the smallest free extent that holds them
    /// all, else the largest, less what the open transaction freed.
    private func bestFit(_ count: UInt64, _ t: inout BTree, _ store: Store) throws -> Extent? {
        var found = isExtentItem(try t.next(from: Self.lengthKey(count, 0), in: store), ItemType.freeByLength)
        if found == nil {
            found = isExtentItem(try t.prev(from: Self.lengthKey(.max, .max), in: store), ItemType.freeByLength)
        }
        guard let item = found else { return nil }
        let ext = try freeExtent(item, store)
        guard let piece = Self.firstGap(in: ext, avoiding: freedThisTransaction, upTo: count) else { return nil }
        try carve(piece, from: ext, &t, store)
        return piece
    }

    /// Takes `piece` of the free extent `ext` out of the tree; the rest of `ext` stays free.
    private func carve(_ piece: Extent, from ext: Extent, _ t: inout BTree, _ store: Store) throws {
        try removeItems(ext, &t, store)
        if piece.start > ext.start {
            try insertItems(Extent(start: ext.start, length: piece.start - ext.start), &t, store)
        }
        if piece.end < ext.end {
            try insertItems(Extent(start: piece.end, length: ext.end - piece.end), &t, store)
        }
        try takeFree(piece.length)
    }

    /// The first run of at most `limit` blocks of `ext` outside every extent of `avoid` (sorted,
    /// non-overlapping).
    static func firstGap(in ext: Extent, avoiding avoid: [Extent], upTo limit: UInt64) -> Extent? {
        var cursor = ext.start
        // Skip avoided extents that end before this one starts.
        var lo = 0
        var hi = avoid.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if avoid[mid].end <= ext.start { lo = mid + 1 } else { hi = mid }
        }
        var i = lo
        while cursor < ext.end {
            if i == avoid.count || avoid[i].start >= ext.end {
                return Extent(start: cursor, length: min(limit, ext.end - cursor))
            }
            if avoid[i].start > cursor {
                return Extent(start: cursor, length: min(limit, avoid[i].start - cursor))
            }
            cursor = max(cursor, avoid[i].end)
            i += 1
        }
        return nil
    }

    // MARK: data extents

    /// Up to `count` contiguous blocks: the smallest free extent that holds them all, or the
    /// front of the largest one when none does (the caller asks again for the rest).
    func allocData(_ count: UInt64, _ store: Store) throws -> Extent {
        precondition(kind == .data && count > 0)
        var got: Extent?
        try editing(store) { t in got = try bestFit(count, &t, store) }
        guard let got else {
            throw StoreError(.noSpace, "data device is full: no free 4 KiB blocks left; free space or grow the device")
        }
        return got
    }

    /// Up to `count` contiguous free blocks inside the first of `zones` (zone numbers, each
    /// zone `zoneBlocks` blocks from block `number * zoneBlocks`) that holds any: a free extent
    /// that reaches into a zone is taken from where the zone starts, and may run on past its
    /// end. nil, nothing taken, when none of the zones has a free block.
    func allocData(_ count: UInt64, inZones zones: [UInt64], zoneBlocks: UInt64, _ store: Store) throws -> Extent? {
        precondition(kind == .data && count > 0 && zoneBlocks > 0)
        var got: Extent?
        try editing(store) { t in
            for z in zones {
                let (zoneStart, overflow) = z.multipliedReportingOverflow(by: zoneBlocks)
                if overflow { break }
                let zoneEnd = zoneStart.addingReportingOverflow(zoneBlocks).overflow ? .max : zoneStart + zoneBlocks
                var candidates: [Extent] = []
                // A free extent that starts before the zone may reach into it.
                if let before = isExtentItem(try t.prev(from: Self.startKey(zoneStart, 0), in: store), ItemType.freeByStart) {
                    let b = try freeExtent(before, store)
                    if b.end > zoneStart { candidates.append(b) }
                }
                var from = Self.startKey(zoneStart, 0)
                while true {
                    for ext in candidates {
                        let inZone = Extent(start: max(ext.start, zoneStart), length: ext.end - max(ext.start, zoneStart))
                        if let piece = Self.firstGap(in: inZone, avoiding: freedThisTransaction, upTo: count), piece.start < zoneEnd {
                            try carve(piece, from: ext, &t, store)
                            got = piece
                            return
                        }
                    }
                    guard let item = isExtentItem(try t.next(from: from, in: store), ItemType.freeByStart) else { break }
                    let e = try freeExtent(item, store)
                    guard e.start < zoneEnd else { break }
                    candidates = [e]
                    // Free extents never overlap nor touch: the next one starts past this end.
                    from = Self.startKey(e.end, 0)
                }
            }
        }
        return got
    }

    // MARK: freeing

    /// Adds a free extent to the tree, merging it with free neighbours. An overlap with an extent
    /// already free is a double free: the caller's bookkeeping is broken, so it is an error.
    func insertFree(_ freed: Extent, _ store: Store) throws {
        guard freed.length > 0 else { return }
        try editing(store) { t in
            var ext = freed
            if let before = isExtentItem(try t.prev(from: Self.startKey(ext.start, 0), in: store), ItemType.freeByStart) {
                let b = try freeExtent(before, store)
                if b.end > ext.start { throw doubleFree(ext, b) }
                if b.end == ext.start {
                    try removeItems(b, &t, store)
                    ext = Extent(start: b.start, length: b.length + ext.length)
                }
            }
            if let after = isExtentItem(try t.next(from: Self.startKey(freed.start, 0), in: store), ItemType.freeByStart) {
                let a = try freeExtent(after, store)
                if a.start < freed.end { throw doubleFree(freed, a) }
                if a.start == freed.end {
                    try removeItems(a, &t, store)
                    ext.length += a.length
                }
            }
            try insertItems(ext, &t, store)
            freeBlocks += freed.length
        }
    }

    /// Moves pending frees into the tree. Edits free committed blocks of the tree itself, which
    /// land in `pendingFree` again; the store loops until nothing is pending.
    func applyPendingFrees(_ store: Store) throws {
        let pending = Self.coalesce(pendingFree)
        pendingFree = []
        freedThisTransaction = Self.coalesce(freedThisTransaction + pending)
        for e in pending { try insertFree(e, store) }
    }

    /// Called once a commit has landed: what it freed is now free for everyone.
    func transactionCommitted() {
        freedThisTransaction = []
    }

    static func coalesce(_ list: [Extent]) -> [Extent] {
        var out: [Extent] = []
        for e in list.sorted(by: { $0.start < $1.start }) {
            if let last = out.last, last.end == e.start {
                out[out.count - 1].length += e.length
            } else {
                out.append(e)
            }
        }
        return out
    }

    /// Returns reserve blocks beyond what the superblock can hold to the tree.
    func trimReserve(_ store: Store) throws {
        while reserve.count > SuperBlock.maxReserve {
            let extra = reserve.count - SuperBlock.maxReserve
            let give = Array(reserve.prefix(extra))
            reserve.removeFirst(extra)
            for e in Self.coalesce(give.map { Extent(start: $0, length: 1) }) {
                try insertFree(e, store)
            }
        }
    }

    // MARK: helpers

    private func editing(_ store: Store, refill: Bool = true, _ body: (inout BTree) throws -> Void) throws {
        precondition(!busy, "\(tree.name) allocator re-entered while editing its tree")
        if kind == .meta && refill && reserve.count < Self.reserveLowWater {
            try refillReserve(store)
        }
        busy = true
        defer { busy = false }
        var t = tree
        defer { tree = t }
        try body(&t)
    }

    private func insertItems(_ e: Extent, _ t: inout BTree, _ store: Store) throws {
        try t.insert(Item(key: Self.startKey(e.start, e.length), seq: store.txnSeq), in: store)
        try t.insert(Item(key: Self.lengthKey(e.length, e.start), seq: store.txnSeq), in: store)
    }

    private func removeItems(_ e: Extent, _ t: inout BTree, _ store: Store) throws {
        let a = try t.delete(Self.startKey(e.start, e.length), in: store)
        let b = try t.delete(Self.lengthKey(e.length, e.start), in: store)
        if a == nil || b == nil {
            throw StoreError(.corrupt, "\(tree.name) tree: free extent \(e) is missing one of its two index items; run `scoutfs check`")
        }
    }

    private func doubleFree(_ freed: Extent, _ existing: Extent) -> StoreError {
        StoreError(.corrupt, "\(tree.name) tree: freeing \(freed) overlaps free extent \(existing) (double free)")
    }
}
