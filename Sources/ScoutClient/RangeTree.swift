public import ScoutFormat

/// Non-overlapping key ranges in key order, each with a value: the client's index of its locks.
/// Finding what overlaps a range and walking from a key are O(log n); inserts and removals move
/// at most one chunk of `chunkCapacity` entries, so the tree stays cheap with 100 000 locks.
///
/// The tree does not lock; its owner does.
public struct RangeTree<Value> {
    public struct Entry {
        public var range: LockRange
        public var value: Value
    }

    static var chunkCapacity: Int { 128 }

    /// Sorted by range start; no chunk is empty; chunk i's entries all start before chunk i+1's.
    private var chunks: [[Entry]] = []
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    /// The chunk holding the last entry that starts at or before `key`, or `nil` when every
    /// entry starts after it.
    private func chunkIndex(atOrBefore key: Key) -> Int? {
        var lo = 0
        var hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunks[mid][0].range.start <= key { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? nil : lo - 1
    }

    /// Index in `chunk` of the first entry starting after `key`.
    private static func upperBound(_ chunk: [Entry], _ key: Key) -> Int {
        var lo = 0
        var hi = chunk.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunk[mid].range.start <= key { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// An entry overlapping `range`, if any. Ranges do not overlap each other, so ends are in
    /// the same order as starts: only the last entry starting at or before `range.end` can reach
    /// back into `range`.
    public func overlapping(_ range: LockRange) -> Entry? {
        guard let c = chunkIndex(atOrBefore: range.end) else { return nil }
        let chunk = chunks[c]
        let i = Self.upperBound(chunk, range.end) - 1
        let e = chunk[i]
        return e.range.end >= range.start ? e : nil
    }

    /// The entry whose range contains `key`.
    public func containing(_ key: Key) -> Entry? {
        overlapping(LockRange(start: key, end: key))
    }

    /// Adds a range that overlaps nothing in the tree; the caller checked with `overlapping`.
    public mutating func insert(_ range: LockRange, _ value: Value) {
        let entry = Entry(range: range, value: value)
        count += 1
        guard let c = chunkIndex(atOrBefore: range.start) else {
            if chunks.isEmpty {
                chunks.append([entry])
            } else {
                chunks[0].insert(entry, at: 0)
                splitIfFull(0)
            }
            return
        }
        let i = Self.upperBound(chunks[c], range.start)
        precondition(i == 0 || chunks[c][i - 1].range.end < range.start,
                     "range tree: \(range) overlaps \(chunks[c][i - 1].range)")
        chunks[c].insert(entry, at: i)
        splitIfFull(c)
    }

    private mutating func splitIfFull(_ c: Int) {
        guard chunks[c].count > Self.chunkCapacity else { return }
        let half = chunks[c].count / 2
        let tail = Array(chunks[c][half...])
        chunks[c].removeSubrange(half...)
        chunks.insert(tail, at: c + 1)
    }

    /// Removes the entry that starts at `start` and returns its value.
    @discardableResult
    public mutating func remove(start: Key) -> Value? {
        guard let c = chunkIndex(atOrBefore: start) else { return nil }
        let i = Self.upperBound(chunks[c], start) - 1
        guard chunks[c][i].range.start == start else { return nil }
        let v = chunks[c].remove(at: i).value
        count -= 1
        if chunks[c].isEmpty {
            chunks.remove(at: c)
        } else if c + 1 < chunks.count, chunks[c].count + chunks[c + 1].count <= Self.chunkCapacity / 2 {
            chunks[c].append(contentsOf: chunks[c + 1])
            chunks.remove(at: c + 1)
        }
        return v
    }

    /// Up to `limit` entries whose ranges start at or after `key`, in key order.
    public func entries(from key: Key, limit: Int) -> [Entry] {
        var out: [Entry] = []
        guard limit > 0 else { return out }
        var c: Int
        var i: Int
        if let ci = chunkIndex(atOrBefore: key) {
            c = ci
            i = Self.upperBound(chunks[ci], key)
            if i > 0, chunks[ci][i - 1].range.start == key { i -= 1 }
        } else {
            c = 0
            i = 0
        }
        while c < chunks.count {
            while i < chunks[c].count {
                out.append(chunks[c][i])
                if out.count == limit { return out }
                i += 1
            }
            c += 1
            i = 0
        }
        return out
    }
}

extension RangeTree: Sendable where Value: Sendable {}
extension RangeTree.Entry: Sendable where Value: Sendable {}
