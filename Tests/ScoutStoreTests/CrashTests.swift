import ScoutTestSupport
import Testing
import ScoutFormat
@testable import ScoutStore

/// Power loss at chosen points of a workload: after reopening, the filesystem holds exactly the
/// last committed state and `check` finds nothing wrong.
@Suite struct CrashTests {
    struct Outcome {
        var committed: [Item]
        /// The state a commit was writing when power failed. A torn superblock write may still
        /// land whole (when the bytes that changed all sit in the half that landed); only then
        /// may the recovered state be this one.
        var inFlight: [Item]?
        var superblockTorn: Bool
        var crashed: Bool
        /// Metadata device events (writes and flushes) the workload issued after mkfs.
        var events: Int
        var meta: MemoryBlockDevice
        var data: MemoryBlockDevice
    }

    /// A seeded workload of inserts, updates, deletes, data allocations and frees with a commit
    /// every few operations. Power fails at metadata device event `cut` (counted from the end of
    /// mkfs); the data device only sees flushes here, so the metadata device decides every cut.
    func run(seed: UInt64, cut: Int?, tear: Bool) throws -> Outcome {
        var rng = SplitMix64(seed: seed)
        let meta = FaultyDevice(size: Fixture.metaSize, name: "meta")
        let data = FaultyDevice(size: Fixture.dataSize, name: "data")
        let s = try Fixture.format(meta, data)
        let start = meta.events
        if let cut {
            meta.crashAt = start + cut
            meta.tear = tear
        }
        var live = ReferenceMap()
        var committed: [Item] = []
        var extents: [Key] = []
        var crashed = false
        var inFlight: [Item]?
        func commit() throws {
            inFlight = live.sorted
            try s.commit()
            committed = inFlight!
            inFlight = nil
        }
        do {
            for op in 0..<1500 {
                let roll = Int.random(in: 0..<100, using: &rng)
                if roll < 55 {
                    let k = Fixture.key(UInt64.random(in: 0..<3000, using: &rng))
                    let len = Int.random(in: 0..<60, using: &rng)
                    let item = Item(key: k, seq: UInt64(op), value: [UInt8](repeating: UInt8(op & 0xff), count: len))
                    try s.insert(item, into: .fs)
                    live.set(item)
                } else if roll < 80 {
                    if let k = live.randomKey(using: &rng), k.type != ItemType.dataExtent {
                        try s.delete(k, from: .fs)
                        live.remove(k)
                    }
                } else if roll < 88 {
                    // Data blocks are owned by extent items, as a file's would be.
                    let e = try s.allocData(UInt64.random(in: 1...64, using: &rng))
                    let item = Self.extentItem(ino: 100_000 + UInt64(op), e)
                    try s.insert(item, into: .fs)
                    live.set(item)
                    extents.append(item.key)
                } else if roll < 94 {
                    if !extents.isEmpty {
                        let k = extents.remove(at: Int.random(in: 0..<extents.count, using: &rng))
                        let old = try s.delete(k, from: .fs)!
                        live.remove(k)
                        s.freeData(Extent(start: try FileExtent(decoding: old.value).blkno, length: k.third))
                    }
                } else {
                    try commit()
                }
            }
            try commit()
        } catch let e as StoreError where e.code == .io || e.code == .failed {
            crashed = true
        }
        let superEnd = Layout.superOffset(copy: 1) + UInt64(Layout.smallBlockSize)
        let superblockTorn = meta.tornOffset.map { $0 < superEnd } ?? false
        return Outcome(committed: committed, inFlight: inFlight, superblockTorn: superblockTorn,
                       crashed: crashed, events: meta.events - start,
                       meta: meta.durableImage(), data: data.durableImage())
    }

    static func extentItem(ino: UInt64, _ e: Extent) -> Item {
        Item(key: Key(zone: Zone.fs, first: ino, type: ItemType.dataExtent, second: e.length - 1, third: e.length),
             seq: 1, value: FileExtent(blkno: e.start, flags: []).encoded)
    }

