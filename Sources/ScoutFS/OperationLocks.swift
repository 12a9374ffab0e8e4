import ScoutClient
import ScoutFormat
import ScoutStore
import SystemPackage

/// The cluster locks one filesystem operation takes before it holds the transaction: the
/// inode groups it reads and writes, and the write-only zones (index, orphan, totals, search)
/// its changes reach.
struct LockPlan {
    /// A handful per operation (readdirplus adds one per entry, mostly the same few groups):
    /// a scan of a small array beats hashing two keys per add.
    private(set) var modes: [(range: LockRange, mode: LockMode)] = []
    /// Inodes the operation may write: an inode write moves its index entries, so the index
    /// ranges of its current seqs (and of the open transaction's) are locked too.
    private(set) var indexed: [UInt64] = []
    /// Every inode it reads or writes, for this mount's own turns (`LocalLocks`).
    private(set) var inodes: [(ino: UInt64, write: Bool)] = []
    /// Where each inode is in `inodes`, once there are many (a readdirplus plan names every
    /// entry's inode); most plans name one to three, which a scan finds without hashing.
    private var inodeAt: [UInt64: Int] = [:]
    private static let scanLimit = 16
    /// It renames between directories (the cluster's rename lock, and this mount's turn).
    private(set) var renames = false

    init() {}

    /// A range wanted in two modes that no one grant serves (write-only and a read) is taken
    /// in write mode, which allows both reading and writing.
    mutating func add(_ range: LockRange, _ mode: LockMode) {
        if let i = modes.firstIndex(where: { $0.range == range }) {
            modes[i].mode = LockMode.covering(modes[i].mode, mode) ?? .write
        } else {
            modes.append((range, mode))
        }
    }

    mutating func read(_ ino: UInt64) {
        add(.inodeGroup(ino), .read)
        noteInode(ino, write: false)
    }

    mutating func write(_ ino: UInt64) {
        add(.inodeGroup(ino), .write)
        if !indexed.contains(ino) { indexed.append(ino) }
        noteInode(ino, write: true)
    }

    private mutating func noteInode(_ ino: UInt64, write: Bool) {
        let found = inodes.count <= Self.scanLimit ? inodes.firstIndex { $0.ino == ino } : inodeAt[ino]
        if let i = found {
            inodes[i].write = inodes[i].write || write
            return
        }
        inodes.append((ino, write))
        if inodes.count == Self.scanLimit + 1 {
            for (i, n) in inodes.enumerated() { inodeAt[n.ino] = i }
        } else if inodes.count > Self.scanLimit + 1 {
            inodeAt[ino] = inodes.count - 1
        }
    }

    /// A rename between directories: one at a time in the cluster (the rename lock) and in
    /// this mount.
    mutating func renameBetweenDirectories() {
        add(.rename, .write)
        renames = true
    }

    mutating func writeOnly(_ range: LockRange) { add(range, .writeOnly) }

    /// What freeing `ino` (its last link or its last reference gone) touches: its group, its
    /// orphan item, and the search items and totals of its tagged xattrs.
    mutating func mayFree(_ ino: UInt64) {
        write(ino)
        writeOnly(.orphan)
        xattrTags()
    }

    /// Changing tagged xattrs adds and removes search items, `.totl.` and `.indx.` deltas.
    mutating func xattrTags() {
        writeOnly(.search)
        writeOnly(.totals)
        writeOnly(.xattrIndex)
    }
}

/// Space that a commit would make allocatable (blocks freed in the open transaction, or fs
/// tree blocks a merge frees); the operation commits outside itself and starts over. Thrown
/// before the operation changes anything.
struct CommitNeeded: Error {
    var merge = false
}

