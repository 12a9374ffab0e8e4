public import ScoutFormat

/// Disjoint closed key ranges in order, merged when they touch: the parts of a lock range whose
/// every item the item cache holds, so that a key inside one that has no entry is known absent.
///
/// Spans live in chunks of at most `chunkCapacity`: creates in a big directory cache one
/// small span per new name (the negative lookup of its entry), and one flat array made each of
/// them move the whole set — 40,000 names in one directory spent a quarter of the time in
/// memmove. An insert or removal now moves one chunk (a few when it merges across them).
///
/// Not thread-safe; its owner locks.
public struct KeyRangeSet: Equatable, Sendable {
    public struct Span: Equatable, Sendable {
        public var start: Key
        public var end: Key

        public init(start: Key, end: Key) {
            self.start = start
            self.end = end
        }
    }

    static var chunkCapacity: Int { 256 }

    /// No chunk is empty; every span of chunk i ends before every span of chunk i+1 starts.
    private var chunks: [[Span]] = []
    /// The end of each chunk's last span, for the binary search that picks a chunk.
    private var lastEnds: [Key] = []

    public init() {}

    public var isEmpty: Bool { chunks.isEmpty }

    /// Every span, in order (tests and reports).
    public var spans: [Span] { chunks.flatMap { $0 } }

    /// Position of the first span whose end is ≥ `key`: a chunk and an index in it, or
    /// `(chunks.count, 0)` past the last span.
    private func firstEnding(atOrAfter key: Key) -> (chunk: Int, index: Int) {
        var lo = 0
        var hi = lastEnds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if lastEnds[mid] < key { lo = mid + 1 } else { hi = mid }
        }
        guard lo < chunks.count else { return (chunks.count, 0) }
        let chunk = chunks[lo]
        var a = 0
        var b = chunk.count
        while a < b {
            let mid = (a + b) / 2
            if chunk[mid].end < key { a = mid + 1 } else { b = mid }
        }
        return (lo, a)
    }

    private func span(at p: (chunk: Int, index: Int)) -> Span? {
        p.chunk < chunks.count ? chunks[p.chunk][p.index] : nil
    }

    private func position(after p: (chunk: Int, index: Int)) -> (chunk: Int, index: Int) {
        if p.index + 1 < chunks[p.chunk].count { return (p.chunk, p.index + 1) }
        return (p.chunk + 1, 0)
    }

    private func position(before p: (chunk: Int, index: Int)) -> (chunk: Int, index: Int)? {
        if p.index > 0 { return (p.chunk, p.index - 1) }
        guard p.chunk > 0 else { return nil }
        return (p.chunk - 1, chunks[p.chunk - 1].count - 1)
    }

    /// The span holding `key`, if any.
    public func span(containing key: Key) -> Span? {
        guard let s = span(at: firstEnding(atOrAfter: key)), s.start <= key else { return nil }
        return s
    }

    public func contains(_ key: Key) -> Bool { span(containing: key) != nil }

    /// The start of the first span that begins after `key`, if any.
    public func nextStart(after key: Key) -> Key? {
        let p = firstEnding(atOrAfter: key)
        guard let s = span(at: p) else { return nil }
        if s.start > key { return s.start }
        return span(at: position(after: p))?.start
    }

    /// Adds `[start, end]`, merging it with every span it overlaps or touches.
    public mutating func insert(_ start: Key, _ end: Key) {
        precondition(start <= end, "key span \(start)...\(end) is empty")
        // The first span that overlaps or ends right before `start`.
        var first = firstEnding(atOrAfter: start)
        if let before = position(before: first), chunks[before.chunk][before.index].end.successor == start {
            first = before
        }
        var merged = Span(start: start, end: end)
        var count = 0
        var p = first
        while let s = span(at: p), s.start <= end || end.successor == s.start {
            if s.start < merged.start { merged.start = s.start }
            if s.end > merged.end { merged.end = s.end }
            count += 1
            p = position(after: p)
        }
        replace(from: first, count: count, with: [merged])
    }

    /// Removes every key in `[start, end]` from the set.
    public mutating func remove(_ start: Key, _ end: Key) {
        precondition(start <= end, "key span \(start)...\(end) is empty")
        let first = firstEnding(atOrAfter: start)
        var kept: [Span] = []
        var count = 0
        var p = first
        while let s = span(at: p), s.start <= end {
            if s.start < start, let before = start.predecessor { kept.append(Span(start: s.start, end: before)) }
            if s.end > end, let after = end.successor { kept.append(Span(start: after, end: s.end)) }
            count += 1
            p = position(after: p)
        }
        guard count > 0 else { return }
        replace(from: first, count: count, with: kept)
    }

    public mutating func removeAll() {
        chunks = []
        lastEnds = []
    }

    /// Replaces `count` spans from `first` with `spans` (which keep the order), touching only
    /// the chunks those spans are in.
    private mutating func replace(from first: (chunk: Int, index: Int), count: Int, with spans: [Span]) {
        if chunks.isEmpty {
            guard !spans.isEmpty else { return }
            chunks = [spans]
            lastEnds = [spans[spans.count - 1].end]
            split(0)
            return
        }
        // Past the end: the new spans join the last chunk.
        let c = first.chunk < chunks.count ? first.chunk : chunks.count - 1
        let i = first.chunk < chunks.count ? first.index : chunks[c].count
        if i + count <= chunks[c].count {
            chunks[c].replaceSubrange(i..<(i + count), with: spans)
        } else {
            // The run crosses chunks (a merge over a chunk boundary): join those chunks first.
            var last = c
            var joined = chunks[c]
            while i + count > joined.count {
                last += 1
                joined += chunks[last]
            }
            joined.replaceSubrange(i..<(i + count), with: spans)
            chunks.replaceSubrange(c...last, with: [joined])
            lastEnds.removeSubrange((c + 1)...last)
        }
        if chunks[c].isEmpty {
            chunks.remove(at: c)
            lastEnds.remove(at: c)
            return
        }
        lastEnds[c] = chunks[c][chunks[c].count - 1].end
        split(c)
    }

    private mutating func split(_ c: Int) {
        var c = c
        while chunks[c].count > Self.chunkCapacity {
            let half = min(chunks[c].count / 2, Self.chunkCapacity)
            let right = Array(chunks[c][half...])
            chunks[c].removeSubrange(half...)
            lastEnds[c] = chunks[c][half - 1].end
            chunks.insert(right, at: c + 1)
            lastEnds.insert(right[right.count - 1].end, at: c + 1)
            c += 1
        }
    }

    public static func == (a: KeyRangeSet, b: KeyRangeSet) -> Bool { a.spans == b.spans }
}
