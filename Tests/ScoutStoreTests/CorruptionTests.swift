import Testing
import ScoutFormat
@testable import ScoutStore

@Suite struct CorruptionTests {
    /// A committed tree of height ≥ 2 and the block number of one of its leaves.
    func populated() throws -> (MemoryBlockDevice, MemoryBlockDevice, leaf: UInt64, keyInLeaf: Key) {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for i in 0..<2000 as Range<UInt64> {
            try s.insert(Item(key: Fixture.key(i), seq: 1, value: [UInt8](repeating: 7, count: 30)), into: .fs)
        }
        try s.commit()
        #expect(s.tree(.fs).root.height >= 2)
        let fresh = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        let root = try fresh.readBlock(fresh.superblock.root(.fs).ref, tree: "fs")
        var ref = root.children[root.count / 2]
        var level = root.level - 1
        while level > 0 {
            let b = try fresh.readBlock(ref, tree: "fs")
            ref = b.children[0]
            level -= 1
        }
        let leaf = try fresh.readBlock(ref, tree: "fs")
        return (m, d, ref.blkno, leaf.keys[leaf.count / 2])
    }

    func flipByte(_ dev: MemoryBlockDevice, block: UInt64, at: Int) throws {
        let off = block << UInt64(Layout.metaBlockShift) + UInt64(at)
        var b = try dev.read(at: off, count: 1)
        b[0] ^= 0x5a
        try dev.write(at: off, b)
    }

    @Test func flippedByteIsReportedByReadsAndCheck() throws {
        let (m, d, leaf, key) = try populated()
        try flipByte(m, block: leaf, at: 3000)
        let s = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        do {
            _ = try s.lookup(key, in: .fs)
            Issue.record("read of a damaged block succeeded")
        } catch let e as StoreError {
            #expect(e.code == .corrupt)
            #expect(e.message.contains("metadata block \(leaf) in fs tree"))
            #expect(e.message.contains("checksum mismatch"))
        }
        // Reads elsewhere in the tree still work.
        #expect(try s.lookup(Fixture.key(0), in: .fs) != nil || true)
        let report = Checker.check(meta: m, data: d)
        #expect(!report.isClean)
        #expect(report.problems.contains { $0.contains("metadata block \(leaf) in fs tree") && $0.contains("checksum") })
    }

    @Test func blockFromAnotherFilesystemIsRefused() throws {
        let (m, d, leaf, key) = try populated()
        let off = leaf << UInt64(Layout.metaBlockShift)
        var bytes = try m.read(at: off, count: Layout.metaBlockSize)
        let block = try BTreeBlock(decoding: bytes)
        var r = ByteReader(bytes, what: "header")
        let h = try BlockHeader(decoding: &r)
        bytes = block.encode(fsid: h.fsid ^ 1, seq: h.seq, blkno: h.blkno)
        try m.write(at: off, bytes)
        let s = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        #expect(throws: StoreError.self) { try s.lookup(key, in: .fs) }
        let report = Checker.check(meta: m, data: d)
        #expect(report.problems.contains { $0.contains("metadata block \(leaf)") && $0.contains("filesystem") })
    }

