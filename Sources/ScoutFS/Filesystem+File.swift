#if canImport(Glibc)
import Glibc
#endif
import ScoutClient
import ScoutFormat
import ScoutStore
public import SystemPackage

/// A mapped run of a file: logical blocks `[start, start + length)` at data block `blkno`.
struct MappedExtent {
    var start: UInt64
    var length: UInt64
    var blkno: UInt64
    var end: UInt64 { start + length }
}

let blockSize = UInt64(Layout.dataBlockSize)

extension FSCore {
    // MARK: extent map

    /// Calls `body` with each extent item (mapped or offline) overlapping logical blocks
    /// `[first, last]`, in order, with its first block, until it returns false. A damaged item
    /// fails the operation with EIO and a log line naming it, before any reader computes with
    /// its numbers.
    func forEachExtent(_ ino: UInt64, from first: UInt64, through last: UInt64,
                       _ body: (_ key: Key, _ start: UInt64, _ extent: FileExtent) throws -> Bool) throws {
        let dataBlocks = items.store.dataTotalBlocks
        try scan(Keys.extent(ino, last: first, length: 0), Keys.extent(ino, last: .max, length: .max)) { it in
            let e: ExtentItem
            do {
                e = try ExtentItem(key: it.key, value: it.value, dataTotalBlocks: dataBlocks)
            } catch {
                throw StoreError(.corrupt, "\(error); run `scoutfs check`")
            }
            if e.first > last { return false }
            return try body(it.key, e.first, e.extent)
        }
    }

    /// The mapped extents overlapping logical blocks `[first, last]`, in order.
    func extents(_ ino: UInt64, from first: UInt64, through last: UInt64 = .max) throws -> [MappedExtent] {
        var out: [MappedExtent] = []
        try forEachExtent(ino, from: first, through: last) { key, start, fe in
            if !fe.flags.contains(.offline) { out.append(MappedExtent(start: start, length: key.third, blkno: fe.blkno)) }
            return true
        }
        return out
    }

    func putExtent(_ ino: UInt64, _ e: MappedExtent) throws {
        try put(Keys.extent(ino, last: e.end - 1, length: e.length), FileExtent(blkno: e.blkno, flags: []).encoded)
    }

    func removeExtent(_ ino: UInt64, _ e: MappedExtent) throws {
        try remove(Keys.extent(ino, last: e.end - 1, length: e.length))
    }

    /// Records a newly allocated run, merged into the extent before it when both are contiguous.
    func addExtent(_ ino: UInt64, _ e: MappedExtent) throws {
        var merged = e
        if e.start > 0, let prev = try extents(ino, from: e.start - 1, through: e.start - 1).first,
           prev.end == e.start, prev.blkno + prev.length == e.blkno {
            try removeExtent(ino, prev)
            merged = MappedExtent(start: prev.start, length: prev.length + e.length, blkno: prev.blkno)
        }
        try putExtent(ino, merged)
    }

    /// Unmaps logical blocks `[first, last]`, freeing their data blocks; returns how many.
    @discardableResult
    func unmap(_ ino: UInt64, from first: UInt64, through last: UInt64 = .max) throws -> UInt64 {
        var freed: UInt64 = 0
        for e in try extents(ino, from: first, through: last) {
            try removeExtent(ino, e)
            let cutStart = max(e.start, first)
            let cutEnd = last == .max ? e.end : min(e.end, last + 1)
            if e.start < cutStart { try putExtent(ino, MappedExtent(start: e.start, length: cutStart - e.start, blkno: e.blkno)) }
            if cutEnd < e.end {
                try putExtent(ino, MappedExtent(start: cutEnd, length: e.end - cutEnd, blkno: e.blkno + (cutEnd - e.start)))
            }
            items.freeData(Extent(start: e.blkno + (cutStart - e.start), length: cutEnd - cutStart))
            freed += cutEnd - cutStart
        }
        return freed
    }

    func truncateExtents(_ ino: UInt64, fromBlock first: UInt64) throws {
        try unmap(ino, from: first)
    }

