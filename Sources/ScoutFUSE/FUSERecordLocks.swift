import CFuse3
import ScoutFS
import ScoutFormat
import Synchronization
import SystemPackage

/// Each open file gets a handle of its own, so that its release can name the record locks
/// taken through it (`Filesystem.releaseRecordLocks(_:handle:)`).
private let fileHandles = Atomic<UInt64>(1)

func newFileHandle() -> UInt64 { fileHandles.wrappingAdd(1, ordering: .relaxed).oldValue }

// flock(2) and fcntl record locks, answered by the cluster's table (Filesystem+RecordLocks).
// The kernel hands them over because these handlers exist (libfuse then asks for
// FUSE_CAP_POSIX_LOCKS and FUSE_CAP_FLOCK_LOCKS); it keeps none of its own.

/// The bytes a `struct flock` names, as the kernel normalized them (SEEK_SET, length 0 for
/// "to the end, however long").
func lockedBytes(_ l: flock) throws(Errno) -> (start: UInt64, end: UInt64) {
    guard l.l_start >= 0, l.l_len >= 0 else { throw Errno.invalidArgument }
    let start = UInt64(l.l_start)
    guard l.l_len > 0 else { return (start, RecordLock.toEnd) }
    let (last, over) = start.addingReportingOverflow(UInt64(l.l_len) - 1)
    return (start, over ? RecordLock.toEnd : min(last, RecordLock.toEnd))
}

func lockType(_ t: Int16) throws(Errno) -> RecordLockType {
    switch Int32(t) {
    case F_RDLCK: return .read
    case F_WRLCK: return .write
    case F_UNLCK: return .unlock
    default: throw Errno.invalidArgument
    }
}

func installRecordLockOperations(_ ops: inout fuse_lowlevel_ops) {
    ops.getlk = { req, ino, fi, lock in
        do {
            guard let fi, let lock else { throw Errno.invalidArgument }
            let (start, end) = try lockedBytes(lock.pointee)
            var answer = lock.pointee
            if let c = try fs(req).testRecordLock(ino, kind: .posix, type: try lockType(lock.pointee.l_type), start: start, end: end,
                                                 owner: fi.pointee.lock_owner, pid: UInt32(clamping: lock.pointee.l_pid)) {
                answer.l_type = Int16(c.type == .read ? F_RDLCK : F_WRLCK)
                answer.l_whence = Int16(SEEK_SET)
                answer.l_start = off_t(c.start)
                answer.l_len = c.end >= RecordLock.toEnd ? 0 : off_t(c.end - c.start + 1)
                answer.l_pid = pid_t(clamping: c.pid)
            } else {
                answer.l_type = Int16(F_UNLCK)
            }
            fuse_reply_lock(req, &answer)
        } catch {
            replyErr(req, error)
        }
    }
    ops.setlk = { req, ino, fi, lock, sleep in
        do {
            guard let fi, let lock else { throw Errno.invalidArgument }
            let (start, end) = try lockedBytes(lock.pointee)
            try setLock(req, ino, kind: .posix, type: try lockType(lock.pointee.l_type), start: start, end: end,
                        owner: fi.pointee.lock_owner, pid: UInt32(clamping: lock.pointee.l_pid), handle: fi.pointee.fh, wait: sleep != 0)
        } catch {
            replyErr(req, error)
        }
    }
    ops.flock = { req, ino, fi, op in
        do {
            guard let fi else { throw Errno.invalidArgument }
            let type: RecordLockType
            switch op & ~LOCK_NB {
            case LOCK_SH: type = .read
            case LOCK_EX: type = .write
            case LOCK_UN: type = .unlock
            default: throw Errno.invalidArgument
            }
            try setLock(req, ino, kind: .flock, type: type, start: 0, end: RecordLock.toEnd,
                        owner: fi.pointee.lock_owner, pid: fuse_req_ctx(req).map { UInt32(clamping: $0.pointee.pid) } ?? 0,
                        handle: fi.pointee.fh, wait: op & LOCK_NB == 0 && type != .unlock)
        } catch {
            replyErr(req, error)
        }
    }
}

/// Takes the lock and replies. A request that may wait is answered later, from the waits'
/// own thread, so that it holds no request thread while it waits; a signal to the caller
/// (FUSE INTERRUPT) ends the wait with EINTR.
private func setLock(_ req: fuse_req_t?, _ ino: UInt64, kind: RecordLockKind, type: RecordLockType, start: UInt64, end: UInt64,
                     owner: UInt64, pid: UInt32, handle: UInt64, wait: Bool) throws(Errno) {
    let fs = fs(req)
    guard wait, type != .unlock else {
        try fs.setRecordLock(ino, kind: kind, type: type, start: start, end: end, owner: owner, pid: pid, handle: handle)
        fuse_reply_err(req, 0)
        return
    }
    let cancel = watchInterrupts(req)
    let request = UInt(bitPattern: req)
    fs.waitForRecordLock(ino, kind: kind, type: type, start: start, end: end, owner: owner, pid: pid, handle: handle,
                         cancel: cancel.takeUnretainedValue()) { e in
        let req = fuse_req_t(bitPattern: request)
        stopWatchingInterrupts(req, cancel)
        fuse_reply_err(req, e?.rawValue ?? 0)
    }
}
