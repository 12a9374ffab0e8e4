/// The root of a btree as stored in the superblock or in another item: the root block and the
/// tree's height (0 = empty tree, 1 = a single leaf).
public struct BTreeRoot: Hashable, Sendable {
    public var ref: BlockRef
    public var height: UInt8

    public static let encodedSize = 24
    public static let empty = BTreeRoot(ref: .none, height: 0)

    public init(ref: BlockRef, height: UInt8) {
        self.ref = ref
        self.height = height
    }

    public var isEmpty: Bool { height == 0 }

    public func encode(into w: inout ByteWriter) {
        ref.encode(into: &w)
        w.u8(height)
        w.zeros(7)
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        ref = try BlockRef(decoding: &r)
        height = try r.u8()
        try r.skip(7)
        if (height == 0) != ref.isNone {
            throw FormatError("btree root \(ref) with height \(height): height and block disagree")
        }
    }
}

/// One leaf entry's payload (the key is kept in a parallel array for fast binary search).
public struct LeafValue: Hashable, Sendable {
    public var seq: UInt64
    public var flags: ItemFlags
    public var value: [UInt8]

    public init(seq: UInt64, flags: ItemFlags, value: [UInt8]) {
        self.seq = seq
        self.flags = flags
        self.value = value
    }
}

/// A btree block decoded into arrays. Layout after the 32-byte header:
/// ```
/// level u8, pad[3], nr u32
/// leaf   (level 0): nr × { key[27], seq u64, flags u8, value_len u16, value }
/// parent (level>0): nr × { key[27], child blkno u64, child seq u64 }
/// ```
/// A parent entry's key is the largest key its child's subtree may hold; the last entry of each
/// level on the right spine holds `Key.max`, so every key has a child to descend into.
///
/// A leaf read from the device stays in its encoded form: the block's bytes where the read put
/// them (`BlockBytes`, no copy) and where each entry begins. A cold lookup reads one or two
/// items of a leaf of hundreds, and decoding every key (48 bytes each in memory) and payload
/// of the leaf was most of the daemon's CPU per cold block, much of it the kernel handing out
/// and zeroing the pages those arrays took. Keys are compared where they lie (their encoding
/// sorts as the keys do: big-endian fields in key order) and a key or value is made only when
/// asked for. The first edit turns the leaf into arrays of keys and values, the form edits
/// work on.
/// Writes a packed leaf's entries for `BTreeBlock.editLeaves`: new entries as they come, and
/// untouched old ones in runs, each run copied once when something else comes between. A
/// struct of its own: nested functions capturing the writer paid an exclusivity check at
/// every access.
private struct PackedLeafWriter {
    let entries: UnsafeRawPointer
    var w = RawWriter(UnsafeMutableRawBufferPointer(start: nil, count: 0))
    var offsets: [UInt32] = []
    /// Old entries waiting to be copied: `[runStart, runEnd)` of `entries`.
    var runStart = 0
    var runEnd = 0

    init(entries: UnsafeRawPointer, capacity: Int) {
        self.entries = entries
        offsets.reserveCapacity(capacity)
    }

    mutating func copyRun() {
        if runEnd > runStart { w.raw(UnsafeRawBufferPointer(start: entries + runStart, count: runEnd - runStart)) }
        runStart = runEnd
    }

    mutating func write(_ key: Key, _ v: LeafValue) {
        copyRun()
        offsets.append(UInt32(w.offset))
        key.encode(into: &w)
        w.u64(v.seq)
        w.u8(v.flags.rawValue)
        w.u16(UInt16(v.value.count))
        w.raw(v.value)
    }

    /// The old entry ending at `end` is left out (removed, or written anew).
    mutating func skip(to end: Int) {
        copyRun()
        runStart = end
        runEnd = end
    }

    /// The old entry `[start, end)` goes in as it is.
    mutating func keep(from start: Int, to end: Int) {
        if runEnd != start {
            copyRun()
            runStart = start
        }
        offsets.append(UInt32(w.offset + start - runStart))
        runEnd = end
    }
}