    /// Fails with ENOSPC unless `blocks` data blocks can be allocated, before anything changes:
    /// a write never maps blocks it then cannot fill. Blocks freed by the open transaction
    /// count once a commit has made them reusable, so space a user just freed is there at once.
    func ensureDataSpace(_ blocks: UInt64) throws {
        let (free, pending) = items.dataSpace
        if free >= blocks { return }
        if free + pending >= blocks && !spaceCommitted {
            // A commit makes them allocatable; the operation commits before it starts over
            // (`Filesystem.locked`), since a commit inside it would move the transaction's seq
            // past the index locks it holds.
            throw CommitNeeded()
        }
        throw Errno.noSpace
    }

    /// Maps every unmapped block of `[first, last]`, returning the new runs (whose blocks hold
    /// whatever was there before: callers write or zero all of them).
    func allocateHoles(_ ino: UInt64, from first: UInt64, through last: UInt64) throws -> [MappedExtent] {
        var fresh: [MappedExtent] = []
        var pos = first
        var gaps: [(UInt64, UInt64)] = []
        for e in try extents(ino, from: first, through: last) {
            if e.start > pos { gaps.append((pos, e.start)) }
            pos = max(pos, e.end)
        }
        if pos <= last { gaps.append((pos, last + 1)) }
        var pool = try allocateData(gaps.reduce(0) { $0 + $1.1 - $1.0 })[...]
        for (g0, g1) in gaps {
            var at = g0
            while at < g1, var got = pool.first {
                let n = min(g1 - at, got.length)
                let run = MappedExtent(start: at, length: n, blkno: got.start)
                try addExtent(ino, run)
                fresh.append(run)
                at += n
                got = Extent(start: got.start + n, length: got.length - n)
                if got.length == 0 { pool.removeFirst() } else { pool[pool.startIndex] = got }
            }
        }
        return fresh
    }

    /// Allocates `blocks` data blocks, all or none, from the client's pool in one hold of it:
    /// operations in parallel cannot take the space between the check and the allocation, so
    /// a write never maps part of its blocks and then finds no more.
    func allocateData(_ blocks: UInt64) throws -> [Extent] {
        do {
            return try items.allocateData(blocks)
        } catch let e as DataSpaceShortage {
            if e.commitMayHelp && !spaceCommitted { throw CommitNeeded() }
            throw Errno.noSpace
        }
    }

    // MARK: data I/O

    /// Where the bytes of a read come from: `count` bytes, of which each segment is on the data
    /// device and the rest are holes (zeros).
    struct ReadPlan {
        var count = 0
        var segments: [(at: Int, device: UInt64, length: Int)] = []
        /// The read gate's token, once entered.
        var gate = 0
    }

    func planRead(_ ino: UInt64, offset: UInt64, count: Int) throws -> ReadPlan {
        let rec = try inode(ino)
        if rec.isDirectory { throw Errno.isDirectory }
        guard offset < rec.size, count > 0 else { return ReadPlan() }
        var plan = ReadPlan(count: Int(min(UInt64(count), rec.size - offset)))
        try checkOnline(ino, rec, from: offset, count: UInt64(plan.count), op: .read)
        let end = offset + UInt64(plan.count)
        for e in try extents(ino, from: offset / blockSize, through: (end - 1) / blockSize) {
            let lo = max(offset, e.start * blockSize)
            let hi = min(end, e.end * blockSize)
            guard lo < hi else { continue }
            plan.segments.append((Int(lo - offset), e.blkno * blockSize + (lo - e.start * blockSize), Int(hi - lo)))
        }
        return plan
    }

    /// A retained file refuses every change but to its non-`user.` xattrs (`xattr`: the name
    /// of the xattr being changed), as the original's; only clearing the flag lifts it.
    func checkRetention(_ rec: InodeRecord, xattr: [UInt8]? = nil) throws {
        guard rec.isRetained else { return }
        if let xattr, !xattr.starts(with: "user.".utf8) { return }
        throw Errno.notPermitted
    }

