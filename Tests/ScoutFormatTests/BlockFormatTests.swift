import Testing
import ScoutFormat

@Suite struct BlockFormatTests {
    func sampleLeaf() -> BTreeBlock {
        var b = BTreeBlock(level: 0)
        for i in 0..<50 as Range<UInt64> {
            b.insertLeaf(Key(zone: Zone.fs, first: i, type: ItemType.inode),
                         LeafValue(seq: i * 3, flags: i % 7 == 0 ? .deletion : [], value: Array(repeating: UInt8(i), count: Int(i))), at: Int(i))
        }
        return b
    }

    @Test func leafRoundTrip() throws {
        let b = sampleLeaf()
        let bytes = b.encode(fsid: 42, seq: 9, blkno: 100)
        #expect(bytes.count == Layout.metaBlockSize)
        #expect(BlockHeader.verify(bytes, magic: BlockMagic.btree, fsid: 42, blkno: 100, seq: 9) == .valid)
        let d = try BTreeBlock(decoding: bytes)
        #expect(d.keys == b.keys)
        #expect(d.values == b.values)
        #expect(d.usedBytes == b.usedBytes)
    }

    /// A decoded leaf keeps its values in the block's bytes until its first edit: every edit
    /// on it must give what the same edit gives on the leaf it was encoded from.
    @Test func decodedLeavesEditLikeTheBlocksTheyCameFrom() throws {
        let original = sampleLeaf()
        let decoded = try BTreeBlock(decoding: original.encode(fsid: 1, seq: 2, blkno: 3))
        for i in [0, 7, 49] {
            #expect(decoded.value(at: i) == original.value(at: i))
            #expect(decoded.valueLength(at: i) == Int(i))
        }
        #expect(decoded.midpoint() == original.midpoint())

        let edits: [(inout BTreeBlock) -> Void] = [
            { $0.insertLeaf(Key(zone: Zone.fs, first: 100, type: ItemType.inode), LeafValue(seq: 1, flags: [], value: [9, 9]), at: 50) },
            { $0.replaceLeaf(at: 10, with: LeafValue(seq: 77, flags: .delta, value: Array(repeating: 5, count: 300))) },
            { $0.removeLeaf(at: 0) },
        ]
        for edit in edits {
            var a = original, b = decoded
            edit(&a)
            edit(&b)
            #expect(b.keys == a.keys)
            #expect(b.values == a.values)
            #expect(b.usedBytes == a.usedBytes)
            #expect(b.encode(fsid: 1, seq: 2, blkno: 3) == a.encode(fsid: 1, seq: 2, blkno: 3))
        }

        var a = original, b = decoded
        let ar = a.split(at: 20), br = b.split(at: 20)
        #expect(b.values == a.values && br.values == ar.values && b.usedBytes == a.usedBytes && br.usedBytes == ar.usedBytes)
        // Appending a decoded right half to an edited left one, and the reverse.
        var joined = a
        joined.append(contentsOf: try BTreeBlock(decoding: ar.encode(fsid: 1, seq: 2, blkno: 4)))
        #expect(joined.values == original.values && joined.usedBytes == original.usedBytes)
        var joined2 = try BTreeBlock(decoding: a.encode(fsid: 1, seq: 2, blkno: 5))
        joined2.append(contentsOf: ar)
        #expect(joined2.keys == original.keys && joined2.values == original.values)
    }