/// Operations of this mount on one inode take turns: a cluster lock says which node may use a
/// range, not which of its threads, and the filesystem reads and rewrites an inode's items
/// (its record, a directory's entries and positions, a file's extents) whole. Readers share.
/// An inode's items are all its own, so operations on different inodes of one group run in
/// parallel: two processes creating in their own directories touch different inodes even
/// when the mount handed them numbers of one group. Inodes map onto a fixed set of
/// reader-writer locks; two inodes on one stripe only wait for each other needlessly, and an
/// operation takes its stripes in stripe order, so no two operations can each hold what the
/// other waits for.
final class LocalLocks: Sendable {
    static let stripeCount = 4096
    private let stripes: [ReadWriteLock] = (0...LocalLocks.stripeCount).map { _ in ReadWriteLock() }

    /// Renames between directories have a stripe of their own, beside the inodes'.
    static let renameStripe = stripeCount

    /// The stripes of `plan`, each once, exclusive if any inode on it is written. Zones need
    /// none: their items are unique per inode or summed (deltas), and the cache keeps each
    /// item whole.
    static func stripes(of plan: LockPlan) -> [(index: Int, exclusive: Bool)] {
        var out: [(index: Int, exclusive: Bool)] = plan.inodes.map { (Int($0.ino % UInt64(stripeCount)), $0.write) }
        if plan.renames { out.append((renameStripe, true)) }
        out.sort { $0.index < $1.index }
        // Each stripe once, exclusive if any of its inodes is written.
        var w = 0
        for r in 0..<out.count {
            if w > 0 && out[w - 1].index == out[r].index {
                out[w - 1].exclusive = out[w - 1].exclusive || out[r].exclusive
            } else {
                out[w] = out[r]
                w += 1
            }
        }
        out.removeSubrange(w...)
        return out
    }

    func lock(_ index: Int, exclusive: Bool) {
        if exclusive { stripes[index].lockExclusive() } else { stripes[index].lockShared() }
    }

    func tryLock(_ index: Int, exclusive: Bool) -> Bool {
        exclusive ? stripes[index].tryLockExclusive() : stripes[index].tryLockShared()
    }

    func unlock(_ index: Int) { stripes[index].unlock() }
}

/// The locks an operation holds while it runs, in key order: every item call finds its
/// lock here and is refused without one.
final class HeldLocks {
    private(set) var handles: [LockHandle] = []
    /// Local stripes taken, in the order taken.
    private(set) var stripes: [(index: Int, exclusive: Bool)] = []
    /// The same, by stripe, once there are many (a readdirplus holds one per entry); a scan
    /// serves the few most operations hold.
    private var stripeModes: [Int: Bool] = [:]
    private static let scanLimit = 16

    func add(_ h: LockHandle) { handles.append(h) }
    func add(stripe: Int, exclusive: Bool) {
        stripes.append((stripe, exclusive))
        if stripes.count == Self.scanLimit + 1 {
            for s in stripes { stripeModes[s.index] = s.exclusive }
        } else if stripes.count > Self.scanLimit + 1 {
            stripeModes[stripe] = exclusive
        }
    }

    /// Forgets the stripes (their holder has let them go).
    func clearStripes() {
        stripes = []
        stripeModes = [:]
    }

    func handle(for key: Key) -> LockHandle? {
        // A handful of locks per operation: a scan beats any index.
        for h in handles where h.range.contains(key) { return h }
        return nil
    }

    /// The held lock covering `key`; whether its mode allows the call is `ClusterClient`'s
    /// check.
    func covering(_ key: Key) throws -> LockHandle {
        guard let h = handle(for: key) else {
            throw LockCoverageError(description: "no lock held covers \(key) (held: \(handles.map { "\($0.range) \($0.mode)" }))")
        }
        return h
    }

    func holds(_ range: LockRange) -> Bool { handles.contains { $0.range == range } }

    func serves(_ range: LockRange, _ mode: LockMode) -> Bool {
        guard let h = handles.first(where: { $0.range == range }) else { return false }
        return h.mode.satisfies(mode) || (h.mode == .write && mode == .writeOnly)
    }

    func serves(_ plan: LockPlan) -> Bool {
        plan.modes.allSatisfy { serves($0.range, $0.mode) }
    }

    func holdsStripe(_ index: Int, exclusive: Bool) -> Bool {
        let found = stripes.count <= Self.scanLimit ? stripes.first { $0.index == index }?.exclusive : stripeModes[index]
        guard let held = found else { return false }
        return held || !exclusive
    }

