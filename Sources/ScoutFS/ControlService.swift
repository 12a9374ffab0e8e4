#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
public import ScoutNet
import SystemPackage
import Synchronization

/// O_PATH, which Glibc's Swift overlay leaves out (it needs _GNU_SOURCE); the same on x86_64
/// and arm64.
let linuxOPath: Int32 = 0o10000000

/// Answers the control socket's requests (DESIGN.md §5) against a mounted filesystem.
///
/// Every request comes with an open descriptor: of the file it is about, or of any path in the
/// mount. The kernel checked the caller's permissions when the CLI opened it, just as for the
/// original's ioctls; here the descriptor must belong to this mount, operations that change a
/// file need it open for writing, and the operations the original keeps to CAP_SYS_ADMIN or
/// CAP_DAC_READ_SEARCH are kept to root (by the caller's SO_PEERCRED uid).
public final class ControlService: Sendable {
    let fs: Filesystem
    let mountpoint: String
    /// The mount's device number, learned on first use: stat of the mount point is served by
    /// this daemon, so it cannot be asked before the FUSE loop runs.
    private let device = Mutex<UInt64?>(nil)
    /// Drops the kernel's cached attributes of an inode, and its pages in a byte range.
    private let invalidate: @Sendable (UInt64, Range<UInt64>?) -> Void

    /// Results per page when a request sets no smaller limit.
    static let pageLimit = 1024

    public init(filesystem: Filesystem, mountpoint: String, invalidate: @escaping @Sendable (UInt64, Range<UInt64>?) -> Void) {
        fs = filesystem
        self.mountpoint = mountpoint
        self.invalidate = invalidate
    }

    /// The request handler for `ControlServer`.
    public func handle(_ body: [UInt8], files: [Int32], peer: PeerCredentials) -> [UInt8] {
        let request: ControlRequest
        do {
            request = try ControlRequest(decoding: body)
        } catch {
            return ControlReply.failure(errno: EINVAL, message: "malformed control request: \(error)").encoded
        }
        do {
            return try answer(request, files: files, peer: peer).encoded
        } catch let e as ArchiveError {
            return ControlReply.failure(errno: e.errno.rawValue, message: e.description).encoded
        } catch let e as Errno {
            return ControlReply.failure(errno: e.rawValue, message: "\(e)").encoded
        } catch {
            return ControlReply.failure(errno: EIO, message: "\(error)").encoded
        }
    }

    private func mountDevice() throws -> UInt64 {
        if let d = device.withLock({ $0 }) { return d }
        var st = stat()
        guard stat(mountpoint, &st) == 0 else { throw ArchiveError(Errno(rawValue: errno), "cannot stat the mount point \(mountpoint)") }
        let d = UInt64(st.st_dev)
        device.withLock { $0 = d }
        return d
    }

    /// The inode and access mode of the descriptor sent with a request.
    private func openFile(_ fd: Int32?) throws -> (ino: UInt64, readable: Bool, writable: Bool) {
        guard let fd else { throw ArchiveError(.badFileDescriptor, "the request came without an open file of the filesystem") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ArchiveError(.badFileDescriptor, "cannot stat the file sent with the request") }
        guard UInt64(st.st_dev) == (try mountDevice()) else {
            throw ArchiveError(.improperLink, "the file is not in the filesystem mounted on \(mountpoint)")
        }
        let flags = fcntl(fd, F_GETFL)
        // An O_PATH descriptor grants no access at all (the original's ioctls refuse it with
        // EBADF); its access mode bits read as O_RDONLY and must not pass for a read open.
        guard flags >= 0, flags & linuxOPath == 0 else {
            throw ArchiveError(.badFileDescriptor, "the file sent with the request was opened with O_PATH, which grants no access; open it for reading (or writing)")
        }
        let mode = flags & O_ACCMODE
        return (UInt64(st.st_ino), mode == O_RDONLY || mode == O_RDWR, mode == O_WRONLY || mode == O_RDWR)
    }

    private func requireRoot(_ peer: PeerCredentials, _ what: String) throws {
        guard peer.uid == 0 else { throw ArchiveError(.notPermitted, "\(what) is for root only") }
    }

    private func limit(_ n: UInt32) -> Int { n == 0 ? Self.pageLimit : min(Int(n), Self.pageLimit) }

