import ScoutClient
import ScoutFormat
import ScoutStore
import SystemPackage

/// The cluster locks one filesystem operation takes before it holds the transaction: the
/// inode groups it reads and writes, and the write-only zones (index, orphan, totals, search)
/// its changes reach.
struct LockPlan {
    private(set) var modes: [LockRange: LockMode] = [:]
    /// Inodes the operation may write: an inode write moves its index entries, so the index
    /// ranges of its current seqs (and of the open transaction's) are locked too.
    private(set) var indexed: [UInt64] = []

    init() {}

    /// A range wanted in two modes that no one grant serves (write-only and a read) is taken
    /// in write mode, which allows both reading and writing.
    mutating func add(_ range: LockRange, _ mode: LockMode) {
        if let have = modes[range] {
            modes[range] = LockMode.covering(have, mode) ?? .write
        } else {
            modes[range] = mode
        }
    }

    mutating func read(_ ino: UInt64) { add(.inodeGroup(ino), .read) }

    mutating func write(_ ino: UInt64) {
        add(.inodeGroup(ino), .write)
        if !indexed.contains(ino) { indexed.append(ino) }
    }

    mutating func writeOnly(_ range: LockRange) { add(range, .writeOnly) }

    /// What freeing `ino` (its last link or its last reference gone) touches: its group, its
    /// orphan item, and the search items and totals of its tagged xattrs.
    mutating func mayFree(_ ino: UInt64) {
        write(ino)
        writeOnly(.orphan)
        xattrTags()
    }

    /// Changing tagged xattrs adds and removes search items and `.totl.` deltas.
    mutating func xattrTags() {
        writeOnly(.search)
        writeOnly(.totals)
    }
}

/// A change of plan found while the transaction was held: the operation lets everything go,
/// takes the locks it now knows it needs, and starts over.
struct LocksNeeded: Error {
    var plan: LockPlan
}

/// Space that a commit would make allocatable (blocks freed in the open transaction); the
/// operation commits, outside itself, and starts over. Thrown before the operation changes
/// anything.
struct CommitNeeded: Error {}

/// The locks an operation holds while it runs, in key order: every item call finds its
/// lock here and is refused without one.
struct HeldLocks {
    var handles: [LockHandle] = []

    static let none = HeldLocks()

    func handle(for key: Key) -> LockHandle? {
        // A handful of locks per operation: a scan beats any index.
        for h in handles where h.range.contains(key) { return h }
        return nil
    }

    /// The held lock covering `key` in a mode that allows the call.
    func handle(for key: Key, write: Bool) throws -> LockHandle {
        guard let h = handle(for: key) else {
            throw LockCoverageError(description: "no lock held covers \(key) (held: \(handles.map { "\($0.range) \($0.mode)" }))")
        }
        guard h.permits(write: write) else {
            throw LockCoverageError(description: "a \(write ? "write" : "read") of \(key) under a \(h.mode) lock")
        }
        return h
    }

    func serves(_ range: LockRange, _ mode: LockMode) -> Bool {
        guard let h = handles.first(where: { $0.range == range }) else { return false }
        return h.mode.satisfies(mode) || (h.mode == .write && mode == .writeOnly)
    }

    func serves(_ plan: LockPlan) -> Bool {
        plan.modes.allSatisfy { serves($0.key, $0.value) }
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
    case commitFirst
}

extension Filesystem {
    /// Runs one operation the way every operation runs: its locks first (in key order, outside
    /// the transaction), then the transaction, then `body` in the item cache.
    ///
    /// `discover` runs with the transaction held before `body`, under the locks taken so far,
    /// and adds what it finds the operation needs (the inode a name leads to, the ancestors a
    /// rename must check); when the plan grew past what is held, everything is let go and the
    /// operation starts over with the larger plan. `body` then runs with all of it held, in
    /// the same hold of the transaction as the last `discover`, so what `discover` found is
    /// still true.
    func locked<T>(_ space: SpaceUse = .grows, commit: Bool = true, _ initial: LockPlan = LockPlan(),
                   discover: ((FSCore, inout LockPlan) throws -> Void)? = nil,
                   _ body: (FSCore) throws -> T) throws(Errno) -> T {
        var plan = initial
        var spaceCommitted = false
        while true {
            let step: LockedStep<T> = try withLocks(plan) { held throws(Errno) in try runAttempt(space, commit: commit) { c in
                c.held = held
                c.spaceCommitted = spaceCommitted
                defer { c.held = .none }
                var want = plan
                do {
                    try discover?(c, &want)
                    try c.addIndexRanges(&want)
                    guard held.serves(want) else { return .more(want) }
                    return .done(try body(c))
                } catch let e as LocksNeeded {
                    return .more(e.plan)
                } catch is CommitNeeded {
                    return .commitFirst
                }
            } }
            switch step {
            case .done(let v):
                return v
            case .more(let p):
                plan = p
            case .commitFirst:
                try runAttempt(.reads, commit: false) { c in try c.commit() }
                spaceCommitted = true
            }
        }
    }

    /// Runs `body` holding every lock of `plan`.
    func withLocks<T>(_ plan: LockPlan, _ body: (HeldLocks) throws(Errno) -> T) throws(Errno) -> T {
        let held = takeLocks(plan)
        defer { for h in held.handles { cluster.locks.unlock(h) } }
        return try body(held)
    }

    /// Takes every lock of `plan` in key order (the global order that keeps two operations
    /// from each holding what the other waits for).
    func takeLocks(_ plan: LockPlan) -> HeldLocks {
        var held = HeldLocks()
        held.handles.reserveCapacity(plan.modes.count)
        for (range, mode) in plan.modes.sorted(by: { $0.key.start < $1.key.start }) {
            do {
                held.handles.append(try cluster.locks.lock(range, mode))
            } catch {
                // Every range comes from LockRange's helpers, which never overlap.
                preconditionFailure("\(error)")
            }
        }
        return held
    }
}
