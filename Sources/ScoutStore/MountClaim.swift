#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// Keeps a second mount of one quorum slot out, and mkfs away from devices in use: two
/// mounts as one client would write one log tree without knowing of each other.
///
/// Two guards, because a mount cannot see every other mount the same way:
/// - **On this machine**, open file description locks in the first 64 KiB (unused by the
///   format) of both devices (`FileBlockDevice.tryLock`): every mount holds a shared lock on
///   its first 4 KiB, which keeps mkfs's exclusive lock of the whole range out, and a mount
///   of a slot an exclusive lock on that slot's own byte. The kernel drops them when the
///   process dies, so a crash never leaves one behind.
/// - **Across machines**, a claim in the mount's own quorum block (`QuorumBlock`) with a
///   heartbeat counter advanced every `interval`. A new mount reads its slot's block past its
///   page cache; a claim from another host whose counter advances while it watches is live,
///   and the mount is refused with the holder's name. A claim whose counter stands still is
///   stale (its host died) and is taken over, with a log line. A claim made on this machine
///   since it booted is stale as soon as the slot's lock is ours, since no process here holds
///   the slot. mkfs watches every slot the same way.
///
/// Two hosts starting at the same instant can both see no claim; the election of the
/// failover issue settles that race, which this guard does not.
public final class MountClaim: Sendable {
    /// Who claims: the host and process, as written into the quorum block.
    public struct Identity: Sendable, Equatable {
        public var host: String
        public var bootID: String
        public var pid: UInt32

        public init(host: String, bootID: String, pid: UInt32) {
            self.host = host
            self.bootID = bootID
            self.pid = pid
        }

        /// This process on this machine.
        public static var current: Identity {
            var name = [CChar](repeating: 0, count: 256)
            let host = gethostname(&name, name.count) == 0
                ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
            var boot = ""
            if let f = fopen("/proc/sys/kernel/random/boot_id", "r") {
                var line = [CChar](repeating: 0, count: 64)
                if fgets(&line, Int32(line.count), f) != nil {
                    boot = String(decoding: line.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }
                fclose(f)
            }
            return Identity(host: host, bootID: boot, pid: UInt32(getpid()))
        }

        /// What the mounted-clients tree records of client `rid` mounted by this process now.
        public func mounted(rid: UInt64, slot: Int?, address: String) -> MountedClient {
            MountedClient(rid: rid, slot: slot, pid: pid, mountedAt: Int64(time(nil)), host: host, bootID: bootID, address: address)
        }
    }

    /// The byte range of each device that the on-machine lock covers.
    static let lockLength = UInt64(Layout.superOffset(copy: 0))

    // nonisolated(unsafe): set once; the heartbeat writes only its own quorum block, a range
    // nothing else writes, and pwrite/fdatasync are safe beside the store's I/O.
    nonisolated(unsafe) let meta: any BlockDevice
    let fsid: UInt64
    public let slot: Int
    let interval: Duration
    private let state: Mutex<QuorumBlock>
    private let log: @Sendable (String) -> Void
    private let stopping = Atomic(false)
    private let thread = Mutex<JoinableThread?>(nil)

    /// Takes the on-machine lock of both devices whole (mkfs); false while another process
    /// holds either, or any part of it (a mount).
    public static func lockDevices(meta: FileBlockDevice, data: FileBlockDevice) throws -> Bool {
        try lockDevice(meta) && lockDevice(data)
    }

    /// Takes the on-machine lock of one device whole (the offline verbs); false while another
    /// process holds any part of it.
    public static func lockDevice(_ device: FileBlockDevice) throws -> Bool {
        try device.tryLock(offset: 0, length: lockLength)
    }

    /// Takes a mount's on-machine locks: shared ones of both devices (any number of mounts,
    /// but no mkfs) and, for a mount of quorum slot `slot`, that slot's own. False when mkfs
    /// holds the devices or another process here mounts `slot`.
    public static func lockForMount(meta: FileBlockDevice, data: FileBlockDevice, slot: Int?) throws -> Bool {
        guard try meta.tryLock(offset: 0, length: 4096, shared: true), try data.tryLock(offset: 0, length: 4096, shared: true) else {
            return false
        }
        guard let slot else { return true }
        return try meta.tryLock(offset: 4096 + UInt64(slot), length: 1)
    }

