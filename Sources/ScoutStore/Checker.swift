public import ScoutFormat

/// Shape of one tree, as `print` and `check` report it.
public struct TreeSummary: Equatable, Sendable {
    public var height: Int = 0
    public var items: UInt64 = 0
    public var blocks: UInt64 = 0
}

/// What `check` found: one line per problem (block, tree, what is wrong), plus the figures it
/// gathered on the way.
public struct CheckReport: Sendable {
    public var problems: [String] = []
    public var trees: [(TreeID, TreeSummary)] = []
    /// The committed log trees of clients (by rid) that the server has not merged yet.
    public var logTrees: [(UInt64, TreeSummary)] = []
    public var metaBlocks: UInt64 = 0
    public var metaFree: UInt64 = 0
    public var metaReferenced: UInt64 = 0
    public var dataBlocks: UInt64 = 0
    public var dataFree: UInt64 = 0
    public var dataReferenced: UInt64 = 0
    /// Data blocks in clients' pools: neither free nor referenced yet.
    public var dataPooled: UInt64 = 0
    /// Metadata blocks in clients' pools (given out for their log trees, not used yet).
    public var metaPooled: UInt64 = 0
    /// Each recorded client's pool, in data blocks.
    public var logTreePools: [UInt64: UInt64] = [:]
    /// Each recorded client's metadata pool, in blocks.
    public var logTreeMetaPools: [UInt64: UInt64] = [:]

    public var isClean: Bool { problems.isEmpty }
}

/// Walks a filesystem offline and verifies it: every block's checksum and identity, key order
/// and parent bounds, tree shape, the two indexes of the free trees, their totals, and that
/// every metadata block and data block is either free or referenced exactly once.
public enum Checker {
    public static func check(meta: any BlockDevice, data: any BlockDevice) -> CheckReport {
        var report = CheckReport()
        let store: Store
        do {
            store = try Store.open(meta: meta, data: data, options: StoreOptions(cacheBlocks: 16))
        } catch {
            report.problems.append("\(error)")
            return report
        }
        var walker = Walker(store: store)
        walker.run()
        return walker.report
    }

    /// Shapes of the superblock's trees, for `print`; problems are collected, not thrown.
    public static func summarize(_ store: Store) -> CheckReport {
        var walker = Walker(store: store)
        walker.walkTrees()
        return walker.report
    }
}

private struct Owned {
    var start: UInt64
    var length: UInt64
    var owner: String
}

private struct Walker {
    let store: Store
    var report = CheckReport()
    var metaOwned: [Owned] = []
    var dataOwned: [Owned] = []
    /// Data extent items of unmerged log trees, newest version per key. They override the fs
    /// tree's items of the same key, as the forest does for readers.
    var logExtents: [Key: (seq: UInt64, value: LeafValue, blkno: UInt64)] = [:]
    /// The highest seq a reachable block was written at: no block can be newer than the
    /// superblock's commit.
    var maxBlockSeq: (seq: UInt64, blkno: UInt64)?
    /// Which tree the walk is in: the items a block holds mean different things.
    enum Kind { case fs, log, other }

    init(store: Store) {
        self.store = store
    }

    mutating func problem(_ s: String) {
        report.problems.append(s)
    }

    mutating func run() {
        let sb = store.superblock
        report.metaBlocks = sb.metaTotalBlocks
        report.dataBlocks = sb.dataTotalBlocks
        walkTrees()
        for b in sb.metaReserve {
            metaOwned.append(Owned(start: b, length: 1, owner: "allocator reserve"))
        }
        metaOwned += checkFreeTree(.metaFree, expectedTotal: sb.metaFreeBlocks)
        dataOwned += checkFreeTree(.dataFree, expectedTotal: sb.dataFreeBlocks)
        report.metaFree = sb.metaFreeBlocks
        report.dataFree = sb.dataFreeBlocks
        if let m = maxBlockSeq, m.seq > sb.seq {
            problem("metadata block \(m.blkno) was written at seq \(m.seq), above the superblock's commit seq \(sb.seq)")
        }
        checkCoverage(metaOwned, from: Layout.metaFirstBlkno, to: sb.metaTotalBlocks, device: "metadata")
        checkCoverage(dataOwned, from: Layout.dataFirstBlkno, to: sb.dataTotalBlocks, device: "data")
    }

