/// The value of a file data extent item, keyed `(fs, ino, dataExtent, last logical block, length)`
/// so that a lookup of the first extent ending at or after a block finds the extent holding it.
public struct FileExtent: Hashable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Released to an archive: no data blocks, reads wait for stage.
        public static let offline = Flags(rawValue: 1)
        /// Allocated but never written (fallocate): reads return zeros.
        public static let unwritten = Flags(rawValue: 2)
        public static let known: Flags = [.offline, .unwritten]
    }

    /// First data-device block; 0 for offline extents, which own no blocks.
    public var blkno: UInt64
    public var flags: Flags

    public static let encodedSize = 16

    public init(blkno: UInt64, flags: Flags) {
        self.blkno = blkno
        self.flags = flags
    }

    public func encode(into w: inout ByteWriter) {
        w.u64(blkno)
        w.u8(flags.rawValue)
        w.zeros(7)
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.encodedSize)
        encode(into: &w)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == Self.encodedSize else {
            throw FormatError("file extent value is \(bytes.count) bytes, expected \(Self.encodedSize)")
        }
        var r = ByteReader(bytes, what: "file extent")
        blkno = try r.u64()
        flags = Flags(rawValue: try r.u8())
        if !Flags.known.isSuperset(of: flags) { throw FormatError("file extent has unknown flags \(flags.rawValue)") }
        if flags.contains(.offline) != (blkno == 0) {
            throw FormatError("file extent at block \(blkno) with flags \(flags.rawValue): offline extents and only they have no blocks")
        }
    }
}

/// A data extent item whose key and value were checked against the limits every reader of
/// extents relies on: at least one block, starting at or after block 0, within the largest
/// file, and (when mapped) on the data device. A damaged item fails here with its numbers
/// instead of overflowing some reader's arithmetic later.
public struct ExtentItem: Sendable {
    /// First logical block of the file that the extent covers.
    public var first: UInt64
    public var length: UInt64
    public var extent: FileExtent

    /// Logical blocks a file may have: its size is at most Int64.max bytes.
    public static let maxFileBlocks = (UInt64(Int64.max) >> UInt64(Layout.dataBlockShift)) + 1

    /// One past the last logical block; never overflows (at most `maxFileBlocks`).
    public var end: UInt64 { first + length }

    /// `dataTotalBlocks` is the data device's size in 4 KiB blocks, from the superblock.
    public init(key: Key, value: [UInt8], dataTotalBlocks: UInt64) throws(FormatError) {
        let last = key.second
        let len = key.third
        guard len > 0, last < Self.maxFileBlocks, len <= last + 1 else {
            throw FormatError("data extent item of inode \(key.first) (last block \(last), length \(len)) covers impossible blocks")
        }
        let ext: FileExtent
        do {
            ext = try FileExtent(decoding: value)
        } catch {
            throw FormatError("data extent item of inode \(key.first) (last block \(last), length \(len)): \(error.message)")
        }
        if !ext.flags.contains(.offline) {
            let (blockEnd, overflow) = ext.blkno.addingReportingOverflow(len)
            guard !overflow, ext.blkno >= Layout.dataFirstBlkno, blockEnd <= dataTotalBlocks else {
                throw FormatError("data extent item of inode \(key.first) (last block \(last), length \(len)) maps data blocks from \(ext.blkno), outside the data device's blocks \(Layout.dataFirstBlkno)..<\(dataTotalBlocks)")
            }
        }
        first = last + 1 - len
        length = len
        extent = ext
    }
}
