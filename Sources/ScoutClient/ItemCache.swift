public import ScoutFormat
import ScoutStore
import Synchronization

/// Where the item cache reads what it does not hold: the committed items (the forest of the
/// fs tree and log trees), with deletions and deltas resolved.
public protocol ItemSource: AnyObject {
    /// The visible committed item at `key`, or nil.
    func committedItem(_ key: Key) throws -> Item?
    /// Calls `body` with each visible committed item in `[start, end]`, in order, until it
    /// returns false.
    func committedItems(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws
}

public struct ItemCacheError: Error, CustomStringConvertible {
    public var description: String
}

/// A mount's items in memory (the original's `item.c`): what it has read and what its open
/// transaction changed, kept per cluster lock range so that giving up a lock drops exactly what
/// the lock covered and so that threads working under different locks never share a mutex.
///
/// Reads fill the cache from the committed forest in spans, inside which a key with no entry is
/// known absent: a miss caches what it read and the empty keys after it, up to the next
/// committed item (`fill`). Changes stay in the cache as dirty entries until a commit writes them all into
/// the log tree in one pass (`dirtySnapshot`, `committed`): no btree is edited per change.
/// Clean entries are dropped, a lock range at a time, when they pass `cleanByteLimit`.
///
/// Thread-safe. Lock order: a partition's mutex → the dirty-set mutex; shard mutexes are
/// taken alone. Reads from the source happen with no mutex held; what they return is put in only if
/// nothing dropped the range meanwhile (its generation is unchanged).
public final class ItemCache: Sendable {
    /// One cached key and what the cache knows of it.
    struct Entry {
        var seq: UInt64
        /// `.deletion`: known absent (clean) or deleted in the open transaction (dirty).
        /// `.delta`: a dirty sum to add to a committed value the cache does not hold.
        var flags: ItemFlags
        var value: [UInt8]
        var dirty: Bool
        /// For a dirty entry: nothing committed exists under the key, so deleting it again
        /// leaves nothing to write.
        var belowAbsent: Bool
        /// Changes with every write, so a commit marks clean only what it wrote.
        var version: UInt64

        var isNegative: Bool { flags.contains(.deletion) }
        var isDelta: Bool { flags.contains(.delta) }
        /// What the entry costs in memory (a guess good for limits, not an exact count).
        var memoryBytes: Int { 96 + value.count }
        /// What the entry becomes in a log tree leaf.
        var leafBytes: Int { BTreeBlock.leafEntrySize(value.count) }

        func item(_ key: Key) -> Item { Item(key: key, seq: seq, flags: flags, value: value) }
    }

    struct PartitionState {
        var entries = SortedKeyMap<Entry>()
        var spans = KeyRangeSet()
        /// Dirty entries in the range.
        var dirtyCount = 0
        /// Keys as they became dirty, for the snapshot of a range mostly clean: a key may be
        /// here twice or no longer be dirty (the snapshot sorts and checks them, and keeps
        /// the ones still dirty). A set of keys cost every write a hash of its key, a tenth
        /// of a create's CPU.
        var dirtyLog: [Key] = []
        var dirtyBytes = 0
        var cleanBytes = 0
        /// Leaf bytes written into the current log tree under this range: how many of its
        /// leaves a commit may have to copy.
        var logBytes = 0
        /// Changed whenever entries leave without a write (eviction, invalidation, a committed
        /// delta), so a fill read before that is not put in. Drawn from one counter for the
        /// whole cache (`newGeneration`): a fill whose partition was retired meanwhile meets
        /// a new partition for the range, which must not match the generation it read.
        var generation: UInt64 = 0
        /// Taken out of the index: callers that still hold it look the range up again.
        var retired = false
        /// This range's share of `commitBlockEstimate`.
        var estimate = 0
    }

    final class Partition: Sendable {
        let range: LockRange
        let state: Mutex<PartitionState>
        let recentlyUsed = Atomic<Bool>(true)
        init(range: LockRange, generation: UInt64) {
            self.range = range
            var s = PartitionState()
            s.generation = generation
            state = Mutex(s)
        }
    }

    final class Shard: Sendable {
        let map = Mutex([Key: Partition]())
    }

