#if canImport(Glibc)
import Glibc
#endif
import CFuse3
public import ScoutFS
import ScoutFormat
import Synchronization
import SystemPackage

/// How long the kernel may cache attributes and names. Every change reaches the filesystem
/// through this kernel, which updates its caches on each reply, so a single mount can cache
/// long; the cluster will invalidate on lock loss.
let cacheTimeout: Double = 60

/// Setting up the FUSE session failed; libfuse has printed its own reason on stderr.
public struct MountError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// What a libfuse callback reaches through `fuse_req_userdata`.
final class FUSEContext: Sendable {
    let fs: Filesystem
    let busy = BusyInodes()
    /// The INIT request whose reply turns FUSE_HANDLE_KILLPRIV_V2 on (0: none), and whether
    /// it is on (`SessionIO`).
    let initToAnswer = Atomic<UInt64>(0)
    let killprivV2 = Atomic<Bool>(false)
    /// The session, for the attribute drops requests make themselves (set once it exists).
    let session = Atomic<UInt>(0)

    /// Drops the kernel's cached attributes of `ino`: after a reply without attributes to an
    /// operation that changed them (setuid cleared by a write).
    func dropAttributes(_ ino: UInt64) {
        guard let se = OpaquePointer(bitPattern: session.load(ordering: .acquiring)) else { return }
        dropKernelAttributes(se, ino)
    }
    init(fs: Filesystem) { self.fs = fs }
}

/// A libfuse low-level session serving one `Filesystem` at a mount point.
///
/// `run()` blocks in libfuse's multi-threaded loop; worker threads call straight into the
/// filesystem (a hop into Swift concurrency would cost about half a round trip). SIGINT, SIGTERM
/// and SIGHUP end the loop through libfuse's handlers, after which the session unmounts.
public final class FUSEMount {
    let context: Unmanaged<FUSEContext>
    let session: OpaquePointer
    public let mountpoint: String
    private var mounted = false

    /// Creates the session and mounts it. `options` are `-o` mount options (allow_other, …);
    /// default_permissions is always on: the kernel checks modes, the filesystem does not.
    /// `source` is what mount tables show as the device (tools such as xfstests find a mount by
    /// it), so it is the META:DATA pair the user named. Mounted by root, device files and
    /// setuid/setgid programs work as on a disk filesystem (`dev,suid`, which libfuse leaves
    /// off); `nodev` and `nosuid` given by the user come later and win.
    /// `requestTimerLabel`: time every request into swift-metrics timers of this label, one
    /// per kind (dimension `op`); bootstrap the metrics system first. `kernelInodes`: past
    /// that many inodes held by the kernel, it is asked to drop the oldest (0: no bound).
    public init(filesystem: Filesystem, mountpoint: String, source: String = "scoutfs", options: [String] = [], maxThreads: UInt32 = 16,
                requestTimerLabel: String? = nil, kernelInodes: Int = 0) throws(MountError) {
        self.mountpoint = mountpoint
        let ctx = Unmanaged.passRetained(FUSEContext(fs: filesystem))
        context = ctx
        var ops = makeOperations()
        if let requestTimerLabel { instrumentRequests(&ops, RequestTimers(label: requestTimerLabel)) }
        let asRoot = geteuid() == 0 ? ["dev", "suid"] : []
        let opts = (["fsname=" + Self.escapeOption(source), "subtype=scoutfs", "default_permissions"] + asRoot + options).joined(separator: ",")
        let argv = ["scoutfs", "-o", opts]
        var cArgs = argv.map { strdup($0) }
        defer { for p in cArgs { free(p) } }
        let se: OpaquePointer? = cArgs.withUnsafeMutableBufferPointer { buf in
            var args = fuse_args(argc: Int32(buf.count), argv: buf.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, ctx.toOpaque())
        }
        guard let se else {
            ctx.release()
            throw MountError("libfuse refused the mount options '\(opts)' (see the message above)")
        }
        session = se
        if fuse_session_mount(se, mountpoint) != 0 {
            fuse_session_destroy(se)
            ctx.release()
            throw MountError("cannot mount on \(mountpoint) (see the message above); is it an existing empty directory, and is /dev/fuse available?")
        }
        ctx.takeUnretainedValue().session.store(UInt(bitPattern: se), ordering: .releasing)
        guard SessionIO.install(on: se) else {
            fuse_session_unmount(se)
            fuse_session_destroy(se)
            ctx.release()
            throw MountError("libfuse refused the session's own device I/O (custom I/O), which answers O_TMPFILE and negotiates FUSE_HANDLE_KILLPRIV_V2")
        }
        mounted = true
        self.maxThreads = maxThreads
        do {
            notifier = try KernelNotifier(session: se, busy: ctx.takeUnretainedValue().busy)
        } catch {
            fuse_session_unmount(se)
            fuse_session_destroy(se)
            ctx.release()
            throw MountError("cannot start the kernel cache notifier: \(error)")
        }
        filesystem.invalidateKernelCaches(through: notifier, kernelInodes: kernelInodes)
        let exited = UInt(bitPattern: se)
        filesystem.abandonDataWaits { fuse_session_exited(OpaquePointer(bitPattern: exited)) != 0 }
    }

