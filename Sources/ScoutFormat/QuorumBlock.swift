/// One quorum slot's block on the metadata device (small block `Layout.quorumSmallBlkno(slot:)`).
///
/// Until the cluster elects a server, it holds a mount's *claim* on the devices: which host and
/// process mounted them through this slot, and a heartbeat counter the mount advances every
/// `intervalMillis`. A new mount on any machine reads every slot's block and refuses while a
/// claim's counter still advances; a claim whose counter has stopped is stale (its host died)
/// and may be taken over. The counter, not the wall-clock time, decides: hosts' clocks may
/// differ. mkfs writes blocks with only a header, which decode as unclaimed.
///
/// It is also the slot's part of the election (`Election`): the highest term the slot has
/// seen, which never goes back, the term it last voted in (one vote a term, across restarts
/// too), and the events of its leadership: the term it was elected in, the term in which,
/// as leader, it fenced every earlier leader, and the term whose server it stopped cleanly.
/// The server of the cluster is the slot with the greatest elected term that has not
/// stopped (`QuorumBlock.leader(of:)`); clients find it there.
///
/// Layout after the 32-byte header (little-endian):
/// ```
///   0  version u8 (2)   state u8 (0 unclaimed, 1 mounted)   pad[6]
///   8  heartbeat u64    16  mount id u64   24  interval ms u32   28  pid u32
///  32  mounted at, unix seconds i64        40  last heartbeat, unix ns i64
///  48  host name: length u8 + 63 bytes     112 boot id: length u8 + 47 bytes
/// 160  term u64         168  voted term u64   176  voted for slot u8   pad[7]
/// 184  elected: term u64, unix ns i64      200  fenced: term u64, unix ns i64
/// 216  stopped: term u64, unix ns i64
/// ```
/// Version 1 blocks (no election fields) decode with every term 0.
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

    /// The highest election term this slot has seen.
    public var term: UInt64 = 0
    /// The term this slot last gave its vote in, and to which slot.
    public var votedTerm: UInt64 = 0
    public var votedFor: UInt8 = 0
    /// One event of the slot's leadership: the term and when (unix ns, for people only).
    public struct Event: Equatable, Sendable {
        public var term: UInt64
        public var atNanos: Int64
        public init(term: UInt64 = 0, atNanos: Int64 = 0) {
            self.term = term
            self.atNanos = atNanos
        }
    }
    /// Elected leader in `term`; it runs the server once `fenced` reaches that term too.
    public var elected = Event()
    /// As leader of `term`, fenced every slot elected before it (or found none to fence).
    public var fenced = Event()
    /// Its server of `term` stopped and will write nothing more.
    public var stopped = Event()

    public static let version: UInt8 = 2
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
        w.u64(term)
        w.u64(votedTerm)
        w.u8(votedFor)
        w.zeros(7)
        for e in [elected, fenced, stopped] {
            w.u64(e.term)
            w.i64(e.atNanos)
        }
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
        guard version == 1 || version == Self.version else {
            throw FormatError("quorum block: version \(version), expected 1 or \(Self.version)")
        }
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
        guard version >= 2 else { return }
        term = try r.u64()
        votedTerm = try r.u64()
        votedFor = try r.u8()
        try r.skip(7)
        elected = Event(term: try r.u64(), atNanos: try r.i64())
        fenced = Event(term: try r.u64(), atNanos: try r.i64())
        stopped = Event(term: try r.u64(), atNanos: try r.i64())
        guard votedTerm <= term, elected.term <= term, fenced.term <= elected.term, stopped.term <= elected.term else {
            throw FormatError("quorum block: terms out of order (term \(term), voted \(votedTerm), elected \(elected.term), fenced \(fenced.term), stopped \(stopped.term))")
        }
    }

    /// Whether this slot was elected and its server may still run: it was elected in a term
    /// it has not stopped.
    public var mayServe: Bool { elected.term > 0 && stopped.term < elected.term }

    /// The slot whose server the cluster runs on, going by every slot's block: the greatest
    /// elected term, if its server has not stopped. A leader fences every slot elected
    /// before it, so there is at most one such server that may write.
    public static func leader(of blocks: [(slot: Int, block: QuorumBlock)]) -> (slot: Int, term: UInt64)? {
        guard let top = blocks.filter({ $0.block.elected.term > 0 }).max(by: { $0.block.elected.term < $1.block.elected.term }),
              top.block.mayServe else { return nil }
        return (top.slot, top.block.elected.term)
    }

    /// The slots a leader elected in `term` must fence before its server touches anything:
    /// every other slot elected in an earlier term whose server did not stop cleanly and that
    /// no later leader fenced (a fence in term F covers every slot elected before F).
    public static func toFence(_ blocks: [(slot: Int, block: QuorumBlock)], leader me: Int, term: UInt64) -> [Int] {
        let fencedUpTo = blocks.map { $0.block.fenced.term }.max() ?? 0
        return blocks.filter { s in
            s.slot != me && s.block.mayServe && s.block.elected.term < term && s.block.elected.term >= fencedUpTo
        }.map(\.slot)
    }
}