    /// `ino`'s items may be read.
    func canRead(_ ino: UInt64) -> Bool {
        handle(for: Keys.inode(ino))?.permits(write: false) ?? false
    }
}

extension FSCore {
    /// Adds the index ranges the plan's written inodes need: those of their current seqs, whose
    /// entries move, and the open transaction's, where they move to. Inodes whose group is not
    /// held yet are looked at in the next round.
    func addIndexRanges(_ plan: inout LockPlan) throws {
        guard !plan.indexed.isEmpty else { return }
        for t in [ItemType.metaSeq, ItemType.dataSeq] { plan.writeOnly(.index(t, seq: seq)) }
        for ino in plan.indexed where held.canRead(ino) {
            guard let it = try get(Keys.inode(ino)), let rec = try? InodeRecord(decoding: it.value) else { continue }
            if rec.metaSeq != 0 { plan.writeOnly(.index(ItemType.metaSeq, seq: rec.metaSeq)) }
            if rec.dataSeq != 0 { plan.writeOnly(.index(ItemType.dataSeq, seq: rec.dataSeq)) }
        }
    }
}

/// How one round of `Filesystem.locked` ended.
enum LockedStep<T> {
    case done(T)
    case more(LockPlan)
    case commitFirst(merge: Bool)
}

extension Filesystem {
    /// Runs one operation the way every operation runs: its cluster locks first (in key order,
    /// outside the transaction), then its inode groups' local stripes, then the transaction
    /// shared with other operations, then `body` in the item cache.
    ///
    /// `discover` runs with the transaction held before `body`, under the locks taken so far,
    /// and adds what it finds the operation needs (the inode a name leads to, the ancestors a
    /// rename must check); it only ever adds, and runs again after every lock it added was
    /// taken. Locks it adds are tried without waiting (a lock that is already granted, a
    /// stripe nobody holds); when one is not to be had, everything is let go and the
    /// operation starts over with the larger plan, waiting in order. `body` then runs in
    /// the same hold of the transaction as the last `discover`, so what `discover` found is
    /// still true.
    func locked<T>(_ space: SpaceUse = .grows, commit: Bool = true, _ initial: LockPlan = LockPlan(),
                   discover: ((FSCore, inout LockPlan) throws -> Void)? = nil,
                   _ body: (FSCore) throws -> T) throws(Errno) -> T {
        var plan = initial
        var spaceCommitted = false
        while true {
            let held = try takeLocks(plan)
            let step: LockedStep<T>
            do {
                defer { release(held) }
                step = try runOperation(held: held, spaceCommitted: spaceCommitted) { c in
                    var want = plan
                    do {
                        // An operation that writes starts only if the space it may need is
                        // there, so it never stops half way for space.
                        if space != .reads { try c.admit(freeing: space == .frees) }
                        // Discovery and index ranges read what the held locks cover: a lock
                        // just taken may show more (a rename's next ancestor, a target's
                        // seqs), so both run again until the plan stops growing.
                        while true {
                            try discover?(c, &want)
                            try c.addIndexRanges(&want)
                            if held.serves(want) { break }
                            guard tryTakeMore(want, into: held) else { return .more(want) }
                        }
                        return .done(try body(c))
                    } catch let e as CommitNeeded {
                        return .commitFirst(merge: e.merge)
                    }
                }
            }
            switch step {
            case .done(let v):
                if commit { try commitIfPastDirtyLimit() }
                return v
            case .more(let p):
                plan = p
            case .commitFirst(let merge):
                try commitNow(merge: merge)
                spaceCommitted = true
            }
        }
    }

    /// Runs `body` holding every lock of `plan` (no transaction).
    func withLocks<T>(_ plan: LockPlan, _ body: (HeldLocks) throws(Errno) -> T) throws(Errno) -> T {
        let held = try takeLocks(plan)
        defer { release(held) }
        return try body(held)
    }

