public import ScoutFormat

/// Values by key, in key order: the item cache's index of one lock range's items. Lookups and
/// walks from a key are O(log n); an insert or removal moves at most one chunk of
/// `chunkCapacity` entries, so one directory of a million names stays cheap to edit.
///
/// The map does not lock; its owner does.
public struct SortedKeyMap<Value> {
    public typealias Element = (key: Key, value: Value)

    static var chunkCapacity: Int { 256 }

    /// No chunk is empty; every key of chunk i sorts before every key of chunk i+1.
    private var chunks: [[Element]] = []
    /// The first key of each chunk, for the binary search that picks one.
    private var firsts: [Key] = []
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    /// The chunk that holds `key` or would hold it: the last one starting at or before it
    /// (the first chunk for keys before every chunk).
    private func chunkIndex(for key: Key) -> Int {
        var lo = 0
        var hi = firsts.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if firsts[mid] <= key { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? 0 : lo - 1
    }

    /// Index in `chunk` of the first entry whose key is ≥ `key`.
    private static func lowerBound(_ chunk: [Element], _ key: Key) -> Int {
        var lo = 0
        var hi = chunk.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunk[mid].key < key { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    public subscript(key: Key) -> Value? {
        get {
            let p = position(of: key)
            return p.found ? self[at: p] : nil
        }
        set {
            if let newValue { insert(key, newValue) } else { remove(key) }
        }
    }

    /// Where a key is or would go: found once, then read, changed, filled or emptied without
    /// searching again (an item cache write searched three times: to read the old entry, to
    /// take its accounting off, to store the new one). Any change to the map other than
    /// through this position makes it meaningless.
    public struct Position {
        fileprivate var chunk: Int
        fileprivate var index: Int
        public let found: Bool
    }

    public func position(of key: Key) -> Position {
        guard !chunks.isEmpty else { return Position(chunk: 0, index: 0, found: false) }
        let c = chunkIndex(for: key)
        let i = Self.lowerBound(chunks[c], key)
        return Position(chunk: c, index: i, found: i < chunks[c].count && chunks[c][i].key == key)
    }

    /// The value at a found position, borrowed and changed in place.
    public subscript(at p: Position) -> Value {
        _read {
            precondition(p.found, "SortedKeyMap: no value at a position that was not found")
            yield chunks[p.chunk][p.index].value
        }
        _modify {
            precondition(p.found, "SortedKeyMap: no value at a position that was not found")
            yield &chunks[p.chunk][p.index].value
        }
    }

    /// Adds `key`, which `p` (its position) did not find.
    public mutating func insert(_ key: Key, _ value: Value, at p: Position) {
        precondition(!p.found, "SortedKeyMap: insert at a position that holds a key")
        guard !chunks.isEmpty else {
            chunks = [[(key, value)]]
            firsts = [key]
            count = 1
            return
        }
        let c = p.chunk
        let i = p.index
        chunks[c].insert((key, value), at: i)
        if i == 0 { firsts[c] = key }
        count += 1
        if chunks[c].count > Self.chunkCapacity {
            let half = chunks[c].count / 2
            let right = Array(chunks[c][half...])
            chunks[c].removeSubrange(half...)
            chunks.insert(right, at: c + 1)
            firsts.insert(right[0].key, at: c + 1)
        }
    }

    /// Removes the entry at a found position; returns its value.
    @discardableResult
    public mutating func remove(at p: Position) -> Value {
        precondition(p.found, "SortedKeyMap: remove at a position that was not found")
        let c = p.chunk
        let i = p.index
        let v = chunks[c].remove(at: i).value
        count -= 1
        if chunks[c].isEmpty {
            chunks.remove(at: c)
            firsts.remove(at: c)
        } else if i == 0 {
            firsts[c] = chunks[c][0].key
        }
        return v
    }

    /// Sets the value of `key`, adding it if absent.
    public mutating func insert(_ key: Key, _ value: Value) {
        let p = position(of: key)
        if p.found { self[at: p] = value } else { insert(key, value, at: p) }
    }

    /// Removes `key`; returns its value if it was there.
    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        let p = position(of: key)
        return p.found ? remove(at: p) : nil
    }

    public mutating func removeAll() {
        chunks = []
        firsts = []
        count = 0
    }

    /// Calls `body` with each entry whose key is in `[start, end]`, in key order, until it
    /// returns false.
    public func forEach(from start: Key, through end: Key, _ body: (Key, Value) throws -> Bool) rethrows {
        guard !chunks.isEmpty, start <= end else { return }
        var c = chunkIndex(for: start)
        var i = Self.lowerBound(chunks[c], start)
        while c < chunks.count {
            // Through the buffer, entries reach `body` borrowed: a copy of each (a retain and
            // release of its value) was a good part of listing a large directory.
            let stop = try chunks[c].withUnsafeBufferPointer { chunk in
                while i < chunk.count {
                    if chunk[i].key > end { return true }
                    if try !body(chunk[i].key, chunk[i].value) { return true }
                    i += 1
                }
                return false
            }
            if stop { return }
            c += 1
            i = 0
        }
    }

    /// `forEach` with each value open to change in place.
    public mutating func forEachMutating(from start: Key, through end: Key, _ body: (Key, inout Value) throws -> Bool) rethrows {
        guard !chunks.isEmpty, start <= end else { return }
        var c = chunkIndex(for: start)
        var i = Self.lowerBound(chunks[c], start)
        while c < chunks.count {
            let stop = try chunks[c].withUnsafeMutableBufferPointer { chunk in
                while i < chunk.count {
                    if chunk[i].key > end { return true }
                    if try !body(chunk[i].key, &chunk[i].value) { return true }
                    i += 1
                }
                return false
            }
            if stop { return }
            c += 1
            i = 0
        }
    }

    /// Removes every entry for which `isDropped` says so; returns how many went.
    @discardableResult
    public mutating func removeAll(where isDropped: (Key, Value) -> Bool) -> Int {
        var kept: [[Element]] = []
        var keptFirsts: [Key] = []
        var dropped = 0
        for chunk in chunks {
            let survivors = chunk.filter { !isDropped($0.key, $0.value) }
            dropped += chunk.count - survivors.count
            if !survivors.isEmpty {
                kept.append(survivors)
                keptFirsts.append(survivors[0].key)
            }
        }
        chunks = kept
        firsts = keptFirsts
        count -= dropped
        return dropped
    }
}

extension SortedKeyMap: Sendable where Value: Sendable {}