    // nonisolated(unsafe): set once; the source guards its own state (the mount's store is
    // read under the mount's lock).
    nonisolated(unsafe) private let source: any ItemSource
    public let cleanByteLimit: Int
    /// Bytes a log tree block may hold (the store's node capacity).
    let blockCapacity: Int
    private let shards: [Shard]
    private let dirtyRanges = Mutex(Set<Key>())
    private let versions = Atomic<UInt64>(0)
    private let cleanBytes = Atomic<Int>(0)
    private let estimate = Atomic<Int>(0)
    /// The same figures as each partition keeps, summed over all, for a bound on the whole
    /// commit (`commitBlockEstimate`).
    private let dirtyCountTotal = Atomic<Int>(0)
    private let dirtyBytesTotal = Atomic<Int>(0)
    private let logBytesTotal = Atomic<Int>(0)
    /// Partitions whose `logBytes` is above zero: what `logTreeRestarted` must reset.
    private let logged = Mutex<[Partition]>([])
    private let clock = Mutex(0)
    /// Source of every partition's generation (`PartitionState.generation`).
    private let generations = Atomic<UInt64>(0)
    /// Items read from the source, for tests and statistics.
    private let fills = Atomic<Int>(0)

    public init(source: any ItemSource, blockCapacity: Int = BTreeBlock.capacity, cleanByteLimit: Int = 256 << 20) {
        self.source = source
        self.blockCapacity = blockCapacity
        self.cleanByteLimit = cleanByteLimit
        shards = (0..<64).map { _ in Shard() }
    }

    // MARK: partitions

    private func shard(_ start: Key) -> Shard {
        var h = start.first &* 0x9E37_79B9_7F4A_7C15
        h ^= start.second &* 0xC2B2_AE3D_27D4_EB4F
        h ^= UInt64(start.zone) << 56 | UInt64(start.type) << 48
        return shards[Int(truncatingIfNeeded: (h >> 29) & 63)]
    }

    private func range(for key: Key) throws -> LockRange {
        guard let r = Self.partitionRange(for: key) else {
            throw ItemCacheError(description: "key \(key) is in no lock range; the item cache holds only items clients may lock")
        }
        return r
    }

    /// The keys that share `key`'s partition: its lock range, except in the inode indexes,
    /// where one seq's entries are split by inode group. Every operation of a transaction
    /// writes its inodes' index entries at the transaction's seq, so a partition per index
    /// lock range would be one mutex that all of a mount's threads take on every create;
    /// split, threads creating in their own directories (so their own inode groups) share
    /// none. The pieces are contiguous, so walks visit them in key order like lock ranges.
    static func partitionRange(for key: Key) -> LockRange? {
        guard let r = LockRange.covering(key) else { return nil }
        guard key.zone == Zone.inodeIndex else { return r }
        let mask = LockRange.groupSize - 1
        return LockRange(start: Key(zone: key.zone, type: key.type, second: key.second, third: key.third & ~mask),
                         end: Key(zone: key.zone, type: key.type, second: key.second, third: key.third | mask, fourth: .max))
    }

    /// The partitions that hold keys of the lock range `range`: its own, or the pieces of
    /// an index range (found by looking at every partition: index ranges are given up rarely,
    /// when another node reads the index or the lock is shrunk).
    private func partitions(in range: LockRange) -> [Partition] {
        guard range.start.zone == Zone.inodeIndex else { return existingPartition(range).map { [$0] } ?? [] }
        var out: [Partition] = []
        for shard in shards {
            shard.map.withLock { m in
                for (start, p) in m where range.contains(start) { out.append(p) }
            }
        }
        return out
    }

    private func partition(_ range: LockRange) -> Partition {
        let s = shard(range.start)
        return s.map.withLock { m in
            if let p = m[range.start] { return p }
            let p = Partition(range: range, generation: generations.add(1, ordering: .relaxed).newValue)
            m[range.start] = p
            return p
        }
    }

    private func existingPartition(_ range: LockRange) -> Partition? {
        shard(range.start).map.withLock { $0[range.start] }
    }

    /// Runs `body` on the state of the partition for `range`, looking it up again if it was
    /// retired meanwhile.
    private func withState<T>(_ range: LockRange, _ body: (inout PartitionState, Partition) throws -> T) rethrows -> T {
        while true {
            let p = partition(range)
            let r: T? = try p.state.withLock { s in
                if s.retired { return nil }
                return try body(&s, p)
            }
            if let r {
                p.recentlyUsed.store(true, ordering: .relaxed)
                return r
            }
        }
    }

    // MARK: reading