    private func answer(_ request: ControlRequest, files: [Int32], peer: PeerCredentials) throws -> ControlReply {
        let f = try openFile(files.first)
        switch request {
        case let .walkInodes(index, fs0, fi, ls, li, n):
            guard index <= 1 else { throw ArchiveError(.invalidArgument, "unknown index \(index); 0 is meta_seq, 1 data_seq") }
            return .walk(try fs.walkInodes(index == 0 ? .metaSeq : .dataSeq, from: IndexPosition(seq: fs0, ino: fi),
                                           through: IndexPosition(seq: ls, ino: li), limit: limit(n)))
        case .statMore:
            return .statMore(try fs.statMore(f.ino))
        case let .fiemap(block, n):
            let (extents, end) = try fs.fiemap(f.ino, fromBlock: block, limit: limit(n))
            return .fiemap(extents, end: end)
        case .statfsMore:
            return .statfsMore(try fs.statfsMore())
        case let .release(v, off, len):
            guard f.writable else { throw ArchiveError(.invalidArgument, "release needs the file open for writing") }
            try fs.release(f.ino, dataVersion: v, offset: off, length: len)
            // The released bytes were online, so no read can hold their pages locked.
            invalidate(f.ino, off..<(off &+ len < off ? .max : off + len))
            return .done
        case let .stage(v, off, data):
            guard f.writable else { throw ArchiveError(.invalidArgument, "stage needs the file open for writing") }
            let n = try fs.stage(f.ino, dataVersion: v, offset: off, data: data)
            // Attributes only: no page of the staged region was ever filled, and readers waiting
            // for it hold those pages locked.
            invalidate(f.ino, nil)
            return .count(UInt64(n))
        case let .setattrMore(s):
            guard f.writable else { throw ArchiveError(.badFileDescriptor, "setattr needs the file open for writing") }
            try requireRoot(peer, "setattr")
            try fs.setattrMore(f.ino, s)
            invalidate(f.ino, nil)
            return .done
        case let .dataWaiting(ino, block, n):
            return .waiters(fs.dataWaiters(after: ino, block, limit: limit(n)))
        case let .dataWaitErr(ino, _, off, count, op, err):
            try requireRoot(peer, "data-wait-err")
            return .count(UInt64(try fs.failDataWaiters(ino: ino, offset: off, count: count, ops: op, error: err)))
        case let .referringEntries(ino, dir, pos, n):
            try requireRoot(peer, "get-referring-entries")
            return .entries(try fs.referringEntries(ino, after: dir, pos, limit: limit(n)))
        case let .inoPaths(ino, dir, pos, n):
            try requireRoot(peer, "ino-path")
            return .paths(try fs.inoPaths(ino, after: dir, pos, limit: limit(n)))
        case let .searchXattrs(name, first, last, n):
            try requireRoot(peer, "search-xattrs")
            let found = try fs.searchXattrs(name, from: first, through: last, limit: limit(n))
            return .inodes(found.inos, end: found.end)
        case let .listHiddenXattrs(skip, n):
            // Opening the file for reading is where the kernel checked read permission.
            guard f.readable else { throw ArchiveError(.badFileDescriptor, "list-hidden-xattrs needs the file open for reading") }
            return .names(Array(try fs.hiddenXattrs(f.ino).dropFirst(Int(skip)).prefix(limit(n))))
        case let .readXattrTotals(after, n):
            try requireRoot(peer, "read-xattr-totals")
            return .totals(try fs.xattrTotals(after: after, limit: limit(n)))
        case .sync:
            // Anyone with a file of the mount open may ask, as anyone may call syncfs(2).
            try fs.sync()
            return .count(fs.committedSeq)
        case .clusterStatus:
            return .clusterStatus(fs.clusterStatus)
        case let .punchOffline(v, off, len):
            guard f.writable else { throw ArchiveError(.invalidArgument, "punch-offline needs the file open for writing") }
            try fs.punchOffline(f.ino, dataVersion: v, offset: off, length: len)
            // Offline blocks were never in the page cache: only the attributes changed.
            invalidate(f.ino, nil)
            return .done
        case let .moveBlocks(fromOff, len, toOff, v, stage):
            guard files.count == 2 else {
                throw ArchiveError(.badFileDescriptor, "move-blocks needs the file the blocks come from sent as a second descriptor")
            }
            let src = try openFile(files[1])
            guard f.writable, src.writable else { throw ArchiveError(.badFileDescriptor, "move-blocks needs both files open for writing") }
            try fs.moveBlocks(from: src.ino, fromOffset: fromOff, length: len, to: f.ino, toOffset: toOff, stage: stage, dataVersion: v)
            // Both files' bytes changed in those regions: the kernel must read them again. A
            // staged region was offline, so (as for stage) only its attributes are dropped:
            // readers waiting for it hold its pages locked.
            invalidate(src.ino, fromOff..<(fromOff &+ len < fromOff ? .max : fromOff + len))
            invalidate(f.ino, stage ? nil : toOff..<(toOff &+ len < toOff ? .max : toOff + len))
            return .done
        case let .getAttrX(mask):
            return .attrX(try fs.getAttrX(f.ino, mask: mask))
        case let .setAttrX(x):
            // The original keeps every set to CAP_SYS_ADMIN.
            try requireRoot(peer, "set-attr-x")
            try fs.setAttrX(f.ino, x)
            invalidate(f.ino, nil)
            return .done
        case let .readXattrIndex(first, last, n):
            try requireRoot(peer, "read-xattr-index")
            return .indexEntries(try fs.xattrIndex(from: first, through: last, limit: limit(n)))
        case let .addQuotaRule(rule):
            try requireRoot(peer, "quota-add")
            try fs.addQuotaRule(rule)
            return .done
        case let .deleteQuotaRule(rule):
            try requireRoot(peer, "quota-del")
            try fs.deleteQuotaRule(rule)
            return .done
        case let .allocatedInodes(start):
            return .inodes(try fs.allocatedInodes(from: start), end: true)
        case let .resizeDevices(meta, data):
            try requireRoot(peer, "resize-devices")
            try fs.resizeDevices(metaTotalBlocks: meta, dataTotalBlocks: data)
            return .done
        case let .quotaRules(from, n):
            try requireRoot(peer, "quota-list")
            let page = try fs.quotaRules(from: from, limit: limit(n))
            return .quotaRules(page.rules, next: page.next)
        }
    }
}
