/// Where things live on the two devices. All offsets and sizes of the on-disk format are named
/// here; nothing else in the code spells them out.
///
/// Metadata device (64 KiB "large" blocks for trees, 4 KiB "small" blocks for the rest):
/// ```
///   0 KiB   unused (room for a partition label or boot block)
///  64 KiB   superblock copy 0      (small block 16)
///  68 KiB   superblock copy 1      (small block 17)
/// 128 KiB   quorum block, slot 0…14 (small blocks 32…46)
/// 256 KiB   first tree block       (large block 4) … end of device
/// ```
/// Data device (4 KiB blocks): a copy of the superblock at 64 KiB, file data from 256 KiB.
public enum Layout {
    public static let metaBlockShift = 16
    public static let metaBlockSize = 1 << metaBlockShift
    public static let smallBlockSize = 4096
    public static let dataBlockShift = 12
    public static let dataBlockSize = 1 << dataBlockShift

    /// Small-block numbers of the two alternating superblock copies; commit `seq` goes to copy
    /// `seq % 2`, so a torn superblock write always leaves the previous commit readable.
    public static let superSmallBlkno: [UInt64] = [16, 17]
    public static let quorumFirstSmallBlkno: UInt64 = 32
    public static let maxQuorumSlots = 15

    /// First 64 KiB block the allocator may hand out.
    public static let metaFirstBlkno: UInt64 = 4
    /// Small block holding the data device's superblock copy.
    public static let dataSuperSmallBlkno: UInt64 = 16
    /// First 4 KiB data block the allocator may hand out.
    public static let dataFirstBlkno: UInt64 = 64

    /// Smallest devices mkfs accepts: small enough for sparse test and demo files, large enough
    /// that the allocators have room to work.
    public static let minMetaDeviceBytes: UInt64 = 256 << 20
    public static let minDataDeviceBytes: UInt64 = 256 << 20
    /// Smallest devices mkfs accepts when told to allow small ones (`-A`): the metadata
    /// allocator's first reserve and trees still fit with room to spare.
    public static let smallestMetaDeviceBytes: UInt64 = 32 << 20
    public static let smallestDataDeviceBytes: UInt64 = 16 << 20

    public static func superOffset(copy: Int) -> UInt64 { superSmallBlkno[copy] * UInt64(smallBlockSize) }
    public static func quorumSmallBlkno(slot: Int) -> UInt64 { quorumFirstSmallBlkno + UInt64(slot) }
    public static var dataSuperOffset: UInt64 { dataSuperSmallBlkno * UInt64(smallBlockSize) }
}

/// Magic numbers per block kind; a block read with the wrong magic is stale or foreign.
public enum BlockMagic {
    public static let superblock: UInt32 = 0x103c_428b
    public static let btree: UInt32 = 0xe597_f96d
    public static let quorum: UInt32 = 0xbc31_0868
}

/// The current (and only) on-disk format version.
public enum FormatVersion {
    public static let current: UInt64 = 1
}