    private enum Probe {
        case hit(Item?)
        /// The partition's generation, and where the uncached gap holding the key ends.
        case miss(UInt64, Key)
        case needsBase(Entry)
    }

    /// The visible item at `key`, reading and caching it on a miss.
    public func lookup(_ key: Key) throws -> Item? {
        let r = try range(for: key)
        while true {
            let probe: Probe = withState(r) { s, _ in
                if let e = s.entries[key] {
                    if e.isDelta { return .needsBase(e) }
                    return .hit(e.isNegative ? nil : e.item(key))
                }
                if s.spans.contains(key) { return .hit(nil) }
                return .miss(s.generation, Self.gapEnd(s, after: key, in: r))
            }
            switch probe {
            case .hit(let it):
                return it
            case .needsBase(let e):
                // A sum over a committed value the cache does not hold: add it to what is
                // committed now, without caching the committed value. Should a commit have
                // written part of the sum meanwhile, the committed value may hold that part
                // too: read both again.
                let base = try source.committedItem(key)
                let unchanged = withState(r) { s, _ in
                    guard let now = s.entries[key] else { return false }
                    return now.dirty && now.version == e.version && now.value == e.value && now.flags == e.flags
                }
                if unchanged { return Self.sum(e.item(key), over: base) }
            case .miss(let generation, let gapEnd):
                try fill(r, from: key, wanted: key, through: gapEnd, generation: generation)
            }
        }
    }

    private enum Segment {
        case items([Item], next: Key?)
        /// From, wanted, gap end, generation.
        case fill(Key, Key, Key, UInt64)
    }

    /// Items handed to the caller per partition visit, so a long walk never holds a mutex long.
    public static let walkBatch = 256
    /// Items read from the source per fill.
    public static let fillBatch = 512

    /// Calls `body` with each visible item in `[start, end]`, in key order, until it returns
    /// false. `body` runs with no mutex held and may call the cache.
    public func forEach(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        var pos = start
        // Most walks want an item or two (the extent holding a block, a name's entry): the
        // first visits hand out few, and later ones more. A visit also stops after looking at
        // four times its batch of entries, since deletions it skips (an overwritten file's
        // split extents, say) cost as much as items it hands out.
        var batch = 16
        while pos <= end {
            let r = try range(for: pos)
            let segEnd = min(end, r.end)
            let want = batch
            let seg: Segment = withState(r) { s, _ in
                if let span = s.spans.span(containing: pos) {
                    let spanEnd = min(segEnd, span.end)
                    var out: [Item] = []
                    var last: Key?
                    var looked = 0
                    s.entries.forEach(from: pos, through: spanEnd) { k, e in
                        last = k
                        looked += 1
                        if !e.isNegative { out.append(e.item(k)) }
                        return out.count < want && looked < 4 * want
                    }
                    if out.count == want || looked == 4 * want, let last { return .items(out, next: last.successor) }
                    return .items(out, next: spanEnd == end ? nil : spanEnd.successor)
                }
                return .fill(pos, segEnd, Self.gapEnd(s, after: pos, in: r), s.generation)
            }
            switch seg {
            case .items(let items, let next):
                batch = min(Self.walkBatch, 4 * batch)
                for it in items where try !body(it) { return }
                guard let next else { return }
                if next <= r.end {
                    pos = next
                } else {
                    // On to the next lock range: skip the ranges that hold nothing, which a
                    // walk over many ranges (an index from seq 0 to the last) mostly meets.
                    guard let on = try nextOccupied(from: next, through: end) else { return }
                    pos = on
                }
            case .fill(let from, let wanted, let gapEnd, let generation):
                try fill(r, from: from, wanted: wanted, through: gapEnd, generation: generation)
            }
        }
    }

    /// The first key in `[from, end]` that may have a visible item: the first committed one,
    /// or the start of a range holding changes, whichever comes first. Ranges with only clean
    /// entries hold nothing the source does not. A walk that locks one range at a time (walk
    /// inodes) asks it where to go next, without a lock: it is a hint, read under no lock,
    /// and what the walk then reads under the lock is the answer.
    public func nextOccupied(from: Key, through end: Key) throws -> Key? {
        // A next range already cached from its start answers for itself.
        if let r = Self.partitionRange(for: from), r.start == from, let p = existingPartition(r),
           p.state.withLock({ s in !s.retired && s.spans.contains(from) }) {
            return from
        }
        var committed: Key?
        try source.committedItems(from: from, through: end) { it in
            committed = it.key
            return false
        }
        let dirty = dirtyRanges.withLock { starts in starts.filter { $0 >= from && $0 <= end }.min() }
        let found: Key
        switch (committed, dirty) {
        case (nil, nil): return nil
        case (let c?, nil): found = c
        case (nil, let d?): found = d
        case (let c?, let d?): found = min(c, d)
        }
        // Start at the beginning of that key's range (nothing lies between), so the span the
        // walk caches there covers the range from its start and the next walk skips the read.
        guard let r = Self.partitionRange(for: found) else { return found }
        return max(from, r.start)
    }

