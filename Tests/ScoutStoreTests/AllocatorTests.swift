import ScoutTestSupport
import Testing
import ScoutFormat
@testable import ScoutStore

@Suite struct AllocatorTests {
    @Test func freedDataIsNotReusedBeforeCommit() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        var got: [Extent] = []
        while true {
            do { got.append(try s.allocData(1 << 20)) } catch let e as StoreError where e.code == .noSpace { break }
        }
        #expect(got.reduce(0) { $0 + $1.length } == Fixture.dataSize / 4096 - Layout.dataFirstBlkno)
        try s.commit()
        let victim = got.removeLast()
        s.freeData(victim)
        #expect(s.freeDataBlocks == victim.length)
        #expect { try s.allocData(1) } throws: { ($0 as? StoreError)?.code == .noSpace }
        try s.commit()
        let again = try s.allocData(victim.length)
        #expect(again == victim)
        try s.commit()
        #expect(Checker.check(meta: m, data: d).problems.allSatisfy { $0.contains("leaked") })
    }

    @Test func bestFitPrefersTheSmallestExtentThatHolds() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        let a = try s.allocData(10)
        let b = try s.allocData(100)
        let c = try s.allocData(3)
        _ = try s.allocData(1)
        s.freeData(a)
        s.freeData(c)
        try s.commit()
        #expect(try s.allocData(3) == c)
        #expect(try s.allocData(8).start == a.start)
        // b merges with what is left of a, and best fit takes the front of the merged extent.
        s.freeData(b)
        try s.commit()
        #expect(try s.allocData(100) == Extent(start: a.start + 8, length: 100))
    }

    @Test func fullMetadataDeviceFailsCleanlyAndRecovers() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        var n: UInt64 = 0
        let big = [UInt8](repeating: 1, count: Item.maxValueLength)
        do {
            while true {
                try s.insert(Item(key: Fixture.key(n), seq: 1, value: big), into: .fs)
                n += 1
                if n % 2000 == 0 { try s.commit() }
            }
        } catch let e as StoreError where e.code == .noSpace {
            #expect(e.message.contains("metadata device"))
        }
        #expect(n > 1000)
        try s.commit()
        #expect(Checker.check(meta: m, data: d).problems == [])
        for i in 0..<n / 2 { try s.delete(Fixture.key(i), from: .fs) }
        try s.commit()
        for i in 0..<100 as Range<UInt64> { try s.insert(Item(key: Fixture.key(n + i), seq: 2, value: big), into: .fs) }
        try s.commit()
        #expect(Checker.check(meta: m, data: d).problems == [])
        let reopened = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        #expect(try reopened.lookup(Fixture.key(n + 99), in: .fs)?.value == big)
    }

    @Test func checkFindsLeakedAndDoublyOwnedBlocks() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        // Take blocks out of the free tree without recording them anywhere: a leak.
        _ = try s.allocData(5)
        try s.commit()
        let report = Checker.check(meta: m, data: d)
        #expect(report.problems.contains { $0.contains("data blocks 64..68 are neither free nor referenced") })
        // Record an extent item pointing into free space: blocks owned twice.
        let s2 = try Store.open(meta: m, data: d, options: Fixture.smallNodes)
        let key = Key(zone: Zone.fs, first: 5, type: ItemType.dataExtent, second: 9, third: 10)
        try s2.insert(Item(key: key, seq: 1, value: FileExtent(blkno: 1000, flags: []).encoded), into: .fs)
        try s2.commit()
        let r2 = Checker.check(meta: m, data: d)
        #expect(r2.problems.contains { $0.contains("data block 1000 is claimed twice") })
    }
}

@Suite struct CopyOnWriteTests {
    /// The invariant crash safety rests on: a commit writes no block that the previous commit's
    /// roots reach, including blocks the commit itself frees and hands back to the allocator.
    @Test func commitsNeverWriteBlocksTheLastCommitReaches() throws {
        let m = RecordingDevice(size: Fixture.metaSize, name: "meta")
        let d = MemoryBlockDevice(name: "data", size: Fixture.dataSize)
        let s = try Fixture.format(m, d)
        var rng = SplitMix64(seed: 3)
        var data: [Extent] = []
        for round in 0..<40 {
            let reachable = try s.committedBlocks()
            m.written = []
            // Rewrite every key, so the whole previous tree is copied and freed, plus some churn.
            for i in 0..<1500 as Range<UInt64> {
                try s.insert(Item(key: Fixture.key(i), seq: UInt64(round), value: [UInt8](repeating: UInt8(round), count: 20)), into: .fs)
            }
            for _ in 0..<200 {
                let k = Fixture.key(UInt64.random(in: 1500..<4000, using: &rng))
                if Bool.random(using: &rng) {
                    try s.insert(Item(key: k, seq: UInt64(round), value: [UInt8](repeating: 1, count: Int.random(in: 0..<200, using: &rng))), into: .fs)
                } else {
                    try s.delete(k, from: .fs)
                }
            }
            data.append(try s.allocData(UInt64.random(in: 1...30, using: &rng)))
            if data.count > 4 { s.freeData(data.removeFirst()) }
            // Bring the reserve near its low-water mark (freeing the surplus) so that the commit
            // refills it part way through putting this transaction's frees into the free tree.
            let target = ExtentAllocator.reserveLowWater + round % 10
            while s.metaAlloc.reserve.count > target {
                s.metaAlloc.pendingFree.append(Extent(start: s.metaAlloc.reserve.removeLast(), length: 1))
            }
            try s.commit()
            let overwritten = m.written.intersection(reachable).subtracting([0, 1, 2, 3])
            #expect(overwritten.isEmpty, "round \(round): commit wrote blocks \(overwritten.sorted()) still reachable from the previous root")
        }
    }

