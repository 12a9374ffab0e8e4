public import ScoutFormat
public import ScoutNet
public import ScoutStore
import Synchronization

/// An item call made under a lock that does not allow it: a bug in the caller, refused before
/// anything changes.
public struct LockCoverageError: Error, CustomStringConvertible {
    public var description: String
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
/// The caller serializes item calls and commits with `withTransaction` (one at a time per
/// client, like the filesystem lock that still guards the mount); locks are taken before it,
/// never inside it, since a lock request may need another client's hook to commit.
public final class ClusterClient: Sendable {
    public let id: ClientID
    public let locks: LockClient
    // nonisolated(unsafe): used only inside `transaction`'s mutex.
    nonisolated(unsafe) public let items: ClientItems
    private let transaction = Mutex(())
    private let commits = Atomic<Int>(0)

    public init(id: ClientID, locks: LockClient, store: Store, server: any ServerLink, cacheBytes: Int = 64 << 20) {
        self.id = id
        self.locks = locks
        items = ClientItems(store: store, server: server, rid: id, cacheBytes: cacheBytes, sharesStore: true)
        locks.addInvalidationHook { [weak self] range, from, to in
            try self?.downgrade(range, from: from, to: to)
        }
    }

    /// Runs `body` with the transaction held: item calls and commits go through here.
    public func withTransaction<T>(_ body: () throws -> T) rethrows -> T {
        try transaction.withLock { _ in try body() }
    }

    /// Commits made so far (by the caller or by lock hooks).
    public var commitCount: Int { commits.load(ordering: .relaxed) }

    private func downgrade(_ range: LockRange, from: LockMode, to: LockMode) throws {
        try withTransaction {
            if from == .write || from == .writeOnly, items.cache.hasDirty(in: range) {
                try commitLocked()
            }
            if to == .null || from == .writeOnly {
                try items.cache.invalidate(range)
            }
        }
    }

    /// Makes this client's changes durable (the caller holds the transaction).
    public func commitLocked() throws {
        try items.commit()
        commits.add(1, ordering: .relaxed)
    }

    // MARK: item calls (transaction held)

    private func check(_ key: Key, _ lock: LockHandle, write: Bool) throws {
        guard lock.range.contains(key) else {
            throw LockCoverageError(description: "key \(key) is outside the lock \(lock.range) it was used under")
        }
        let allowed = write ? (lock.mode == .write || lock.mode == .writeOnly) : (lock.mode == .read || lock.mode == .write)
        guard allowed else {
            throw LockCoverageError(description: "a \(write ? "write" : "read") of \(key) under a \(lock.mode) lock")
        }
    }

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
        try items.insert(key, value, minSeq: lock.writeSeq)
    }

    public func delete(_ key: Key, under lock: LockHandle) throws {
        try check(key, lock, write: true)
        try items.delete(key, minSeq: lock.writeSeq)
    }

    public func addDelta(_ key: Key, _ fields: [Int64], under lock: LockHandle) throws {
        try check(key, lock, write: true)
        try items.addDelta(key, fields, minSeq: lock.writeSeq)
    }
}
