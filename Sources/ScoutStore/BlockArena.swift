#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// Memory for metadata blocks read from the device, one block-sized slot each, aligned for
/// direct I/O so a read lands where the cached leaf will be searched (no copy). Slots come
/// from 2 MiB chunks and go back on a free list when their block leaves every cache, to serve
/// the next read without a page fault. Chunks are kept for the life of the process; the
/// caches that hold slots are bounded, so the arena is too (at the most blocks ever held at
/// once). Transparent huge pages were tried for the chunks and cost more CPU than they saved
/// (the kernel assembling and zeroing 2 MiB pages on cold reads).
public final class BlockArena: BlockBytesRecycler, @unchecked Sendable {
    /// One arena for the process: blocks move between the caches of its stores and the slots
    /// one store's evictions free serve the next store's reads.
    public static let shared = BlockArena()

    public static let slotSize = Layout.metaBlockSize
    public static let chunkSize = 2 << 20

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
        chunks.add(1, ordering: .relaxed)
        let slots = Self.chunkSize / Self.slotSize
        free.withLock { list in
            for i in 1..<slots { list.append(raw + i * Self.slotSize) }
        }
        return BlockBytes(base: raw, count: Self.slotSize, recycler: self)
    }

    /// Takes memory for `slots` blocks from the system now, its pages already in place: a
    /// mount reserves its cache up front, so cold reads while the cache fills pay no page
    /// faults (with zeroing, a fifth of the daemon's CPU per cold block).
    public func reserve(slots: Int) throws {
        let chunkSlots = Self.chunkSize / Self.slotSize
        let want = (slots + chunkSlots - 1) / chunkSlots - chunkCount
        guard want > 0 else { return }
        let bytes = want * Self.chunkSize
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
              raw != MAP_FAILED else {
            throw StoreError(.io, "no memory for \(bytes >> 20) MiB of cached metadata blocks; lower --cache-mib or free memory")
        }
        chunks.add(want, ordering: .relaxed)
        free.withLock { list in
            for i in 0..<(want * chunkSlots) { list.append(raw + i * Self.slotSize) }
        }
    }

    public func recycle(_ base: UnsafeMutableRawPointer) {
        free.withLock { $0.append(base) }
    }
}
