#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// Memory for metadata blocks read from the device, one block-sized slot each, aligned for
/// direct I/O so a read lands where the cached leaf will be searched. Slots come from 2 MiB
/// chunks that ask for transparent huge pages and go back on a free list when their block
/// leaves every cache: a cold lookup that took fresh malloc memory for each block paid sixteen
/// page faults and the zeroing of 64 KiB for it, a fifth of the daemon's CPU on cold stats.
/// Chunks are kept for the life of the process; the caches that hold slots are bounded, so
/// the arena is too (at the most blocks ever held at once).
public final class BlockArena: BlockBytesRecycler, @unchecked Sendable {
    /// One arena for the process: blocks move between the caches of its stores and the slots
    /// one store's evictions free serve the next store's reads.
    public static let shared = BlockArena()

    public static let slotSize = Layout.metaBlockSize
    static let chunkSize = 2 << 20

    private let free = Mutex<[UnsafeMutableRawPointer]>([])
    private let chunks = Atomic<Int>(0)

    /// Chunks taken from the system so far.
    public var chunkCount: Int { chunks.load(ordering: .relaxed) }
    /// Slots waiting on the free list.
    public var freeSlots: Int { free.withLock { $0.count } }

    /// A slot for one block; its contents are undefined until the caller fills them.
    public func take() throws -> BlockBytes {
        if let p = free.withLock({ $0.popLast() }) {
            return BlockBytes(base: p, count: Self.slotSize, recycler: self)
        }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, Self.chunkSize, Self.chunkSize) == 0, let raw else {
            throw StoreError(.io, "no memory for a \(Self.chunkSize >> 20) MiB chunk of metadata blocks; lower --cache-mib or free memory")
        }
        // Advice only: where huge pages are off, the chunk still saves the copy and is reused.
        _ = madvise(raw, Self.chunkSize, MADV_HUGEPAGE)
        chunks.add(1, ordering: .relaxed)
        let slots = Self.chunkSize / Self.slotSize
        free.withLock { list in
            for i in 1..<slots { list.append(raw + i * Self.slotSize) }
        }
        return BlockBytes(base: raw, count: Self.slotSize, recycler: self)
    }

    public func recycle(_ base: UnsafeMutableRawPointer) {
        free.withLock { $0.append(base) }
    }
}
