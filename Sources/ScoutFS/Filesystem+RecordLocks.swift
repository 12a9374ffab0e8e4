public import ScoutFormat
public import SystemPackage

/// flock(2) and POSIX record locks (fcntl F_GETLK/F_SETLK/F_SETLKW), coherent across every
/// client of the cluster: the server keeps one table for all of them (`RecordLockTable`).
/// `owner` is the kernel's lock owner (a process's files table for POSIX locks, an open file
/// for flock and open-file-description locks); `pid` is reported to F_GETLK callers on the
/// holder's own client; `handle` names the open file a lock was taken through, whose release
/// lets go of what its owners still hold on it.
extension Filesystem {
    /// The lock another owner holds that keeps `type` on `start...end` of `ino` from being
    /// taken now, or nil. Another client's holder is reported with pid 0: its process id
    /// means nothing on this machine.
    public func testRecordLock(_ ino: UInt64, kind: RecordLockKind, type: RecordLockType, start: UInt64, end: UInt64,
                               owner: UInt64, pid: UInt32) throws(Errno) -> RecordLock? {
        let lock = request(ino, kind, type, start, end, owner, pid)
        guard var c = try FSShared.askRecordLocks(host, about: lock, log: shared.log, { try host.testRecordLock(lock) }) else { return nil }
        if c.holder.client != cluster.id { c.pid = 0 }
        return c
    }

    /// Takes, changes or lets go of a lock without waiting: EAGAIN if another owner's lock is
    /// in the way.
    public func setRecordLock(_ ino: UInt64, kind: RecordLockKind, type: RecordLockType, start: UInt64, end: UInt64,
                              owner: UInt64, pid: UInt32, handle: UInt64 = 0) throws(Errno) {
        let lock = request(ino, kind, type, start, end, owner, pid)
        if try set(lock, wait: false) != nil { throw .resourceTemporarilyUnavailable }
        Self.noteUse(shared, lock, handle)
    }

    /// Takes a lock, waiting for it as long as another owner's is in the way, and calls
    /// `done` once: nil when taken, EINTR when `cancel` fires first, EIO when the server
    /// cannot be asked. `done` may run on this thread or on the waits' own.
    public func waitForRecordLock(_ ino: UInt64, kind: RecordLockKind, type: RecordLockType, start: UInt64, end: UInt64,
                                  owner: UInt64, pid: UInt32, handle: UInt64 = 0, cancel: WaitCancellation?,
                                  done: @escaping @Sendable (Errno?) -> Void) {
        let lock = request(ino, kind, type, start, end, owner, pid)
        let shared = shared
        // Most requests find nothing in the way: answered here, without the waits' thread.
        do throws(Errno) {
            if try set(lock, wait: true) == nil {
                Self.noteUse(shared, lock, handle)
                return done(nil)
            }
        } catch {
            return done(error)
        }
        shared.recordWaits.wait(for: lock, cancel: cancel) { e in
            if e == nil { Self.noteUse(shared, lock, handle) }
            done(e)
        }
    }

    /// Lets go of every lock of `kind` that `owner` holds on `ino`: a POSIX owner's at each
    /// close of the file (flush), an flock owner's when its open file is released. Asks the
    /// server only if the owner took a lock through this client.
    public func releaseRecordLocks(_ ino: UInt64, kind: RecordLockKind, owner: UInt64) throws(Errno) {
        let use = FSShared.RecordLockUse(ino: ino, kind: kind, owner: owner)
        guard shared.recordLockOwners.withLock({ $0[use] != nil }) else { return }
        try unlockAll(use)
    }

    /// Lets go of the POSIX locks taken through open file `handle` of `ino`, now released:
    /// the kernel names no owner at release, and an open file description's own locks
    /// (F_OFD_SETLK) have no close of their owner's before it. A process's locks taken
    /// through the file went at its close already.
    public func releaseRecordLocks(_ ino: UInt64, handle: UInt64) throws(Errno) {
        let uses = shared.recordLockOwners.withLock { m -> [FSShared.RecordLockUse] in
            m.isEmpty ? [] : m.filter { $0.key.ino == ino && $0.key.kind == .posix && $0.value.contains(handle) }.map(\.key)
        }
        for use in uses { try unlockAll(use) }
    }

    private func unlockAll(_ use: FSShared.RecordLockUse) throws(Errno) {
        let lock = request(use.ino, use.kind, .unlock, 0, RecordLock.toEnd, use.owner, 0)
        _ = try set(lock, wait: false)
        shared.recordLockOwners.withLock { _ = $0.removeValue(forKey: use) }
    }

    /// Blocking lock requests waiting now (status, tests).
    public var recordLockWaiters: Int { shared.recordWaits.waiting }

    /// One try of `lock` at the cluster's table: the lock in the way, or nil when taken.
    private func set(_ lock: RecordLock, wait: Bool) throws(Errno) -> RecordLock? {
        try FSShared.askRecordLocks(host, about: lock, log: shared.log) { try host.setRecordLock(lock, wait: wait) }
    }

    private func request(_ ino: UInt64, _ kind: RecordLockKind, _ type: RecordLockType, _ start: UInt64, _ end: UInt64,
                         _ owner: UInt64, _ pid: UInt32) -> RecordLock {
        RecordLock(ino: ino, kind: kind, type: type, start: start, end: min(end, RecordLock.toEnd),
                   holder: RecordLockOwner(client: cluster.id, owner: owner), pid: pid)
    }

    private static func noteUse(_ shared: FSShared, _ lock: RecordLock, _ handle: UInt64) {
        guard lock.type != .unlock else { return }
        let use = FSShared.RecordLockUse(ino: lock.ino, kind: lock.kind, owner: lock.holder.owner)
        shared.recordLockOwners.withLock { _ = $0[use, default: []].insert(handle) }
    }
}
