/// A run of blocks on one device: free space in an allocator, or a client's pool.
public struct Extent: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var length: UInt64

    public init(start: UInt64, length: UInt64) {
        self.start = start
        self.length = length
    }

    public var end: UInt64 { start + length }
    public var description: String { "\(start)+\(length)" }
}