    /// Where the uncached gap that holds `key` (not cached itself) ends: before the next
    /// cached span, or at the range's end.
    private static func gapEnd(_ s: PartitionState, after key: Key, in r: LockRange) -> Key {
        if let next = s.spans.nextStart(after: key), next <= r.end, let before = next.predecessor { return before }
        return r.end
    }

    /// Reads up to `fillBatch` committed items of `[from, wanted]` and caches the span they
    /// cover. The read goes on to the first committed item past `wanted` (or to `gapEnd`, the
    /// end of the uncached gap), without caching it: the span then also covers the empty keys
    /// up to it. So a miss in a directory or inode group that holds few committed items caches
    /// that they are absent all at once, as the original caches the key range of the leaf it
    /// read; creates then never read the forest again for a new name or a new inode.
    private func fill(_ r: LockRange, from: Key, wanted: Key, through gapEnd: Key, generation: UInt64) throws {
        var got: [Item] = []
        var previous: Key?
        var beyond: Key?
        try source.committedItems(from: from, through: gapEnd) { it in
            // Spans are cached on the promise that the source returns keys in order and in
            // bounds; a damaged block that breaks it must not become a cached lie.
            guard it.key >= from, it.key <= gapEnd, previous.map({ $0 < it.key }) ?? true else {
                throw StoreError(.corrupt, "committed items out of order: \(it.key) after \(previous.map { "\($0)" } ?? "the start") while reading \(from) ... \(gapEnd); run `scoutfs check`")
            }
            previous = it.key
            if it.key > wanted {
                beyond = it.key
                return false
            }
            got.append(it)
            return got.count < Self.fillBatch
        }
        fills.add(got.count, ordering: .relaxed)
        let spanEnd: Key
        if got.count == Self.fillBatch {
            spanEnd = got.last!.key
        } else if let beyond {
            // Keys are dense only in their last field at worst: `beyond` > `wanted` >= `from`,
            // so it has a predecessor at or after `wanted`.
            spanEnd = beyond.predecessor!
        } else {
            spanEnd = gapEnd
        }
        withState(r) { s, p in
            guard s.generation == generation else { return }
            var committed: [Key: Item] = [:]
            for it in got {
                let at = s.entries.position(of: it.key)
                if at.found {
                    if s.entries[at: at].isDelta { committed[it.key] = it }
                    continue
                }
                addClean(&s, it.key, Entry(seq: it.seq, flags: [], value: it.value, dirty: false, belowAbsent: false, version: 0), at: at)
            }
            // Sums waiting on a committed value the cache did not hold now have it (or know
            // there is none): they become whole dirty items, which a cached span requires.
            var deltas: [(Key, Entry)] = []
            s.entries.forEach(from: from, through: spanEnd) { k, e in
                if e.isDelta { deltas.append((k, e)) }
                return true
            }
            for (k, e) in deltas {
                var sum = Self.sum(e.item(k), over: committed[k])
                sum.flags = []
                var whole = e
                whole.flags = []
                whole.value = sum.value
                whole.belowAbsent = committed[k] == nil
                setDirty(&s, p, k, whole, at: s.entries.position(of: k))
            }
            s.spans.insert(from, spanEnd)
        }
        trimIfNeeded()
    }

    // MARK: writing

    /// Sets `key` to `value` in the open transaction (`seq`).
    public func insert(_ key: Key, _ value: [UInt8], seq: UInt64) throws {
        // Refused now, not at the commit: a commit that meets it could never succeed.
        guard value.count <= Item.maxValueLength else {
            throw StoreError(.invalid, "item \(key): value of \(value.count) bytes exceeds \(Item.maxValueLength)")
        }
        let r = try range(for: key)
        withState(r) { s, p in
            let at = s.entries.position(of: key)
            let belowAbsent: Bool
            if at.found {
                let old = s.entries[at: at]
                belowAbsent = old.dirty ? old.belowAbsent : old.isNegative
            } else {
                belowAbsent = s.spans.contains(key)
            }
            setDirty(&s, p, key, Entry(seq: seq, flags: [], value: value, dirty: true, belowAbsent: belowAbsent, version: 0), at: at)
        }
    }