    /// A write takes file capabilities away, whoever writes. The kernel asks for them before
    /// each write only until it has seen an inode without them (FUSE_HANDLE_KILLPRIV_V2 makes
    /// it remember that), and another node may have set them since, so the filesystem
    /// removes them itself.
    func dropCapabilities(_ ino: UInt64, _ rec: InodeRecord) throws {
        guard rec.nextXattrID > 1, let x = try findXattr(ino, Self.capabilityXattr) else { return }
        try removeXattrItems(ino, x)
    }

    static let capabilityXattr = Array("security.capability".utf8)

    func writeData(_ ino: UInt64, offset: UInt64, data: [UInt8], killSetID: SetIDKill? = nil) throws -> Int {
        var rec = try inode(ino)
        if rec.isDirectory { throw Errno.isDirectory }
        try checkRetention(rec)
        try checkQuota(op: QuotaRule.dataOp, project: rec.projectID, uid: rec.uid, gid: rec.gid)
        guard !data.isEmpty else { return 0 }
        // data_version covers the whole file: all of it must be online before it changes.
        try checkOnline(ino, rec, from: 0, count: rec.size, op: .write)
        let (end, overflow) = offset.addingReportingOverflow(UInt64(data.count))
        if overflow || end > UInt64(Int64.max) { throw Errno.fileTooLarge }
        let first = offset / blockSize
        let last = (end - 1) / blockSize
        // Damaged counters fail before any block is mapped.
        let version = try rec.dataVersion.adding(1, "data version of inode \(ino)")
        _ = try rec.onlineBlocks.adding(last - first + 1, "online block count of inode \(ino)")
        let fresh = try allocateHoles(ino, from: first, through: last)
        do {
            try writeBlocks(ino, offset: offset, end: end, first: first, last: last, data: data, fresh: fresh)
        } catch {
            // Blocks mapped for this write would otherwise keep whatever they held before
            // (another file's old contents) and the next commit would make that durable.
            try unmapFresh(ino, fresh)
            throw error
        }
        let now = Timestamp.now
        rec.size = max(rec.size, end)
        rec.onlineBlocks += fresh.reduce(0) { $0 + $1.length }
        rec.mtime = now
        rec.ctime = now
        rec.dataVersion = version
        killSetID?.apply(&rec)
        try dropCapabilities(ino, rec)
        try markDataChanged(ino, &rec)
        try putInode(ino, &rec)
        return data.count
    }

    /// Takes back runs that `allocateHoles` mapped for an operation that then failed: their
    /// extents go and their blocks are freed, so nothing of the operation stays.
    func unmapFresh(_ ino: UInt64, _ fresh: [MappedExtent]) throws {
        for run in fresh { try unmap(ino, from: run.start, through: run.end - 1) }
    }

    /// The device writes of `writeData`: fresh runs whole, with zeros around the data, and the
    /// data in place into blocks mapped before.
    func writeBlocks(_ ino: UInt64, offset: UInt64, end: UInt64, first: UInt64, last: UInt64,
                             data: [UInt8], fresh: [MappedExtent]) throws {
        // New blocks get whole-block writes with zeros around the data: whatever a freed block
        // held before must never show through.
        for run in fresh {
            var buf = [UInt8](repeating: 0, count: Int(run.length * blockSize))
            let lo = max(offset, run.start * blockSize)
            let hi = min(end, run.end * blockSize)
            buf.replaceSubrange(Int(lo - run.start * blockSize)..<Int(hi - run.start * blockSize),
                                with: data[Int(lo - offset)..<Int(hi - offset)])
            try shared.data.write(at: run.blkno * blockSize, buf)
        }
        // The remaining blocks were mapped before: write the data into them in place, in runs
        // that stop where a freshly written run begins.
        for e in try extents(ino, from: first, through: last) {
            var pos = max(e.start, first)
            let stop = min(e.end, last + 1)
            while pos < stop {
                if let f = fresh.first(where: { $0.start <= pos && pos < $0.end }) {
                    pos = min(f.end, stop)
                    continue
                }
                let runEnd = fresh.filter { $0.start > pos }.map(\.start).min().map { min($0, stop) } ?? stop
                let lo = max(offset, pos * blockSize)
                let hi = min(end, runEnd * blockSize)
                try shared.data.write(at: (e.blkno + pos - e.start) * blockSize + (lo - pos * blockSize),
                                     Array(data[Int(lo - offset)..<Int(hi - offset)]))
                pos = runEnd
            }
        }
    }

