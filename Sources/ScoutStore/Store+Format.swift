public import ScoutFormat

extension Store {
    /// Formats both devices as a new, empty filesystem and returns it open.
    ///
    /// Refuses a device smaller than the format's minimum, and a device that already holds a
    /// scoutfs filesystem unless `force` is set. Both superblock copies are cleared first, so a
    /// forced format never leaves an older filesystem's superblock to win on the next open.
    /// Formats `meta` and `data`, using at most `metaBytes` and `dataBytes` of them (whole
    /// devices when nil). `allowSmall` accepts sizes below the usual minimums, down to the
    /// smallest the allocators work with.
    public static func format(
        meta: any BlockDevice, data: any BlockDevice, quorumSlots: [QuorumSlot],
        force: Bool = false, uuid: [UInt8]? = nil, options: StoreOptions = StoreOptions(),
        metaBytes: UInt64? = nil, dataBytes: UInt64? = nil, allowSmall: Bool = false,
        dataAllocZoneBlocks: UInt64 = 0
    ) throws -> Store {
        let metaSize = min(meta.size, metaBytes ?? .max)
        let dataSize = min(data.size, dataBytes ?? .max)
        let metaMin = allowSmall ? Layout.smallestMetaDeviceBytes : Layout.minMetaDeviceBytes
        let dataMin = allowSmall ? Layout.smallestDataDeviceBytes : Layout.minDataDeviceBytes
        let hint = allowSmall ? "" : " (-A allows down to \(mib(Layout.smallestMetaDeviceBytes)) of metadata and \(mib(Layout.smallestDataDeviceBytes)) of data)"
        if metaSize < metaMin {
            throw StoreError(.tooSmall, "metadata device \(meta.name) is \(mib(metaSize)); scoutfs needs at least \(mib(metaMin))\(hint)")
        }
        if dataSize < dataMin {
            throw StoreError(.tooSmall, "data device \(data.name) is \(mib(dataSize)); scoutfs needs at least \(mib(dataMin))\(hint)")
        }
        if quorumSlots.isEmpty {
            throw StoreError(.invalid, "at least one quorum slot is needed (-Q 0,ADDRESS,PORT)")
        }
        var seen = Set<UInt8>()
        for s in quorumSlots {
            if Int(s.slot) >= Layout.maxQuorumSlots {
                throw StoreError(.invalid, "quorum slot \(s.slot) out of range: slots are 0 to \(Layout.maxQuorumSlots - 1)")
            }
            if !seen.insert(s.slot).inserted {
                throw StoreError(.invalid, "quorum slot \(s.slot) given twice")
            }
            if s.address.utf8.count > QuorumSlot.addressLength || s.address.isEmpty {
                throw StoreError(.invalid, "quorum slot \(s.slot): address '\(s.address)' is empty or longer than \(QuorumSlot.addressLength) bytes")
            }
        }
        if !force {
            for dev in [meta, data] where holdsFilesystem(dev) {
                throw StoreError(.exists, "\(dev.name) already holds a scoutfs filesystem; use --force to overwrite it")
            }
        }

        var id = uuid ?? randomUUID()
        precondition(id.count == SuperBlock.uuidLength)
        if id.allSatisfy({ $0 == 0 }) { id = randomUUID() }
        let metaTotal = metaSize >> UInt64(Layout.metaBlockShift)
        let dataTotal = dataSize >> UInt64(Layout.dataBlockShift)
        var sb = SuperBlock(uuid: id, metaTotalBlocks: metaTotal, dataTotalBlocks: dataTotal, quorumSlots: quorumSlots)
        if let why = SuperBlock.dataAllocZoneProblem(dataAllocZoneBlocks, totalBlocks: dataTotal) {
            throw StoreError(.invalid, why)
        }
        sb.dataAllocZoneBlocks = dataAllocZoneBlocks

        let zeros = [UInt8](repeating: 0, count: Layout.smallBlockSize)
        for copy in 0..<2 { try meta.write(at: Layout.superOffset(copy: copy), zeros) }
        try data.write(at: Layout.dataSuperOffset, zeros)
        for slot in 0..<Layout.maxQuorumSlots {
            var block = zeros
            BlockHeader.seal(&block, magic: BlockMagic.quorum, fsid: sb.fsid, seq: 0, blkno: Layout.quorumSmallBlkno(slot: slot))
            try meta.write(at: Layout.quorumSmallBlkno(slot: slot) * UInt64(Layout.smallBlockSize), block)
        }
        try meta.flush()
        try data.flush()

        // The metadata allocator starts with a reserve carved from the front of the device, and
        // uses it to build the free trees describing the rest.
        let reserveLen = UInt64(ExtentAllocator.reserveRefill)
        let store = Store(meta: meta, data: data, superblock: sb, options: options)
        store.metaAlloc.reserve = Array(stride(from: Layout.metaFirstBlkno + reserveLen - 1, through: Layout.metaFirstBlkno, by: -1))
        try store.metaAlloc.insertFree(
            Extent(start: Layout.metaFirstBlkno + reserveLen, length: metaTotal - Layout.metaFirstBlkno - reserveLen), store)
        try store.dataAlloc.insertFree(Extent(start: Layout.dataFirstBlkno, length: dataTotal - Layout.dataFirstBlkno), store)

        var dsb = sb
        dsb.flags.insert(.isDataDevice)
        dsb.seq = 1
        try data.write(at: Layout.dataSuperOffset, dsb.encode(smallBlkno: Layout.dataSuperSmallBlkno))
        try data.flush()
        try store.commit()
        return store
    }

    static func randomUUID() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        var b = (0..<SuperBlock.uuidLength).map { _ in UInt8.random(in: 0...255, using: &g) }
        b[6] = (b[6] & 0x0f) | 0x40  // version 4
        b[8] = (b[8] & 0x3f) | 0x80  // RFC 4122 variant
        return b
    }
}

func mib(_ bytes: UInt64) -> String {
    bytes >= 1 << 30 && bytes % (1 << 30) == 0 ? "\(bytes >> 30) GiB" : "\(bytes >> 20) MiB"
}
