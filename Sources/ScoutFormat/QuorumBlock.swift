/// One quorum slot's block on the metadata device (small block `Layout.quorumSmallBlkno(slot:)`).
///
/// Until the cluster elects a server, it holds a mount's *claim* on the devices: which host and
/// process mounted them through this slot, and a heartbeat counter the mount advances every
/// `intervalMillis`. A new mount on any machine reads every slot's block and refuses while a
/// claim's counter still advances; a claim whose counter has stopped is stale (its host died)
/// and may be taken over. The counter, not the wall-clock time, decides: hosts' clocks may
/// differ. mkfs writes blocks with only a header, which decode as unclaimed.
///
/// Layout after the 32-byte header (little-endian):
/// ```
///   0  version u8 (1)   state u8 (0 unclaimed, 1 mounted)   pad[6]
///   8  heartbeat u64    16  mount id u64   24  interval ms u32   28  pid u32
///  32  mounted at, unix seconds i64        40  last heartbeat, unix ns i64
///  48  host name: length u8 + 63 bytes     112 boot id: length u8 + 47 bytes
/// ```
public struct QuorumBlock: Equatable, Sendable {
    public enum State: UInt8, Sendable {
        case unclaimed = 0
        case mounted = 1
    }

    public var state: State
    public var heartbeat: UInt64
    /// Random per mount, so a mount recognizes its own claim.
    public var mountID: UInt64
    public var intervalMillis: UInt32
    public var pid: UInt32
    public var mountedAt: Int64
    public var heartbeatAtNanos: Int64
    public var host: String
    /// The kernel's boot id of the claiming host: with the host name it tells whether a claim
    /// was made on this very machine since it booted.
    public var bootID: String

    public static let version: UInt8 = 1
    public static let hostLength = 63
    public static let bootIDLength = 47

    public init(state: State = .unclaimed, heartbeat: UInt64 = 0, mountID: UInt64 = 0, intervalMillis: UInt32 = 0,
                pid: UInt32 = 0, mountedAt: Int64 = 0, heartbeatAtNanos: Int64 = 0, host: String = "", bootID: String = "") {
        self.state = state
        self.heartbeat = heartbeat
        self.mountID = mountID
        self.intervalMillis = intervalMillis
        self.pid = pid
        self.mountedAt = mountedAt
        self.heartbeatAtNanos = heartbeatAtNanos
        self.host = host
        self.bootID = bootID
    }

    /// A whole sealed small block for `slot`.
    public func encode(fsid: UInt64, slot: Int) -> [UInt8] {
        var w = ByteWriter(capacity: Layout.smallBlockSize)
        w.zeros(BlockHeader.encodedSize)
        w.u8(Self.version)
        w.u8(state.rawValue)
        w.zeros(6)
        w.u64(heartbeat)
        w.u64(mountID)
        w.u32(intervalMillis)
        w.u32(pid)
        w.i64(mountedAt)
        w.i64(heartbeatAtNanos)
        Self.text(host, Self.hostLength, &w)
        Self.text(bootID, Self.bootIDLength, &w)
        w.pad(to: Layout.smallBlockSize)
        var block = w.bytes
        BlockHeader.seal(&block, magic: BlockMagic.quorum, fsid: fsid, seq: heartbeat, blkno: Layout.quorumSmallBlkno(slot: slot))
        return block
    }

    private static func text(_ s: String, _ max: Int, _ w: inout ByteWriter) {
        var bytes = Array(s.utf8.prefix(max))
        // Never cut a multi-byte character in half: the decoder would refuse the block.
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        w.u8(UInt8(bytes.count))
        w.raw(bytes)
        w.zeros(max - bytes.count)
    }

    private static func text(_ max: Int, _ r: inout ByteReader, _ what: String) throws(FormatError) -> String {
        let n = Int(try r.u8())
        let raw = try r.raw(max)
        guard n <= max, let s = String(validating: raw[0..<n], as: UTF8.self) else {
            throw FormatError("quorum block: \(what) of \(n) bytes is not readable text")
        }
        return s
    }

    /// Decodes a block already checked with `BlockHeader.verify`. A block mkfs left (all zeros
    /// after the header) is unclaimed.
    public init(decoding block: [UInt8]) throws(FormatError) {
        var r = ByteReader(block, offset: BlockHeader.encodedSize, what: "quorum block")
        let version = try r.u8()
        let rawState = try r.u8()
        try r.skip(6)
        if version == 0 && rawState == 0 {
            self.init()
            return
        }
        guard version == Self.version else { throw FormatError("quorum block: version \(version), expected \(Self.version)") }
        guard let state = State(rawValue: rawState) else { throw FormatError("quorum block: unknown state \(rawState)") }
        self.init(state: state)
        heartbeat = try r.u64()
        mountID = try r.u64()
        intervalMillis = try r.u32()
        pid = try r.u32()
        mountedAt = try r.i64()
        heartbeatAtNanos = try r.i64()
        host = try Self.text(Self.hostLength, &r, "host name")
        bootID = try Self.text(Self.bootIDLength, &r, "boot id")
    }
}
