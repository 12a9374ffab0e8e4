/// Where encoders write fixed-width fields: an array being appended to (`ByteWriter`) or a
/// whole block's buffer (`RawWriter`), so one `encode` serves both.
public protocol FieldWriter {
    mutating func u8(_ v: UInt8)
    mutating func u64BigEndian(_ v: UInt64)
}

/// Where decoders read fixed-width fields from, with bounds checks that throw.
public protocol FieldReader {
    mutating func u8() throws(FormatError) -> UInt8
    mutating func u32() throws(FormatError) -> UInt32
    mutating func u64() throws(FormatError) -> UInt64
    mutating func u64BigEndian() throws(FormatError) -> UInt64
}

/// Appends fixed-width integers and raw bytes. Integers are little-endian unless the method says
/// otherwise; keys use the big-endian methods so that byte order equals key order.
public struct ByteWriter: FieldWriter, Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var count: Int { bytes.count }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }

    public mutating func u16(_ v: UInt16) { append(v.littleEndian) }
    public mutating func u32(_ v: UInt32) { append(v.littleEndian) }
    public mutating func u64(_ v: UInt64) { append(v.littleEndian) }
    public mutating func i64(_ v: Int64) { append(v.littleEndian) }
    public mutating func u64BigEndian(_ v: UInt64) { append(v.bigEndian) }

    public mutating func raw(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }

    public mutating func zeros(_ n: Int) {
        bytes.append(contentsOf: repeatElement(0, count: n))
    }

    /// Pads with zeros up to an absolute length; the caller guarantees `count <= length`.
    public mutating func pad(to length: Int) {
        precondition(bytes.count <= length, "encoded \(bytes.count) bytes into a \(length)-byte field")
        zeros(length - bytes.count)
    }

    private mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v) { bytes.append(contentsOf: $0) }
    }
}

/// Reads fixed-width integers from a byte array with bounds checks; running past the end is a
/// `FormatError` naming what was being read, never a trap.
public struct ByteReader: FieldReader, Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    public let end: Int
    let what: String

    public init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil, what: String) {
        self.bytes = bytes
        self.offset = offset
        self.end = min(end ?? bytes.count, bytes.count)
        self.what = what
    }

    public var remaining: Int { end - offset }

    /// Fails unless every byte was read: a message or value with bytes past its end is malformed.
    public func finish() throws(FormatError) {
        if remaining != 0 { throw FormatError("\(what) has \(remaining) bytes past its end") }
    }

    public mutating func need(_ n: Int) throws(FormatError) {
        if n < 0 || offset + n > end {
            throw FormatError("\(what): truncated at byte \(offset) (needed \(n), \(remaining) left)")
        }
    }

    public mutating func u8() throws(FormatError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() throws(FormatError) -> UInt16 { UInt16(littleEndian: try load()) }
    public mutating func u32() throws(FormatError) -> UInt32 { UInt32(littleEndian: try load()) }
    public mutating func u64() throws(FormatError) -> UInt64 { UInt64(littleEndian: try load()) }
    public mutating func i64() throws(FormatError) -> Int64 { Int64(littleEndian: try load()) }
    public mutating func u64BigEndian() throws(FormatError) -> UInt64 { UInt64(bigEndian: try load()) }

    public mutating func raw(_ n: Int) throws(FormatError) -> [UInt8] {
        try need(n)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    public mutating func skip(_ n: Int) throws(FormatError) {
        try need(n)
        offset += n
    }

    private mutating func load<T: FixedWidthInteger>() throws(FormatError) -> T {
        let n = MemoryLayout<T>.size
        try need(n)
        let at = offset
        offset += n
        return bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: T.self) }
    }
}

/// Writes fixed-width fields into a caller's buffer; for whole blocks, where appending byte by
/// byte to an array would dominate the cost of a commit.
public struct RawWriter: FieldWriter {
    public let buffer: UnsafeMutableRawBufferPointer
    public private(set) var offset: Int

    public init(_ buffer: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        self.buffer = buffer
        self.offset = offset
    }

    @inline(__always)
    public mutating func store<T: FixedWidthInteger>(_ v: T) {
        let n = MemoryLayout<T>.size
        precondition(offset + n <= buffer.count, "encoding past the end of a \(buffer.count)-byte buffer")
        buffer.storeBytes(of: v, toByteOffset: offset, as: T.self)
        offset += n
    }

    public mutating func u8(_ v: UInt8) { store(v) }
    public mutating func u16(_ v: UInt16) { store(v.littleEndian) }
    public mutating func u32(_ v: UInt32) { store(v.littleEndian) }
    public mutating func u64(_ v: UInt64) { store(v.littleEndian) }
    public mutating func u64BigEndian(_ v: UInt64) { store(v.bigEndian) }

    public mutating func raw(_ bytes: [UInt8]) {
        precondition(offset + bytes.count <= buffer.count, "encoding past the end of a \(buffer.count)-byte buffer")
        bytes.withUnsafeBytes { src in
            if let base = src.baseAddress { (buffer.baseAddress! + offset).copyMemory(from: base, byteCount: src.count) }
        }
        offset += bytes.count
    }

    public mutating func raw(_ bytes: UnsafeRawBufferPointer) {
        precondition(offset + bytes.count <= buffer.count, "encoding past the end of a \(buffer.count)-byte buffer")
        if let src = bytes.baseAddress { (buffer.baseAddress! + offset).copyMemory(from: src, byteCount: bytes.count) }
        offset += bytes.count
    }

    public mutating func skip(_ n: Int) {
        precondition(offset + n <= buffer.count)
        offset += n
    }
}

/// Reads fixed-width fields from a buffer with bounds checks; the pointer-based twin of
/// `ByteReader` for decoding whole blocks.
public struct RawReader: FieldReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var offset: Int
    let what: String

    public init(_ buffer: UnsafeRawBufferPointer, offset: Int = 0, what: String) {
        self.buffer = buffer
        self.offset = offset
        self.what = what
    }

    @inline(__always)
    public mutating func load<T: FixedWidthInteger>(_: T.Type) throws(FormatError) -> T {
        let n = MemoryLayout<T>.size
        guard offset + n <= buffer.count else {
            throw FormatError("\(what): truncated at byte \(offset) (needed \(n), \(buffer.count - offset) left)")
        }
        defer { offset += n }
        return buffer.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    @inline(__always) public mutating func u8() throws(FormatError) -> UInt8 { try load(UInt8.self) }
    @inline(__always) public mutating func u16() throws(FormatError) -> UInt16 { UInt16(littleEndian: try load(UInt16.self)) }
    @inline(__always) public mutating func u32() throws(FormatError) -> UInt32 { UInt32(littleEndian: try load(UInt32.self)) }
    @inline(__always) public mutating func u64() throws(FormatError) -> UInt64 { UInt64(littleEndian: try load(UInt64.self)) }
    @inline(__always) public mutating func u64BigEndian() throws(FormatError) -> UInt64 { UInt64(bigEndian: try load(UInt64.self)) }

    public mutating func raw(_ n: Int) throws(FormatError) -> [UInt8] {
        guard n >= 0, offset + n <= buffer.count else {
            throw FormatError("\(what): truncated at byte \(offset) (needed \(n), \(buffer.count - offset) left)")
        }
        defer { offset += n }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n]))
    }

    public mutating func skip(_ n: Int) throws(FormatError) {
        guard offset + n <= buffer.count else { throw FormatError("\(what): truncated at byte \(offset)") }
        offset += n
    }
}