    /// Throws (`.exists`, naming the holder) while a claim by another host (of `only` that
    /// slot, or of any) has a heartbeat that advances within two and a half of its intervals;
    /// claims that stand still or were made on this machine since boot are stale, which `log`
    /// hears of. The caller holds the on-machine lock of those slots, so no process here
    /// holds them.
    public static func refuseWhileClaimed(meta: any BlockDevice, superblock sb: SuperBlock, only: Int? = nil, identity: Identity = .current,
                                          log: @Sendable (String) -> Void) throws {
        var found: [(slot: Int, block: QuorumBlock)] = []
        // A block that does not verify may be a heartbeat torn in flight: a live holder
        // rewrites it within its interval, so it is watched like a claim.
        var unreadable: [(slot: Int, why: String)] = []
        for s in sb.quorumSlots where only == nil || Int(s.slot) == only {
            do {
                let b = try read(meta, fsid: sb.fsid, slot: Int(s.slot))
                if b.state == .mounted { found.append((Int(s.slot), b)) }
            } catch {
                unreadable.append((Int(s.slot), "\(error)"))
            }
        }
        var watch: [(slot: Int, block: QuorumBlock)] = []
        for c in found {
            if c.block.host == identity.host && c.block.bootID == identity.bootID {
                log("quorum slot \(c.slot): claim of pid \(c.block.pid) on this host is stale (no process here holds the devices); taking over")
            } else {
                watch.append(c)
            }
        }
        guard !watch.isEmpty || !unreadable.isEmpty else { return }
        // Two and a half of the slowest claimant's intervals: a live one beats at least twice.
        let longest = watch.map { Int($0.block.intervalMillis) }.max() ?? 1000
        let wait = min(max(longest, 100) * 5 / 2, 30_000)
        usleep(UInt32(wait) * 1000)
        for c in watch {
            let now = try read(meta, fsid: sb.fsid, slot: c.slot)
            if now.state == .mounted && (now.heartbeat != c.block.heartbeat || now.mountID != c.block.mountID) {
                throw StoreError(.exists, "\(meta.name) is mounted on host \(now.host) (pid \(now.pid), quorum slot \(c.slot), mounted at \(timeText(now.mountedAt)) UTC): its heartbeat is advancing. Unmount it there first, or mount another slot. If that host is down, its heartbeat stops and a mount after \(wait / 1000 + 1) s takes over.")
            }
            log("quorum slot \(c.slot): claim of host \(c.block.host) pid \(c.block.pid) has not beaten in \(wait) ms; treating it as stale and taking over")
        }
        for u in unreadable {
            if let now = try? read(meta, fsid: sb.fsid, slot: u.slot), now.state == .mounted, now.host != identity.host || now.bootID != identity.bootID {
                throw StoreError(.exists, "\(meta.name) is mounted on host \(now.host) (pid \(now.pid), quorum slot \(u.slot)): its claim was rewritten while this mount watched. Unmount it there first, or mount another slot.")
            }
            log("\(u.why); nothing rewrote it in \(wait) ms, so no mount holds that slot; going on")
        }
    }

    /// One slot's quorum block, read past the page cache.
    public static func read(_ meta: any BlockDevice, fsid: UInt64, slot: Int) throws -> QuorumBlock {
        let blkno = Layout.quorumSmallBlkno(slot: slot)
        let bytes = try meta.readUncached(at: blkno * UInt64(Layout.smallBlockSize), count: Layout.smallBlockSize)
        return try decode(bytes, of: meta, fsid: fsid, slot: slot)
    }

    private static func decode(_ bytes: [UInt8], of meta: any BlockDevice, fsid: UInt64, slot: Int) throws -> QuorumBlock {
        let blkno = Layout.quorumSmallBlkno(slot: slot)
        switch BlockHeader.verify(bytes, magic: BlockMagic.quorum, fsid: fsid, blkno: blkno, seq: nil) {
        case .valid:
            do {
                return try QuorumBlock(decoding: bytes)
            } catch {
                throw StoreError(.corrupt, "quorum block of slot \(slot) on \(meta.name): \(error)")
            }
        case .stale(let why), .corrupt(let why):
            throw StoreError(.corrupt, "quorum block of slot \(slot) on \(meta.name): \(why)")
        }
    }

    /// Refuses while another host's claim is live, then writes this mount's claim into `slot`
    /// and makes it durable. The caller already holds the on-machine lock. Call `start` to
    /// begin the heartbeat and `release` at unmount.
    public init(meta: any BlockDevice, superblock sb: SuperBlock, slot: Int, identity: Identity = .current,
                interval: Duration = .seconds(1), log: @escaping @Sendable (String) -> Void) throws {
        self.meta = meta
        fsid = sb.fsid
        self.slot = slot
        self.interval = interval
        self.log = log
        try Self.refuseWhileClaimed(meta: meta, superblock: sb, only: slot, identity: identity, log: log)
        var mountID: UInt64 = 0
        while mountID == 0 { mountID = UInt64.random(in: 1...UInt64.max) }
        var mine = QuorumBlock(state: .mounted, heartbeat: 1, mountID: mountID,
                               intervalMillis: UInt32(clamping: Self.millis(interval)),
                               pid: identity.pid, mountedAt: Self.unixNanos() / 1_000_000_000, heartbeatAtNanos: Self.unixNanos(),
                               host: identity.host, bootID: identity.bootID)
        // The slot's election record outlives its mounts: its term must never go back, its
        // vote in a term never change, and a leadership the last mount did not stop cleanly
        // stays for the next leader to fence. A block that does not read (torn, or never
        // written) keeps none.
        if let old = try? Self.read(meta, fsid: fsid, slot: slot) {
            mine.term = old.term
            mine.votedTerm = old.votedTerm
            mine.votedFor = old.votedFor
            mine.elected = old.elected
            mine.fenced = old.fenced
            mine.stopped = old.stopped
            mine.heartbeat = old.heartbeat + 1
            // A leadership the last mount did not stop ended with its process: this mount
            // holds the slot, which that process held while it ran (here by the slot's lock,
            // elsewhere its heartbeat stopped). Left open, the next leader would fence the
            // slot by the pid recorded now: this mount's.
            if old.mayServe {
                mine.stopped = .init(term: old.elected.term, atNanos: Self.unixNanos())
                log("quorum slot \(slot): its last mount led in term \(old.elected.term) and ended without stopping its server; recorded as stopped, since this mount now holds the slot")
            }
        }
        state = Mutex(mine)
        try writeTurn.withLock { _ in try write(mine) }
    }

