import ScoutFormat
import ScoutServer
import ScoutStore
import Testing

/// mkfs -z: the server fills each client's data pool from zones of its own.
@Suite struct DataZoneTests {
    static let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)]
    static let zone = SuperBlock.minDataAllocZoneBlocks

    /// Four zones of 4 GiB on a 16 GiB data device (sparse, in memory).
    func format(zoneBlocks: UInt64) throws -> Store {
        try Store.format(meta: MemoryBlockDevice(name: "meta", size: 256 << 20), data: MemoryBlockDevice(name: "data", size: 16 << 30),
                         quorumSlots: Self.slots, dataAllocZoneBlocks: zoneBlocks)
    }

    func zones(_ extents: [Extent]) -> Set<UInt64> {
        Set(extents.flatMap { e in Array((e.start / Self.zone)...((e.end - 1) / Self.zone)) })
    }

    /// Clients refilling in turn each get blocks of one zone that no other client's pool
    /// holds, and keep getting that zone's blocks; without zones the same refills interleave
    /// on the device.
    @Test func eachClientsPoolComesFromZonesOfItsOwn() throws {
        let store = try format(zoneBlocks: Self.zone)
        #expect(store.superblock.dataAllocZoneBlocks == Self.zone)
        let server = LocalServer(store: store, poolRefill: 8192)
        var pools: [UInt64: [Extent]] = [:]
        for round in 0..<4 {
            for rid: UInt64 in [1, 2, 3] {
                pools[rid, default: []] += try server.refillDataPool(rid: rid, atLeast: 8192)
                if round == 1 { try store.commit() }
            }
        }
        let z1 = zones(pools[1]!), z2 = zones(pools[2]!), z3 = zones(pools[3]!)
        #expect(z1.count == 1 && z2.count == 1 && z3.count == 1, "\(z1) \(z2) \(z3)")
        #expect(z1.isDisjoint(with: z2) && z1.isDisjoint(with: z3) && z2.isDisjoint(with: z3))
        #expect(pools.values.allSatisfy { $0.reduce(0) { $0 + $1.length } >= 4 * 8192 })

        // A fourth client takes the last vacant zone; a fifth finds none vacant and takes
        // blocks wherever they are free.
        let four = try server.refillDataPool(rid: 4, atLeast: 8192)
        #expect(zones(four).isDisjoint(with: z1.union(z2).union(z3)))
        #expect(try server.refillDataPool(rid: 5, atLeast: 8192).reduce(0) { $0 + $1.length } >= 8192)

        let plain = LocalServer(store: try format(zoneBlocks: 0), poolRefill: 8192)
        let a = try plain.refillDataPool(rid: 1, atLeast: 8192)
        let b = try plain.refillDataPool(rid: 2, atLeast: 8192)
        #expect(zones(a) == zones(b), "without zones both pools come from the front of the device")
    }

    /// The original's limits on the zone size, with its words; nothing is written when refused.
    @Test func zoneSizesOutsideTheOriginalsLimitsAreRefused() throws {
        let total: UInt64 = (16 << 30) >> 12
        #expect(SuperBlock.dataAllocZoneProblem(0, totalBlocks: total) == nil)
        #expect(SuperBlock.dataAllocZoneProblem(Self.zone - 1, totalBlocks: total)
            == "setting data_alloc_zone_blocks to '1048575' failed, must be at least 1048576 mount data allocation target blocks")
        #expect(SuperBlock.dataAllocZoneProblem(Self.zone, totalBlocks: 2048 * Self.zone)
            == "setting data_alloc_zone_blocks to '1048576' failed, must be greater than 2097152 blocks which results in max 1024 zones")
        #expect(SuperBlock.dataAllocZoneProblem(total + 1, totalBlocks: total)
            == "setting data_alloc_zone_blocks to '4194305' failed, must be at most 4194304 total data device blocks")
        let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        #expect { try Store.format(meta: meta, data: MemoryBlockDevice(name: "data", size: 16 << 30), quorumSlots: Self.slots,
                                   dataAllocZoneBlocks: 100) } throws: { ($0 as? StoreError)?.code == .invalid }
        #expect(!Store.holdsFilesystem(meta))
        // The zone size survives a reopen.
        let store = try format(zoneBlocks: 2 * Self.zone)
        try store.commit()
        let again = try Store.open(meta: store.meta, data: store.data)
        #expect(again.superblock.dataAllocZoneBlocks == 2 * Self.zone)
    }
}
