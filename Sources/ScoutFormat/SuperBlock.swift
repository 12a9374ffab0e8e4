/// One configured quorum member: the slot number and where its server listens.
public struct QuorumSlot: Hashable, Sendable {
    public var slot: UInt8
    public var address: String
    public var port: UInt16

    /// Room for the longest textual IPv6 address.
    public static let addressLength = 48
    public static let encodedSize = 8 + addressLength

    public init(slot: UInt8, address: String, port: UInt16) {
        self.slot = slot
        self.address = address
        self.port = port
    }

    func encode(into w: inout ByteWriter) {
        w.u8(slot)
        w.u8(1)
        w.u16(port)
        w.zeros(4)
        let bytes = Array(address.utf8.prefix(Self.addressLength))
        w.raw(bytes)
        w.zeros(Self.addressLength - bytes.count)
    }

    /// Returns nil for an unused entry.
    static func decode(_ r: inout ByteReader) throws(FormatError) -> QuorumSlot? {
        let slot = try r.u8()
        let used = try r.u8()
        let port = try r.u16()
        try r.skip(4)
        let raw = try r.raw(Self.addressLength)
        guard used != 0 else { return nil }
        if Int(slot) >= Layout.maxQuorumSlots { throw FormatError("quorum slot \(slot) out of range 0..<\(Layout.maxQuorumSlots)") }
        let text = raw.prefix { $0 != 0 }
        guard let address = String(validating: text, as: UTF8.self), !address.isEmpty else {
            throw FormatError("quorum slot \(slot) has an unreadable address")
        }
        return QuorumSlot(slot: slot, address: address, port: port)
    }
}

/// The trees whose roots the superblock holds.
public enum TreeID: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// The merged filesystem items.
    case fs
    /// Per-mount log tree descriptors, keyed (logTrees zone, rid, nr).
    case logTrees
    /// One item per mounted client, keyed (mountedClient zone, rid).
    case mountedClients
    /// The index behind `.srch.` xattrs.
    case srch
    /// Free 64 KiB metadata blocks as extents.
    case metaFree
    /// Free 4 KiB data blocks as extents.
    case dataFree

    public var description: String {
        switch self {
        case .fs: "fs"
        case .logTrees: "log-trees"
        case .mountedClients: "mounted-clients"
        case .srch: "srch"
        case .metaFree: "meta-free"
        case .dataFree: "data-free"
        }
    }
}