    /// Zeroes bytes `[from, to)` of mapped blocks (holes already read as zeros).
    func zeroRange(_ ino: UInt64, from: UInt64, to: UInt64) throws {
        guard from < to else { return }
        for e in try extents(ino, from: from / blockSize, through: (to - 1) / blockSize) {
            let lo = max(from, e.start * blockSize)
            let hi = min(to, e.end * blockSize)
            if lo < hi {
                try shared.data.write(at: e.blkno * blockSize + (lo - e.start * blockSize), [UInt8](repeating: 0, count: Int(hi - lo)))
            }
        }
    }

    func setSize(_ ino: UInt64, _ rec: inout InodeRecord, _ size: UInt64) throws {
        if size > UInt64(Int64.max) { throw Errno.fileTooLarge }
        if size < rec.size {
            let keepBlocks = (size + blockSize - 1) / blockSize
            let cut = try cutExtents(ino, from: keepBlocks, through: .max)
            rec.onlineBlocks -= min(rec.onlineBlocks, cut.online)
            rec.offlineBlocks -= min(rec.offlineBlocks, cut.offline)
            // The tail of the last kept block must read as zeros if the file grows again.
            if size % blockSize != 0 { try zeroRange(ino, from: size, to: keepBlocks * blockSize) }
        }
        if size != rec.size {
            rec.size = size
            rec.dataVersion = try rec.dataVersion.adding(1, "data version of inode \(ino)")
            try markDataChanged(ino, &rec)
        }
        let now = Timestamp.now
        rec.mtime = now
        rec.ctime = now
    }

    func setattr(_ ino: UInt64, _ ch: AttributeChanges) throws -> Attributes {
        var rec = try inode(ino)
        try checkRetention(rec)
        if let size = ch.size, size > 0, size != rec.size {
            try checkOnline(ino, rec, from: 0, count: size, op: .changeSize)
        }
        let now = Timestamp.now
        if let m = ch.mode {
            rec.mode = rec.fileType | (m & 0o7777)
            // An access ACL takes the new owner, mask (or group) and other bits, as chmod on a
            // disk filesystem does.
            if shared.posixACLs, rec.nextXattrID > 1, let x = try findXattr(ino, PosixACL.accessName), var acl = PosixACL(xattr: x.value) {
                acl.chmod(rec.mode)
                try replaceXattrValue(ino, x, PosixACL.accessName, acl.encoded)
            }
        }
        if let u = ch.uid { rec.uid = u }
        if let g = ch.gid { rec.gid = g }
        if let kill = ch.killSetID, !rec.isDirectory { kill.apply(&rec) }
        if let size = ch.size {
            if rec.isDirectory { throw Errno.isDirectory }
            if !rec.isRegular { throw Errno.invalidArgument }
            try setSize(ino, &rec, size)
        }
        switch ch.atime {
        case .now: rec.atime = now
        case .set(let t): rec.atime = t
        case nil: break
        }
        switch ch.mtime {
        case .now: rec.mtime = now
        case .set(let t): rec.mtime = t
        case nil: break
        }
        rec.ctime = now
        try putInode(ino, &rec)
        return attributes(ino, rec)
    }