    /// A refill while the commit puts freed blocks into the free tree must not take those
    /// blocks: the previous root still reaches them until the commit lands.
    @Test func refillDuringCommitSkipsBlocksFreedInTheTransaction() throws {
        let (m, d) = Fixture.devices()
        let s = try Fixture.format(m, d)
        for i in 0..<1500 as Range<UInt64> { try s.insert(Item(key: Fixture.key(i), seq: 1, value: [1]), into: .fs) }
        try s.commit()
        let reachable = try s.committedBlocks()
        for i in 0..<1500 as Range<UInt64> { try s.insert(Item(key: Fixture.key(i), seq: 2, value: [2]), into: .fs) }
        let freed = Set(s.metaAlloc.pendingFree.flatMap { $0.start..<$0.end })
        #expect(!freed.isEmpty && freed.isSubset(of: reachable))
        try s.metaAlloc.applyPendingFrees(s)
        // The freed blocks are now the lowest free extents; an empty reserve must refill elsewhere.
        s.metaAlloc.reserve = []
        try s.metaAlloc.refillReserve(s)
        #expect(!s.metaAlloc.reserve.isEmpty)
        #expect(freed.isDisjoint(with: s.metaAlloc.reserve), "refill handed out blocks the last commit still references")
    }

    @Test func firstGapSkipsAvoidedRanges() {
        let avoid = [Extent(start: 10, length: 5), Extent(start: 20, length: 5)]
        #expect(ExtentAllocator.firstGap(in: Extent(start: 10, length: 5), avoiding: avoid, upTo: 100) == nil)
        #expect(ExtentAllocator.firstGap(in: Extent(start: 10, length: 20), avoiding: avoid, upTo: 100) == Extent(start: 15, length: 5))
        #expect(ExtentAllocator.firstGap(in: Extent(start: 0, length: 30), avoiding: avoid, upTo: 4) == Extent(start: 0, length: 4))
        #expect(ExtentAllocator.firstGap(in: Extent(start: 22, length: 10), avoiding: avoid, upTo: 100) == Extent(start: 25, length: 7))
        #expect(ExtentAllocator.firstGap(in: Extent(start: 40, length: 2), avoiding: avoid, upTo: 100) == Extent(start: 40, length: 2))
    }
}

@Suite struct GrowTests {
    /// A filesystem made on part of its devices grows onto the rest: the new blocks are free
    /// after the commit, a full data device has room again, a reopen keeps the totals, and the
    /// checker finds every block accounted for. Shrinking, and growing past a device's end,
    /// are refused with nothing changed.
    @Test func aFilesystemGrowsOntoMoreOfItsDevices() throws {
        let meta = MemoryBlockDevice(name: "meta", size: 128 << 20)
        let data = MemoryBlockDevice(name: "data", size: 64 << 20)
        let s = try Store.format(meta: meta, data: data, quorumSlots: Fixture.slots, options: Fixture.smallNodes,
                                 metaBytes: 64 << 20, dataBytes: 32 << 20, allowSmall: true)
        let meta0 = s.superblock.metaTotalBlocks, data0 = s.superblock.dataTotalBlocks
        #expect(meta0 == 1024 && data0 == 8192)
        var got: [Extent] = []
        while true {
            do { got.append(try s.allocData(1 << 20)) } catch let e as StoreError where e.code == .noSpace { break }
        }
        try s.commit()
        #expect(s.freeDataBlocks == 0)
        let metaFree0 = s.freeMetaBlocks

        #expect { try s.grow(metaTotalBlocks: meta0 - 1, dataTotalBlocks: nil) } throws: { ($0 as? StoreError)?.code == .invalid }
        #expect { try s.grow(metaTotalBlocks: nil, dataTotalBlocks: data0 - 1) } throws: { ($0 as? StoreError)?.code == .invalid }
        // Past the data device's 16,384 blocks, with a good metadata total beside it: neither changes.
        #expect { try s.grow(metaTotalBlocks: 2048, dataTotalBlocks: 16385) } throws: { ($0 as? StoreError)?.code == .invalid }
        #expect(s.superblock.metaTotalBlocks == meta0 && s.superblock.dataTotalBlocks == data0 && !s.hasChanges)

        try s.grow(metaTotalBlocks: 2048, dataTotalBlocks: 12288)
        try s.commit()
        #expect(s.metaTotalBlocks == 2048 && s.dataTotalBlocks == 12288)
        #expect(s.freeDataBlocks == 4096)
        // Less the few blocks the free tree's own edit took.
        #expect(s.freeMetaBlocks > metaFree0 + 1000 && s.freeMetaBlocks <= metaFree0 + 1024)
        let more = try s.allocData(4096)
        #expect(more == Extent(start: data0, length: 4096))
        try s.commit()

        // The device grows again (a longer file, a grown volume) and the filesystem with it.
        data.grow(to: 128 << 20)
        #expect { try s.grow(metaTotalBlocks: nil, dataTotalBlocks: 32769) } throws: { ($0 as? StoreError)?.code == .invalid }
        try s.grow(metaTotalBlocks: nil, dataTotalBlocks: 32768)
        try s.commit()

        let again = try Store.open(meta: meta, data: data, options: Fixture.smallNodes)
        #expect(again.superblock.metaTotalBlocks == 2048 && again.superblock.dataTotalBlocks == 32768)
        #expect(again.freeDataBlocks == 32768 - 12288)
        let report = Checker.check(meta: meta, data: data)
        // Allocated here but referenced by nothing: the only findings are those leaks.
        #expect(report.problems.allSatisfy { $0.contains("leaked") }, "\(report.problems)")
        #expect(report.dataBlocks == 32768)
    }
}
