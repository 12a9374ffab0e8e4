import CFuse3
import Glibc
import ScoutFS
import ScoutFormat
import Synchronization

/// The session's own reads and writes of its device (libfuse's custom I/O), for what the
/// kernel's protocol has and libfuse 3.14, which Debian 12 ships, does not:
///
/// - **O_TMPFILE.** The kernel asks for an unnamed file with FUSE_TMPFILE (protocol 7.37);
///   libfuse answers opcodes it does not know with ENOSYS, and the kernel then refuses
///   O_TMPFILE for the rest of the mount. The read answers FUSE_TMPFILE itself, in the
///   kernel's reply format, and hands every other request on unchanged.
/// - **FUSE_HANDLE_KILLPRIV_V2.** Without it the kernel asks for `security.capability` before
///   every write to a filesystem with xattrs: a whole round trip per write. With it the
///   kernel marks inodes it has seen without capabilities (SB_NOSEC) and stops asking, and
///   tells the filesystem in each write, truncate, chown and O_TRUNC open whether setuid and
///   setgid must go (the caller lacks CAP_FSETID) — flags libfuse 3.14 neither offers nor
///   passes on. The write of libfuse's INIT reply turns the feature on when the kernel
///   offers it, and the read notes each request's flag for the handler on the same thread
///   (`killSetID`): libfuse's workers handle the request they read themselves.
///
/// Reading through a custom read gives up libfuse's splice reads, which bought nothing here:
/// the write handler takes its data as a buffer, so libfuse copied every spliced write out of
/// the pipe anyway.
enum SessionIO {
    /// The request header (`fuse_in_header`), after which each request's own struct starts.
    static let inHeaderSize = MemoryLayout<fuse_in_header>.size

    /// Makes `session` read and write its device through these functions; before the loop
    /// runs, after the mount.
    static func install(on session: OpaquePointer) -> Bool {
        var io = fuse_custom_io()
        io.read = { fd, buf, len, userdata in SessionIO.readRequest(fd, buf, len, userdata) }
        io.writev = { fd, iov, count, userdata in SessionIO.writeReply(fd, iov, count, userdata) }
        return fuse_session_custom_io(session, &io, fuse_session_fd(session)) == 0
    }

    /// The `T` that follows the header, or nil when the request is too short to hold one.
    private static func argument<T>(_ request: UnsafeRawBufferPointer, _ type: T.Type) -> T? {
        guard request.count >= inHeaderSize + MemoryLayout<T>.size else { return nil }
        return request.loadUnaligned(fromByteOffset: inHeaderSize, as: T.self)
    }

    /// read(2) of the device, answering FUSE_TMPFILE requests on the way and noting each
    /// request's setuid/setgid flag. libfuse reads errno after a failed read, so a failure
    /// returns straight from the read.
    static func readRequest(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ len: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
        while true {
            let n = Glibc.read(fd, buf, len)
            guard n >= inHeaderSize, let buf, let userdata else { return n }
            let request = UnsafeRawBufferPointer(start: buf, count: n)
            let header = request.loadUnaligned(as: fuse_in_header.self)
            var kill = false
            switch header.opcode {
            case FUSE_TMPFILE.rawValue:
                answerTmpfile(fd, header, request, context(userdata: userdata))
                continue
            case FUSE_INIT.rawValue:
                if let offer = argument(request, fuse_init_in.self), offer.flags & UInt32(FUSE_HANDLE_KILLPRIV_V2) != 0 {
                    context(userdata: userdata).initToAnswer.store(header.unique, ordering: .releasing)
                }
            case FUSE_WRITE.rawValue:
                kill = (argument(request, fuse_write_in.self)?.write_flags ?? 0) & UInt32(FUSE_WRITE_KILL_SUIDGID) != 0
            case FUSE_SETATTR.rawValue:
                kill = (argument(request, fuse_setattr_in.self)?.valid ?? 0) & UInt32(FATTR_KILL_SUIDGID) != 0
            case FUSE_OPEN.rawValue:
                kill = (argument(request, fuse_open_in.self)?.open_flags ?? 0) & UInt32(FUSE_OPEN_KILL_SUIDGID) != 0
            default:
                break
            }
            setKillSetID(kill)
            return n
        }
    }