    /// Takes every lock of `plan` in key order (the global order that keeps two operations
    /// from each holding what the other waits for), then its stripes in stripe order.
    func takeLocks(_ plan: LockPlan) throws(Errno) -> HeldLocks {
        let held = HeldLocks()
        for (range, mode) in plan.modes.sorted(by: { $0.range.start < $1.range.start }) {
            do {
                held.add(try lock(range, mode))
            } catch {
                release(held)
                throw error
            }
        }
        for s in LocalLocks.stripes(of: plan) {
            localLocks.lock(s.index, exclusive: s.exclusive)
            held.add(stripe: s.index, exclusive: s.exclusive)
        }
        return held
    }

    /// Takes what `plan` adds to `held` without waiting (the caller holds the transaction, so
    /// it must not wait for anything); false, with nothing taken beyond `held`'s locks, when
    /// something was not to be had at once. What it took is let go with the rest of `held`.
    func tryTakeMore(_ plan: LockPlan, into held: HeldLocks) -> Bool {
        for (range, mode) in plan.modes where !held.serves(range, mode) {
            // A range held in a weaker mode needs the next round: one handle per range.
            guard !held.holds(range), let h = try? cluster.locks.tryLock(range, mode) else { return false }
            held.add(h)
        }
        for s in LocalLocks.stripes(of: plan) where !held.holdsStripe(s.index, exclusive: s.exclusive) {
            guard !held.holdsStripe(s.index, exclusive: false), localLocks.tryLock(s.index, exclusive: s.exclusive) else { return false }
            held.add(stripe: s.index, exclusive: s.exclusive)
        }
        return true
    }

    /// One lock, waited for until granted — or until its invalidation failed (a commit that
    /// could not be made durable leaves the lock given back to nobody): then the operation
    /// fails with EIO instead of waiting forever, and a grant that still comes is given back.
    func lock(_ range: LockRange, _ mode: LockMode) throws(Errno) -> LockHandle {
        let locks = cluster.locks
        // The common case, a lock this mount holds already: no waiter to make.
        if let h = try? locks.tryLock(range, mode) { return h }
        let wait = LockWait()
        let granted: LockHandle?
        do {
            granted = try locks.acquire(range, mode) { h in
                if !wait.deliver(h) { locks.unlock(h) }
            }
        } catch {
            // Every range comes from LockRange's helpers, which never overlap.
            preconditionFailure("\(error)")
        }
        if let granted { return granted }
        while true {
            if let h = wait.take(within: 0.1) { return h }
            if locks.invalidationFailed(range), wait.abandon() {
                shared.log("error: the lock \(range) cannot be had: giving it up failed (\(locks.failedInvalidations.last ?? "")); remount")
                throw .ioError
            }
        }
    }

    func release(_ held: HeldLocks) {
        releaseStripes(held)
        for h in held.handles { cluster.locks.unlock(h) }
    }

    /// Lets the other threads of this mount at the groups again, keeping the cluster locks.
    func releaseStripes(_ held: HeldLocks) {
        for s in held.stripes.reversed() { localLocks.unlock(s.index) }
        held.clearStripes()
    }
}

/// A lock request one operation waits for: the grant, or the operation giving up first.
final class LockWait: Sendable {
    private struct State {
        var handle: LockHandle?
        var abandoned = false
    }
    private let state = Mutex(State())
    private let parker = Parker()

    /// Hands over a grant; false if the waiter gave up (the caller gives the lock back).
    func deliver(_ h: LockHandle) -> Bool {
        let taken = state.withLock { s -> Bool in
            guard !s.abandoned else { return false }
            s.handle = h
            return true
        }
        if taken { parker.unpark() }
        return taken
    }

    /// The grant, if it came within `seconds`.
    func take(within seconds: Double) -> LockHandle? {
        if let h = state.withLock({ $0.handle }) { return h }
        _ = parker.park(seconds: seconds)
        return state.withLock { $0.handle }
    }

    /// Gives up waiting; false if the grant came meanwhile (the caller takes it after all).
    func abandon() -> Bool {
        state.withLock { s in
            guard s.handle == nil else { return false }
            s.abandoned = true
            return true
        }
    }
}