    /// Makes `key` invisible in the open transaction.
    public func delete(_ key: Key, seq: UInt64) throws {
        let r = try range(for: key)
        withState(r) { s, p in
            let at = s.entries.position(of: key)
            if at.found {
                let old = s.entries[at: at]
                if old.dirty && old.belowAbsent && !old.isDelta {
                    // Made and unmade in this transaction: nothing to write.
                    replaceWithClean(&s, r, key, Entry(seq: 0, flags: .deletion, value: [], dirty: false, belowAbsent: false, version: 0), at: at)
                    return
                }
                if !old.dirty && old.isNegative { return }
            } else if s.spans.contains(key) {
                return
            }
            setDirty(&s, p, key, Entry(seq: seq, flags: .deletion, value: [], dirty: true, belowAbsent: false, version: 0), at: at)
        }
    }

    /// Adds `fields` (little-endian Int64s) to the value at `key` without reading what is
    /// committed: when the cache does not know it, the sum stays a delta that the forest adds.
    public func addDelta(_ key: Key, _ fields: [Int64], seq: UInt64) throws {
        var w = ByteWriter(capacity: fields.count * 8)
        for f in fields { w.i64(f) }
        let mine = Item(key: key, seq: seq, flags: .delta, value: w.bytes)
        let r = try range(for: key)
        withState(r) { s, p in
            let at = s.entries.position(of: key)
            let old = at.found ? s.entries[at: at] : nil
            var e = Entry(seq: seq, flags: [], value: [], dirty: true, belowAbsent: false, version: 0)
            if let old, old.isDelta {
                var folded = Forest.combine(base: nil, deltas: [mine, old.item(key)])
                folded.flags = .delta
                e.flags = .delta
                e.value = folded.value
            } else if let old {
                // The value is known (an item, or known absent): the sum becomes a whole item.
                // A deletion below leaves nothing to add to.
                e.value = Forest.combine(base: old.isNegative ? nil : old.item(key), deltas: [mine]).value
                e.belowAbsent = old.dirty ? old.belowAbsent : old.isNegative
            } else if s.spans.contains(key) {
                e.value = mine.value
                e.belowAbsent = true
            } else {
                e.flags = .delta
                e.value = mine.value
            }
            setDirty(&s, p, key, e, at: at)
        }
    }

    // MARK: commit

    /// The dirty items of the open transaction, in key order, and what `committed` needs to
    /// mark exactly those clean.
    public struct DirtySnapshot {
        public var items: [Item]
        var versions: [UInt64]
        public var isEmpty: Bool { items.isEmpty }
    }

    /// Fieldwise `a - b` of two sums (little-endian Int64s).
    static func subtract(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: a.count)
        var ra = ByteReader(a, what: "sum")
        var rb = ByteReader(b, what: "sum")
        for _ in 0..<(a.count / 8) {
            let x = (try? ra.i64()) ?? 0
            let y = (try? rb.i64()) ?? 0
            w.i64(x &- y)
        }
        return w.bytes
    }

    public func dirtySnapshot() -> DirtySnapshot {
        let starts = dirtyRanges.withLock { $0 }.sorted()
        var snap = DirtySnapshot(items: [], versions: [])
        for start in starts {
            guard let r = Self.partitionRange(for: start), let p = existingPartition(r) else { continue }
            p.state.withLock { s in
                // The commit taking this snapshot writes these items: deleting one from now on
                // must write a deletion too, even before that commit ends.
                var still: [Key] = []
                still.reserveCapacity(s.dirtyCount)
                func take(_ k: Key, _ e: inout Entry) {
                    snap.items.append(e.item(k))
                    snap.versions.append(e.version)
                    still.append(k)
                    e.belowAbsent = false
                }
                if s.dirtyLog.count * 4 >= s.entries.count {
                    // Mostly dirty (creates fill ranges of their own): one pass over the entries,
                    // already in order, costs less than sorting the dirty keys, and every
                    // operation waits for this switch.
                    s.entries.forEachMutating(from: r.start, through: r.end) { k, e in
                        if e.dirty { take(k, &e) }
                        return true
                    }
                } else {
                    s.dirtyLog.sort()
                    var last: Key?
                    for k in s.dirtyLog where k != last {
                        last = k
                        let at = s.entries.position(of: k)
                        guard at.found, s.entries[at: at].dirty else { continue }
                        take(k, &s.entries[at: at])
                    }
                }
                s.dirtyLog = still
                updateEstimate(&s)
            }
        }
        return snap
    }