public struct BTreeBlock: Sendable {
    public var level: UInt8
    /// Keys of parents and of edited leaves; empty in a packed leaf.
    private var keyList: [Key]
    /// Leaf payloads of an edited leaf, parallel to `keyList`; empty in parents and packed leaves.
    private var edited: [LeafValue]
    /// A packed leaf: where each entry begins, from `packedStart` in `packed`, which holds the
    /// block as it was read (or a copy of its entries).
    private var offsets: [UInt32]
    private var packed: BlockBytes?
    private var packedStart: Int
    private var isPacked: Bool { packed != nil }
    /// Child references, parallel to the keys; empty in leaves.
    public var children: [BlockRef]
    /// Bytes the entries take when encoded (excluding the fixed block prefix).
    public private(set) var usedBytes: Int

    public static let prefixSize = BlockHeader.encodedSize + 8
    public static let capacity = Layout.metaBlockSize - prefixSize
    public static let leafEntryOverhead = Key.encodedSize + 8 + 1 + 2
    public static let parentEntrySize = Key.encodedSize + BlockRef.encodedSize
    public static let maxLevel: UInt8 = 20

    // Where a leaf entry's fields lie after its key.
    private static let seqOffset = Key.encodedSize
    private static let flagsOffset = Key.encodedSize + 8
    private static let lengthOffset = Key.encodedSize + 9
    private static let valueOffset = Key.encodedSize + 11

    public init(level: UInt8) {
        self.level = level
        keyList = []
        edited = []
        offsets = []
        packed = nil
        packedStart = 0
        children = []
        usedBytes = 0
    }

    public var isLeaf: Bool { level == 0 }
    public var count: Int { isPacked ? offsets.count : keyList.count }

    public static func leafEntrySize(_ valueLength: Int) -> Int { leafEntryOverhead + valueLength }

    // MARK: keys

    /// Entry `i`'s key.
    @inline(__always)
    public func key(at i: Int) -> Key {
        guard isPacked else { return keyList[i] }
        return withPackedEntries { Self.rawKey($0(i)) }
    }

    /// Every key in order (a packed leaf makes them all: for checks and tests, not lookups).
    public var keys: [Key] {
        isPacked ? (0..<count).map(key(at:)) : keyList
    }

    public var lastKey: Key? { count == 0 ? nil : key(at: count - 1) }

    /// Sets a parent entry's key (the bound of its child's subtree).
    public mutating func setKey(_ key: Key, at i: Int) {
        precondition(!isLeaf, "leaf keys change only by inserting and removing entries")
        keyList[i] = key
    }

    /// Index of the first entry whose key is ≥ `key`.
    public func lowerBound(_ key: Key) -> Int {
        guard isPacked else { return Self.firstIndex(keyList.count) { !(keyList[$0] < key) } }
        return withPackedEntries { entry in Self.firstIndex(offsets.count) { Self.compare(entry($0), key) >= 0 } }
    }

    /// Index of the first entry whose key is > `key`.
    public func upperBound(_ key: Key) -> Int {
        guard isPacked else { return Self.firstIndex(keyList.count) { key < keyList[$0] } }
        return withPackedEntries { entry in Self.firstIndex(offsets.count) { Self.compare(entry($0), key) > 0 } }
    }