    let maxThreads: UInt32
    /// Drops from the kernel what another client may change once this one lost its lock.
    private let notifier: KernelNotifier

    /// libfuse splits options at commas and treats backslash as an escape.
    static func escapeOption(_ s: String) -> String {
        var out = ""
        for c in s {
            if c == "," || c == "\\" { out.append("\\") }
            out.append(c)
        }
        return out
    }

    /// Serves requests until the filesystem is unmounted or `exit` is called, or (with
    /// `handleSignals`) SIGTERM, SIGINT or SIGHUP arrives.
    public func run(handleSignals: Bool = true) -> Int32 {
        if handleSignals { fuse_set_signal_handlers(session) }
        let rc = scout_session_loop_mt(session, maxThreads)
        if handleSignals { fuse_remove_signal_handlers(session) }
        return rc
    }

    /// Drops the kernel's cached attributes of an inode, and its pages in `range` if given.
    /// Call from a thread that is not serving a request. Only pages of data that was online may
    /// be named: the kernel locks each page it drops, and a page whose read waits for offline
    /// data stays locked until that data is staged.
    public var inodeInvalidator: @Sendable (UInt64, Range<UInt64>?) -> Void {
        let se = UInt(bitPattern: session)
        return { ino, range in
            let (off, len) = range.map { (off_t(clamping: $0.lowerBound), off_t(clamping: $0.count)) } ?? (-1, 0)
            _ = fuse_lowlevel_notify_inval_inode(OpaquePointer(bitPattern: se), ino, off, len)
        }
    }

    /// Ends the loop from another thread. The loop's threads notice only between requests,
    /// so a request is made to wake one (statfs: the kernel never answers it from a cache).
    public func exit() {
        fuse_session_exit(session)
        let path = mountpoint
        try? JoinableThread.detach("waking the FUSE loop") {
            var st = statvfs()
            _ = statvfs(path, &st)
        }
    }

    /// Unmounts and frees the session; call after `run` returns.
    public func close() {
        notifier.stop()
        if mounted {
            fuse_session_unmount(session)
            mounted = false
        }
        fuse_session_destroy(session)
        context.release()
    }
}

// MARK: - callbacks (file scope and nonisolated: they run on libfuse's threads)

func fs(_ req: fuse_req_t?) -> Filesystem { context(req).fs }

func context(_ req: fuse_req_t?) -> FUSEContext { context(userdata: fuse_req_userdata(req)!) }

/// The context libfuse hands back as a session's or request's user data.
func context(userdata: UnsafeMutableRawPointer) -> FUSEContext {
    Unmanaged<FUSEContext>.fromOpaque(userdata).takeUnretainedValue()
}