    /// A decoded (packed) leaf edited by replacements, removals and insertions at once stays
    /// packed and must end as the same edits leave an unpacked leaf: keys, values, bytes and
    /// encoding; and the encoded block it then adopts must read the same again.
    @Test func packedLeavesEditInOnePassLikeUnpackedOnes() throws {
        var rng = SystemRandomNumberGenerator()
        for round in 0..<200 {
            var plain = BTreeBlock(level: 0)
            let held = (0..<Int.random(in: 0...120, using: &rng)).map { UInt64($0 * 4) }
            for (i, k) in held.enumerated() {
                plain.insertLeaf(Key(zone: Zone.fs, first: k, type: ItemType.inode),
                                 LeafValue(seq: k, flags: [], value: Array(repeating: UInt8(truncatingIfNeeded: k), count: Int(k % 50))), at: i)
            }
            let packed = try BTreeBlock(decoding: plain.encode(fsid: 1, seq: 2, blkno: 3))
            var replacing: [(index: Int, value: LeafValue)] = []
            var removing: [Int] = []
            for i in held.indices {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0: replacing.append((i, LeafValue(seq: 1000 + UInt64(i), flags: .delta, value: Array(repeating: 7, count: Int.random(in: 0...90, using: &rng)))))
                case 1: removing.append(i)
                default: break
                }
            }
            // New keys between, before and after the held ones (held keys are multiples of 4).
            let inserting = Set((0..<Int.random(in: 0...30, using: &rng)).map { _ in UInt64.random(in: 0...500, using: &rng) })
                .filter { $0 % 4 != 0 }.sorted()
                .map { (key: Key(zone: Zone.fs, first: $0, type: ItemType.inode), value: LeafValue(seq: $0, flags: [], value: [UInt8(truncatingIfNeeded: $0)])) }
            var a = plain, b = packed
            a.editLeaves(replacing: replacing, removing: removing, inserting: inserting)
            b.editLeaves(replacing: replacing, removing: removing, inserting: inserting)
            #expect(b.keys == a.keys, "round \(round)")
            #expect(b.values == a.values, "round \(round)")
            #expect(b.usedBytes == a.usedBytes, "round \(round)")
            let encoded = a.encode(fsid: 1, seq: 2, blkno: 3)
            #expect(b.encode(fsid: 1, seq: 2, blkno: 3) == encoded, "round \(round)")
            let bytes = encoded.withUnsafeBytes { BlockBytes(copying: $0) }
            try b.adoptEncoded(bytes)
            #expect(b.keys == a.keys && b.values == a.values, "round \(round): the adopted encoding")
            #expect(b.lowerBound(Key(zone: Zone.fs, first: 250, type: ItemType.inode)) == a.lowerBound(Key(zone: Zone.fs, first: 250, type: ItemType.inode)))
        }
    }

    /// A decoded leaf searches its keys where they lie in the block's bytes: every field of a
    /// key must order there as it does in `Key`, including values whose bytes differ in order
    /// between the little-endian memory form and the big-endian encoding.
    @Test func decodedLeavesSearchLikeTheirKeys() throws {
        var rng = SystemRandomNumberGenerator()
        let edges: [UInt64] = [0, 1, 0xff, 0x100, 0xff00, 0x1_0000_0000, 1 << 63, .max - 1, .max]
        func field() -> UInt64 { Bool.random(using: &rng) ? edges.randomElement(using: &rng)! : UInt64.random(in: 0...3, using: &rng) }
        func byte() -> UInt8 { [0, 1, 0x7f, 0x80, 0xff].randomElement(using: &rng)! }
        func key() -> Key { Key(zone: byte(), first: field(), type: byte(), second: field(), third: field(), fourth: byte()) }
        for _ in 0..<20 {
            let keys = Array(Set((0..<300).map { _ in key() })).sorted()
            var b = BTreeBlock(level: 0)
            for (i, k) in keys.enumerated() {
                b.insertLeaf(k, LeafValue(seq: UInt64(i), flags: [], value: Array(repeating: UInt8(truncatingIfNeeded: i), count: i % 40)), at: i)
            }
            let d = try BTreeBlock(decoding: b.encode(fsid: 1, seq: 2, blkno: 3))
            #expect(d.count == keys.count)
            #expect((0..<keys.count).allSatisfy { d.key(at: $0) == keys[$0] && d.item(at: $0).value == b.value(at: $0).value })
            #expect(d.lastKey == keys.last)
            for probe in keys.prefix(50) + (0..<200).map({ _ in key() }) {
                let lower = keys.firstIndex { !($0 < probe) } ?? keys.count
                let upper = keys.firstIndex { probe < $0 } ?? keys.count
                #expect(d.lowerBound(probe) == lower, "lower bound of \(probe)")
                #expect(d.upperBound(probe) == upper, "upper bound of \(probe)")
                #expect(b.lowerBound(probe) == lower && b.upperBound(probe) == upper)
            }
            // Unedited, it encodes to the bytes it came from.
            #expect(d.encode(fsid: 1, seq: 2, blkno: 3) == b.encode(fsid: 1, seq: 2, blkno: 3))
        }
    }

    /// A leaf decoded from memory it adopts searches and edits like one that copied its entries,
    /// keeps that memory while any copy of it is unedited, and gives it back once none is.
    @Test func adoptedLeavesKeepTheirMemoryUntilTheLastCopyLetsGo() throws {
        final class Counter: BlockBytesRecycler, @unchecked Sendable {
            var recycled: [UnsafeMutableRawPointer] = []
            func recycle(_ base: UnsafeMutableRawPointer) { recycled.append(base) }
        }
        let counter = Counter()
        let original = sampleLeaf()
        let encoded = original.encode(fsid: 1, seq: 2, blkno: 3)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: encoded.count, alignment: 4096)
        defer { memory.deallocate() }
        encoded.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        var copy: BTreeBlock?
        do {
            let adopted = try BTreeBlock(adopting: BlockBytes(base: memory, count: encoded.count, recycler: counter))
            #expect(adopted.keys == original.keys && adopted.values == original.values)
            #expect(adopted.encode(fsid: 1, seq: 2, blkno: 3) == encoded)
            copy = adopted
        }
        #expect(counter.recycled.isEmpty, "a copy still searches the adopted bytes")
        copy!.removeLeaf(at: 0)
        #expect(counter.recycled == [memory], "the last copy's first edit lets go of them")
        #expect(copy!.keys == Array(original.keys.dropFirst()))

        // A parent decodes its keys and references, keeping nothing.
        var parent = BTreeBlock(level: 1)
        parent.insertChild(Key.max, BlockRef(blkno: 77, seq: 5), at: 0)
        let pbytes = parent.encode(fsid: 1, seq: 2, blkno: 4)
        pbytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let decodedParent = try BTreeBlock(adopting: BlockBytes(base: memory, count: pbytes.count, recycler: counter))
        #expect(counter.recycled.count == 2)
        #expect(decodedParent.children == [BlockRef(blkno: 77, seq: 5)])
    }

    /// Two entries whose keys differ only in a late field, swapped in the encoded block, are
    /// refused by the decoder's order check.
    @Test func decodingRefusesLeafKeysOutOfOrder() throws {
        var b = BTreeBlock(level: 0)
        let k1 = Key(zone: 16, first: 5, type: 1, second: 0, third: 0x100, fourth: 0)
        let k2 = Key(zone: 16, first: 5, type: 1, second: 0, third: 0x100, fourth: 1)
        b.insertLeaf(k1, LeafValue(seq: 1, flags: [], value: [1]), at: 0)
        b.insertLeaf(k2, LeafValue(seq: 1, flags: [], value: [2]), at: 1)
        var bytes = b.encode(fsid: 1, seq: 2, blkno: 3)
        let first = BTreeBlock.prefixSize + Key.encodedSize - 1
        let second = first + BTreeBlock.leafEntrySize(1)
        bytes.swapAt(first, second)
        BlockHeader.seal(&bytes, magic: BlockMagic.btree, fsid: 1, seq: 2, blkno: 3)
        #expect(throws: FormatError.self) { try BTreeBlock(decoding: bytes) }
    }

    @Test func parentRoundTrip() throws {
        var b = BTreeBlock(level: 2)
        b.insertChild(Key(zone: 1), BlockRef(blkno: 10, seq: 1), at: 0)
        b.insertChild(.max, BlockRef(blkno: 11, seq: 2), at: 1)
        let d = try BTreeBlock(decoding: b.encode(fsid: 1, seq: 2, blkno: 5))
        #expect(d.level == 2)
        #expect(d.children == b.children)
        #expect(d.keys == b.keys)
    }

    @Test func headerMismatchesAreStaleAndDamageIsCorrupt() {
        let bytes = sampleLeaf().encode(fsid: 42, seq: 9, blkno: 100)
        if case .stale = BlockHeader.verify(bytes, magic: BlockMagic.btree, fsid: 42, blkno: 100, seq: 8) {} else { Issue.record("old seq not stale") }
        if case .stale = BlockHeader.verify(bytes, magic: BlockMagic.btree, fsid: 42, blkno: 101, seq: 9) {} else { Issue.record("wrong blkno not stale") }
        if case .stale = BlockHeader.verify(bytes, magic: BlockMagic.btree, fsid: 43, blkno: 100, seq: 9) {} else { Issue.record("wrong fsid not stale") }
        if case .stale = BlockHeader.verify(bytes, magic: BlockMagic.superblock, fsid: 42, blkno: 100, seq: 9) {} else { Issue.record("wrong magic not stale") }
        for at in [0, 5, 31, 40, 1000, Layout.metaBlockSize - 1] {
            var bad = bytes
            bad[at] ^= 0x10
            if case .corrupt = BlockHeader.verify(bad, magic: BlockMagic.btree, fsid: 42, blkno: 100, seq: 9) {} else { Issue.record("flip at \(at) not caught") }
        }
    }

    /// Checksummed garbage must decode to an error, never a trap.
    @Test func randomBlocksNeverTrapTheDecoder() {
        var g = SystemRandomNumberGenerator()
        for round in 0..<300 {
            var bytes = [UInt8](repeating: 0, count: Layout.metaBlockSize)
            let n = Int.random(in: 0..<200, using: &g)
            for i in 0..<n { bytes[BlockHeader.encodedSize + i] = UInt8.random(in: 0...255, using: &g) }
            if round % 2 == 0 { bytes[BlockHeader.encodedSize] = 0 }  // leaf level, to reach entry decoding
            _ = try? BTreeBlock(decoding: bytes)
            _ = try? SuperBlock(decoding: Array(bytes.prefix(Layout.smallBlockSize)))
        }
        #expect(throws: FormatError.self) { try BTreeBlock(decoding: [1, 2, 3]) }
    }

    @Test func logTreeRecordsKeepTheirPoolAndRefuseDamagedOnes() throws {
        let root = BTreeRoot(ref: BlockRef(blkno: 12, seq: 5), height: 2)
        let plain = LogTreeRecord(root: root, items: 77)
        #expect(plain.encoded.count == LogTreeRecord.baseSize)
        #expect(try LogTreeRecord(decoding: plain.encoded) == plain)
        let pooled = LogTreeRecord(root: .empty, items: 0, dataPool: [Extent(start: 100, length: 8192), Extent(start: 9000, length: 3)])
        #expect(try LogTreeRecord(decoding: pooled.encoded) == pooled)
        #expect(pooled.poolBlocks == 8195)
        let metaOnly = LogTreeRecord(root: root, items: 3, metaPool: [Extent(start: 40, length: 16)])
        #expect(try LogTreeRecord(decoding: metaOnly.encoded) == metaOnly)
        #expect(metaOnly.encoded.count == LogTreeRecord.baseSize + 4 + 4 + 16)
        let both = LogTreeRecord(root: root, items: 3, dataPool: [Extent(start: 7, length: 1)], metaPool: [Extent(start: 40, length: 16), Extent(start: 90, length: 2)])
        #expect(try LogTreeRecord(decoding: both.encoded) == both)
        #expect(both.metaPoolBlocks == 18)
        // A record of the layout before metadata pools (data pool only) reads as before.
        #expect(pooled.encoded.count == LogTreeRecord.baseSize + 4 + 32)
        var trailing = both.encoded
        trailing += [0, 0, 0, 0]
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: trailing) }
        var emptyMeta = pooled.encoded
        emptyMeta += [0, 0, 0, 0]
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: emptyMeta) }

        // Scattered blocks take an extent each: fit stops where the record would outgrow an
        // item, and hands back the rest; adjacent blocks join extents already there.
        let data = (0..<LogTreeRecord.maxDataPoolExtents).map { Extent(start: 1_000_000 + 2 * UInt64($0), length: 1) }
        let (meta, kept, left) = LogTreeRecord.fit((0..<40).map { 2 * UInt64($0) }, into: [], beside: data.count)
        #expect(meta.count == LogTreeRecord.maxPoolExtents - data.count)
        #expect(kept == (0..<meta.count).map { 2 * UInt64($0) })
        #expect(left == (meta.count..<40).map { 2 * UInt64($0) })
        let full = LogTreeRecord(root: root, items: 1, dataPool: data, metaPool: meta)
        #expect(full.encoded.count <= Item.maxValueLength)
        #expect(try LogTreeRecord(decoding: full.encoded) == full)
        let (joined, joinedBlocks, none) = LogTreeRecord.fit([1, 3], into: meta, beside: data.count)
        #expect(none.isEmpty && joinedBlocks == [1, 3] && joined.count == meta.count - 2 && joined[0] == Extent(start: 0, length: 5))

        var cut = pooled.encoded
        cut.removeLast()
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: cut) }

        // A commit count comes last, after both pools (empty ones included).
        for r in [LogTreeRecord(root: root, items: 3, commits: 9), LogTreeRecord(root: .empty, items: 0, dataPool: [Extent(start: 7, length: 1)], commits: 1),
                  LogTreeRecord(root: root, items: 3, dataPool: both.dataPool, metaPool: both.metaPool, commits: 1 << 40)] {
            #expect(try LogTreeRecord(decoding: r.encoded) == r)
        }
        #expect(LogTreeRecord(root: root, items: 3, commits: 9).encoded.count == LogTreeRecord.baseSize + 4 + 4 + 8)
        var zeroCount = LogTreeRecord(root: root, items: 3, commits: 9).encoded
        for i in zeroCount.count - 8 ..< zeroCount.count { zeroCount[i] = 0 }
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: zeroCount) }
        let fullCounted = LogTreeRecord(root: root, items: 1, dataPool: data, metaPool: meta, commits: 5)
        #expect(fullCounted.encoded.count <= Item.maxValueLength)
        var huge = plain.encoded
        huge += [0xFF, 0xFF, 0xFF, 0x7F]
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: huge) }
        var wraps = pooled.encoded
        // The first pool extent's start: just past the root, the item count and the extent count.
        let at = LogTreeRecord.baseSize + 4
        for k in 0..<8 { wraps[at + k] = 0xFF }
        #expect(throws: FormatError.self) { try LogTreeRecord(decoding: wraps) }
    }

    @Test func superblockRoundTrip() throws {
        var sb = SuperBlock(uuid: Array(1...16), metaTotalBlocks: 4096, dataTotalBlocks: 65536,
                            quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100),
                                          QuorumSlot(slot: 3, address: "fe80::1", port: 7103)])
        sb.seq = 77
        sb.nextIno = 1234
        sb.nextSeq = 99
        sb.roots[.fs] = BTreeRoot(ref: BlockRef(blkno: 9, seq: 70), height: 3)
        sb.roots[.metaFree] = BTreeRoot(ref: BlockRef(blkno: 10, seq: 77), height: 1)
        sb.metaFreeBlocks = 4000
        sb.dataFreeBlocks = 60000
        sb.metaReserve = [20, 21, 22]
        let bytes = sb.encode(smallBlkno: 17)
        #expect(bytes.count == Layout.smallBlockSize)
        #expect(BlockHeader.verify(bytes, magic: BlockMagic.superblock, fsid: sb.fsid, blkno: 17, seq: 77) == .valid)
        #expect(try SuperBlock(decoding: bytes) == sb)
        #expect(sb.uuidString == "01020304-0506-0708-090a-0b0c0d0e0f10")
    }

    @Test func fileExtentRoundTripAndValidation() throws {
        let e = FileExtent(blkno: 500, flags: .unwritten)
        #expect(try FileExtent(decoding: e.encoded) == e)
        #expect(throws: FormatError.self) { try FileExtent(decoding: FileExtent(blkno: 0, flags: []).encoded) }
        #expect(throws: FormatError.self) { try FileExtent(decoding: [1, 2]) }
    }
}
