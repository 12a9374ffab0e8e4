#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutFS
import ScoutNet
import ScoutServer
import ScoutStore
import Synchronization

/// The metadata device, for threads that only read quorum blocks from it (`readUncached`
/// is a plain pread).
struct SharedDevice: @unchecked Sendable {
    let device: any BlockDevice
}

/// Where the server is: the slot the quorum blocks name as leader (the greatest elected term
/// whose server has not stopped), at the address and port the superblock gives that slot.
/// Read afresh at every connection attempt, so a node finds a new leader's server by itself.
enum ServerLocator {
    static func blocks(_ meta: any BlockDevice, _ sb: SuperBlock) -> [(slot: Int, block: QuorumBlock)] {
        sb.quorumSlots.compactMap { s in
            (try? MountClaim.read(meta, fsid: sb.fsid, slot: Int(s.slot))).map { (Int(s.slot), $0) }
        }
    }

    static func resolver(meta: any BlockDevice, superblock sb: SuperBlock) -> @Sendable () -> (host: String, port: Int)? {
        let dev = SharedDevice(device: meta)
        return {
            guard let leader = QuorumBlock.leader(of: blocks(dev.device, sb)),
                  let s = sb.quorumSlots.first(where: { Int($0.slot) == leader.slot }) else { return nil }
            return (s.address, Int(s.port))
        }
    }
}

/// What a quorum slot's mount does with the leadership (§15). The leader when the mount
/// starts serves in its own process: its filesystem client shares the store with the server
/// (`inProcess`). A mount that follows at first is a node; elected later (the server died or
/// left) it fences the earlier leaders and starts a server beside its client, which then
/// reconnects to it (`node`). A server whose slot stops leading ends at once, writes its
/// stopped event, and an in-process one takes its filesystem down with it (EIO: remount).
final class MountLeadership: Sendable {
    enum Mode: Sendable, Equatable {
        /// Waiting to learn who leads.
        case mounting
        /// This mount's filesystem runs in the server's process.
        case inProcess
        /// This mount's filesystem is a node; it may run a server beside it.
        case node
        /// Unmounting, or the in-process server ended.
        case done
    }

    enum Role: Equatable {
        case lead(term: UInt64)
        case follow
    }

    struct State {
        var mode = Mode.mounting
        /// A leadership not yet served (heard while mounting).
        var electedTerm: UInt64?
        var server: LocalCluster?
        var servedTerm: UInt64 = 0
    }

    let slot: Int
    let mine: QuorumSlot
    let claim: MountClaim
    let meta: SharedDevice
    let data: SharedDevice
    let superblock: SuperBlock
    let key: ClusterKey
    let fencer: Fencer
    let localAgent = LocalFenceAgent()
    let cacheBlocks: Int
    let itemCacheBytes: Int
    let recoveryTimeout: Duration
    let mergeThreshold: UInt64
    let log: @Sendable (String) -> Void
    /// Told when this mount starts or stops serving (the mount's published record).
    let onServing: @Sendable (Bool) -> Void
    private let state = Mutex(State())
    /// Told of each node a server of this mount reclaimed (`LocalCluster.whenNodeReclaimed`).
    private let reclaimed = LocalCluster.Hook<UInt64>()
    private let member = Mutex<QuorumMember?>(nil)
    private let wake = Parker()

    init(slot: Int, claim: MountClaim, meta: any BlockDevice, data: any BlockDevice, superblock sb: SuperBlock, key: ClusterKey,
         fencer: Fencer, cacheBlocks: Int, itemCacheBytes: Int, recoveryTimeout: Duration, mergeThreshold: UInt64,
         onServing: @escaping @Sendable (Bool) -> Void, log: @escaping @Sendable (String) -> Void) throws {
        guard let mine = sb.quorumSlots.first(where: { Int($0.slot) == slot }) else {
            throw StoreError(.invalid, "quorum slot \(slot) is not configured in this filesystem")
        }
        self.slot = slot
        self.mine = mine
        self.claim = claim
        self.meta = SharedDevice(device: meta)
        self.data = SharedDevice(device: data)
        superblock = sb
        self.key = key
        self.fencer = fencer
        self.cacheBlocks = cacheBlocks
        self.itemCacheBytes = itemCacheBytes
        self.recoveryTimeout = recoveryTimeout
        self.mergeThreshold = mergeThreshold
        self.onServing = onServing
        self.log = log
    }

    /// Joins the election and starts taking part in it.
    func start() throws {
        let m = try QuorumMember(claim: claim, superblock: superblock, key: key, handlers: QuorumMember.Handlers(
            onElected: { [weak self] term in self?.elected(term) },
            onSteppedDown: { [weak self] term in self?.steppedDown(term) },
            onLeader: { [weak self] _, _ in self?.wake.unpark() }), log: log)
        member.withLock { $0 = m }
        try m.start()
    }