    /// The snapshot's items are in the log tree: entries not changed since become clean; sums
    /// the cache never held the base of leave (the forest now holds them). A partition's
    /// mutex is let go every `walkBatch` items: operations go on during this pass, and a
    /// range that every operation writes (an index range: every create's inode lands in the
    /// open transaction's) would otherwise stop them all for the whole of its part.
    public func committed(_ snap: DirtySnapshot) {
        var i = 0
        while i < snap.items.count {
            guard let r = Self.partitionRange(for: snap.items[i].key), let p = existingPartition(r) else { i += 1; continue }
            var j = i
            p.state.withLock { s in
                while j < snap.items.count, j - i < Self.walkBatch, r.contains(snap.items[j].key) {
                    let k = snap.items[j].key
                    let at = s.entries.position(of: k)
                    defer { j += 1 }
                    guard at.found, s.entries[at: at].dirty else { continue }
                    if s.entries[at: at].version != snap.versions[j] {
                        guard s.entries[at: at].isDelta, snap.items[j].isDelta else { continue }
                        // Added to while the commit wrote (operations go on after its switch):
                        // the log tree holds the part the snapshot took, the rest stays.
                        s.entries[at: at].value = Self.subtract(s.entries[at: at].value, snap.items[j].value)
                        // A fill that read the committed value before the commit would add
                        // it to what is left and lose the written part.
                        newGeneration(&s)
                        continue
                    }
                    if s.logBytes == 0 { logged.withLock { $0.append(p) } }
                    s.logBytes += s.entries[at: at].leafBytes
                    logBytesTotal.add(s.entries[at: at].leafBytes, ordering: .relaxed)
                    if s.entries[at: at].isDelta {
                        removeDirty(&s, r, at: at)
                        newGeneration(&s)
                    } else {
                        markClean(&s, r, k, at: at)
                    }
                }
                updateEstimate(&s)
            }
            i = j
        }
        trimIfNeeded()
    }

    /// A dirty delta added to the committed value below it. It is never part of that value,
    /// whatever the seqs say: it is not committed, and no one else changes the item while this
    /// client holds a lock that reads it.
    static func sum(_ delta: Item, over base: Item?) -> Item {
        Forest.combine(base: base.flatMap { $0.isDeletion ? nil : $0 }, deltas: [delta])
    }

    /// The log tree was merged and a new, empty one starts: no range has log leaves to copy.
    /// Only the partitions written into the last log tree are visited: a cache may hold
    /// hundreds of thousands (an index range splits into a partition per seq and inode group),
    /// and this runs after each merge. A partition whose entries were dropped while the log
    /// tree held some of its items goes now: nothing else would visit it again.
    public func logTreeRestarted() {
        logBytesTotal.store(0, ordering: .relaxed)
        for p in logged.withLock({ l in defer { l = [] }; return l }) {
            let emptied = p.state.withLock { s -> Bool in
                s.logBytes = 0
                updateEstimate(&s)
                return retireIfEmpty(&s)
            }
            if emptied { unindex(p) }
        }
    }

    /// `range` holds changes not yet committed: giving up its write lock needs a commit first.
    public func hasDirty(in range: LockRange) -> Bool {
        partitions(in: range).contains { p in p.state.withLock { $0.dirtyCount > 0 } }
    }

    /// Dirty entries in all: commits are due when there are any.
    public var hasDirty: Bool { !dirtyRanges.withLock { $0.isEmpty } }

    /// An upper bound on the log tree blocks the next commit dirties: each range's dirty
    /// entries touch at most the leaves its items fill (a quarter full at least) plus their
    /// parents.
    ///
    /// Summed per range, the bound counts a path of parents for every range; changes spread
    /// over a thousand directories (three ranges each: names, inodes, index) would count
    /// thousands of blocks for a commit that dirties a few dozen, and the dirty limit would
    /// commit every hundred creates. The whole tree's figures bound it too: the same leaves
    /// and parents, counted once.
    public var commitBlockEstimate: Int {
        let e = estimate.load(ordering: .relaxed)
        guard e > 0 else { return 0 }
        let bytes = logBytesTotal.load(ordering: .relaxed) + dirtyBytesTotal.load(ordering: .relaxed)
        let leaves = min(dirtyCountTotal.load(ordering: .relaxed), bytes / max(1, blockCapacity / 4) + 2)
        return min(e, 2 * leaves + 2) + 8
    }