/// The caller of `req` as one whose write, truncate or chown takes setuid and setgid away
/// (`SetIDKill`): a member of a group by its own group, or by its supplementary groups, which
/// libfuse reads from /proc only when a setgid file without group execute asks. Root counts
/// as a member of every group (CAP_FSETID).
func setIDKill(_ req: fuse_req_t?) -> SetIDKill {
    let c = caller(req)
    let r = UInt(bitPattern: req)
    return SetIDKill { gid in
        if c.uid == 0 || c.gid == gid { return true }
        var groups = [gid_t](repeating: 0, count: 256)
        let n = fuse_req_getgroups(OpaquePointer(bitPattern: r), Int32(groups.count), &groups)
        return n > 0 && groups.prefix(Int(min(n, 256))).contains(gid)
    }
}

/// Runs a request's handler, reply included, with `inodes` marked as held by the kernel for
/// it (`BusyInodes`).
@inline(__always)
func holding(_ req: fuse_req_t?, _ inodes: UInt64..., body: () -> Void) {
    let busy = context(req).busy
    for i in inodes { busy.enter(i) }
    defer { for i in inodes { busy.leave(i) } }
    body()
}

/// Runs an attribute or xattr read with `ino` marked as one whose inode lock the kernel may
/// hold for it (`BusyInodes.Kind.inodeLock`).
@inline(__always)
func checking(_ req: fuse_req_t?, _ ino: UInt64, body: () -> Void) {
    let busy = context(req).busy
    busy.enter(ino, .inodeLock)
    defer { busy.leave(ino, .inodeLock) }
    body()
}

func bytes(_ s: UnsafePointer<CChar>?) -> [UInt8] {
    guard let s else { return [] }
    return Array(UnsafeRawBufferPointer(start: s, count: strlen(s)))
}

func caller(_ req: fuse_req_t?) -> Caller {
    guard let c = fuse_req_ctx(req)?.pointee else { return .root }
    return Caller(uid: c.uid, gid: c.gid, umask: UInt32(c.umask))
}

func stat(of a: Attributes) -> stat {
    var st = Glibc.stat()
    st.st_ino = UInt(a.ino)
    st.st_mode = a.mode
    st.st_nlink = UInt(a.nlink)
    st.st_uid = a.uid
    st.st_gid = a.gid
    st.st_rdev = UInt(a.rdev)
    st.st_size = Int(truncatingIfNeeded: a.size)
    st.st_blocks = Int(truncatingIfNeeded: a.blocks)
    st.st_blksize = Layout.dataBlockSize
    st.st_atim = timespec(tv_sec: Int(a.atime.seconds), tv_nsec: Int(a.atime.nanoseconds))
    st.st_mtim = timespec(tv_sec: Int(a.mtime.seconds), tv_nsec: Int(a.mtime.nanoseconds))
    st.st_ctim = timespec(tv_sec: Int(a.ctime.seconds), tv_nsec: Int(a.ctime.nanoseconds))
    return st
}

func entry(of a: Attributes) -> fuse_entry_param {
    var e = fuse_entry_param()
    e.ino = a.ino
    e.generation = 1
    e.attr = stat(of: a)
    e.attr_timeout = cacheTimeout
    e.entry_timeout = cacheTimeout
    return e
}

/// Runs a request that may wait for offline data, cancelling the wait when the kernel sends
/// INTERRUPT for it (the calling process got a signal). The callback is cleared before the
/// reply; libfuse serializes clearing with a callback in progress.
func interruptible<T>(_ req: fuse_req_t?, _ body: (WaitCancellation) throws(Errno) -> T) throws(Errno) -> T {
    let cancel = watchInterrupts(req)
    defer { stopWatchingInterrupts(req, cancel) }
    return try body(cancel.takeUnretainedValue())
}