    func fallocate(_ ino: UInt64, mode: Int32, offset: UInt64, length: UInt64, killSetID: SetIDKill? = nil) throws {
        var rec = try inode(ino)
        guard rec.isRegular else { throw Errno.operationNotSupportedByDevice }
        try checkRetention(rec)
        try checkQuota(op: QuotaRule.dataOp, project: rec.projectID, uid: rec.uid, gid: rec.gid)
        guard length > 0 else { throw Errno.invalidArgument }
        try checkOnline(ino, rec, from: 0, count: rec.size, op: .write)
        let (end, overflow) = offset.addingReportingOverflow(length)
        if overflow || end > UInt64(Int64.max) { throw Errno.fileTooLarge }
        let keepSize = mode & LinuxABI.fallocKeepSize != 0
        let version = try rec.dataVersion.adding(1, "data version of inode \(ino)")
        _ = try rec.onlineBlocks.adding(length / blockSize + 2, "online block count of inode \(ino)")
        if mode == LinuxABI.fallocPunchHole | LinuxABI.fallocKeepSize {
            let firstWhole = (offset + blockSize - 1) / blockSize
            let endWhole = end / blockSize
            if firstWhole < endWhole {
                rec.onlineBlocks -= min(rec.onlineBlocks, try unmap(ino, from: firstWhole, through: endWhole - 1))
            }
            try zeroRange(ino, from: offset, to: min(end, firstWhole * blockSize))
            try zeroRange(ino, from: max(offset, endWhole * blockSize), to: end)
        } else if mode & ~LinuxABI.fallocKeepSize == 0 {
            let fresh = try allocateHoles(ino, from: offset / blockSize, through: (end - 1) / blockSize)
            do {
                for run in fresh {
                    // Zero in 1 MiB writes: preallocated blocks must read as zeros.
                    var at: UInt64 = 0
                    let total = run.length * blockSize
                    while at < total {
                        let n = min(total - at, 1 << 20)
                        try shared.data.write(at: run.blkno * blockSize + at, [UInt8](repeating: 0, count: Int(n)))
                        at += n
                    }
                }
            } catch {
                try unmapFresh(ino, fresh)
                throw error
            }
            rec.onlineBlocks += fresh.reduce(0) { $0 + $1.length }
            if !keepSize && end > rec.size {
                rec.size = end
                rec.dataVersion = version
            }
        } else {
            throw Errno.notSupported
        }
        let now = Timestamp.now
        rec.ctime = now
        if !keepSize { rec.mtime = now }
        killSetID?.apply(&rec)
        try dropCapabilities(ino, rec)
        try markDataChanged(ino, &rec)
        try putInode(ino, &rec)
    }

    func seek(_ ino: UInt64, offset: UInt64, whence: Int32) throws -> UInt64 {
        let rec = try inode(ino)
        guard offset < rec.size else { throw Errno.noSuchAddressOrDevice }
        // Released (offline) blocks are data, not holes: a copy that skips holes (cp, tar,
        // rsync) must read them, and so wait for them to be staged, not write zeros.
        var mapped: [MappedExtent] = []
        try forEachExtent(ino, from: offset / blockSize, through: .max) { key, start, fe in
            mapped.append(MappedExtent(start: start, length: key.third, blkno: fe.blkno))
            return true
        }
        switch whence {
        case LinuxABI.seekData:
            guard let e = mapped.first(where: { $0.end * blockSize > offset }) else { throw Errno.noSuchAddressOrDevice }
            let at = max(offset, e.start * blockSize)
            if at >= rec.size { throw Errno.noSuchAddressOrDevice }
            return at
        case LinuxABI.seekHole:
            var pos = offset
            for e in mapped {
                if e.start * blockSize > pos { break }
                pos = max(pos, e.end * blockSize)
            }
            return min(pos, rec.size)
        default:
            throw Errno.invalidArgument
        }
    }

    /// Opens `ino` (truncating for O_TRUNC); true when the file has offline data.
    @discardableResult
    func open(_ ino: UInt64, flags: Int32, caller: Caller? = nil, killSetID: SetIDKill? = nil) throws -> Bool {
        var rec = try inode(ino)
        if flags & O_TRUNC != 0 && rec.isRegular && (flags & O_ACCMODE) != O_RDONLY {
            try checkRetention(rec)
            try setSize(ino, &rec, 0)
            // With atomic O_TRUNC the kernel sends no setattr, so the truncate's clearing of
            // setuid/setgid (for callers without CAP_FSETID) is ours.
            killSetID?.apply(&rec)
            try putInode(ino, &rec)
        }
        shared.refs.withLock(ino) { $0.openCount[ino, default: 0] += 1 }
        return rec.offlineBlocks > 0
    }