    /// Waits until this slot leads or hears another leader, for at most `timeout`.
    func waitForRole(_ timeout: Duration) throws -> Role {
        let until = ContinuousClock.now + timeout
        while true {
            if let t = state.withLock({ $0.electedTerm }) { return .lead(term: t) }
            if let l = member.withLock({ $0 })?.leader, Int(l) != slot { return .follow }
            if ContinuousClock.now >= until {
                let n = superblock.quorumSlots.count
                throw StoreError(.io, "no quorum leader was elected within \(timeout): \(n <= 2 ? "with \(n) slot(s) one mount elects itself" : "\(n / 2 + 1) of the \(n) quorum slots must be mounted (and reach each other's addresses) to elect one"); mount the others, or raise --server-wait")
            }
            _ = wake.park(seconds: 0.05)
        }
    }

    private func stillLeads(_ term: UInt64) -> Bool {
        guard let m = member.withLock({ $0 }) else { return false }
        return m.role == .leader && m.term == term
    }

    /// Fences every slot elected before `term` whose server did not stop and that no later
    /// fence covers, and records the fence; tries until it succeeds or this slot stops leading.
    private func fenceEarlierLeaders(_ term: UInt64) -> Bool {
        while stillLeads(term) {
            let blocks = ServerLocator.blocks(meta.device, superblock)
            let slots = QuorumBlock.toFence(blocks, leader: slot, term: term)
            let requests = slots.compactMap { s -> FenceRequest? in
                guard let b = blocks.first(where: { $0.slot == s })?.block else { return nil }
                let address = superblock.quorumSlots.first { Int($0.slot) == s }?.address ?? ""
                return FenceRequest(slot: s, block: b, rid: FilesystemOptions.clientID(slot: s), address: address, reason: .quorumLeader)
            }
            if fencer.fence(requests).count == requests.count {
                do {
                    try claim.update { $0.fenced = .init(term: term, atNanos: MountClaim.unixNanos()) }
                    if !requests.isEmpty { log("election: term \(term): fenced the earlier leader(s) in quorum slot(s) \(slots.map(String.init).joined(separator: ", "))") }
                    return true
                } catch {
                    log("error: election: recording the fence of term \(term) in quorum slot \(slot)'s block failed: \(error); trying again")
                }
            } else {
                log("error: election: term \(term): an earlier leader could not be fenced, so this slot cannot serve yet; trying again in 2 s")
            }
            usleep(2_000_000)
        }
        return false
    }

    /// Opens the store and serves the cluster at this slot's address, settling with the
    /// nodes an earlier server had (`LocalCluster.Takeover`).
    private func openServer(_ term: UInt64) throws -> LocalCluster {
        let store = try Store.open(meta: meta.device, data: data.device, options: StoreOptions(cacheBlocks: cacheBlocks))
        // The last check of leadership before each commit lands: the quorum blocks name every
        // slot elected since, whatever this process missed while it did not run.
        let (shared, sb, mySlot) = (meta, superblock, slot)
        store.beforeSuperblockWrite = {
            if let newer = MountClaim.readAll(shared.device, superblock: sb).first(where: { $0.block.elected.term > term }) {
                throw StoreError(.io, "quorum slot \(newer.slot) was elected in term \(newer.block.elected.term), after this server's term \(term) (quorum slot \(mySlot)): this server writes nothing more")
            }
        }
        let agent = localAgent
        let cluster = try LocalCluster(store: store, mergeThreshold: mergeThreshold, several: true, takeover: LocalCluster.Takeover(
            term: term, fencer: fencer, timeout: takeoverWait, linger: recoveryTimeout, isGone: { agent.isGone($0) }),
            itemCacheBytes: itemCacheBytes)
        let told = reclaimed
        cluster.whenNodeReclaimed { rid in told.call(rid) }
        do {
            _ = try cluster.serve(host: mine.address, port: Int(mine.port), key: key, log: log)
        } catch {
            cluster.close("this server could not start")
            throw StoreError(.io, "cannot serve the cluster at \(mine.address) port \(mine.port) (quorum slot \(slot)): \(error); is another program using the port?")
        }
        return cluster
    }

    /// How long a new server waits for the nodes of the old one: nodes whose old server was
    /// cut off or hung rather than killed notice only once it has been silent for the silence
    /// timeout (plain clients; slots hear the election sooner), and are not given up before.
    var takeoverWait: Duration { max(recoveryTimeout, NetTimers().silenceTimeout + .seconds(5)) }

    /// Calls `body` after a server of this mount (now, or one it takes over later) reclaimed a
    /// node it gave up.
    func whenNodeReclaimed(_ body: @escaping @Sendable (UInt64) -> Void) {
        reclaimed.set(body)
    }

    /// The mount leads at its start: fences, then opens the server its filesystem joins.
    func serveInProcess(_ term: UInt64) throws -> LocalCluster {
        guard fenceEarlierLeaders(term) else {
            throw StoreError(.io, "quorum slot \(slot) lost the leadership of term \(term) while mounting; mount again")
        }
        let cluster = try openServer(term)
        guard keep(cluster, term: term, as: .inProcess, else: "the leadership ended while mounting") else {
            throw StoreError(.io, "quorum slot \(slot) lost the leadership of term \(term) while mounting; mount again")
        }
        return cluster
    }

    /// Makes `cluster` this mount's server of `term` if the slot still leads it (and a node's
    /// mount is still one); otherwise closes it for `why` and records it stopped.
    private func keep(_ cluster: LocalCluster, term: UInt64, as mode: Mode, else why: String) -> Bool {
        let kept = state.withLock { s -> Bool in
            guard stillLeads(term), mode == .inProcess || s.mode == .node else { return false }
            s.mode = mode
            s.server = cluster
            s.servedTerm = term
            return true
        }
        if !kept {
            cluster.close(why)
            writeStopped(term)
        }
        return kept
    }

    /// The mount's filesystem is a node. A leadership heard meanwhile is served now.
    func becameNode() {
        let pending = state.withLock { s -> UInt64? in
            s.mode = .node
            defer { s.electedTerm = nil }
            return s.electedTerm
        }
        if let pending { takeOver(pending) }
    }

    private func elected(_ term: UInt64) {
        let mode = state.withLock { s -> Mode in
            if s.mode == .mounting { s.electedTerm = term }
            return s.mode
        }
        switch mode {
        case .mounting: wake.unpark()
        case .node: takeOver(term)
        case .inProcess, .done:
            log("error: election: quorum slot \(slot) was elected in term \(term), but this mount's server has ended; resigning (unmount and mount again to serve)")
            member.withLock { $0 }?.resign()
        }
    }

    /// A node elected later: fence, then serve beside this mount's client.
    private func takeOver(_ term: UInt64) {
        let started = ContinuousClock.now
        guard fenceEarlierLeaders(term) else { return }
        let cluster: LocalCluster
        do {
            cluster = try openServer(term)
        } catch {
            log("error: election: quorum slot \(slot) leads in term \(term) but cannot serve: \(error); resigning so another slot serves")
            member.withLock { $0 }?.resign()
            return
        }
        guard keep(cluster, term: term, as: .node, else: "the leadership ended while the server started") else { return }
        onServing(true)
        log("election: this mount took over as the server (quorum slot \(slot), term \(term), at \(mine.address) port \(mine.port)) in \(started.duration(to: .now)); nodes reconnect and recover, those that do not within \(takeoverWait) are fenced")
    }

    private func steppedDown(_ term: UInt64) {
        let (server, mode, served) = state.withLock { s -> (LocalCluster?, Mode, UInt64) in
            if s.mode == .mounting { s.electedTerm = nil }
            defer {
                s.server = nil
                if s.mode == .inProcess { s.mode = .done }
            }
            return (s.server, s.mode, s.servedTerm)
        }
        guard let server else { return }
        let why = "this mount's server stopped: quorum slot \(slot) no longer leads (term \(served)); \(mode == .inProcess ? "its filesystem shared the server's store and stops too: unmount and mount again" : "its client goes on with the new server")"
        log("error: \(why)")
        server.close(why)
        writeStopped(served)
        onServing(false)
    }

    private func writeStopped(_ term: UInt64) {
        do {
            try claim.update { $0.stopped = .init(term: term, atNanos: MountClaim.unixNanos()) }
        } catch {
            log("error: recording that the server of term \(term) stopped failed: \(error); the next leader fences this mount")
        }
    }

    /// Whether the quorum slots mounted besides this one can elect a leader without it.
    private func othersMayElect() -> Bool {
        let n = superblock.quorumSlots.count
        let needed = n <= 2 ? 1 : n / 2 + 1
        // Claims of mounts that died stay in their blocks: only slots the election hears now
        // count.
        let live = Set(member.withLock { $0 }?.liveOthers.map(Int.init) ?? [])
        let others = ServerLocator.blocks(meta.device, superblock).filter { $0.slot != slot && $0.block.state == .mounted && live.contains($0.slot) }
        return others.count >= needed
    }

    /// Unmounting (the filesystem has left): ends the server cleanly, records that it
    /// stopped (so the next leader need not fence this mount), and leaves the election.
    /// While nodes are still mounted and the other quorum slots mounted are too few to elect
    /// a server after this one, it serves on until they have left (the original's unmount
    /// barrier: the last quorum mounts leave together), telling `lingering` once.
    func finish(lingering: (String) -> Void = { _ in }) {
        if let server = state.withLock({ $0.server }) {
            var told = false
            while !server.nodes.isEmpty && !othersMayElect() && server.closedReason == nil {
                if !told {
                    let why = "its daemon keeps serving \(server.nodes.count) node(s) until they unmount: the other quorum slots mounted are too few to elect a server after it"
                    log(why)
                    lingering(why)
                    told = true
                }
                usleep(100_000)
            }
        }
        let (server, served) = state.withLock { s -> (LocalCluster?, UInt64) in
            s.mode = .done
            defer { s.server = nil }
            return (s.server, s.servedTerm)
        }
        if let server {
            server.close("unmounted")
            writeStopped(served)
        }
        member.withLock { m -> QuorumMember? in defer { m = nil }; return m }?.stop()
    }
}