    /// The first of `count` indexes where `isAtOrPast` holds, for a test that is false, then
    /// true (a binary search).
    @inline(__always)
    private static func firstIndex(_ count: Int, where isAtOrPast: (Int) -> Bool) -> Int {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if isAtOrPast(mid) { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }

    /// Lends `body` where each entry of a packed leaf begins.
    @inline(__always)
    private func withPackedEntries<T>(_ body: ((Int) -> UnsafeRawPointer) -> T) -> T {
        let base = UnsafeRawPointer(packed!.base + packedStart)
        return offsets.withUnsafeBufferPointer { offs in body { base + Int(offs[$0]) } }
    }

    @inline(__always)
    private static func rawKey(_ p: UnsafeRawPointer) -> Key {
        Key(zone: p.load(as: UInt8.self),
            first: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 1, as: UInt64.self)),
            type: p.load(fromByteOffset: 9, as: UInt8.self),
            second: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 10, as: UInt64.self)),
            third: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 18, as: UInt64.self)),
            fourth: p.load(fromByteOffset: 26, as: UInt8.self))
    }

    /// The encoded key at `p` against `key`: negative, zero or positive as it sorts before, with
    /// or after it. Field by field, stopping at the first that differs, as `Key.<` does.
    @inline(__always)
    private static func compare(_ p: UnsafeRawPointer, _ key: Key) -> Int {
        let zone = p.load(as: UInt8.self)
        if zone != key.zone { return zone < key.zone ? -1 : 1 }
        let first = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 1, as: UInt64.self))
        if first != key.first { return first < key.first ? -1 : 1 }
        let type = p.load(fromByteOffset: 9, as: UInt8.self)
        if type != key.type { return type < key.type ? -1 : 1 }
        let second = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 10, as: UInt64.self))
        if second != key.second { return second < key.second ? -1 : 1 }
        let third = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 18, as: UInt64.self))
        if third != key.third { return third < key.third ? -1 : 1 }
        let fourth = p.load(fromByteOffset: 26, as: UInt8.self)
        return fourth == key.fourth ? 0 : (fourth < key.fourth ? -1 : 1)
    }

    // MARK: reading leaf payloads

    /// Entry `i`'s payload.
    public func value(at i: Int) -> LeafValue {
        guard isPacked else { return edited[i] }
        return withPackedEntries { entry in
            let p = entry(i)
            let len = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: Self.lengthOffset, as: UInt16.self)))
            return LeafValue(seq: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: Self.seqOffset, as: UInt64.self)),
                             flags: ItemFlags(rawValue: p.load(fromByteOffset: Self.flagsOffset, as: UInt8.self)),
                             value: Array(UnsafeRawBufferPointer(start: p + Self.valueOffset, count: len)))
        }
    }

    /// Entry `i` as an item.
    public func item(at i: Int) -> Item {
        let v = value(at: i)
        return Item(key: key(at: i), seq: v.seq, flags: v.flags, value: v.value)
    }

    /// The length of entry `i`'s value, without making it.
    public func valueLength(at i: Int) -> Int {
        guard isPacked else { return edited[i].value.count }
        return withPackedEntries { Int(UInt16(littleEndian: $0(i).loadUnaligned(fromByteOffset: Self.lengthOffset, as: UInt16.self))) }
    }

    /// Every leaf payload, parallel to `keys`; empty in parents.
    public var values: [LeafValue] {
        isPacked ? (0..<count).map(value(at:)) : edited
    }

    /// Edits work on whole keys and values: a packed leaf makes them all once, at its first edit.
    private mutating func unpack() {
        guard isPacked else { return }
        let (k, v) = (keys, values)
        keyList = k
        edited = v
        offsets = []
        packed = nil
        packedStart = 0
    }

    // MARK: editing (callers keep keys sorted; these only maintain the byte count)

    public mutating func insertLeaf(_ key: Key, _ value: LeafValue, at i: Int) {
        unpack()
        keyList.insert(key, at: i)
        edited.insert(value, at: i)
        usedBytes += Self.leafEntrySize(value.value.count)
    }

    /// Inserts entries whose keys the leaf does not hold, sorted by key, all at once: one
    /// pass from the back moves each entry after the first insertion point once, where
    /// inserting them one by one shifted the rest of the leaf for each.
    public mutating func insertLeaves(sorted new: [(key: Key, value: LeafValue)]) {
        guard !new.isEmpty else { return }
        unpack()
        let old = keyList.count
        keyList.append(contentsOf: repeatElement(Key.min, count: new.count))
        edited.append(contentsOf: repeatElement(LeafValue(seq: 0, flags: [], value: []), count: new.count))
        keyList.withUnsafeMutableBufferPointer { keys in
            edited.withUnsafeMutableBufferPointer { values in
                // Slots above `a` and up to `dst` are free (placeholders): an old entry is
                // swapped up into `dst`, leaving the placeholder where it was.
                var a = old - 1
                var b = new.count - 1
                var dst = old + new.count - 1
                while b >= 0 {
                    if a >= 0 && new[b].key < keys[a] {
                        keys[dst] = keys[a]
                        values.swapAt(a, dst)
                        a -= 1
                    } else {
                        keys[dst] = new[b].key
                        values[dst] = new[b].value
                        b -= 1
                    }
                    dst -= 1
                }
            }
        }
        for n in new { usedBytes += Self.leafEntrySize(n.value.value.count) }
    }

    /// Replaces, removes and inserts leaf entries at once, by the indexes of the leaf as it
    /// stands: replacements and removals ascending and never of one entry, insertions sorted
    /// and of keys the leaf does not hold. A packed leaf stays packed, its untouched entries
    /// copied in runs into memory of its own: unpacking makes a key and a value array of every
    /// entry, which cost a commit of a few items more than all the rest of its work.
    public mutating func editLeaves(replacing: [(index: Int, value: LeafValue)], removing: [Int],
                                    inserting: [(key: Key, value: LeafValue)]) {
        guard let old = packed else {
            for r in replacing { replaceLeaf(at: r.index, with: r.value) }
            removeLeaves(at: removing)
            insertLeaves(sorted: inserting)
            return
        }
        guard !replacing.isEmpty || !removing.isEmpty || !inserting.isEmpty else { return }
        var size = usedBytes
        for r in replacing { size += r.value.value.count - valueLength(at: r.index) }
        for i in removing { size -= Self.leafEntrySize(valueLength(at: i)) }
        for n in inserting { size += Self.leafEntrySize(n.value.value.count) }
        let n = count
        let entries = UnsafeRawPointer(old.base + packedStart)
        var out = PackedLeafWriter(entries: entries, capacity: n - removing.count + inserting.count)
        let bytes = BlockBytes(uninitializedCount: size)
        out.w = RawWriter(UnsafeMutableRawBufferPointer(start: bytes.base, count: size))
        var (r, d, a) = (0, 0, 0)
        for i in 0..<n {
            let start = Int(offsets[i])
            let entry = entries + start
            let end = start + Self.leafEntrySize(Int(UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: Self.lengthOffset, as: UInt16.self))))
            while a < inserting.count && Self.compare(entry, inserting[a].key) > 0 {
                out.write(inserting[a].key, inserting[a].value)
                a += 1
            }
            if d < removing.count && removing[d] == i {
                out.skip(to: end)
                d += 1
            } else if r < replacing.count && replacing[r].index == i {
                out.write(Self.rawKey(entry), replacing[r].value)
                out.skip(to: end)
                r += 1
            } else {
                out.keep(from: start, to: end)
            }
        }
        while a < inserting.count {
            out.write(inserting[a].key, inserting[a].value)
            a += 1
        }
        out.copyRun()
        precondition(out.w.offset == size, "a leaf edited packed came to \(out.w.offset) bytes, not the \(size) counted")
        packed = bytes
        packedStart = 0
        offsets = out.offsets
        usedBytes = size
    }

    /// Takes `bytes`, this leaf as just encoded (`encode`), as its memory: a packed leaf keeps
    /// its entries' places, which the encoding does not move; any other block is decoded.
    public mutating func adoptEncoded(_ bytes: BlockBytes) throws(FormatError) {
        guard isPacked else {
            self = try BTreeBlock(adopting: bytes)
            return
        }
        packed = bytes
        packedStart = Self.prefixSize
    }

    public mutating func replaceLeaf(at i: Int, with value: LeafValue) {
        unpack()
        usedBytes += value.value.count - edited[i].value.count
        edited[i] = value
    }

    public mutating func removeLeaf(at i: Int) {
        unpack()
        usedBytes -= Self.leafEntrySize(edited[i].value.count)
        keyList.remove(at: i)
        edited.remove(at: i)
    }

    /// Removes the leaf entries in `range` at once (one shift of what follows them).
    public mutating func removeLeaves(_ range: Range<Int>) {
        unpack()
        for i in range { usedBytes -= Self.leafEntrySize(edited[i].value.count) }
        keyList.removeSubrange(range)
        edited.removeSubrange(range)
    }

    /// Removes the leaf entries at `indexes` (ascending) in one pass over what follows the
    /// first of them.
    public mutating func removeLeaves(at indexes: [Int]) {
        guard let first = indexes.first else { return }
        unpack()
        var w = first
        var k = 0
        edited.withUnsafeMutableBufferPointer { values in
            for r in first..<keyList.count {
                if k < indexes.count && indexes[k] == r {
                    usedBytes -= Self.leafEntrySize(values[r].value.count)
                    k += 1
                    continue
                }
                keyList[w] = keyList[r]
                // What is swapped up past `w` is dropped with the tail below.
                values.swapAt(w, r)
                w += 1
            }
        }
        keyList.removeSubrange(w...)
        edited.removeSubrange(w...)
    }

    public mutating func insertChild(_ key: Key, _ ref: BlockRef, at i: Int) {
        keyList.insert(key, at: i)
        children.insert(ref, at: i)
        usedBytes += Self.parentEntrySize
    }

    public mutating func removeChild(at i: Int) {
        keyList.remove(at: i)
        children.remove(at: i)
        usedBytes -= Self.parentEntrySize
    }

    /// Splits off the entries from `i` on into a new block of the same level.
    public mutating func split(at i: Int) -> BTreeBlock {
        unpack()
        var right = BTreeBlock(level: level)
        right.keyList = Array(keyList[i...])
        keyList.removeSubrange(i...)
        if isLeaf {
            right.edited = Array(edited[i...])
            edited.removeSubrange(i...)
        } else {
            right.children = Array(children[i...])
            children.removeSubrange(i...)
        }
        recount()
        right.recount()
        return right
    }

    /// Appends all of `right`'s entries (which sort after ours).
    public mutating func append(contentsOf right: BTreeBlock) {
        unpack()
        keyList += right.keys
        if right.isLeaf { edited += right.values }
        children += right.children
        usedBytes += right.usedBytes
    }

    public mutating func recount() {
        if isLeaf {
            usedBytes = (0..<count).reduce(0) { $0 + Self.leafEntrySize(valueLength(at: $1)) }
        } else {
            usedBytes = children.count * Self.parentEntrySize
        }
    }

    /// Index of the first entry that can split the block into two halves of about equal bytes.
    public func midpoint() -> Int {
        if !isLeaf { return count / 2 }
        var acc = 0
        for i in 0..<count {
            acc += Self.leafEntrySize(valueLength(at: i))
            if acc * 2 >= usedBytes { return Swift.max(1, Swift.min(i + 1, count - 1)) }
        }
        return count / 2
    }

    // MARK: encoding

    /// Encodes into a whole 64 KiB block and seals the header.
    public func encode(magic: UInt32 = BlockMagic.btree, fsid: UInt64, seq: UInt64, blkno: UInt64) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: Layout.metaBlockSize)
        block.withUnsafeMutableBytes { encode(into: $0, magic: magic, fsid: fsid, seq: seq, blkno: blkno) }
        return block
    }

    /// Encodes into `block`, a whole block of memory the caller owns, and seals the header.
    /// The bytes after the entries are zeroed (the checksum covers them).
    public func encode(into block: UnsafeMutableRawBufferPointer, magic: UInt32 = BlockMagic.btree, fsid: UInt64, seq: UInt64, blkno: UInt64) {
        precondition(usedBytes <= Self.capacity, "btree block \(blkno) overfull: \(usedBytes) bytes")
        precondition(block.count == Layout.metaBlockSize, "a btree block is encoded into \(Layout.metaBlockSize) bytes, not \(block.count)")
        var w = RawWriter(block, offset: BlockHeader.encodedSize)
        w.u8(level)
        // The memory may hold an earlier block: every byte is written, the padding too.
        w.u8(0); w.u8(0); w.u8(0)
        w.u32(UInt32(count))
        if let packed {
            // Still the entries as they were read.
            w.raw(UnsafeRawBufferPointer(start: packed.base + packedStart, count: usedBytes))
        } else {
            for i in 0..<count {
                keyList[i].encode(into: &w)
                if isLeaf {
                    let v = edited[i]
                    w.u64(v.seq)
                    w.u8(v.flags.rawValue)
                    w.u16(UInt16(v.value.count))
                    w.raw(v.value)
                } else {
                    w.u64(children[i].blkno)
                    w.u64(children[i].seq)
                }
            }
        }
        UnsafeMutableRawBufferPointer(rebasing: block[w.offset...]).initializeMemory(as: UInt8.self, repeating: 0)
        BlockHeader.seal(block, magic: magic, fsid: fsid, seq: seq, blkno: blkno)
    }

    /// Decodes a block whose header the caller has verified. Checks counts, lengths, levels and
    /// key order, so a block that checksums but was written wrong is still an error.
    public init(decoding block: [UInt8]) throws(FormatError) {
        // withUnsafeBytes only rethrows untyped errors; carry the typed one out in a Result.
        let result = block.withUnsafeBytes { buf in
            Result { () throws(FormatError) -> BTreeBlock in try BTreeBlock(decoding: buf) }
        }
        self = try result.get()
    }

    /// Decodes a block in a buffer the caller keeps: a leaf copies its entries.
    public init(decoding buf: UnsafeRawBufferPointer) throws(FormatError) {
        try self.init(decoding: buf, keeping: nil)
    }

    /// Decodes a block read into `bytes`; a leaf keeps them, to be searched where they were read.
    public init(adopting bytes: BlockBytes) throws(FormatError) {
        try self.init(decoding: bytes.buffer, keeping: bytes)
    }

    private init(decoding buf: UnsafeRawBufferPointer, keeping: BlockBytes?) throws(FormatError) {
        var r = RawReader(buf, offset: BlockHeader.encodedSize, what: "btree block")
        level = try r.u8()
        try r.skip(3)
        let nr = Int(try r.u32())
        if level > Self.maxLevel { throw FormatError("btree block level \(level) above the maximum \(Self.maxLevel)") }
        let minEntry = level == 0 ? Self.leafEntryOverhead : Self.parentEntrySize
        if nr > Self.capacity / minEntry { throw FormatError("btree block claims \(nr) entries, more than fit") }
        keyList = []
        edited = []
        offsets = []
        packed = nil
        packedStart = 0
        children = []
        usedBytes = 0
        let entriesStart = r.offset
        if level == 0 {
            offsets.reserveCapacity(nr)
            let base = buf.baseAddress!
            var previous: Int?
            for _ in 0..<nr {
                let at = r.offset
                try r.skip(Key.encodedSize + 8)
                let flags = ItemFlags(rawValue: try r.u8())
                let len = Int(try r.u16())
                if let previous, Self.compare(base + previous, Self.rawKey(base + at)) >= 0 {
                    throw FormatError("btree block keys out of order at entry \(offsets.count): \(Self.rawKey(base + previous)) then \(Self.rawKey(base + at))")
                }
                if !ItemFlags.known.isSuperset(of: flags) { throw FormatError("item \(Self.rawKey(base + at)) has unknown flags \(flags.rawValue)") }
                if len > Item.maxValueLength { throw FormatError("item \(Self.rawKey(base + at)) value of \(len) bytes exceeds \(Item.maxValueLength)") }
                try r.skip(len)
                offsets.append(UInt32(at - entriesStart))
                previous = at
            }
            usedBytes = r.offset - entriesStart
            if let keeping {
                packed = keeping
                packedStart = entriesStart
            } else {
                // A copy of the entries alone (not the whole block: split leaves are part full).
                packed = BlockBytes(copying: UnsafeRawBufferPointer(rebasing: buf[entriesStart..<r.offset]))
            }
            return
        }
        keyList.reserveCapacity(nr)
        children.reserveCapacity(nr)
        for i in 0..<nr {
            let key = try Key(decoding: &r)
            if i > 0 && !(keyList[i - 1] < key) {
                throw FormatError("btree block keys out of order at entry \(i): \(keyList[i - 1]) then \(key)")
            }
            keyList.append(key)
            let ref = BlockRef(blkno: try r.u64(), seq: try r.u64())
            if ref.isNone { throw FormatError("btree parent entry \(i) references block 0") }
            children.append(ref)
            usedBytes += Self.parentEntrySize
        }
    }
}
