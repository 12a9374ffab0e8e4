public import ScoutFormat
public import ScoutNet
public import ScoutStore
public import Synchronization

/// An item call made under a lock that does not allow it: a bug in the caller, refused before
/// anything changes.
public struct LockCoverageError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// One client of the cluster: its own lock client, item cache, log tree and open transaction,
/// over a server it shares with other clients. Every item call names the lock it is made
/// under and is refused unless that lock covers the key in a mode that allows the call; giving
/// a lock up runs the hooks the original's `lock.c` runs:
///
/// - from write (or write-only) mode, a commit if the range holds uncommitted changes, so the
///   next holder reads them from the forest; a failed commit leaves the invalidation
///   unanswered;
/// - to null (or from write-only, which caches nothing readable), the range's cached items go,
///   since another client may change them next.
///
/// A write → read downgrade keeps the cache: nobody can change the range while this client
/// still reads it.
///
/// Operations hold the transaction shared (`withOperation`) and may run in parallel (the item
/// cache is thread-safe; what they share of the store goes through `ClientItems.withStore`);
/// a commit's switch holds it exclusively (`withTransaction`), so a commit never takes half
/// an operation, and writes what it took while operations go on (`commit`).
/// Locks are taken before the transaction, never inside it, since a lock request may need
/// this client's own hook (which takes the transaction) or another client's to commit first.
public final class ClusterClient: Sendable {
    public let id: ClientID
    public let locks: LockClient
    public let items: ClientItems
    /// File data reads in flight outside the transaction; a commit waits for them.
    public let readGate = DataReadGate()
    /// Changes carry the write seq of the lock they are made under when it is above the
    /// transaction's. Clients sharing one store in one process share its transaction seq,
    /// which every hand-over of a lock raises (the giver commits), so that seq alone orders
    /// them too; the mount, whose lock server counts from zero at every start, relies on it.
    let ordersByLockSeq: Bool
    private let transaction = ReadWriteLock()
    /// One commit at a time; taken before the transaction, never inside it.
    private let commitTurn = Mutex(())
    private let commits = Atomic<Int>(0)
    /// Giving a lock up runs the hooks below. Tests turn this off to plant the bug their
    /// randomized cluster test must find (a lock given up without its commit and without
    /// dropping what it cached); nothing else may.
    public let runsDowngradeHooks = Atomic<Bool>(true)
    /// Told of each range this client stops caching (lock dropped to null): the FUSE layer
    /// drops what the kernel caches of it. Called inside the hook; must not block.
    private let dropHooks = Mutex<[@Sendable (LockRange) -> Void]>([])

    /// `sharesStore`: other clients record log trees in the same store (reads see them and
    /// deletions are always written as tombstones); false for a lone mount.
    public init(id: ClientID, locks: LockClient, store: any ClientStore, server: any ServerLink, cacheBytes: Int = 64 << 20,
                sharesStore: Bool = true, ordersByLockSeq: Bool = true, storeLock: StoreLock = StoreLock()) {
        self.id = id
        self.locks = locks
        self.ordersByLockSeq = ordersByLockSeq
        items = ClientItems(store: store, server: server, rid: id, cacheBytes: cacheBytes, sharesStore: sharesStore,
                            storeLock: storeLock)
        locks.addInvalidationHook { [weak self] range, from, to in
            try self?.downgrade(range, from: from, to: to)
        }
    }

    /// Runs `body` with the transaction held exclusively: commits, and whatever must see no
    /// operation half done.
    @discardableResult
    public func withTransaction<T>(_ body: () throws -> T) rethrows -> T {
        try transaction.withExclusive(body)
    }

    /// Runs `body` as one operation of the open transaction, beside other operations.
    @discardableResult
    public func withOperation<T>(_ body: () throws -> T) rethrows -> T {
        try transaction.withShared(body)
    }

    /// Commits made so far (by the caller or by lock hooks).
    public var commitCount: Int { commits.load(ordering: .relaxed) }

