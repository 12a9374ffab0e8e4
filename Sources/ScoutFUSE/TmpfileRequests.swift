import CFuse3
import Glibc
import ScoutFS
import ScoutFormat

/// O_TMPFILE through a libfuse that predates it. The kernel asks for an unnamed file with
/// FUSE_TMPFILE (protocol 7.37); libfuse 3.14, which Debian 12 ships, answers every opcode it
/// does not know with ENOSYS, and the kernel then refuses O_TMPFILE with EOPNOTSUPP for the
/// rest of the mount. So the session reads its device through `readRequest` (libfuse's custom
/// I/O), which answers FUSE_TMPFILE itself, in the kernel's reply format, and hands every
/// other request on to libfuse unchanged.
///
/// Reading through a custom read gives up libfuse's splice reads, which bought nothing here:
/// the write handler takes its data as a buffer, so libfuse copied every spliced write out of
/// the pipe anyway.
enum TmpfileRequests {
    static let opcode: UInt32 = 51
    /// struct fuse_in_header, then struct fuse_create_in (flags, mode, umask, open_flags).
    static let inHeaderSize = 40
    static let createInSize = 16
    /// FOPEN_KEEP_CACHE and FOPEN_NOFLUSH, as a create answers (a new file has had no locks).
    static let openFlags: UInt32 = 1 << 1 | 1 << 5

    /// Makes `session` read and write its device through these functions; before the loop
    /// runs, after the mount.
    static func install(on session: OpaquePointer) -> Bool {
        var io = fuse_custom_io()
        io.read = { fd, buf, len, userdata in TmpfileRequests.readRequest(fd, buf, len, userdata) }
        io.writev = { fd, iov, count, _ in Glibc.writev(fd, iov, count) }
        return fuse_session_custom_io(session, &io, fuse_session_fd(session)) == 0
    }

    /// read(2) of the device, answering FUSE_TMPFILE requests on the way. libfuse reads
    /// errno after a failed read, so a failure returns straight from the read.
    static func readRequest(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ len: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
        while true {
            let n = Glibc.read(fd, buf, len)
            guard n >= inHeaderSize, let buf, let userdata, buf.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == opcode else {
                return n
            }
            let ctx = Unmanaged<FUSEContext>.fromOpaque(userdata).takeUnretainedValue()
            answer(fd, UnsafeRawBufferPointer(start: buf, count: n), ctx)
        }
    }

    static func answer(_ fd: Int32, _ request: UnsafeRawBufferPointer, _ ctx: FUSEContext) {
        let unique = request.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        guard request.count >= inHeaderSize + createInSize else {
            _ = send(fd, unique, error: EINVAL, [])
            return
        }
        let dir = request.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        let caller = Caller(uid: request.loadUnaligned(fromByteOffset: 24, as: UInt32.self),
                            gid: request.loadUnaligned(fromByteOffset: 28, as: UInt32.self),
                            umask: request.loadUnaligned(fromByteOffset: inHeaderSize + 8, as: UInt32.self))
        let flags = request.loadUnaligned(fromByteOffset: inHeaderSize, as: UInt32.self)
        let mode = request.loadUnaligned(fromByteOffset: inHeaderSize + 4, as: UInt32.self)
        ctx.busy.enter(dir)
        defer { ctx.busy.leave(dir) }
        let a: Attributes
        do {
            a = try ctx.fs.tmpfile(dir, mode: mode, flags: Int32(bitPattern: flags), caller: caller)
        } catch {
            _ = send(fd, unique, error: error.rawValue, [])
            return
        }
        if !send(fd, unique, error: 0, entryAndOpen(a, handle: newFileHandle())) {
            // The kernel never took the file (the caller was interrupted, or the mount is
            // going): its open and its lookup reference go, and with them the file.
            try? ctx.fs.release(a.ino)
            try? ctx.fs.forget(a.ino, 1)
        }
    }

    /// struct fuse_entry_out and struct fuse_open_out.
    static func entryAndOpen(_ a: Attributes, handle: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(144)
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        let valid = UInt64(cacheTimeout)
        u64(a.ino); u64(1); u64(valid); u64(valid); u32(0); u32(0)
        u64(a.ino); u64(a.size); u64(a.blocks)
        u64(UInt64(bitPattern: a.atime.seconds)); u64(UInt64(bitPattern: a.mtime.seconds)); u64(UInt64(bitPattern: a.ctime.seconds))
        u32(a.atime.nanoseconds); u32(a.mtime.nanoseconds); u32(a.ctime.nanoseconds)
        u32(a.mode); u32(a.nlink); u32(a.uid); u32(a.gid); u32(UInt32(truncatingIfNeeded: a.rdev))
        u32(UInt32(Layout.dataBlockSize)); u32(0)
        u64(handle); u32(openFlags); u32(0)
        return out
    }

    /// Writes one reply (struct fuse_out_header and `body`); false if the kernel refused it.
    static func send(_ fd: Int32, _ unique: UInt64, error: Int32, _ body: [UInt8]) -> Bool {
        var header: [UInt8] = []
        withUnsafeBytes(of: UInt32(16 + body.count).littleEndian) { header.append(contentsOf: $0) }
        withUnsafeBytes(of: (-error).littleEndian) { header.append(contentsOf: $0) }
        withUnsafeBytes(of: unique.littleEndian) { header.append(contentsOf: $0) }
        let whole = header + body
        return whole.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == whole.count
    }
}