    // MARK: dropping

    /// Drops everything cached under `range` (a lock given up). Dirty entries must have been
    /// committed first: dropping them would lose changes. (Should an index range hold some,
    /// the clean pieces met before the dirty one are dropped: dropping clean entries is always
    /// safe.)
    @discardableResult
    public func invalidate(_ range: LockRange) throws -> Int {
        var dropped = 0
        for p in partitions(in: range) {
            dropped += try p.state.withLock { s in
                if s.dirtyCount > 0 {
                    throw ItemCacheError(description: "lock range \(range) holds \(s.dirtyCount) uncommitted item(s); commit before dropping it")
                }
                let n = s.entries.count
                retire(&s)
                return n
            }
            unindex(p)
        }
        return dropped
    }

    /// Drops clean entries, a lock range at a time (least recently used first, by a clock),
    /// until at most `target` bytes of them remain.
    @discardableResult
    public func shrink(to target: Int) -> Int {
        var all: [Partition] = []
        for shard in shards { all += shard.map.withLock { Array($0.values) } }
        guard !all.isEmpty else { return 0 }
        all.sort { $0.range.start < $1.range.start }
        var dropped = 0
        var hand = clock.withLock { $0 } % all.count
        var visited = 0
        while cleanBytes.load(ordering: .relaxed) > target, visited < 2 * all.count {
            let p = all[hand]
            hand = (hand + 1) % all.count
            visited += 1
            if p.recentlyUsed.exchange(false, ordering: .relaxed) { continue }
            let emptied = p.state.withLock { s -> Bool in
                guard !s.retired else { return false }
                if s.cleanBytes > 0 || !s.spans.isEmpty {
                    dropped += s.entries.removeAll { _, e in !e.dirty }
                    cleanBytes.subtract(s.cleanBytes, ordering: .relaxed)
                    s.cleanBytes = 0
                    s.spans.removeAll()
                    newGeneration(&s)
                }
                // Empty ones go too, whatever emptied them.
                return retireIfEmpty(&s)
            }
            if emptied { unindex(p) }
        }
        clock.withLock { $0 = hand }
        return dropped
    }

    private func trimIfNeeded() {
        if cleanBytes.load(ordering: .relaxed) > cleanByteLimit { shrink(to: cleanByteLimit / 10 * 9) }
    }

    // MARK: statistics

    /// Bytes of clean entries held.
    public var cachedBytes: Int { cleanBytes.load(ordering: .relaxed) }
    /// Items read from the source since the cache was made.
    public var filledItems: Int { fills.load(ordering: .relaxed) }
    /// Lock ranges with anything cached.
    public var rangeCount: Int {
        var n = 0
        for shard in shards { n += shard.map.withLock { m in m.count } }
        return n
    }

    // MARK: bookkeeping (partition mutex held)

    private func newGeneration(_ s: inout PartitionState) {
        s.generation = generations.add(1, ordering: .relaxed).newValue
    }

    /// An empty partition with nothing of it in the log tree holds nothing worth its ~500
    /// bytes: it is retired, and taken out of the index by the caller (`unindex`) once the
    /// partition's mutex is let go. An index range splits into a partition per seq and inode
    /// group, so creates spread over many directories leave hundreds per commit; kept, they
    /// were a million creates' largest unbounded memory.
    private func retireIfEmpty(_ s: inout PartitionState) -> Bool {
        guard !s.retired, s.entries.isEmpty, s.spans.isEmpty, s.logBytes == 0 else { return false }
        retire(&s)
        return true
    }

    private func unindex(_ p: Partition) {
        shard(p.range.start).map.withLock { m in
            if m[p.range.start] === p { m[p.range.start] = nil }
        }
    }

    private func retire(_ s: inout PartitionState) {
        cleanBytes.subtract(s.cleanBytes, ordering: .relaxed)
        estimate.subtract(s.estimate, ordering: .relaxed)
        s = PartitionState()
        s.retired = true
    }