/// A cancellation that the kernel's INTERRUPT for `req` fires; held until
/// `stopWatchingInterrupts`, which must come before the reply.
func watchInterrupts(_ req: fuse_req_t?) -> Unmanaged<WaitCancellation> {
    let cancel = Unmanaged.passRetained(WaitCancellation())
    fuse_req_interrupt_func(req, { _, data in
        Unmanaged<WaitCancellation>.fromOpaque(data!).takeUnretainedValue().cancel()
    }, cancel.toOpaque())
    return cancel
}

/// Clears the callback before the reply frees the request (libfuse serializes this with a
/// callback in progress) and lets the cancellation go.
func stopWatchingInterrupts(_ req: fuse_req_t?, _ cancel: Unmanaged<WaitCancellation>) {
    fuse_req_interrupt_func(req, nil, nil)
    cancel.release()
}

func replyErr(_ req: fuse_req_t?, _ e: any Error) {
    fuse_reply_err(req, (e as? Errno)?.rawValue ?? EIO)
}

func replyEntry(_ req: fuse_req_t?, _ body: () throws(Errno) -> Attributes) {
    do {
        var e = entry(of: try body())
        fuse_reply_entry(req, &e)
    } catch {
        replyErr(req, error)
    }
}

func replyOK(_ req: fuse_req_t?, _ body: () throws(Errno) -> Void) {
    do {
        try body()
        fuse_reply_err(req, 0)
    } catch {
        replyErr(req, error)
    }
}

func replyAttr(_ req: fuse_req_t?, _ body: () throws(Errno) -> Attributes) {
    do {
        var st = stat(of: try body())
        fuse_reply_attr(req, &st, cacheTimeout)
    } catch {
        replyErr(req, error)
    }
}

func replyBytes(_ req: fuse_req_t?, _ data: [UInt8]) {
    data.withUnsafeBytes { b in
        _ = fuse_reply_buf(req, b.baseAddress?.assumingMemoryBound(to: CChar.self), b.count)
    }
}

/// Replies to getxattr/listxattr: the size when asked for 0 bytes, ERANGE when too small.
func replyXattr(_ req: fuse_req_t?, size: Int, _ body: () throws(Errno) -> [UInt8]) {
    do {
        let data = try body()
        if size == 0 {
            fuse_reply_xattr(req, data.count)
        } else if data.count > size {
            replyErr(req, Errno.outOfRange)
        } else {
            replyBytes(req, data)
        }
    } catch {
        replyErr(req, error)
    }
}

func timestamp(_ t: timespec) -> Timestamp {
    Timestamp(seconds: Int64(t.tv_sec), nanoseconds: UInt32(t.tv_nsec))
}

/// An offset the kernel passed: the VFS refuses negative ones before they reach us, but a
/// trap here would end the mount, so a negative one is EINVAL rather than a conversion trap.
func fileOffset(_ off: off_t) throws(Errno) -> UInt64 {
    guard off >= 0 else { throw Errno.invalidArgument }
    return UInt64(off)
}