    /// Held across taking the block and writing it, so that writes from the heartbeat and
    /// from the election reach the device in the order their contents were made: a late
    /// heartbeat must never write back a vote or term from before the last update.
    private let writeTurn = Mutex<Void>(())

    private func write(_ b: QuorumBlock) throws {
        try meta.write(at: Layout.quorumSmallBlkno(slot: slot) * UInt64(Layout.smallBlockSize), b.encode(fsid: fsid, slot: slot))
        try meta.flush()
    }

    /// Changes the slot's block (its election fields) and makes it durable before returning.
    /// If the write fails the change stays in memory and the next write carries it; the
    /// caller must not act on it (send a vote, serve) until one succeeds.
    @discardableResult
    public func update(_ change: (inout QuorumBlock) -> Void) throws -> QuorumBlock {
        try writeTurn.withLock { _ in
            let b = state.withLock { b -> QuorumBlock in
                change(&b)
                b.heartbeat += 1
                b.heartbeatAtNanos = Self.unixNanos()
                return b
            }
            try write(b)
            return b
        }
    }

    /// Every configured slot's block that reads; what does not read is left out (a torn
    /// write is rewritten within the holder's interval).
    ///
    /// The slots' blocks lie side by side and are read in one request: a server asks before
    /// every commit (a lock hand-over waits on it), and a read per slot cost a device round
    /// trip each.
    public static func readAll(_ meta: any BlockDevice, superblock sb: SuperBlock) -> [(slot: Int, block: QuorumBlock)] {
        let slots = sb.quorumSlots.map { Int($0.slot) }
        guard let lo = slots.min(), let hi = slots.max() else { return [] }
        let size = Layout.smallBlockSize
        guard let all = try? meta.readUncached(at: Layout.quorumSmallBlkno(slot: lo) * UInt64(size), count: (hi - lo + 1) * size) else {
            return slots.compactMap { s in (try? read(meta, fsid: sb.fsid, slot: s)).map { (s, $0) } }
        }
        return slots.compactMap { s in
            let at = (s - lo) * size
            return (try? decode(Array(all[at..<at + size]), of: meta, fsid: sb.fsid, slot: s)).map { (s, $0) }
        }
    }

    /// Starts advancing the heartbeat every interval on a thread of its own.
    public func start() throws {
        let t = try JoinableThread("the quorum heartbeat") { [self] in beat() }
        thread.withLock { $0 = t }
    }

    private func beat() {
        let micros = UInt32(clamping: min(Self.millis(interval), 10_000) * 1000)
        var failing = false
        while true {
            // Sleep in short steps so that release never waits a whole interval.
            var slept: UInt32 = 0
            while slept < micros && !stopping.load(ordering: .acquiring) {
                let step = min(micros - slept, 50_000)
                usleep(step)
                slept += step
            }
            if stopping.load(ordering: .acquiring) { return }
            do {
                try update { _ in }
                if failing { log("quorum heartbeat of slot \(slot) written again") }
                failing = false
            } catch {
                // Other hosts will see the claim as stale if this goes on; say so once.
                if !failing { log("quorum heartbeat of slot \(slot) failed: \(error); other hosts may take the devices over") }
                failing = true
            }
        }
    }

    /// Stops the heartbeat and marks the slot unclaimed: a clean unmount lets the next mount
    /// anywhere start without waiting.
    public func release() throws {
        stopping.store(true, ordering: .releasing)
        let t = thread.withLock { t -> JoinableThread? in
            defer { t = nil }
            return t
        }
        t?.join()
        try update { $0.state = .unclaimed }
    }

    /// The claim as last written by this mount.
    public var block: QuorumBlock { state.withLock { $0 } }

    static func millis(_ d: Duration) -> Int64 {
        d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }

    /// The wall clock in nanoseconds since the epoch, as quorum blocks record times.
    public static func unixNanos() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// `YYYY-MM-DD HH:MM:SS` of unix seconds, in UTC.
    public static func timeText(_ seconds: Int64) -> String {
        var t = time_t(seconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        let n = strftime(&buf, buf.count, "%Y-%m-%d %H:%M:%S", &tm)
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
