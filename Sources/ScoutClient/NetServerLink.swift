#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// `ServerLink` for a client on another node than the server: each call goes over the
/// network (`ServerCall`), and every answer that carries roots moves the node's store on to
/// them, so the node reads what the server last committed. The client id is the connection's;
/// `rid` arguments are ignored (the server knows who is calling).
///
/// The seqs and the data space are the ones the last answer brought, read without a call:
/// operations read them often, and a node's own commit is what moves its open seq on.
public final class NetServerLink: ServerLink, Sendable {
    public let net: NetClient
    public let store: NodeStore

    /// Connects `store` to the server behind `net` and takes its current roots.
    public init(net: NetClient, store: NodeStore) throws {
        self.net = net
        self.store = store
        try refreshRoots()
        store.setRefresher { [weak self] in try self?.refreshRoots() }
    }

    /// Makes every grant `locks` receives bring the node's roots up to date before the
    /// lock's users go on: the previous holder committed before it let the lock go, so what
    /// it wrote is in the server's roots, and items written from now on must carry a seq above
    /// it. The server sends its roots right before each grant (`serverSent`); should those
    /// not be readable, the node asks for the newest, and should that fail too, the next
    /// read asks again.
    public func follow(_ locks: LockClient) {
        locks.addGrantHook { [weak self, store] _, _ in
            if let sent = self?.sent.withLock({ $0 }), (try? store.advance(to: sent.roots, records: sent.records)) != nil { return }
            store.markStale()
            try? store.refreshIfStale()
        }
    }

    /// The roots the server sent last, before a grant. Grants and these arrive in order on
    /// one connection and are handled in order on one queue, so at a grant this holds the
    /// roots sent for it or newer ones.
    private let sent = Mutex<(roots: ServerRoots, records: [UInt64: LogTreeRecord]?)?>(nil)

    /// The server's roots, sent before a grant (`NetNotice.roots`), with the log-tree records
    /// of their commit when the server sent them too.
    public func serverSent(_ r: ServerRoots, records: [UInt64: LogTreeRecord]?) {
        sent.withLock { $0 = (r, records) }
    }

    /// How many times this node asked the server for its roots.
    public var rootsAsked: Int { asked.load(ordering: .relaxed) }
    private let asked = Atomic<Int>(0)

    private let fenced = Mutex<String?>(nil)
    /// The seq of this node's last commit.
    private let lastCommit = Atomic<UInt64>(0)

    /// Refuses every call from now on with `why`: the node may not commit or allocate again.
    public func fence(_ why: String) {
        fenced.withLock { $0 = why }
    }

    /// Why calls are refused (`fence`), or nil.
    public var fencedReason: String? { fenced.withLock { $0 } }

    func call(_ c: ServerCall) throws -> ServerAnswer {
        while true {
            if let why = fenced.withLock({ $0 }) { throw NetError(why) }
            do {
                return try ServerAnswer(decoding: net.call(c.encoded))
            } catch let e as NetError where e.serverRestarted {
                // The server ended with the call in flight and another took over. A commit's
                // caller asks the new server whether it landed (sent again it could free its
                // blocks twice); every other call is safe to make again: a lost inode batch
                // or pool refill only leaves numbers or blocks unused.
                if case .commitLogTree = c { throw e }
                if case .join = c { throw e }
            }
        }
    }

    /// Says this node is mounted (`rejoin` false) or back after a server change: whether the
    /// server kept its log tree and pools. False: the node must not write again.
    public func join(_ me: MountedClient, rejoin: Bool) throws -> Bool {
        let a = try call(.join(me, rejoin: rejoin))
        guard case .joined(let ok) = a else { throw unexpected(a, to: "a join") }
        return ok
    }

    private func unexpected(_ a: ServerAnswer, to c: String) -> NetError {
        NetError("the server answered \(c) with \(a); is it another version of scoutfs?")
    }