/// The `DirectoryStream` an open directory's handle holds (set by opendir, freed by releasedir).
func directoryStream(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> DirectoryStream? {
    guard let fh = fi?.pointee.fh, fh != 0, let p = UnsafeRawPointer(bitPattern: UInt(fh)) else { return nil }
    return Unmanaged<DirectoryStream>.fromOpaque(p).takeUnretainedValue()
}

func fillDirectory(_ req: fuse_req_t?, _ ino: fuse_ino_t, size: Int, offset: off_t, plus: Bool, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    let fsys = fs(req)
    let stream = directoryStream(fi)
    let buf = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 8)
    defer { buf.deallocate() }
    var used = 0
    // libfuse takes names NUL-terminated; one scratch copy serves every entry of the reply.
    let name = UnsafeMutablePointer<CChar>.allocate(capacity: DirentRecord.maxNameLength + 1)
    defer { name.deallocate() }
    func terminated(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutablePointer<CChar> {
        let n = min(bytes.count, DirentRecord.maxNameLength)
        if n > 0 { UnsafeMutableRawPointer(name).copyMemory(from: bytes.baseAddress!, byteCount: n) }
        name[n] = 0
        return name
    }
    do {
        if plus {
            // The smallest entry with attributes takes about 160 bytes: ask for enough.
            let entries = try fsys.readdirPlus(ino, offset: try fileOffset(offset), limit: size / 160 + 2, stream: stream)
            var added = 0
            for (e, a) in entries {
                var param = entry(of: a)
                let n = e.name.withUnsafeBytes { fuse_add_direntry_plus(req, buf + used, size - used, terminated($0), &param, off_t(e.nextOffset)) }
                if n > size - used { break }
                used += n
                added += 1
            }
            // readdirPlus took a reference on every entry but . and ..; the kernel holds those
            // it was given, and the rest go back.
            let unsent = entries[added...].filter { $0.0.nextOffset > 2 }.map { (ino: $0.0.ino, count: UInt64(1)) }
            if !unsent.isEmpty { try? fsys.forget(unsent) }
        } else {
            try fsys.readdir(ino, offset: try fileOffset(offset), stream: stream) { ino, type, entryName, next in
                var st = Glibc.stat()
                st.st_ino = UInt(ino)
                st.st_mode = UInt32(type) << 12
                let n = fuse_add_direntry(req, buf + used, size - used, terminated(entryName), &st, off_t(next))
                if n > size - used { return false }
                used += n
                return true
            }
        }
        _ = fuse_reply_buf(req, buf, used)
    } catch {
        replyErr(req, error)
    }
}

func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = { userdata, conn in
        guard let conn else { return }
        // POSIX ACLs: the kernel caches and enforces them; the filesystem keeps them, keeps the
        // mode in step and hands default ACLs down (Filesystem+Xattr, PosixACL).
        // The umask too: a directory's default ACL replaces it, so the kernel must send modes
        // unmasked (FUSE_CAP_DONT_MASK) and leave applying it to the filesystem.
        if let userdata, context(userdata: userdata).fs.posixACLs {
            scout_conn_want(conn, UInt32(FUSE_CAP_POSIX_ACL))
            scout_conn_want(conn, UInt32(FUSE_CAP_DONT_MASK))
        }
        // Writes must reach the filesystem before the syscall returns, so that a lock
        // downgrade can flush them: no writeback cache.
        scout_conn_unwant(conn, UInt32(FUSE_CAP_WRITEBACK_CACHE))
        scout_conn_want(conn, UInt32(FUSE_CAP_ATOMIC_O_TRUNC))
        scout_conn_want(conn, UInt32(FUSE_CAP_READDIRPLUS))
        // File handles (open_by_handle_at, NFS): the kernel finds an uncached inode by asking
        // for "." in it. Inode numbers are never reused, so one generation serves all.
        scout_conn_want(conn, UInt32(FUSE_CAP_EXPORT_SUPPORT))
        // libfuse turns this on by default, and with it the kernel stops clearing setuid and
        // setgid on write, truncate and chown, leaving it to us. The kernel knows the caller's
        // CAP_FSETID and we do not, so it keeps the job and sends the mode change.
        scout_conn_unwant(conn, UInt32(FUSE_CAP_HANDLE_KILLPRIV))
        conn.pointee.max_write = 1 << 20
    }
    ops.lookup = { req, parent, name in
        holding(req, parent) { replyEntry(req) { () throws(Errno) in try fs(req).lookup(parent, bytes(name)) } }
    }
    ops.forget = { req, ino, n in
        try? fs(req).forget(ino, n)
        fuse_reply_none(req)
    }
    ops.forget_multi = { req, count, list in
        if let list {
            try? fs(req).forget((0..<count).map { (ino: list[$0].ino, count: list[$0].nlookup) })
        }
        fuse_reply_none(req)
    }
    // The kernel checks a directory's permissions with its lock held (a create in it), and
    // asks for attributes or an ACL the lock hand-over just dropped: a request in flight on
    // the directory, like a lookup in it.
    ops.getattr = { req, ino, _ in checking(req, ino) { replyAttr(req) { () throws(Errno) in try fs(req).getattr(ino) } } }
    ops.setattr = { req, ino, attr, toSet, _ in holding(req, ino) {
        replyAttr(req) { () throws(Errno) in
            guard let a = attr?.pointee else { throw Errno.invalidArgument }
            var ch = AttributeChanges()
            if toSet & FUSE_SET_ATTR_MODE != 0 { ch.mode = a.st_mode }
            if toSet & FUSE_SET_ATTR_UID != 0 { ch.uid = a.st_uid }
            if toSet & FUSE_SET_ATTR_GID != 0 { ch.gid = a.st_gid }
            if toSet & FUSE_SET_ATTR_SIZE != 0 {
                if a.st_size < 0 { throw Errno.invalidArgument }
                ch.size = UInt64(a.st_size)
            }
            if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { ch.atime = .now } else if toSet & FUSE_SET_ATTR_ATIME != 0 { ch.atime = .set(timestamp(a.st_atim)) }
            if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { ch.mtime = .now } else if toSet & FUSE_SET_ATTR_MTIME != 0 { ch.mtime = .set(timestamp(a.st_mtim)) }
            if SessionIO.killSetID { ch.killSetID = setIDKill(req) }
            return try interruptible(req) { c throws(Errno) in try fs(req).setattr(ino, ch, cancel: c) }
        }
    } }
    ops.readlink = { req, ino in
        do {
            let target = try fs(req).readlink(ino) + [0]
            target.withUnsafeBufferPointer { t in
                _ = fuse_reply_readlink(req, UnsafeRawPointer(t.baseAddress!).assumingMemoryBound(to: CChar.self))
            }
        } catch {
            replyErr(req, error)
        }
    }
    ops.mknod = { req, parent, name, mode, rdev in holding(req, parent) {
        replyEntry(req) { () throws(Errno) in try fs(req).mknod(parent, bytes(name), mode: mode, rdev: UInt64(rdev), caller: caller(req)) }
    } }
    ops.mkdir = { req, parent, name, mode in holding(req, parent) {
        replyEntry(req) { () throws(Errno) in try fs(req).mkdir(parent, bytes(name), mode: mode, caller: caller(req)) }
    } }
    ops.symlink = { req, link, parent, name in holding(req, parent) {
        replyEntry(req) { () throws(Errno) in try fs(req).symlink(parent, bytes(name), target: bytes(link), caller: caller(req)) }
    } }
    ops.link = { req, ino, parent, name in holding(req, parent) {
        replyEntry(req) { () throws(Errno) in try fs(req).link(ino, parent, bytes(name)) }
    } }
    ops.unlink = { req, parent, name in
        holding(req, parent) { replyOK(req) { () throws(Errno) in try fs(req).unlink(parent, bytes(name)) } }
    }
    ops.rmdir = { req, parent, name in
        holding(req, parent) { replyOK(req) { () throws(Errno) in try fs(req).rmdir(parent, bytes(name)) } }
    }
    ops.rename = { req, parent, name, newParent, newName, flags in holding(req, parent, newParent) {
        replyOK(req) { () throws(Errno) in try fs(req).rename(parent, bytes(name), newParent, bytes(newName), flags: UInt32(flags)) }
    } }
    ops.open = { req, ino, fi in
        do {
            guard let fi else { throw Errno.invalidArgument }
            // Whether an O_TRUNC open clears setuid/setgid: the kernel says so once
            // FUSE_HANDLE_KILLPRIV_V2 is on; before, root stands for CAP_FSETID.
            let says = context(req).killprivV2.load(ordering: .acquiring) ? SessionIO.killSetID : caller(req).uid != 0
            let kill = says ? setIDKill(req) : nil
            let offline = try fs(req).open(ino, flags: fi.pointee.flags, caller: caller(req), killSetID: kill)
            if kill?.dropped == true { context(req).dropAttributes(ino) }
            // A file with offline data is read past the page cache: each reader's read is its
            // own request, listed by data-waiting and interrupted when the reader is killed.
            // Through the page cache one readahead request stands for every reader of a page,
            // and the kernel never interrupts it.
            scout_fi_set_direct_io(fi, offline ? 1 : 0)
            scout_fi_set_keep_cache(fi, offline ? 0 : 1)
            fi.pointee.fh = newFileHandle()
            fuse_reply_open(req, fi)
        } catch {
            replyErr(req, error)
        }
    }
    ops.create = { req, parent, name, mode, fi in holding(req, parent) {
        do {
            guard let fi else { throw Errno.invalidArgument }
            var e = entry(of: try fs(req).create(parent, bytes(name), mode: mode, flags: fi.pointee.flags, caller: caller(req)))
            scout_fi_set_keep_cache(fi, 1)
            fi.pointee.fh = newFileHandle()
            fuse_reply_create(req, &e, fi)
        } catch {
            replyErr(req, error)
        }
    } }
    ops.read = { req, ino, size, off, _ in holding(req, ino) {
        do {
            replyBytes(req, try interruptible(req) { c throws(Errno) in try fs(req).read(ino, offset: try fileOffset(off), count: size, cancel: c) })
        } catch {
            replyErr(req, error)
        }
    } }
    ops.write = { req, ino, buf, size, off, _ in holding(req, ino) {
        do {
            let data = Array(UnsafeRawBufferPointer(start: buf, count: size))
            let kill = SessionIO.killSetID ? setIDKill(req) : nil
            let n = try interruptible(req) { c throws(Errno) in
                try fs(req).write(ino, offset: try fileOffset(off), data: data, cancel: c, killSetID: kill)
            }
            // The reply carries no attributes, and the kernel would go on showing the bits.
            if kill?.dropped == true { context(req).dropAttributes(ino) }
            fuse_reply_write(req, n)
        } catch {
            replyErr(req, error)
        }
    } }
    // No data waits to be flushed at close (every write reached the filesystem before its
    // syscall returned), but a close lets go of the closing process's POSIX locks on the
    // file, which the cluster keeps and the kernel tells of only here. So no open replies
    // with noflush (FOPEN_NOFLUSH): a lock taken through such an open outlived close() until
    // the kernel's RELEASE, which it sends after close has returned, and another process's
    // lock straight after the close was refused (xfstests generic/131).
    ops.flush = { req, ino, fi in
        replyOK(req) { () throws(Errno) in
            guard let fi else { return }
            try fs(req).releaseRecordLocks(ino, kind: .posix, owner: fi.pointee.lock_owner)
        }
    }
    ops.release = { req, ino, fi in
        replyOK(req) { () throws(Errno) in
            // The last close of an open file lets go of its flock, if it took one, and of
            // the record locks taken through it; the inode's reference goes either way.
            var failed: Errno?
            if let fi {
                do throws(Errno) {
                    if scout_fi_flock_release(fi) != 0 {
                        try fs(req).releaseRecordLocks(ino, kind: .flock, owner: fi.pointee.lock_owner)
                    }
                    try fs(req).releaseRecordLocks(ino, handle: fi.pointee.fh)
                } catch {
                    failed = error
                }
            }
            try fs(req).release(ino)
            if let failed { throw failed }
        }
    }
    ops.fsync = { req, _, _, _ in replyOK(req) { () throws(Errno) in try fs(req).sync() } }
    ops.opendir = { req, ino, fi in
        do {
            _ = try fs(req).getattr(ino)
            let stream = Unmanaged.passRetained(DirectoryStream())
            fi!.pointee.fh = UInt64(UInt(bitPattern: stream.toOpaque()))
            if fuse_reply_open(req, fi) != 0 { stream.release() }
        } catch {
            replyErr(req, error)
        }
    }
    ops.readdir = { req, ino, size, off, fi in holding(req, ino) { fillDirectory(req, ino, size: size, offset: off, plus: false, fi) } }
    ops.readdirplus = { req, ino, size, off, fi in holding(req, ino) { fillDirectory(req, ino, size: size, offset: off, plus: true, fi) } }
    ops.releasedir = { req, _, fi in
        // The reference opendir took.
        if let stream = directoryStream(fi) { Unmanaged.passUnretained(stream).release() }
        fuse_reply_err(req, 0)
    }
    ops.fsyncdir = { req, _, _, _ in replyOK(req) { () throws(Errno) in try fs(req).sync() } }
    ops.statfs = { req, _ in
        do {
            let s = try fs(req).statfs()
            var v = statvfs()
            v.f_bsize = UInt(s.blockSize)
            v.f_frsize = UInt(s.blockSize)
            v.f_blocks = UInt(s.totalBlocks)
            v.f_bfree = UInt(s.freeBlocks)
            v.f_bavail = UInt(s.freeBlocks)
            v.f_files = UInt(s.totalInodes)
            v.f_ffree = UInt(s.freeInodes)
            v.f_favail = UInt(s.freeInodes)
            v.f_fsid = UInt(truncatingIfNeeded: s.fsid)
            v.f_namemax = UInt(s.nameMax)
            fuse_reply_statfs(req, &v)
        } catch {
            replyErr(req, error)
        }
    }
    ops.setxattr = { req, ino, name, value, size, flags in holding(req, ino) {
        replyOK(req) { () throws(Errno) in
            let v = size > 0 ? Array(UnsafeRawBufferPointer(start: value, count: size)) : []
            try fs(req).setXattr(ino, bytes(name), v, flags: flags, caller: caller(req))
        }
    } }
    ops.getxattr = { req, ino, name, size in checking(req, ino) {
        replyXattr(req, size: size) { () throws(Errno) in try fs(req).getXattr(ino, bytes(name)) }
    } }
    ops.listxattr = { req, ino, size in checking(req, ino) {
        replyXattr(req, size: size) { () throws(Errno) in try fs(req).listXattrs(ino).flatMap { $0 + [0] } }
    } }
    ops.removexattr = { req, ino, name in
        holding(req, ino) { replyOK(req) { () throws(Errno) in try fs(req).removeXattr(ino, bytes(name), caller: caller(req)) } }
    }
    ops.fallocate = { req, ino, mode, off, len, _ in holding(req, ino) {
        replyOK(req) { () throws(Errno) in
            guard off >= 0, len > 0 else { throw Errno.invalidArgument }
            // With FUSE_HANDLE_KILLPRIV_V2 on, the kernel leaves clearing setuid/setgid to the
            // filesystem but, unlike for writes, does not say whether the caller holds
            // CAP_FSETID: root stands for it, as for opens before the feature.
            let kill = context(req).killprivV2.load(ordering: .acquiring) && caller(req).uid != 0 ? setIDKill(req) : nil
            try interruptible(req) { c throws(Errno) in
                try fs(req).fallocate(ino, mode: mode, offset: UInt64(off), length: UInt64(len), cancel: c, killSetID: kill)
            }
            if kill?.dropped == true { context(req).dropAttributes(ino) }
        }
    } }
    ops.lseek = { req, ino, off, whence, _ in
        do {
            // A negative offset is past any end as the kernel compares it (unsigned): ENXIO.
            guard off >= 0 else { throw Errno.noSuchAddressOrDevice }
            let at = try fs(req).seek(ino, offset: UInt64(off), whence: whence)
            fuse_reply_lseek(req, off_t(at))
        } catch {
            replyErr(req, error)
        }
    }
    installRecordLockOperations(&ops)
    return ops
}