    func stats() -> FilesystemStats {
        let sb = shared.layout
        let store = items.store
        let metaTotal = store.metaTotalBlocks
        let metaFree = items.withStore { store.freeMetaBlocks }
        let dataFree = items.freeDataBlocks
        // A rough inode count: a small inode takes about 300 bytes of metadata with its entry.
        let perBlock = UInt64(Layout.metaBlockSize / 300)
        return FilesystemStats(
            blockSize: UInt32(Layout.dataBlockSize),
            totalBlocks: store.dataTotalBlocks - Layout.dataFirstBlkno,
            freeBlocks: dataFree,
            totalInodes: (metaTotal - Layout.metaFirstBlkno) * perBlock,
            freeInodes: metaFree * perBlock,
            nameMax: UInt32(DirentRecord.maxNameLength),
            fsid: sb.fsid)
    }
}

extension Filesystem {
    private func inodePlan(_ ino: UInt64, write: Bool) -> LockPlan {
        var plan = LockPlan()
        if write { plan.write(ino) } else { plan.read(ino) }
        return plan
    }

    public func setattr(_ ino: UInt64, _ changes: AttributeChanges, cancel: WaitCancellation? = nil) throws(Errno) -> Attributes {
        try lockedWaiting(.frees, cancel, inodePlan(ino, write: true)) { try $0.setattr(ino, changes) }
    }

    /// Opens `ino`; with O_TRUNC a writable open truncates (the mount negotiates atomic O_TRUNC).
    /// Opens `ino`; with O_TRUNC a writable open truncates. True when the file has offline
    /// data at the open (the FUSE layer reads such files past the page cache).
    @discardableResult
    /// `killSetID`: an O_TRUNC open by a caller without CAP_FSETID, which clears setuid/setgid.
    public func open(_ ino: UInt64, flags: Int32, caller: Caller? = nil, killSetID: SetIDKill? = nil) throws(Errno) -> Bool {
        let truncates = flags & O_TRUNC != 0 && (flags & O_ACCMODE) != O_RDONLY
        return try locked(.frees, inodePlan(ino, write: truncates)) { try $0.open(ino, flags: flags, caller: caller, killSetID: killSetID) }
    }

    /// Creates and opens a regular file.
    public func create(_ dir: UInt64, _ name: [UInt8], mode: UInt32, flags: Int32, caller: Caller) throws(Errno) -> Attributes {
        try makeNode(dir) { c, ino in
            let a = try c.makeNode(dir, name, ino: ino, mode: UInt32(S_IFREG) | (mode & 0o7777), caller: caller)
            try c.open(a.ino, flags: flags & ~O_TRUNC)
            return a
        }
    }

    /// Creates and opens a regular file in `dir` that no directory holds (O_TMPFILE): it is
    /// freed at its last close and forget, or at the next mount's orphan scan after a crash,
    /// unless a link (linkat of its descriptor) names it first.
    public func tmpfile(_ dir: UInt64, mode: UInt32, flags: Int32, caller: Caller) throws(Errno) -> Attributes {
        try prepareQuota()
        var plan = LockPlan()
        plan.read(dir)
        plan.writeOnly(.orphan)
        var ino: UInt64?
        return try locked(.grows, plan, discover: { c, p in
            if ino == nil { ino = try c.allocateIno(parent: dir, directory: false) }
            p.write(ino!)
        }) { c in
            let a = try c.makeNode(dir, nil, ino: ino!, mode: UInt32(S_IFREG) | (mode & 0o7777), caller: caller)
            try c.open(a.ino, flags: flags & ~O_TRUNC)
            return a
        }
    }

    /// Ends an open; the last close of an unlinked inode frees it.
    public func release(_ ino: UInt64) throws(Errno) {
        if shared.refs.withLock(ino, { $0.close(ino) }) { try freeIfUnused(ino) }
    }

