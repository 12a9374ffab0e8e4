/// A reference from a parent (or the superblock) to a metadata block. The `seq` is the commit
/// that wrote the block: a block whose header carries another seq has been freed and rewritten
/// since, which means the reader followed an old root.
public struct BlockRef: Hashable, Sendable, CustomStringConvertible {
    public var blkno: UInt64
    public var seq: UInt64

    public static let encodedSize = 16
    public static let none = BlockRef(blkno: 0, seq: 0)

    public init(blkno: UInt64, seq: UInt64) {
        self.blkno = blkno
        self.seq = seq
    }

    public var isNone: Bool { blkno == 0 }

    public func encode(into w: inout ByteWriter) {
        w.u64(blkno)
        w.u64(seq)
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        blkno = try r.u64()
        seq = try r.u64()
    }

    public var description: String { "\(blkno)@\(seq)" }
}

/// The first 32 bytes of every metadata block: `crc32c` of everything after the crc field, the
/// block kind's magic, the filesystem id, the commit seq that wrote it and its own block number.
public struct BlockHeader: Equatable, Sendable {
    public var crc: UInt32
    public var magic: UInt32
    public var fsid: UInt64
    public var seq: UInt64
    public var blkno: UInt64

    public static let encodedSize = 32

    public init(crc: UInt32 = 0, magic: UInt32, fsid: UInt64, seq: UInt64, blkno: UInt64) {
        self.crc = crc
        self.magic = magic
        self.fsid = fsid
        self.seq = seq
        self.blkno = blkno
    }

    public func encode(into w: inout ByteWriter) {
        w.u32(crc)
        w.u32(magic)
        w.u64(fsid)
        w.u64(seq)
        w.u64(blkno)
    }

    public init(decoding r: inout some FieldReader) throws(FormatError) {
        crc = try r.u32()
        magic = try r.u32()
        fsid = try r.u64()
        seq = try r.u64()
        blkno = try r.u64()
    }

    /// Writes the header into the first bytes of `block` and the crc over the rest.
    public static func seal(_ block: UnsafeMutableRawBufferPointer, magic: UInt32, fsid: UInt64, seq: UInt64, blkno: UInt64) {
        precondition(block.count >= encodedSize)
        var w = RawWriter(block, offset: 4)
        w.u32(magic)
        w.u64(fsid)
        w.u64(seq)
        w.u64(blkno)
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[4...]))
        block.storeBytes(of: crc.littleEndian, toByteOffset: 0, as: UInt32.self)
    }

    /// The same, on a block held in an array.
    public static func seal(_ block: inout [UInt8], magic: UInt32, fsid: UInt64, seq: UInt64, blkno: UInt64) {
        block.withUnsafeMutableBytes { seal($0, magic: magic, fsid: fsid, seq: seq, blkno: blkno) }
    }

    /// What a read of a block found, checked against what the reader expected.
    public enum Verdict: Equatable, Sendable {
        case valid
        /// Checksum matches but the block is not the one referenced (another seq, blkno or
        /// magic): it was freed and reused since the reference was written.
        case stale(String)
        /// The bytes do not checksum: media error, torn write, or tampering.
        case corrupt(String)
    }

    /// Checks a whole block read from the device. `seq == nil` accepts any seq (superblocks).
    public static func verify(_ block: [UInt8], magic: UInt32, fsid: UInt64?, blkno: UInt64, seq: UInt64?) -> Verdict {
        block.withUnsafeBytes { verify($0, magic: magic, fsid: fsid, blkno: blkno, seq: seq) }
    }

    /// The same check of a block in a buffer the caller owns (a read that skips the copy).
    public static func verify(_ block: UnsafeRawBufferPointer, magic: UInt32, fsid: UInt64?, blkno: UInt64, seq: UInt64?) -> Verdict {
        var r = RawReader(block, what: "block header")
        guard let h = try? BlockHeader(decoding: &r) else { return .corrupt("shorter than a block header") }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[4...]))
        if crc != h.crc {
            return .corrupt("checksum mismatch (stored \(hex32(h.crc)), computed \(hex32(crc)))")
        }
        if h.magic != magic {
            return .stale("magic \(hex32(h.magic)), expected \(hex32(magic))")
        }
        if let fsid, h.fsid != fsid {
            return .stale("belongs to filesystem \(hex(h.fsid)), expected \(hex(fsid))")
        }
        if h.blkno != blkno {
            return .stale("header names block \(h.blkno)")
        }
        if let seq, h.seq != seq {
            return .stale("written at seq \(h.seq), reference expects seq \(seq)")
        }
        return .valid
    }
}

public func hex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}

func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 8 - s.count)) + s
}