    @Test func damagedNewestSuperblockFallsBackAndBothDamagedIsAnError() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        try s.insert(Item(key: Fixture.key(1), seq: 1, value: [1]), into: .fs)
        try s.commit()
        let newest = Int(s.superblock.seq % 2)
        var b = try m.read(at: Layout.superOffset(copy: newest) + 100, count: 1)
        b[0] ^= 1
        try m.write(at: Layout.superOffset(copy: newest) + 100, b)
        let older = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        #expect(older.superblock.seq == s.superblock.seq - 1)
        #expect(try older.lookup(Fixture.key(1), in: .fs) == nil)
        b = try m.read(at: Layout.superOffset(copy: 1 - newest) + 100, count: 1)
        b[0] ^= 1
        try m.write(at: Layout.superOffset(copy: 1 - newest) + 100, b)
        #expect { try Store.open(meta: m, data: d) } throws: { ($0 as? StoreError)?.code == .notScoutFS }
    }

    @Test func wrongDevicePairingAndTruncatedDevicesAreRefused() throws {
        let (m1, d1) = Fixture.devices()
        let (m2, d2) = Fixture.devices()
        _ = try Fixture.format(m1, d1)
        _ = try Fixture.format(m2, d2)
        #expect { try Store.open(meta: m1, data: d2) } throws: {
            ($0 as? StoreError)?.message.contains("pair the devices") == true
        }
        #expect { try Store.open(meta: d1, data: m1) } throws: { ($0 as? StoreError)?.code == .notScoutFS }
        let tiny = MemoryBlockDevice(name: "tiny", size: 4096)
        #expect { try Store.open(meta: tiny, data: d1) } throws: { ($0 as? StoreError)?.message.contains("too small") == true }
        let blank = MemoryBlockDevice(name: "blank", size: 1 << 20)
        #expect { try Store.open(meta: blank, data: d1) } throws: { ($0 as? StoreError)?.message.contains("no scoutfs filesystem") == true }
        let shrunk = MemoryBlockDevice(name: "shrunk", size: Fixture.metaSize / 2)
        for off in stride(from: UInt64(0), to: 1 << 20, by: 4096) { try shrunk.write(at: off, try m1.read(at: off, count: 4096)) }
        #expect { try Store.open(meta: shrunk, data: d1) } throws: { ($0 as? StoreError)?.message.contains("truncated") == true }
    }

    @Test func formatRefusesSmallDevicesAndExistingFilesystems() throws {
        let (m, d) = Fixture.devices()
        _ = try Fixture.format(m, d)
        #expect { try Fixture.format(m, d) } throws: { ($0 as? StoreError)?.code == .exists }
        let forced = try Store.format(meta: m, data: d, quorumSlots: Fixture.slots, force: true)
        #expect(forced.superblock.seq == 1)
        let small = MemoryBlockDevice(name: "small", size: 100 << 20)
        #expect { try Fixture.format(small, d) } throws: { ($0 as? StoreError)?.code == .tooSmall }
        #expect { try Store.format(meta: m, data: d, quorumSlots: [], force: true) } throws: { ($0 as? StoreError)?.code == .invalid }
        let dup = [QuorumSlot(slot: 1, address: "127.0.0.1", port: 1), QuorumSlot(slot: 1, address: "127.0.0.1", port: 2)]
        #expect { try Store.format(meta: m, data: d, quorumSlots: dup, force: true) } throws: { ($0 as? StoreError)?.code == .invalid }
    }
}

/// Free-space items that checksum but describe blocks past the device.
@Suite struct DamagedFreeTreeTests {
    @Test func aFreeExtentNearTheTopOfTheBlockNumbersIsReportedAndNeverHandedOut() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        let bad = Extent(start: UInt64.max - 1, length: 8)
        var t = s.dataAlloc.tree
        try t.insert(Item(key: ExtentAllocator.startKey(bad.start, bad.length), seq: 1), in: s)
        try t.insert(Item(key: ExtentAllocator.lengthKey(bad.length, bad.start), seq: 1), in: s)
        s.dataAlloc.tree = t
        try s.commit()

        let report = Checker.check(meta: m, data: d)
        #expect(report.problems.contains { $0.contains("free extent of 8 blocks at \(UInt64.max - 1)") }, "\(report.problems)")
        let store = try Store.open(meta: m, data: d)
        do {
            _ = try store.allocData(1)
            Issue.record("allocated from a free extent past the device")
        } catch let e as StoreError {
            #expect(e.code == .corrupt)
            #expect(e.message.contains("lies outside the device"), "\(e.message)")
        }
    }
}

@Suite struct BlockCacheLifetimeTests {
    /// A closed store gives back its cached blocks: the LRU links between them must not keep
    /// them alive.
    @Test func cachedBlocksAreFreedWithTheStore() throws {
        weak var node: CachedNode?
        do {
            let cache = BlockCache(capacity: 16)
            for b in 0..<8 as Range<UInt64> {
                cache.insert(CachedNode(blkno: b, seq: 1, block: BTreeBlock(level: 0), dirty: false))
            }
            node = cache.get(3, seq: 1)
            #expect(node != nil)
        }
        #expect(node == nil)
    }
}