    /// Reads file data. Only the extent lookup holds the transaction and the group's turn; the
    /// device reads run in parallel with other requests, inside the data read gate and still
    /// under the inode's cluster lock, so no other node can change the mapping meanwhile.
    public func read(_ ino: UInt64, offset: UInt64, count: Int, cancel: WaitCancellation? = nil) throws(Errno) -> [UInt8] {
        while true {
            let outcome: Result<[UInt8], DataWaitNeeded> = try withLocks(inodePlan(ino, write: false)) { held throws(Errno) in
                let attempt: Result<FSCore.ReadPlan, DataWaitNeeded> = try runOperation(held: held) { c in
                    do {
                        var p = try c.planRead(ino, offset: offset, count: count)
                        if !p.segments.isEmpty { p.gate = readGate.enter() }
                        return .success(p)
                    } catch let w as DataWaitNeeded {
                        return .failure(w)
                    }
                }
                switch attempt {
                case .success(let p):
                    // The device reads need no turn at the inode's group: this mount's writers
                    // may go on (the read gate keeps freed blocks from reuse meanwhile), while
                    // the cluster lock keeps other nodes from changing the mapping.
                    releaseStripes(held)
                    return .success(try readData(ino, offset: offset, p))
                case .failure(let w): return .failure(w)
                }
            }
            switch outcome {
            case .success(let bytes): return bytes
            // The locks went before the wait; the next round takes them again.
            case .failure(let w): try waits.wait(w.ticket, cancel: cancel)
            }
        }
    }

    /// The device reads of `read`, inside the read gate that `planRead`'s caller entered.
    private func readData(_ ino: UInt64, offset: UInt64, _ plan: FSCore.ReadPlan) throws(Errno) -> [UInt8] {
        guard !plan.segments.isEmpty else { return [UInt8](repeating: 0, count: plan.count) }
        let data = dataDevice
        let bytes: [UInt8]
        do {
            bytes = try [UInt8](unsafeUninitializedCapacity: plan.count) { buf, initialized in
                let raw = UnsafeMutableRawBufferPointer(buf)
                var at = 0
                for s in plan.segments {
                    if s.at > at { raw[at..<s.at].initializeMemory(as: UInt8.self, repeating: 0) }
                    try data.read(at: s.device, into: UnsafeMutableRawBufferPointer(rebasing: raw[s.at..<s.at + s.length]))
                    at = s.at + s.length
                }
                if at < plan.count { raw[at..<plan.count].initializeMemory(as: UInt8.self, repeating: 0) }
                initialized = plan.count
            }
        } catch {
            // Out of the gate first: a commit waits for every reader inside it.
            readGate.leave(plan.gate)
            shared.log("read of inode \(ino) at \(offset): \(error)")
            throw .ioError
        }
        readGate.leave(plan.gate)
        return bytes
    }

    /// `killSetID`: the writer lacks CAP_FSETID, so setuid/setgid go (the kernel says so once
    /// FUSE_HANDLE_KILLPRIV_V2 is on).
    public func write(_ ino: UInt64, offset: UInt64, data: [UInt8], cancel: WaitCancellation? = nil,
                      killSetID: SetIDKill? = nil) throws(Errno) -> Int {
        try prepareQuota()
        return try lockedWaiting(.grows, cancel, inodePlan(ino, write: true)) {
            try $0.writeData(ino, offset: offset, data: data, killSetID: killSetID)
        }
    }

    /// `killSetID`: setuid/setgid go, as a write by a caller without CAP_FSETID clears them.
    public func fallocate(_ ino: UInt64, mode: Int32, offset: UInt64, length: UInt64, cancel: WaitCancellation? = nil,
                          killSetID: SetIDKill? = nil) throws(Errno) {
        try prepareQuota()
        try lockedWaiting(.grows, cancel, inodePlan(ino, write: true)) {
            try $0.fallocate(ino, mode: mode, offset: offset, length: length, killSetID: killSetID)
        }
    }

    public func seek(_ ino: UInt64, offset: UInt64, whence: Int32) throws(Errno) -> UInt64 {
        try locked(.reads, inodePlan(ino, write: false)) { try $0.seek(ino, offset: offset, whence: whence) }
    }

    /// Reads only the store's counters: no item, no lock. A node first asks the server for
    /// its newest figures (as the original's statfs does), so that space others used or
    /// freed, and a resize, show; unreachable, it answers with the last it heard.
    public func statfs() throws(Errno) -> FilesystemStats {
        try? host.refreshServerFigures()
        return try runOperation(held: HeldLocks()) { $0.stats() }
    }
}
