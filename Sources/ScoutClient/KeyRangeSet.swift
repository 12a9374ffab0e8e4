public import ScoutFormat

/// Disjoint closed key ranges in order, merged when they touch: the parts of a lock range whose
/// every item the item cache holds, so that a key inside one that has no entry is known absent.
///
/// Not thread-safe; its owner locks.
public struct KeyRangeSet: Equatable, Sendable {
    public struct Span: Equatable, Sendable {
        public var start: Key
        public var end: Key
    }

    public private(set) var spans: [Span] = []

    public init() {}

    public var isEmpty: Bool { spans.isEmpty }

    /// Index of the first span whose end is ≥ `key`.
    private func firstEnding(atOrAfter key: Key) -> Int {
        var lo = 0
        var hi = spans.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if spans[mid].end < key { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The span holding `key`, if any.
    public func span(containing key: Key) -> Span? {
        let i = firstEnding(atOrAfter: key)
        guard i < spans.count, spans[i].start <= key else { return nil }
        return spans[i]
    }

    public func contains(_ key: Key) -> Bool { span(containing: key) != nil }

    /// The start of the first span that begins after `key`, if any.
    public func nextStart(after key: Key) -> Key? {
        let i = firstEnding(atOrAfter: key)
        guard i < spans.count else { return nil }
        if spans[i].start > key { return spans[i].start }
        return i + 1 < spans.count ? spans[i + 1].start : nil
    }

    /// Adds `[start, end]`, merging it with every span it overlaps or touches.
    public mutating func insert(_ start: Key, _ end: Key) {
        precondition(start <= end, "key span \(start)...\(end) is empty")
        // The first span that overlaps or ends right before `start`.
        var i = firstEnding(atOrAfter: start)
        if i > 0, spans[i - 1].end.successor == start { i -= 1 }
        var merged = Span(start: start, end: end)
        var j = i
        while j < spans.count {
            let s = spans[j]
            let touches = s.start <= end || end.successor == s.start
            guard touches else { break }
            if s.start < merged.start { merged.start = s.start }
            if s.end > merged.end { merged.end = s.end }
            j += 1
        }
        spans.replaceSubrange(i..<j, with: [merged])
    }

    /// Removes every key in `[start, end]` from the set.
    public mutating func remove(_ start: Key, _ end: Key) {
        var out: [Span] = []
        out.reserveCapacity(spans.count + 1)
        for s in spans {
            if s.end < start || s.start > end {
                out.append(s)
                continue
            }
            if s.start < start, let before = start.predecessor { out.append(Span(start: s.start, end: before)) }
            if s.end > end, let after = end.successor { out.append(Span(start: after, end: s.end)) }
        }
        spans = out
    }

    public mutating func removeAll() { spans = [] }
}