    private func downgrade(_ range: LockRange, from: LockMode, to: LockMode) throws {
        guard runsDowngradeHooks.load(ordering: .relaxed) else { return }
        if from == .write || from == .writeOnly {
            // The turn first: a commit in flight may hold this range's changes (its switch
            // took them out of the dirty set already); the next holder must find them durable.
            try commitTurn.withLock { _ in
                if items.cache.hasDirty(in: range) { _ = try commitHoldingTurn(merge: false, returnPool: false) }
            }
        }
        if to == .null || from == .writeOnly {
            // No operation runs under this lock now (the lock client waited for its users
            // and holds new ones back), so nothing of it can be dirty again.
            try withTransaction { _ = try items.cache.invalidate(range) }
        }
        if to == .null {
            for hook in dropHooks.withLock({ $0 }) { hook(range) }
        }
    }

    /// Adds a hook told of every range given up to null, after its cache partition went.
    public func addDropHook(_ hook: @escaping @Sendable (LockRange) -> Void) {
        dropHooks.withLock { $0.append(hook) }
    }

    /// Makes this client's changes durable and returns the commit's seq. Operations wait only
    /// for the switch (a moment with the transaction held alone, in which the commit takes
    /// the cached changes and the next changes get the next seq); they run on while the log
    /// tree is written and the server commits. Blocks the committing transaction freed
    /// become allocatable, so the commit first waits for the file data reads that began
    /// before the switch (`readGate`). Never call it holding the transaction.
    @discardableResult
    public func commit(merge: Bool = false, returnPool: Bool = false) throws -> UInt64 {
        try commitTurn.withLock { _ in try commitHoldingTurn(merge: merge, returnPool: returnPool) }
    }

    private func commitHoldingTurn(merge: Bool, returnPool: Bool) throws -> UInt64 {
        let (pending, readers) = withTransaction { (items.beginCommit(returnPool: returnPool), readGate.switchEpoch()) }
        readGate.waitForReaders(of: readers)
        let seq = try items.finishCommit(pending, merge: merge)
        commits.add(1, ordering: .relaxed)
        commitObserver.withLock { $0 }?.call(pending.itemCount)
        return seq
    }

    /// Told the number of items of each commit once it is durable (metrics). Behind a
    /// reference: a closure kept in a mutex grows a thunk at every read (`Callback`).
    private let commitObserver = Mutex<Callback<Int, Void>?>(nil)

    public func observeCommits(_ observe: @escaping @Sendable (_ items: Int) -> Void) {
        commitObserver.withLock { $0 = Callback(observe) }
    }

    // MARK: item calls (transaction held, shared or exclusive)

    private func check(_ key: Key, _ lock: LockHandle, write: Bool) throws {
        guard lock.range.contains(key) else {
            throw LockCoverageError(description: "key \(key) is outside the lock \(lock.range) it was used under")
        }
        guard lock.permits(write: write) else {
            throw LockCoverageError(description: "a \(write ? "write" : "read") of \(key) under a \(lock.mode) lock")
        }
    }

    private func minSeq(_ lock: LockHandle) -> UInt64 { ordersByLockSeq ? lock.writeSeq : 0 }

    public func lookup(_ key: Key, under lock: LockHandle) throws -> Item? {
        try check(key, lock, write: false)
        return try items.lookup(key)
    }

    public func forEach(from start: Key, through end: Key, under lock: LockHandle, _ body: (Item) throws -> Bool) throws {
        try check(start, lock, write: false)
        try check(end, lock, write: false)
        try items.forEach(from: start, through: end, body)
    }

    public func insert(_ key: Key, _ value: [UInt8], under lock: LockHandle) throws {
        try check(key, lock, write: true)
        try items.insert(key, value, minSeq: minSeq(lock))
    }

    public func delete(_ key: Key, under lock: LockHandle) throws {
        try check(key, lock, write: true)
        try items.delete(key, minSeq: minSeq(lock))
    }

    public func addDelta(_ key: Key, _ fields: [Int64], under lock: LockHandle) throws {
        try check(key, lock, write: true)
        try items.addDelta(key, fields, minSeq: minSeq(lock))
    }
}

extension LockHandle {
    /// Whether items may be read (read, write) or changed (write, write-only) under this lock.
    public func permits(write: Bool) -> Bool {
        write ? mode.canWrite : mode.canRead
    }
}