    /// Asks for the server's last commit and reads through it from now on. A stale block while
    /// reading the roots' records (a newer commit reused it) asks again.
    public func refreshRoots() throws {
        var tries = 0
        while true {
            asked.add(1, ordering: .relaxed)
            let a = try call(.roots)
            guard case .roots(let r) = a else { throw unexpected(a, to: "roots") }
            do {
                try store.update(r)
                return
            } catch let e as StoreError where e.code == .stale && tries < 100 {
                tries += 1
            }
        }
    }

    private func moveOn(_ r: ServerRoots, records: [UInt64: LogTreeRecord]? = nil) throws {
        do {
            try store.update(r, records: records)
        } catch let e as StoreError where e.code == .stale {
            try refreshRoots()
        }
    }

    public var transactionSeq: UInt64 { store.txnSeq }
    public var committedSeq: UInt64 { store.roots.seq }
    public var stableSeq: UInt64 { store.stableSeq }

    public func allocateInodes(_ count: UInt64) throws -> Range<UInt64> {
        let a = try call(.allocateInodes(count: count))
        guard case .inodes(let r) = a, r.count >= Int(min(count, UInt64(Int.max))) else { throw unexpected(a, to: "an inode batch") }
        return r
    }

    public func refillDataPool(rid: UInt64, atLeast count: UInt64) throws -> [Extent] {
        let got = try refill(.refillDataPool(atLeast: count), \.dataPool) { a in
            guard case .dataPool(let extents) = a else { throw unexpected(a, to: "a data pool refill") }
            return extents
        }
        // Blocks past the end this node knows of: the filesystem grew since its last roots,
        // and its own extents would fail their checks until it learns the new totals.
        if got.contains(where: { $0.end > store.dataTotalBlocks }) { try refreshRoots() }
        return got
    }

