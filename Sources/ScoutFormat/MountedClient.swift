/// A node the server took in, as the mounted-clients tree records it (the original's
/// `mounted_clients` btree): durable before the node writes anything, so that a server taking
/// over knows whom to wait for, and how to fence one that does not come back. Removed when
/// the node leaves cleanly or its log tree is reclaimed.
///
/// Value: `version u8 (1) · slot u8 (0xff: none) · pid u32 · mounted at i64 (unix seconds) ·
/// host, boot id, address: length u8 + bytes each`.
public struct MountedClient: Sendable, Equatable {
    public var rid: UInt64
    public var slot: Int?
    public var pid: UInt32
    public var mountedAt: Int64
    public var host: String
    public var bootID: String
    /// The node's own address (its slot's, or empty for a plain client), for fence agents that
    /// act on the network.
    public var address: String

    public static let version: UInt8 = 1
    /// Longest host name, boot id or address kept.
    public static let maxText = 255

    public init(rid: UInt64, slot: Int?, pid: UInt32, mountedAt: Int64, host: String, bootID: String, address: String) {
        self.rid = rid
        self.slot = slot
        self.pid = pid
        self.mountedAt = mountedAt
        self.host = host
        self.bootID = bootID
        self.address = address
    }

    public static func key(rid: UInt64) -> Key { Key(zone: Zone.mountedClient, first: rid) }

    public func encode(into w: inout ByteWriter) {
        w.u8(Self.version)
        w.u8(slot.map { UInt8(clamping: $0) } ?? 0xff)
        w.u32(pid)
        w.i64(mountedAt)
        for text in [host, bootID, address] {
            let b = Array(text.utf8.prefix(Self.maxText))
            w.u8(UInt8(b.count))
            w.raw(b)
        }
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        encode(into: &w)
        return w.bytes
    }

    public init(rid: UInt64, decoding r: inout ByteReader) throws(FormatError) {
        self.rid = rid
        let v = try r.u8()
        guard v == Self.version else { throw FormatError("mounted client \(String(rid, radix: 16)): record version \(v), expected \(Self.version)") }
        let s = try r.u8()
        guard s == 0xff || Int(s) < Layout.maxQuorumSlots else {
            throw FormatError("mounted client \(String(rid, radix: 16)): quorum slot \(s) is past the last slot")
        }
        slot = s == 0xff ? nil : Int(s)
        pid = try r.u32()
        mountedAt = try r.i64()
        var texts: [String] = []
        for _ in 0..<3 {
            let n = Int(try r.u8())
            texts.append(String(decoding: try r.raw(n), as: UTF8.self))
        }
        host = texts[0]
        bootID = texts[1]
        address = texts[2]
    }

    public init(item: Item) throws(FormatError) {
        var r = ByteReader(item.value, what: "mounted client")
        try self.init(rid: item.key.first, decoding: &r)
        try r.finish()
    }
}
