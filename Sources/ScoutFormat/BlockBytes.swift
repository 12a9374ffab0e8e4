#if canImport(Glibc)
import Glibc
#endif

/// Takes back the memory of `BlockBytes` it handed out, to hand it out again.
public protocol BlockBytesRecycler: AnyObject, Sendable {
    func recycle(_ base: UnsafeMutableRawPointer)
}

/// Memory holding one block's bytes, never changed once filled: a leaf read from the device
/// is searched where it lies, so the read lands here and nothing copies it. Shared by every
/// copy of the block that has not been edited; its memory goes back to where it came from
/// (a recycler, else malloc) when the last of them lets go.
public final class BlockBytes: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let count: Int
    private let recycler: (any BlockBytesRecycler)?

    /// Memory `recycler` handed out, filled by the caller before any block shares it.
    public init(base: UnsafeMutableRawPointer, count: Int, recycler: any BlockBytesRecycler) {
        self.base = base
        self.count = count
        self.recycler = recycler
    }

    /// A copy of `bytes` in memory of its own.
    public init(copying bytes: UnsafeRawBufferPointer) {
        count = bytes.count
        base = malloc(Swift.max(1, count))!
        if count > 0 { base.copyMemory(from: bytes.baseAddress!, byteCount: count) }
        recycler = nil
    }

    /// `count` bytes of memory of its own, filled by the caller before any block shares them.
    public init(uninitializedCount count: Int) {
        self.count = count
        base = malloc(Swift.max(1, count))!
        recycler = nil
    }

    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    deinit {
        if let recycler { recycler.recycle(base) } else { free(base) }
    }
}