    /// writev(2) of a reply; the reply to INIT gets FUSE_HANDLE_KILLPRIV_V2 when the kernel
    /// offered it (libfuse 3.14 knows nothing of it, so its reply never asks for it).
    static func writeReply(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>?, _ count: Int32, _ userdata: UnsafeMutableRawPointer?) -> Int {
        guard let iov, count > 0, let userdata else { return Glibc.writev(fd, iov, count) }
        let ctx = context(userdata: userdata)
        let initUnique = ctx.initToAnswer.load(ordering: .acquiring)
        guard initUnique != 0 else { return Glibc.writev(fd, iov, count) }
        var reply: [UInt8] = []
        for i in 0..<Int(count) where iov[i].iov_len > 0 {
            reply += UnsafeRawBufferPointer(start: iov[i].iov_base, count: iov[i].iov_len)
        }
        let headerSize = MemoryLayout<fuse_out_header>.size
        let flagsAt = headerSize + MemoryLayout<fuse_init_out>.offset(of: \.flags)!
        let header = reply.count >= headerSize ? reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) } : nil
        guard let header, header.unique == initUnique, reply.count >= flagsAt + 4 else { return Glibc.writev(fd, iov, count) }
        ctx.initToAnswer.store(0, ordering: .releasing)
        if header.error == 0 {
            let flags = reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: flagsAt, as: UInt32.self) } | UInt32(FUSE_HANDLE_KILLPRIV_V2)
            withUnsafeBytes(of: flags) { reply.replaceSubrange(flagsAt..<flagsAt + 4, with: $0) }
            ctx.killprivV2.store(true, ordering: .releasing)
        }
        return reply.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// Whether the request this thread is handling asks for setuid and setgid to go (see the
    /// type's comment); false for requests that cannot.
    static var killSetID: Bool { pthread_getspecific(requestFlagKey) != nil }

    private static func setKillSetID(_ on: Bool) {
        pthread_setspecific(requestFlagKey, on ? UnsafeRawPointer(bitPattern: 1) : nil)
    }

    private static let requestFlagKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "no thread-specific key is left for the FUSE request flags")
        return key
    }()

    /// Makes the file (`Filesystem.tmpfile`) and answers with its entry and open file, as a
    /// create is answered.
    static func answerTmpfile(_ fd: Int32, _ header: fuse_in_header, _ request: UnsafeRawBufferPointer, _ ctx: FUSEContext) {
        guard let arg = argument(request, fuse_create_in.self) else {
            _ = send(fd, header.unique, error: EINVAL, [])
            return
        }
        let dir = header.nodeid
        ctx.busy.enter(dir)
        defer { ctx.busy.leave(dir) }
        let a: Attributes
        do {
            a = try ctx.fs.tmpfile(dir, mode: arg.mode, flags: Int32(bitPattern: arg.flags),
                                   caller: Caller(uid: header.uid, gid: header.gid, umask: arg.umask))
        } catch {
            _ = send(fd, header.unique, error: error.rawValue, [])
            return
        }
        var entry = fuse_entry_out()
        entry.nodeid = a.ino
        entry.generation = 1
        entry.entry_valid = UInt64(cacheTimeout)
        entry.attr_valid = UInt64(cacheTimeout)
        entry.attr.ino = a.ino
        entry.attr.size = a.size
        entry.attr.blocks = a.blocks
        entry.attr.atime = UInt64(bitPattern: a.atime.seconds)
        entry.attr.mtime = UInt64(bitPattern: a.mtime.seconds)
        entry.attr.ctime = UInt64(bitPattern: a.ctime.seconds)
        entry.attr.atimensec = a.atime.nanoseconds
        entry.attr.mtimensec = a.mtime.nanoseconds
        entry.attr.ctimensec = a.ctime.nanoseconds
        entry.attr.mode = a.mode
        entry.attr.nlink = a.nlink
        entry.attr.uid = a.uid
        entry.attr.gid = a.gid
        entry.attr.rdev = UInt32(truncatingIfNeeded: a.rdev)
        entry.attr.blksize = UInt32(Layout.dataBlockSize)
        var open = fuse_open_out()
        open.fh = newFileHandle()
        // As a create answers: the page cache kept, and every close heard of (its POSIX locks).
        open.open_flags = UInt32(FOPEN_KEEP_CACHE)
        let body = withUnsafeBytes(of: entry) { Array($0) } + withUnsafeBytes(of: open) { Array($0) }
        if !send(fd, header.unique, error: 0, body) {
            // The kernel never took the file (the caller was interrupted, or the mount is
            // going): its open and its lookup reference go, and with them the file.
            try? ctx.fs.release(a.ino)
            try? ctx.fs.forget(a.ino, 1)
        }
    }

    /// Writes one reply (`fuse_out_header` and `body`); false if the kernel refused it.
    static func send(_ fd: Int32, _ unique: UInt64, error: Int32, _ body: [UInt8]) -> Bool {
        var header = fuse_out_header()
        header.len = UInt32(MemoryLayout<fuse_out_header>.size + body.count)
        header.error = -error
        header.unique = unique
        let whole = withUnsafeBytes(of: header) { Array($0) } + body
        return whole.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == whole.count
    }
}
