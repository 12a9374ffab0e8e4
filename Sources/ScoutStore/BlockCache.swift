import ScoutFormat

/// A decoded btree block held in memory. Dirty nodes were allocated in the open transaction and
/// are pinned until the commit writes them; clean nodes sit on the cache's LRU.
final class CachedNode {
    let blkno: UInt64
    /// The commit that wrote (or will write) this block; matches the `seq` of refs to it.
    let seq: UInt64
    var block: BTreeBlock
    var dirty: Bool
    // LRU links, used only while clean. Both are strong: the cache unlinks a node before it
    // drops it, and `removeAll` breaks every link, so no cycle outlives the list. (A weak link
    // would cost a side-table access on every cache hit.)
    var newer: CachedNode?
    var older: CachedNode?

    init(blkno: UInt64, seq: UInt64, block: BTreeBlock, dirty: Bool) {
        self.blkno = blkno
        self.seq = seq
        self.block = block
        self.dirty = dirty
    }

    var ref: BlockRef { BlockRef(blkno: blkno, seq: seq) }
}

/// Decoded metadata blocks by block number: every dirty block of the open transaction plus a
/// bounded LRU of clean ones. Bounding only the clean set keeps a transaction's working set whole
/// (it must be written at commit) while reads of huge trees cannot grow memory without limit.
final class BlockCache {
    fileprivate var nodes: [UInt64: CachedNode] = [:]
    /// Oldest clean node (evicted first) and newest clean node.
    private var oldest: CachedNode?
    private var newest: CachedNode?
    private(set) var cleanCount = 0
    private(set) var dirtyCount = 0
    let capacity: Int

    /// `capacity` is the number of clean 64 KiB blocks kept.
    init(capacity: Int) {
        self.capacity = max(16, capacity)
    }

    // The LRU's strong links make every pair of neighbours a cycle: without breaking them,
    // each closed store left its whole clean cache behind (the fuzzer ran out of memory).
    deinit { removeAll() }

    func get(_ blkno: UInt64) -> CachedNode? {
        guard let n = nodes[blkno] else { return nil }
        if !n.dirty { touch(n) }
        return n
    }

    /// Adds a node read from the device.
    func insertClean(_ n: CachedNode) {
        remove(n.blkno)
        n.dirty = false
        nodes[n.blkno] = n
        link(n)
        cleanCount += 1
        evict()
    }

    /// Adds a node allocated in the open transaction (replacing whatever the blkno held before).
    func insertDirty(_ n: CachedNode) {
        remove(n.blkno)
        n.dirty = true
        nodes[n.blkno] = n
        dirtyCount += 1
    }

    func remove(_ blkno: UInt64) {
        guard let n = nodes.removeValue(forKey: blkno) else { return }
        if n.dirty {
            dirtyCount -= 1
        } else {
            unlink(n)
            cleanCount -= 1
        }
    }

    /// Every dirty node, in block-number order (the order the commit writes them).
    func dirtyNodes() -> [CachedNode] {
        nodes.values.filter(\.dirty).sorted { $0.blkno < $1.blkno }
    }

    /// After a commit wrote them, dirty nodes become ordinary clean cache entries.
    func markClean(_ list: [CachedNode]) {
        for n in list where n.dirty {
            n.dirty = false
            dirtyCount -= 1
            link(n)
            cleanCount += 1
        }
        evict()
    }

    /// Forgets everything; used when a failed commit leaves memory out of step with the device.
    func removeAll() {
        nodes.removeAll()
        var n = oldest
        while let cur = n {
            n = cur.newer
            cur.newer = nil
            cur.older = nil
        }
        oldest = nil
        newest = nil
        cleanCount = 0
        dirtyCount = 0
    }

    private func link(_ n: CachedNode) {
        n.older = newest
        n.newer = nil
        newest?.newer = n
        newest = n
        if oldest == nil { oldest = n }
    }

    private func unlink(_ n: CachedNode) {
        if let o = n.older { o.newer = n.newer } else { oldest = n.newer }
        if let nw = n.newer { nw.older = n.older } else { newest = n.older }
        n.newer = nil
        n.older = nil
    }

    private func touch(_ n: CachedNode) {
        if newest === n { return }
        unlink(n)
        link(n)
    }

    private func evict() {
        while cleanCount > capacity, let victim = oldest {
            unlink(victim)
            nodes.removeValue(forKey: victim.blkno)
            cleanCount -= 1
        }
    }
}

extension BlockCache {
    /// Every cached node by block number (tests inspect which blocks are dirty).
    var all: [UInt64: CachedNode] { nodes }
}