    /// Stores `e` at `key`, whose position `at` is, and counts it clean.
    private func addClean(_ s: inout PartitionState, _ key: Key, _ e: Entry, at: SortedKeyMap<Entry>.Position) {
        if at.found { s.entries[at: at] = e } else { s.entries.insert(key, e, at: at) }
        s.cleanBytes += e.memoryBytes
        cleanBytes.add(e.memoryBytes, ordering: .relaxed)
    }

    /// Takes the accounting of what the entry at `at` holds off the books; whether it was dirty
    /// (false for a position with no entry).
    private func forgetOld(_ s: inout PartitionState, at: SortedKeyMap<Entry>.Position) -> Bool {
        guard at.found else { return false }
        if s.entries[at: at].dirty {
            s.dirtyBytes -= s.entries[at: at].leafBytes
            dirtyBytesTotal.subtract(s.entries[at: at].leafBytes, ordering: .relaxed)
            return true
        }
        let bytes = s.entries[at: at].memoryBytes
        s.cleanBytes -= bytes
        cleanBytes.subtract(bytes, ordering: .relaxed)
        return false
    }

    private func setDirty(_ s: inout PartitionState, _ p: Partition, _ key: Key, _ entry: Entry, at: SortedKeyMap<Entry>.Position) {
        var e = entry
        e.version = versions.add(1, ordering: .relaxed).newValue
        let wasDirty = forgetOld(&s, at: at)
        if at.found { s.entries[at: at] = e } else { s.entries.insert(key, e, at: at) }
        s.dirtyBytes += e.leafBytes
        dirtyBytesTotal.add(e.leafBytes, ordering: .relaxed)
        if !wasDirty {
            s.dirtyLog.append(key)
            s.dirtyCount += 1
            dirtyCountTotal.add(1, ordering: .relaxed)
            if s.dirtyCount == 1 { _ = dirtyRanges.withLock { $0.insert(p.range.start) } }
        }
        updateEstimate(&s)
    }

    private func replaceWithClean(_ s: inout PartitionState, _ r: LockRange, _ key: Key, _ e: Entry, at: SortedKeyMap<Entry>.Position) {
        if forgetOld(&s, at: at) { noLongerDirty(&s, r) }
        if e.isNegative && s.spans.contains(key) {
            // A cached span already says the key is absent: a clean deletion entry would only
            // be one more thing for walks to step over (a key made and unmade in one
            // transaction, a committed deletion; rewriting a file does both at every write).
            if at.found { s.entries.remove(at: at) }
        } else {
            addClean(&s, key, e, at: at)
        }
        updateEstimate(&s)
    }

    /// The dirty entry at `at` is now in the log tree: it stays as a clean entry, changed in
    /// place (a negative one inside a cached span goes, as in `replaceWithClean`).
    private func markClean(_ s: inout PartitionState, _ r: LockRange, _ key: Key, at: SortedKeyMap<Entry>.Position) {
        _ = forgetOld(&s, at: at)
        noLongerDirty(&s, r)
        if s.entries[at: at].isNegative && s.spans.contains(key) {
            s.entries.remove(at: at)
        } else {
            s.entries[at: at].dirty = false
            s.entries[at: at].belowAbsent = false
            let bytes = s.entries[at: at].memoryBytes
            s.cleanBytes += bytes
            cleanBytes.add(bytes, ordering: .relaxed)
        }
    }

    private func removeDirty(_ s: inout PartitionState, _ r: LockRange, at: SortedKeyMap<Entry>.Position) {
        let wasDirty = forgetOld(&s, at: at)
        s.entries.remove(at: at)
        if wasDirty { noLongerDirty(&s, r) }
    }

    private func noLongerDirty(_ s: inout PartitionState, _ r: LockRange) {
        s.dirtyCount -= 1
        dirtyCountTotal.subtract(1, ordering: .relaxed)
        if s.dirtyCount == 0 {
            s.dirtyLog = []
            _ = dirtyRanges.withLock { $0.remove(r.start) }
        }
    }

    private func updateEstimate(_ s: inout PartitionState) {
        let now: Int
        if s.dirtyCount == 0 {
            now = 0
        } else {
            let leaves = min(s.dirtyCount, (s.logBytes + s.dirtyBytes) / max(1, blockCapacity / 4) + 2)
            now = 2 * leaves + 2
        }
        if now != s.estimate {
            estimate.add(now - s.estimate, ordering: .relaxed)
            s.estimate = now
        }
    }
}
