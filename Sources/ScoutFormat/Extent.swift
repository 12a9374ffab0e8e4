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

    /// The blocks of `extents` that `removing` does not cover, as extents in block order.
    public static func difference(_ extents: [Extent], removing: [Extent]) -> [Extent] {
        let cut = removing.filter { $0.length > 0 }.sorted { $0.start < $1.start }
        var out: [Extent] = []
        for e in extents.sorted(by: { $0.start < $1.start }) where e.length > 0 {
            var start = e.start
            for c in cut where c.start < e.end && c.end > start {
                if c.start > start { out.append(Extent(start: start, length: c.start - start)) }
                start = c.end
                if start >= e.end { break }
            }
            if start < e.end { out.append(Extent(start: start, length: e.end - start)) }
        }
        return out
    }
}

extension Extent {
    /// A list of extents as records and messages carry it: a u32 count, then start and length
    /// of each (u64s).
    public static func encodeList(_ extents: [Extent], into w: inout ByteWriter) {
        w.u32(UInt32(extents.count))
        for e in extents {
            w.u64(e.start)
            w.u64(e.length)
        }
    }

    /// Decodes what `encodeList` wrote, refusing more than `limit` extents or more than the
    /// bytes present hold, and extents that are empty or wrap around. Errors read
    /// "`context`: …" and name the list `what`.
    public static func decodeList(_ r: inout ByteReader, limit: Int, context: String, what: String) throws(FormatError) -> [Extent] {
        let n = Int(try r.u32())
        guard n <= limit, r.remaining >= 16 * n else {
            throw FormatError("\(context): \(what) of \(n) extents in \(r.remaining) bytes")
        }
        var out: [Extent] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let start = try r.u64()
            let length = try r.u64()
            guard length > 0, start <= UInt64.max - length else {
                throw FormatError("\(context): \(what) extent \(start)+\(length) is impossible")
            }
            out.append(Extent(start: start, length: length))
        }
        return out
    }
}
