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

/// A leaf entry's payload as a decoded block holds it: where its value lies in the block's
/// bytes. 16 bytes, no allocation of its own.
struct PackedEntry {
    var seq: UInt64
    var offset: UInt32
    var length: UInt16
    var flags: ItemFlags
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
/// A leaf read from the device keeps its values where they lie, in one copy of the block's
/// entry bytes, and makes an array of a value only when a reader asks for it: a cold lookup
/// reads one or two items of a leaf of hundreds, and making hundreds of arrays (then freeing
/// them when the block leaves the cache) was most of the daemon's CPU per cold block. The first
/// edit turns the leaf into one array of values, the form edits work on.
public struct BTreeBlock: Sendable {
    public var level: UInt8
    public var keys: [Key]
    /// Leaf payloads of an edited leaf, parallel to `keys`; empty in parents and decoded leaves.
    private var edited: [LeafValue]
    /// A decoded leaf's payloads, parallel to `keys`, and the bytes their offsets index.
    private var packed: [PackedEntry]
    private var packedBytes: [UInt8]
    private var isPacked: Bool
    /// Child references, parallel to `keys`; empty in leaves.
    public var children: [BlockRef]
    /// Bytes the entries take when encoded (excluding the fixed block prefix).
    public private(set) var usedBytes: Int

    public static let prefixSize = BlockHeader.encodedSize + 8
    public static let capacity = Layout.metaBlockSize - prefixSize
    public static let leafEntryOverhead = Key.encodedSize + 8 + 1 + 2
    public static let parentEntrySize = Key.encodedSize + BlockRef.encodedSize
    public static let maxLevel: UInt8 = 20

    public init(level: UInt8) {
        self.level = level
        keys = []
        edited = []
        packed = []
        packedBytes = []
        isPacked = false
        children = []
        usedBytes = 0
    }

    public var isLeaf: Bool { level == 0 }
    public var count: Int { keys.count }

    public static func leafEntrySize(_ valueLength: Int) -> Int { leafEntryOverhead + valueLength }

    // MARK: reading leaf payloads

    /// Entry `i`'s payload.
    public func value(at i: Int) -> LeafValue {
        guard isPacked else { return edited[i] }
        let e = packed[i]
        let start = Int(e.offset)
        let bytes = packedBytes.withUnsafeBufferPointer { Array(UnsafeBufferPointer(rebasing: $0[start..<start + Int(e.length)])) }
        return LeafValue(seq: e.seq, flags: e.flags, value: bytes)
    }

    /// The length of entry `i`'s value, without making it.
    public func valueLength(at i: Int) -> Int {
        isPacked ? Int(packed[i].length) : edited[i].value.count
    }

    /// Every leaf payload, parallel to `keys`; empty in parents.
    public var values: [LeafValue] {
        isPacked ? (0..<count).map(value(at:)) : edited
    }

    /// Edits work on whole values: a decoded leaf makes them all once, at its first edit.
    private mutating func unpack() {
        guard isPacked else { return }
        edited = values
        packed = []
        packedBytes = []
        isPacked = false
    }

    // MARK: editing (callers keep keys sorted; these only maintain the byte count)

    public mutating func insertLeaf(_ key: Key, _ value: LeafValue, at i: Int) {
        unpack()
        keys.insert(key, at: i)
        edited.insert(value, at: i)
        usedBytes += Self.leafEntrySize(value.value.count)
    }

    public mutating func replaceLeaf(at i: Int, with value: LeafValue) {
        unpack()
        usedBytes += value.value.count - edited[i].value.count
        edited[i] = value
    }

    public mutating func removeLeaf(at i: Int) {
        unpack()
        usedBytes -= Self.leafEntrySize(edited[i].value.count)
        keys.remove(at: i)
        edited.remove(at: i)
    }

    /// Removes the leaf entries in `range` at once (one shift of what follows them).
    public mutating func removeLeaves(_ range: Range<Int>) {
        unpack()
        for i in range { usedBytes -= Self.leafEntrySize(edited[i].value.count) }
        keys.removeSubrange(range)
        edited.removeSubrange(range)
    }

    public mutating func insertChild(_ key: Key, _ ref: BlockRef, at i: Int) {
        keys.insert(key, at: i)
        children.insert(ref, at: i)
        usedBytes += Self.parentEntrySize
    }

    public mutating func removeChild(at i: Int) {
        keys.remove(at: i)
        children.remove(at: i)
        usedBytes -= Self.parentEntrySize
    }

    /// Splits off the entries from `i` on into a new block of the same level.
    public mutating func split(at i: Int) -> BTreeBlock {
        unpack()
        var right = BTreeBlock(level: level)
        right.keys = Array(keys[i...])
        keys.removeSubrange(i...)
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
        keys += right.keys
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
        precondition(usedBytes <= Self.capacity, "btree block \(blkno) overfull: \(usedBytes) bytes")
        var block = [UInt8](repeating: 0, count: Layout.metaBlockSize)
        block.withUnsafeMutableBytes { buf in
            var w = RawWriter(buf, offset: BlockHeader.encodedSize)
            w.u8(level)
            w.skip(3)
            w.u32(UInt32(count))
            for i in 0..<count {
                keys[i].encode(into: &w)
                if isLeaf {
                    let v = value(at: i)
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
        BlockHeader.seal(&block, magic: magic, fsid: fsid, seq: seq, blkno: blkno)
        return block
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

    public init(decoding buf: UnsafeRawBufferPointer) throws(FormatError) {
        var r = RawReader(buf, offset: BlockHeader.encodedSize, what: "btree block")
        level = try r.u8()
        try r.skip(3)
        let nr = Int(try r.u32())
        if level > Self.maxLevel { throw FormatError("btree block level \(level) above the maximum \(Self.maxLevel)") }
        let minEntry = level == 0 ? Self.leafEntryOverhead : Self.parentEntrySize
        if nr > Self.capacity / minEntry { throw FormatError("btree block claims \(nr) entries, more than fit") }
        keys = []
        keys.reserveCapacity(nr)
        edited = []
        packed = []
        packedBytes = []
        isPacked = level == 0
        children = []
        usedBytes = 0
        if level == 0 { packed.reserveCapacity(nr) } else { children.reserveCapacity(nr) }
        let entriesStart = r.offset
        for i in 0..<nr {
            let key = try Key(decoding: &r)
            if i > 0 && !(keys[i - 1] < key) {
                throw FormatError("btree block keys out of order at entry \(i): \(keys[i - 1]) then \(key)")
            }
            keys.append(key)
            if level == 0 {
                let seq = try r.u64()
                let flags = ItemFlags(rawValue: try r.u8())
                if !ItemFlags.known.isSuperset(of: flags) { throw FormatError("item \(key) has unknown flags \(flags.rawValue)") }
                let len = Int(try r.u16())
                if len > Item.maxValueLength { throw FormatError("item \(key) value of \(len) bytes exceeds \(Item.maxValueLength)") }
                packed.append(PackedEntry(seq: seq, offset: UInt32(r.offset - entriesStart), length: UInt16(len), flags: flags))
                try r.skip(len)
                usedBytes += Self.leafEntrySize(len)
            } else {
                let ref = BlockRef(blkno: try r.u64(), seq: try r.u64())
                if ref.isNone { throw FormatError("btree parent entry \(i) references block 0") }
                children.append(ref)
                usedBytes += Self.parentEntrySize
            }
        }
        if level == 0 {
            // One copy of the entries' bytes (not the whole block: split leaves are part full).
            packedBytes = Array(UnsafeRawBufferPointer(rebasing: buf[entriesStart..<r.offset]))
        }
    }
}
