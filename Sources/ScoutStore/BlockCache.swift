public import ScoutFormat
import Synchronization

/// A decoded btree block held in memory. A dirty node was allocated in the open transaction
/// and is edited in place under the store's lock until the commit writes it; from then on it
/// is clean and never changes again, so readers on any thread may share it.
public final class CachedNode: @unchecked Sendable {
    // @unchecked: `block` and `dirty` change only while the node is dirty, which only the
    // store's owner (under its lock) can reach; `newer`/`older` only under the cache's mutex.
    public let blkno: UInt64
    /// The commit that wrote (or will write) this block; matches the `seq` of refs to it.
    public let seq: UInt64
    // Unchecked: every btree edit reaches its block through this class property, and the
    // runtime's exclusivity check on each access was 4% of a merge's CPU; only the store's
    // owner edits a dirty node (see above), one edit at a time.
    @exclusivity(unchecked) public internal(set) var block: BTreeBlock
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

    public var ref: BlockRef { BlockRef(blkno: blkno, seq: seq) }
}

/// Clean decoded metadata blocks by block number, a bounded LRU shared by every reader of the
/// store: the store's own trees under its lock, and clients reading committed roots from their
/// own threads. One version per block number: the newest seen, since readers of an older
/// root are the rare ones (they retry from newer roots when they meet a newer block).
final class BlockCache: Sendable {
    private struct State {
        var nodes: [UInt64: CachedNode] = [:]
        /// Oldest node (evicted first) and newest node.
        var oldest: CachedNode?
        var newest: CachedNode?
    }

    private let state = Mutex(State())
    let capacity: Int

    /// `capacity` is the number of 64 KiB blocks kept.
    init(capacity: Int) {
        self.capacity = max(16, capacity)
    }

    // The LRU's strong links make every pair of neighbours a cycle: without breaking them,
    // each closed store left its whole clean cache behind (the fuzzer ran out of memory).
    deinit { removeAll() }

    /// The cached version of `blkno` if it is the one `seq` names.
    func get(_ blkno: UInt64, seq: UInt64) -> CachedNode? {
        state.withLock { s in
            guard let n = s.nodes[blkno], n.seq == seq else { return nil }
            Self.touch(&s, n)
            return n
        }
    }

    /// Adds a clean node (read from the device, or written by a commit), unless a newer
    /// version of the block is cached already.
    func insert(_ n: CachedNode) {
        state.withLock { s in
            if let old = s.nodes[n.blkno] {
                guard old.seq <= n.seq else { return }
                Self.unlink(&s, old)
            }
            s.nodes[n.blkno] = n
            Self.link(&s, n)
            while s.nodes.count > capacity, let victim = s.oldest {
                Self.unlink(&s, victim)
                s.nodes.removeValue(forKey: victim.blkno)
            }
        }
    }

    var count: Int { state.withLock { $0.nodes.count } }

    /// Forgets everything; used when a failed commit leaves memory out of step with the device.
    func removeAll() {
        state.withLock { s in
            s.nodes.removeAll()
            var n = s.oldest
            while let cur = n {
                n = cur.newer
                cur.newer = nil
                cur.older = nil
            }
            s.oldest = nil
            s.newest = nil
        }
    }

    private static func link(_ s: inout State, _ n: CachedNode) {
        n.older = s.newest
        n.newer = nil
        s.newest?.newer = n
        s.newest = n
        if s.oldest == nil { s.oldest = n }
    }

    private static func unlink(_ s: inout State, _ n: CachedNode) {
        if let o = n.older { o.newer = n.newer } else { s.oldest = n.newer }
        if let nw = n.newer { nw.older = n.older } else { s.newest = n.older }
        n.newer = nil
        n.older = nil
    }

    private static func touch(_ s: inout State, _ n: CachedNode) {
        if s.newest === n { return }
        unlink(&s, n)
        link(&s, n)
    }
}

extension BlockCache {
    /// Every cached node by block number (tests).
    var all: [UInt64: CachedNode] { state.withLock { $0.nodes } }
}