    mutating func walkTrees() {
        // Log trees first: their extents decide which of the fs tree's are still visible.
        var records: [(UInt64, LogTreeRecord)] = []
        do {
            try store.tree(.logTrees).forEach(in: store) { it in
                guard it.key.zone == Zone.logTrees else {
                    problem("log-trees tree: unexpected item \(it.key)")
                    return true
                }
                do {
                    records.append((it.key.first, try LogTreeRecord(decoding: it.value)))
                } catch {
                    problem("log-trees tree: item \(it.key): \(error)")
                }
                return true
            }
        } catch {
            problem("\(error)")
        }
        for (rid, rec) in records {
            report.logTreePools[rid] = rec.poolBlocks
            report.logTreeMetaPools[rid] = rec.metaPoolBlocks
            for e in rec.dataPool {
                dataOwned.append(Owned(start: e.start, length: e.length, owner: "data pool of client \(String(rid, radix: 16))"))
                report.dataPooled += e.length
            }
            for e in rec.metaPool {
                metaOwned.append(Owned(start: e.start, length: e.length, owner: "metadata pool of client \(String(rid, radix: 16))"))
                report.metaPooled += e.length
            }
            var summary = TreeSummary()
            summary.height = Int(rec.root.height)
            if !rec.root.isEmpty {
                walk(rec.root.ref, level: rec.root.height - 1, lower: nil, upper: nil, isRoot: true,
                     name: "log tree of client \(String(rid, radix: 16))", kind: .log, summary: &summary)
            }
            report.logTrees.append((rid, summary))
        }
        for t in TreeID.allCases {
            var summary = TreeSummary()
            let root = store.superblock.root(t)
            summary.height = Int(root.height)
            if !root.isEmpty {
                walk(root.ref, level: root.height - 1, lower: nil, upper: nil, isRoot: true,
                     name: t.description, kind: t == .fs ? .fs : .other, summary: &summary)
            }
            report.trees.append((t, summary))
        }
        for (key, e) in logExtents.sorted(by: { $0.key < $1.key }) where !e.value.flags.contains(.deletion) {
            ownExtent(key, e.value, treeName: "log", blkno: e.blkno)
        }
    }

    mutating func walk(_ ref: BlockRef, level: UInt8, lower: Key?, upper: Key?, isRoot: Bool, name: String, kind: Kind, summary: inout TreeSummary) {
        metaOwned.append(Owned(start: ref.blkno, length: 1, owner: "\(name) tree"))
        if ref.seq > (maxBlockSeq?.seq ?? 0) { maxBlockSeq = (ref.seq, ref.blkno) }
        report.metaReferenced += 1
        summary.blocks += 1
        let block: BTreeBlock
        do {
            block = try store.readBlock(ref, tree: name)
        } catch {
            problem("\(error)")
            return
        }
        if block.level != level {
            problem("metadata block \(ref.blkno) in \(name) tree: level \(block.level), expected \(level)")
            return
        }
        if block.count == 0 && !(isRoot && block.isLeaf) {
            problem("metadata block \(ref.blkno) in \(name) tree: empty \(block.isLeaf ? "leaf" : "parent") block")
        }
        if block.count == 0 && isRoot {
            problem("metadata block \(ref.blkno) in \(name) tree: empty root block (an empty tree has no root)")
        }
        if let first = block.keys.first, let lower, !(lower < first) {
            problem("metadata block \(ref.blkno) in \(name) tree: key \(first) is not above its left neighbour's bound \(lower)")
        }
        if let last = block.keys.last, let upper, upper < last {
            problem("metadata block \(ref.blkno) in \(name) tree: key \(last) is above its parent's bound \(upper)")
        }
        if block.usedBytes > BTreeBlock.capacity {
            problem("metadata block \(ref.blkno) in \(name) tree: holds \(block.usedBytes) bytes, more than a block")
        }
        if block.isLeaf {
            summary.items += UInt64(block.count)
            // Only extents are checked item by item; the others' values are not made at all.
            for (i, key) in block.keys.enumerated() where key.zone == Zone.fs && key.type == ItemType.dataExtent {
                checkItem(key, block.value(at: i), kind: kind, blkno: ref.blkno)
            }
            return
        }
        if let last = block.keys.last, last != (upper ?? .max) {
            problem("metadata block \(ref.blkno) in \(name) tree: last child bound \(last) differs from the block's own bound \(upper ?? .max)")
        }
        for i in 0..<block.count {
            walk(block.children[i], level: level - 1, lower: i == 0 ? lower : block.keys[i - 1], upper: block.keys[i],
                 isRoot: false, name: name, kind: kind, summary: &summary)
        }
    }