    /// Asks the server to grow the filesystem onto more of its devices, then takes the roots
    /// of that commit, which carry the new totals.
    public func resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64) throws {
        let a = try call(.resizeDevices(metaTotalBlocks: metaTotalBlocks, dataTotalBlocks: dataTotalBlocks))
        guard case .resized(let e, let reason) = a else { throw unexpected(a, to: "a resize") }
        if e != 0 { throw StoreError(.invalid, reason) }
        try refreshRoots()
    }

    public func refillMetaPool(rid: UInt64, atLeast count: Int) throws -> [UInt64] {
        try refill(.refillMetaPool(atLeast: UInt64(max(count, 0))), \.metaPool) { a in
            guard case .metaPool(let extents) = a else { throw unexpected(a, to: "a metadata pool refill") }
            return extents
        }.flatMap { Array($0.start..<$0.end) }
    }

    /// A refill the server committed (it does before it answers) and then ended without
    /// answering is in the record the next server reads, and nowhere else: asked again, its
    /// blocks would stay recorded in the pool until this node's next commit recorded the
    /// pool it really has, and be lost (leaked). So the record's pool is read first, and after
    /// a server change what the new server's record gained is the refill's answer; if it
    /// gained nothing, the refill was not made and is asked again. (This node's record
    /// changes only through its own calls, which its store lock takes one at a time.)
    private func refill(_ c: ServerCall, _ pool: KeyPath<LogTreeRecord, [Extent]>,
                        _ extents: (ServerAnswer) throws -> [Extent]) throws -> [Extent] {
        let before = try recorded()?[keyPath: pool] ?? []
        while true {
            if let why = fenced.withLock({ $0 }) { throw NetError(why) }
            do {
                return try extents(ServerAnswer(decoding: net.call(c.encoded)))
            } catch let e as NetError where e.serverRestarted {
                try refreshRoots()
                let gained = Extent.difference(try recorded()?[keyPath: pool] ?? [], removing: before)
                if !gained.isEmpty { return gained }
            }
        }
    }

    /// This node's record as the server holds it now.
    private func recorded() throws -> LogTreeRecord? {
        let a = try call(.recordedLogTree)
        guard case .recordedLogTree(let rec) = a else { throw unexpected(a, to: "the recorded log tree") }
        return rec
    }

    /// Asked of the server (a pool refill depends on it); the last figures it gave if the
    /// call fails, so that the refill's own call reports the failure.
    public var dataSpace: (free: UInt64, pendingFree: UInt64) {
        if case .dataSpace(let free, let pending)? = try? call(.dataSpace) { return (free, pending) }
        let r = store.roots
        return (r.dataFree, r.dataPendingFree)
    }

    public func recordedLogTree(rid: UInt64) throws -> LogTreeRecord? {
        // The node's record changes only in its own commits (the server merges a node's tree
        // inside them), and each commit's answer moves the node's roots past it: the records
        // read with those roots hold it. A call only when the roots lag the last commit (its
        // answer's roots could not be read).
        let roots = store.committed.roots
        if roots.seq >= lastCommit.load(ordering: .acquiring), case .success(let records) = roots.records {
            return records.first { $0.rid == net.client }?.record
        }
        return try recorded()
    }

    public func recordedLogTreeNow(rid: UInt64) throws -> LogTreeRecord? {
        // The roots move on too: what the node reads its record from next must not be the
        // old server's.
        try refreshRoots()
        return try recorded()
    }

    /// Whether another client holds `ino` (the open-inode map; each holder marks it
    /// unlinked, so its own last close frees it).
    public func openElsewhere(_ ino: UInt64) throws -> Bool {
        let a = try call(.openElsewhere(ino: ino))
        guard case .held(let held) = a else { throw unexpected(a, to: "an open-inode question") }
        return held
    }

    /// Takes, changes or lets go of a record lock for this node; the lock in the way, if any.
    /// With `wait`, the server sends `recordLocksChanged` when locks on the inode change.
    public func setRecordLock(_ lock: RecordLock, wait: Bool) throws -> RecordLock? {
        try recordLockAnswer(.setRecordLock(lock, wait: wait), "a record lock")
    }

    /// The lock of another owner that would keep `lock` from being taken, if any.
    public func testRecordLock(_ lock: RecordLock) throws -> RecordLock? {
        try recordLockAnswer(.testRecordLock(lock), "a record lock test")
    }

    /// A new server answers no record lock call before the nodes of the old one have told it
    /// which they hold (at most its recovery timeout, and their fences): asked again until then.
    private func recordLockAnswer(_ c: ServerCall, _ what: String) throws -> RecordLock? {
        while true {
            let a = try call(c)
            switch a {
            case .recordLock(let conflict): return conflict
            case .recordLocksRecovering: usleep(20_000)
            default: throw unexpected(a, to: what)
            }
        }
    }

    /// Tells a new server the record locks this node holds (granted by the one before).
    public func reclaimRecordLocks(_ locks: [RecordLock]) throws {
        var rest = locks[...]
        repeat {
            let part = rest.prefix(ServerCall.maxRecordLocks)
            rest = rest.dropFirst(part.count)
            let a = try call(.reclaimRecordLocks(Array(part), last: rest.isEmpty))
            guard case .reclaimed = a else { throw unexpected(a, to: "reclaimed record locks") }
        } while !rest.isEmpty
    }

    /// Tells the server this node leaves cleanly: its locks are dropped now.
    public func leave() throws {
        let a = try call(.leave)
        guard case .left = a else { throw unexpected(a, to: "a leave") }
    }

    public func commitLogTree(rid: UInt64, _ record: LogTreeRecord, freed: [Extent], freedMeta: [Extent], merge: Bool) throws -> LogCommit {
        let a = try call(.commitLogTree(record, freed: freed, freedMeta: freedMeta, merge: merge))
        guard case .committed(let c, let roots, let records) = a else { throw unexpected(a, to: "a commit") }
        lastCommit.store(c.seq, ordering: .releasing)
        try moveOn(roots, records: records)
        return c
    }
}