/// The superblock, a 4 KiB block written at the end of every commit. Two copies alternate (commit
/// seq % 2); a reader takes the valid copy with the higher seq. The data device carries a copy
/// written by mkfs with `isDataDevice` set, so a wrong pairing of devices is refused.
public struct SuperBlock: Equatable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let isDataDevice = Flags(rawValue: 1)
    }

    /// The commit that wrote this copy (also the header seq).
    public var seq: UInt64
    public var formatVersion: UInt64
    public var flags: Flags
    /// A random UUID; its first 8 bytes (little-endian) are the `fsid` stamped on every block.
    public var uuid: [UInt8]
    /// Size of the metadata device in 64 KiB blocks.
    public var metaTotalBlocks: UInt64
    /// Size of the data device in 4 KiB blocks.
    public var dataTotalBlocks: UInt64
    /// Next inode number to hand out; inode numbers are never reused.
    public var nextIno: UInt64
    /// The server's sequence counter (transaction seqs, lock write seqs).
    public var nextSeq: UInt64
    public var quorumSlots: [QuorumSlot]
    public var roots: [TreeID: BTreeRoot]
    /// Free block totals kept by the allocators; `check` verifies them against the trees.
    public var metaFreeBlocks: UInt64
    public var dataFreeBlocks: UInt64
    /// Metadata blocks taken out of the free tree but not yet used: the allocator's own working
    /// set, which lets it copy-on-write the free tree without allocating from itself.
    public var metaReserve: [UInt64]
    /// With mkfs -z: the data device is divided into zones of this many blocks, and the server
    /// fills each mount's pool from zones no other mount's pool holds blocks of, so that mounts
    /// writing at once do not interleave their files' extents. 0: no zones.
    public var dataAllocZoneBlocks: UInt64

    public static let maxReserve = 240
    /// The most zones a data device is divided into, and the fewest blocks a zone has (a
    /// mount's data allocation target in the original, 4 GiB): the original's limits.
    public static let maxDataAllocZones: UInt64 = 1024
    public static let minDataAllocZoneBlocks: UInt64 = (4 << 30) >> 12

    /// Why `zoneBlocks` cannot divide a data device of `totalBlocks` blocks into allocation
    /// zones, in the original's words; nil when it can (0, no zones, always can).
    public static func dataAllocZoneProblem(_ zoneBlocks: UInt64, totalBlocks: UInt64) -> String? {
        guard zoneBlocks != 0 else { return nil }
        if zoneBlocks < minDataAllocZoneBlocks {
            return "setting data_alloc_zone_blocks to '\(zoneBlocks)' failed, must be at least \(minDataAllocZoneBlocks) mount data allocation target blocks"
        }
        let fewest = totalBlocks / maxDataAllocZones
        if zoneBlocks < fewest {
            return "setting data_alloc_zone_blocks to '\(zoneBlocks)' failed, must be greater than \(fewest) blocks which results in max \(maxDataAllocZones) zones"
        }
        if zoneBlocks > totalBlocks {
            return "setting data_alloc_zone_blocks to '\(zoneBlocks)' failed, must be at most \(totalBlocks) total data device blocks"
        }
        return nil
    }
    public static let uuidLength = 16

    public init(uuid: [UInt8], metaTotalBlocks: UInt64, dataTotalBlocks: UInt64, quorumSlots: [QuorumSlot]) {
        seq = 0
        formatVersion = FormatVersion.current
        flags = []
        self.uuid = uuid
        self.metaTotalBlocks = metaTotalBlocks
        self.dataTotalBlocks = dataTotalBlocks
        nextIno = 1
        nextSeq = 1
        self.quorumSlots = quorumSlots
        roots = [:]
        metaFreeBlocks = 0
        dataFreeBlocks = 0
        metaReserve = []
        dataAllocZoneBlocks = 0
    }

    public var fsid: UInt64 {
        var v: UInt64 = 0
        for i in (0..<8).reversed() { v = v << 8 | UInt64(uuid[i]) }
        return v
    }

    public var uuidString: String {
        let h = uuid.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
        let c = Array(h)
        return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { String(c[$0]) }.joined(separator: "-")
    }

    public func root(_ t: TreeID) -> BTreeRoot { roots[t] ?? .empty }

    /// Encodes a whole 4 KiB block and seals its header at small block `smallBlkno`.
    public func encode(smallBlkno: UInt64) -> [UInt8] {
        precondition(uuid.count == Self.uuidLength)
        precondition(metaReserve.count <= Self.maxReserve)
        var w = ByteWriter(capacity: Layout.smallBlockSize)
        w.zeros(BlockHeader.encodedSize)
        w.u64(formatVersion)
        w.u64(flags.rawValue)
        w.raw(uuid)
        w.u64(metaTotalBlocks)
        w.u64(dataTotalBlocks)
        w.u64(nextIno)
        w.u64(nextSeq)
        var slots = [QuorumSlot?](repeating: nil, count: Layout.maxQuorumSlots)
        for s in quorumSlots { slots[Int(s.slot)] = s }
        for s in slots {
            if let s { s.encode(into: &w) } else { w.zeros(QuorumSlot.encodedSize) }
        }
        for t in TreeID.allCases { root(t).encode(into: &w) }
        w.u64(metaFreeBlocks)
        w.u64(dataFreeBlocks)
        w.u32(UInt32(metaReserve.count))
        w.zeros(4)
        for b in metaReserve { w.u64(b) }
        w.u64(dataAllocZoneBlocks)
        w.pad(to: Layout.smallBlockSize)
        var block = w.bytes
        BlockHeader.seal(&block, magic: BlockMagic.superblock, fsid: fsid, seq: seq, blkno: smallBlkno)
        return block
    }

    /// Decodes a 4 KiB block whose header verified (`BlockHeader.verify` with any seq).
    public init(decoding block: [UInt8]) throws(FormatError) {
        var r = ByteReader(block, what: "superblock")
        let header = try BlockHeader(decoding: &r)
        seq = header.seq
        formatVersion = try r.u64()
        if formatVersion != FormatVersion.current {
            throw FormatError("superblock format version \(formatVersion); this scoutfs reads version \(FormatVersion.current)")
        }
        flags = Flags(rawValue: try r.u64())
        uuid = try r.raw(Self.uuidLength)
        metaTotalBlocks = try r.u64()
        dataTotalBlocks = try r.u64()
        nextIno = try r.u64()
        nextSeq = try r.u64()
        quorumSlots = []
        for _ in 0..<Layout.maxQuorumSlots {
            if let s = try QuorumSlot.decode(&r) { quorumSlots.append(s) }
        }
        roots = [:]
        for t in TreeID.allCases {
            let root = try BTreeRoot(decoding: &r)
            if !root.isEmpty { roots[t] = root }
        }
        metaFreeBlocks = try r.u64()
        dataFreeBlocks = try r.u64()
        let n = Int(try r.u32())
        try r.skip(4)
        if n > Self.maxReserve { throw FormatError("superblock reserve of \(n) blocks exceeds \(Self.maxReserve)") }
        metaReserve = []
        for _ in 0..<n { metaReserve.append(try r.u64()) }
        // Superblocks written before zones existed hold zeros here: no zones.
        dataAllocZoneBlocks = try r.u64()
        if header.fsid != fsid { throw FormatError("superblock header fsid \(hex(header.fsid)) does not match its uuid") }
    }
}