    mutating func checkItem(_ key: Key, _ v: LeafValue, kind: Kind, blkno: UInt64) {
        guard key.zone == Zone.fs, key.type == ItemType.dataExtent else { return }
        switch kind {
        case .other:
            return
        case .log:
            if let have = logExtents[key], have.seq >= v.seq { return }
            logExtents[key] = (v.seq, v, blkno)
        case .fs:
            // A merge made while other clients had log trees leaves a deletion behind as a
            // tombstone that hides their older versions; it owns no blocks.
            if v.flags.contains(.deletion) { return }
            if logExtents[key] == nil { ownExtent(key, v, treeName: "fs", blkno: blkno) }
        }
    }

    mutating func ownExtent(_ key: Key, _ v: LeafValue, treeName: String, blkno: UInt64) {
        do {
            // No device bound here: blocks beyond the device are reported by the coverage
            // check with the blocks' owner named.
            let e = try ExtentItem(key: key, value: v.value, dataTotalBlocks: .max)
            if e.extent.flags.contains(.offline) { return }
            dataOwned.append(Owned(start: e.extent.blkno, length: e.length, owner: "inode \(key.first) extent ending at block \(key.second)"))
            report.dataReferenced += e.length
        } catch {
            problem("metadata block \(blkno) in \(treeName) tree: \(error)")
        }
    }

    /// Verifies a free tree and returns its extents as owned ranges.
    mutating func checkFreeTree(_ t: TreeID, expectedTotal: UInt64) -> [Owned] {
        var owned: [Owned] = []
        let tree = store.tree(t)
        var byStart: [Extent] = []
        var byLength = Set<Extent>()
        do {
            try tree.forEach(in: store) { item in
                if item.key.zone == Zone.freeExtent && item.key.type == ItemType.freeByStart {
                    byStart.append(Extent(start: item.key.second, length: item.key.third))
                } else if item.key.zone == Zone.freeExtent && item.key.type == ItemType.freeByLength {
                    byLength.insert(Extent(start: item.key.third, length: item.key.second))
                } else {
                    problem("\(t) tree: unexpected item \(item.key)")
                }
                return true
            }
        } catch {
            problem("\(error)")
            return owned
        }
        var total: UInt64 = 0
        for (i, e) in byStart.enumerated() {
            if e.length == 0 { problem("\(t) tree: empty free extent at \(e.start)") }
            if e.start.addingReportingOverflow(e.length).overflow {
                problem("\(t) tree: free extent of \(e.length) blocks at \(e.start) runs past the largest block number")
                continue
            }
            if !byLength.contains(e) { problem("\(t) tree: free extent \(e) is missing from the length index") }
            if i > 0 && !byStart[i - 1].start.addingReportingOverflow(byStart[i - 1].length).overflow && byStart[i - 1].end == e.start {
                problem("\(t) tree: free extents \(byStart[i - 1]) and \(e) touch but were not merged")
            }
            let (sum, overflow) = total.addingReportingOverflow(e.length)
            if overflow { problem("\(t) tree: free extents add up to more blocks than a device can have") }
            total = sum
            owned.append(Owned(start: e.start, length: e.length, owner: "\(t) tree"))
        }
        for e in byLength.subtracting(byStart) {
            problem("\(t) tree: length index holds free extent \(e) that the start index lacks")
        }
        if total != expectedTotal {
            problem("\(t) tree: free extents add up to \(total) blocks, the superblock says \(expectedTotal)")
        }
        return owned
    }

    mutating func checkCoverage(_ owned: [Owned], from first: UInt64, to end: UInt64, device: String) {
        var next = first
        var lastOwner = ""
        for o in owned.sorted(by: { $0.start < $1.start }) {
            let (oEnd, overflow) = o.start.addingReportingOverflow(o.length)
            if o.start < first || overflow || oEnd > end {
                problem("\(device) blocks \(o.start)..\(o.start &+ o.length &- 1) (\(o.owner)) lie outside the usable range \(first)..\(end - 1)")
                continue
            }
            if o.start < next {
                problem("\(device) block \(o.start) is claimed twice: by \(lastOwner) and by \(o.owner)")
            } else if o.start > next {
                problem("\(device) blocks \(next)..\(o.start - 1) are neither free nor referenced (leaked)")
            }
            if o.start + o.length > next {
                next = o.start + o.length
                lastOwner = o.owner
            }
        }
        if next < end {
            problem("\(device) blocks \(next)..\(end - 1) are neither free nor referenced (leaked)")
        }
    }
}