    func verifyRecovered(_ o: Outcome, context: String) throws {
        let s = try Store.open(meta: o.meta, data: o.data, options: Fixture.smallNodes)
        let recovered = try Fixture.contents(s)
        if o.superblockTorn, let inFlight = o.inFlight, recovered == inFlight {
            // The torn superblock write carried every changed byte: the commit landed.
        } else {
            #expect(recovered == o.committed, "\(context): recovered state is not the last commit")
        }
        #expect(Checker.check(meta: o.meta, data: o.data).problems == [], "\(context)")
        // The recovered filesystem keeps working: its allocators hand out nothing still in use.
        for i in 0..<300 as Range<UInt64> {
            try s.insert(Item(key: Fixture.key(10_000 + i), seq: 1, value: [1, 2, 3]), into: .fs)
        }
        try s.insert(Self.extentItem(ino: 1, try s.allocData(100)), into: .fs)
        try s.commit()
        #expect(Checker.check(meta: o.meta, data: o.data).problems == [], "\(context): after more work")
    }

    @Test func workloadWithoutCrashIsCleanAndComplete() throws {
        let o = try run(seed: 11, cut: nil, tear: false)
        #expect(!o.crashed)
        #expect(o.committed.count > 300)
        try verifyRecovered(o, context: "no crash")
    }

    /// Drop-unflushed mode cuts between any two device events; tear mode also lands half of the
    /// write in flight (a torn tree block or a torn superblock).
    @Test(arguments: [false, true])
    func powerLossAtManyPointsRecoversTheLastCommit(tear: Bool) throws {
        let total = try run(seed: 11, cut: nil, tear: false).events
        #expect(total > 100)
        var rng = SplitMix64(seed: tear ? 99 : 42)
        var cuts = Set<Int>([0, 1, 2, 3, total - 3, total - 2, total - 1])
        while cuts.count < 40 { cuts.insert(Int.random(in: 0..<total, using: &rng)) }
        for cut in cuts.sorted() {
            let o = try run(seed: 11, cut: cut, tear: tear)
            #expect(o.crashed, "cut at event \(cut) of \(total) did not crash the workload")
            try verifyRecovered(o, context: "cut at event \(cut) of \(total)\(tear ? " (torn)" : "")")
        }
    }

    /// Every event of one commit, one by one: the window between the blocks' flush, the
    /// superblock write and its flush is where atomicity lives.
    @Test func everyEventOfTheLastCommit() throws {
        let total = try run(seed: 5, cut: nil, tear: false).events
        let window = 12
        for cut in max(0, total - window)..<total {
            for tear in [false, true] {
                let o = try run(seed: 5, cut: cut, tear: tear)
                try verifyRecovered(o, context: "cut at event \(cut) of \(total)\(tear ? " (torn)" : "")")
            }
        }
    }

    /// A server replaced by a newer leader refuses at its last step: the superblock is not
    /// written, the store refuses everything after, and the devices hold the last commit.
    @Test func aRefusalBeforeTheSuperblockWriteLeavesTheLastCommit() throws {
        let (meta, data) = Fixture.devices()
        let s = try Fixture.format(meta, data)
        try s.insert(Item(key: Fixture.key(1), seq: s.txnSeq, value: [1]), into: .fs)
        try s.commit()
        s.beforeSuperblockWrite = { throw StoreError(.io, "a newer leader was elected") }
        try s.insert(Item(key: Fixture.key(2), seq: s.txnSeq, value: [2]), into: .fs)
        #expect(throws: StoreError.self) { try s.commit() }
        #expect(throws: StoreError.self) { try s.insert(Item(key: Fixture.key(3), seq: s.txnSeq, value: [3]), into: .fs) }
        let reopened = try Store.open(meta: meta, data: data)
        #expect(try Fixture.contents(reopened).map(\.key) == [Fixture.key(1)])
        #expect(Checker.check(meta: meta, data: data).problems == [])
    }
}

