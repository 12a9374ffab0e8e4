#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import ScoutStore
public import SystemPackage

/// A refusal of an archive operation, with the reason for the user (the errno alone says
/// little: EINVAL covers a dozen cases).
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    public var errno: Errno
    public var description: String

    init(_ errno: Errno, _ description: String) {
        self.errno = errno
        self.description = description
    }
}

extension FSCore {
    // MARK: offline extents

    /// The first offline block in `[first, last]`, or nil.
    func firstOffline(_ ino: UInt64, from first: UInt64, through last: UInt64) throws -> UInt64? {
        var found: UInt64?
        try forEachExtent(ino, from: first, through: last) { _, start, fe in
            if fe.flags.contains(.offline) { found = max(start, first) }
            return found == nil
        }
        return found
    }

    /// Makes a request that touches offline bytes `[from, from + count)` wait (throws
    /// `DataWaitNeeded` with the waiter registered). Files with nothing offline cost nothing.
    func checkOnline(_ ino: UInt64, _ rec: InodeRecord, from: UInt64, count: UInt64, op: DataWaitOperation) throws {
        guard rec.offlineBlocks > 0, count > 0 else { return }
        let last = (from + count - 1) / blockSize
        if let b = try firstOffline(ino, from: from / blockSize, through: last) {
            throw DataWaitNeeded(ticket: waits.register(DataWaiter(ino: ino, iblock: b, op: op)))
        }
    }

    /// Removes every extent, mapped or offline, from logical blocks `[first, last]`, keeping the
    /// parts outside and freeing the data blocks inside; returns the blocks removed of each kind.
    func cutExtents(_ ino: UInt64, from first: UInt64, through last: UInt64) throws -> (online: UInt64, offline: UInt64) {
        var hits: [(Key, FileExtent)] = []
        try forEachExtent(ino, from: first, through: last) { key, _, fe in
            hits.append((key, fe))
            return true
        }
        var online: UInt64 = 0
        var offline: UInt64 = 0
        for (key, fe) in hits {
            let len = key.third
            let start = key.second + 1 - len
            let end = key.second + 1
            try remove(key)
            let cutStart = max(start, first)
            let cutEnd = last == .max ? end : min(end, last + 1)
            let isOffline = fe.flags.contains(.offline)
            func keep(_ s: UInt64, _ e: UInt64) throws {
                let blk = isOffline ? 0 : fe.blkno + (s - start)
                try put(Keys.extent(ino, last: e - 1, length: e - s), FileExtent(blkno: blk, flags: fe.flags).encoded)
            }
            if start < cutStart { try keep(start, cutStart) }
            if cutEnd < end { try keep(cutEnd, end) }
            if isOffline {
                offline += cutEnd - cutStart
            } else {
                items.freeData(Extent(start: fe.blkno + (cutStart - start), length: cutEnd - cutStart))
                online += cutEnd - cutStart
            }
        }
        return (online, offline)
    }

    func putOfflineExtent(_ ino: UInt64, from first: UInt64, through last: UInt64) throws {
        try put(Keys.extent(ino, last: last, length: last - first + 1), FileExtent(blkno: 0, flags: .offline).encoded)
    }

    // MARK: archive operations

    func archiveFile(_ ino: UInt64, _ what: String) throws -> InodeRecord {
        let rec = try inode(ino)
        guard rec.isRegular else { throw ArchiveError(.invalidArgument, "\(what) needs a regular file") }
        return rec
    }

    func checkVersion(_ rec: InodeRecord, _ version: UInt64, _ what: String) throws {
        guard rec.dataVersion == version else {
            throw ArchiveError(.staleNFSFileHandle, "\(what): data version \(version) is not the file's current \(rec.dataVersion); the file changed since it was read")
        }
    }

    /// Frees the data blocks of `[offset, offset + length)` (4 KiB aligned) and marks the
    /// region offline; size, times and data_version stay.
    func release(_ ino: UInt64, version: UInt64, offset: UInt64, length: UInt64) throws {
        guard length > 0 else { return }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, offset % blockSize == 0, length % blockSize == 0 else {
            throw ArchiveError(.invalidArgument, "release: offset \(offset) and length \(length) must be multiples of \(blockSize)")
        }
        var rec = try archiveFile(ino, "release")
        try checkVersion(rec, version, "release")
        guard rec.size > 0 else { return }
        let first = offset / blockSize
        let last = min(end / blockSize - 1, (rec.size - 1) / blockSize)
        guard first <= last else { return }
        let cut = try cutExtents(ino, from: first, through: last)
        try putOfflineExtent(ino, from: first, through: last)
        rec.onlineBlocks -= min(rec.onlineBlocks, cut.online)
        rec.offlineBlocks = rec.offlineBlocks - min(rec.offlineBlocks, cut.offline) + (last - first + 1)
        try putInode(ino, &rec)
    }

    /// Writes archived bytes back into an offline region without changing data_version,
    /// mtime or data_seq. The region starts on a block boundary and ends on one or at EOF,
    /// and every block of it must be offline.
    func stage(_ ino: UInt64, version: UInt64, offset: UInt64, data: [UInt8]) throws -> Int {
        guard !data.isEmpty else { return 0 }
        var rec = try archiveFile(ino, "stage")
        try checkVersion(rec, version, "stage")
        let (end, overflow) = offset.addingReportingOverflow(UInt64(data.count))
        guard !overflow else {
            throw ArchiveError(.invalidArgument, "stage: offset \(offset) + \(data.count) bytes runs past the largest file offset")
        }
        guard offset % blockSize == 0 else {
            throw ArchiveError(.invalidArgument, "stage: offset \(offset) must be a multiple of \(blockSize)")
        }
        guard end <= rec.size, end % blockSize == 0 || end == rec.size else {
            throw ArchiveError(.invalidArgument, "stage: the region \(offset)..<\(end) must end on a \(blockSize)-byte boundary or at the file's size \(rec.size), and not past it")
        }
        let first = offset / blockSize
        let last = (end - 1) / blockSize
        // As the original's stage, a write that leaves data_version, seqs and times alone:
        // released blocks get blocks and data again, holes get blocks, and blocks already
        // online are written over in place.
        var offlineRuns: [(first: UInt64, last: UInt64)] = []
        var mapped: UInt64 = 0
        try forEachExtent(ino, from: first, through: last) { key, start, fe in
            let run = (first: max(start, first), last: min(key.second, last))
            if fe.flags.contains(.offline) { offlineRuns.append(run) } else { mapped += run.last + 1 - run.first }
            return true
        }
        let needed = last - first + 1 - mapped
        _ = try rec.onlineBlocks.adding(needed, "online block count of inode \(ino)")
        try ensureDataSpace(needed)
        for run in offlineRuns { _ = try cutExtents(ino, from: run.first, through: run.last) }
        var fresh: [MappedExtent] = []
        do {
            fresh = try allocateHoles(ino, from: first, through: last)
            try writeBlocks(ino, offset: offset, end: end, first: first, last: last, data: data, fresh: fresh)
        } catch {
            // Released regions go back to offline, so readers keep waiting for a stage that
            // works rather than reading blocks that never got their data.
            try unmapFresh(ino, fresh)
            for run in offlineRuns { try putOfflineExtent(ino, from: run.first, through: run.last) }
            throw error
        }
        let offline = offlineRuns.reduce(0) { $0 + $1.last + 1 - $1.first }
        rec.onlineBlocks += fresh.reduce(0) { $0 + $1.length }
        rec.offlineBlocks -= min(rec.offlineBlocks, offline)
        try putInode(ino, &rec)
        return data.count
    }

    /// Turns the offline extents of `[offset, offset + length)` into holes (the original's
    /// PUNCH_OFFLINE, for archive agents that restore sparse files): a region holding a mapped
    /// block is refused whole, before anything changes. Size, data_version and times stay; the
    /// file's size is not looked at.
    func punchOffline(_ ino: UInt64, version: UInt64, offset: UInt64, length: UInt64) throws {
        guard length > 0 else { return }
        let (end, overflow) = offset.addingReportingOverflow(length - 1)
        guard !overflow, offset % blockSize == 0, length % blockSize == 0 else {
            throw ArchiveError(.overflow, "punch-offline: offset \(offset) and length \(length) must be multiples of \(blockSize) and end within 2^64 bytes")
        }
        var rec = try archiveFile(ino, "punch-offline")
        try checkVersion(rec, version, "punch-offline")
        if rec.isRetained { throw ArchiveError(.notPermitted, "punch-offline: the file is retained; clear its retention flag first (set-attr-x -t 0)") }
        let first = offset / blockSize
        let last = end / blockSize
        var mapped: UInt64?
        try forEachExtent(ino, from: first, through: last) { _, start, fe in
            if !fe.flags.contains(.offline) { mapped = max(start, first) }
            return mapped == nil
        }
        if let mapped {
            throw ArchiveError(.invalidArgument, "punch-offline: block \(mapped) of the region is allocated (online or unwritten); only offline extents can be punched")
        }
        let cut = try cutExtents(ino, from: first, through: last)
        guard cut.offline > 0 else { return }
        rec.offlineBlocks -= min(rec.offlineBlocks, cut.offline)
        try putInode(ino, &rec)
    }

    /// Moves the data extents of `[fromOffset, fromOffset + length)` of `from` to `toOffset` of
    /// `to` without copying a byte (the original's MOVE_BLOCKS): the blocks change owner.
    /// Offsets and length are 4 KiB multiples, except a length that ends at `from`'s size;
    /// only blocks within `from`'s size move, and `to` grows to cover them (keeping a final
    /// partial block partial). Without `stage` neither file may have offline data and no
    /// moved block may land on one `to` has; with it, every moved block must land on an offline
    /// block of `to`, whose data version must be `version`, and `to` keeps its data version
    /// and times. Checked whole before anything changes, so a refusal leaves both files as
    /// they were.
    func moveBlocks(from: UInt64, fromOffset: UInt64, length: UInt64, to: UInt64, toOffset: UInt64,
                    stage: Bool, version: UInt64) throws {
        guard length > 0 else { return }
        guard !fromOffset.addingReportingOverflow(length - 1).overflow, !toOffset.addingReportingOverflow(length - 1).overflow else {
            throw ArchiveError(.overflow, "move-blocks: offset + length runs past 2^64 bytes (from offset \(fromOffset), to offset \(toOffset), length \(length))")
        }
        guard from != to else { throw ArchiveError(.invalidArgument, "move-blocks: the source and destination are the same file") }
        var src = try inode(from)
        var dst = try inode(to)
        if !stage && dst.isRetained {
            throw ArchiveError(.notPermitted, "move-blocks: the destination is retained; clear its retention flag first (set-attr-x -t 0)")
        }
        guard fromOffset % blockSize == 0, toOffset % blockSize == 0,
              length % blockSize == 0 || fromOffset + length == src.size else {
            throw ArchiveError(.invalidArgument, "move-blocks: offsets and length must be multiples of \(blockSize) (the length may instead end at the source's size, \(src.size))")
        }
        guard !src.isDirectory, !dst.isDirectory else { throw ArchiveError(.isDirectory, "move-blocks: a directory has no blocks to move") }
        guard src.isRegular, dst.isRegular else { throw ArchiveError(.invalidArgument, "move-blocks: both files must be regular files") }
        if stage { try checkVersion(dst, version, "move-blocks") }
        guard fromOffset < src.size else { return }
        guard src.offlineBlocks == 0, stage || dst.offlineBlocks == 0 else {
            throw ArchiveError(.noData, "move-blocks: \(src.offlineBlocks > 0 ? "the source" : "the destination") has offline (released) data; stage it first")
        }
        let firstBlock = fromOffset / blockSize
        let count = (min(length, src.size - fromOffset) + blockSize - 1) / blockSize
        let lastBlock = firstBlock + count - 1
        let shift = { (b: UInt64) in b - firstBlock + toOffset / blockSize }

        // The runs to move, clipped to the region.
        var runs: [(start: UInt64, length: UInt64, extent: FileExtent)] = []
        try forEachExtent(from, from: firstBlock, through: lastBlock) { key, start, fe in
            let s = max(start, firstBlock)
            let e = min(start + key.third, lastBlock + 1)
            runs.append((s, e - s, FileExtent(blkno: fe.blkno + (s - start), flags: fe.flags)))
            return true
        }
        guard !runs.isEmpty else { return }
        // What the destination holds over the whole region, read in one pass: a scan per run
        // would walk again over the deletions an earlier move left in the cache, for a cost
        // that grows with the square of the extents moved.
        var held: [(start: UInt64, end: UInt64, offline: Bool)] = []
        try forEachExtent(to, from: shift(runs[0].start), through: shift(runs[runs.count - 1].start + runs[runs.count - 1].length - 1)) { key, start, fe in
            held.append((start, start + key.third, fe.flags.contains(.offline)))
            return true
        }
        var h = 0
        for run in runs {
            let d0 = shift(run.start)
            let d1 = d0 + run.length
            while h < held.count && held[h].end <= d0 { h += 1 }
            var covered: UInt64 = 0
            var clash = false
            var i = h
            while i < held.count && held[i].start < d1 {
                if stage && held[i].offline {
                    covered += min(held[i].end, d1) - max(held[i].start, d0)
                } else {
                    clash = true
                }
                i += 1
            }
            if stage && (clash || covered != run.length) {
                throw ArchiveError(.invalidArgument, "move-blocks: destination blocks \(d0)...\(d1 - 1) are not all offline; staging moves blocks only into released regions")
            }
            if !stage && clash {
                throw ArchiveError(.invalidArgument, "move-blocks: destination blocks \(d0)...\(d1 - 1) already hold data; blocks are moved only into holes")
            }
        }

        var moved: UInt64 = 0
        for run in runs {
            let d0 = shift(run.start)
            try detachExtents(from, from: run.start, through: run.start + run.length - 1)
            if stage { _ = try cutExtents(to, from: d0, through: d0 + run.length - 1) }
            try put(Keys.extent(to, last: d0 + run.length - 1, length: run.length), run.extent.encoded)
            moved += run.length
            let dstEnd = (d0 + run.length) * blockSize
            if dstEnd > dst.size {
                // A moved final partial block stays partial.
                let srcEnd = (run.start + run.length) * blockSize
                dst.size = dstEnd - (srcEnd > src.size ? srcEnd - src.size : 0)
            }
        }
        let now = Timestamp.now
        src.onlineBlocks -= min(src.onlineBlocks, moved)
        src.mtime = now
        src.ctime = now
        src.dataVersion = try src.dataVersion.adding(1, "data version of inode \(from)")
        try markDataChanged(from, &src)
        dst.onlineBlocks = try dst.onlineBlocks.adding(moved, "online block count of inode \(to)")
        if stage {
            dst.offlineBlocks -= min(dst.offlineBlocks, moved)
        } else {
            dst.mtime = now
            dst.ctime = now
            dst.dataVersion = try dst.dataVersion.adding(1, "data version of inode \(to)")
            try markDataChanged(to, &dst)
        }
        try putInode(from, &src)
        try putInode(to, &dst)
    }

    /// Removes the mapped extents of logical blocks `[first, last]` without freeing their
    /// blocks (they are about to belong to another file), keeping the parts outside.
    func detachExtents(_ ino: UInt64, from first: UInt64, through last: UInt64) throws {
        for e in try extents(ino, from: first, through: last) {
            try removeExtent(ino, e)
            if e.start < first { try putExtent(ino, MappedExtent(start: e.start, length: first - e.start, blkno: e.blkno)) }
            if last + 1 < e.end {
                try putExtent(ino, MappedExtent(start: last + 1, length: e.end - last - 1, blkno: e.blkno + (last + 1 - e.start)))
            }
        }
    }

    /// The original's SET_ATTR_X: every change is checked before any is made. Size and data
    /// version only on a new, never written regular file (a non-zero size needs a non-zero
    /// version; `sizeOffline` makes 0..<size one offline region); the retention bit only on
    /// regular files; a retained file refuses everything unless the call clears the bit.
    /// meta_seq, data_seq and the block counts are the filesystem's own and are not set.
    func setAttrX(_ ino: UInt64, _ x: InodeAttrX) throws {
        guard x.mask & ~InodeAttrX.knownMask == 0, x.flags & ~InodeAttrX.sizeOffline == 0 else {
            throw ArchiveError(.invalidArgument, "set-attr-x: unknown attribute bits \(hex(x.mask & ~InodeAttrX.knownMask)) or flags \(hex(x.flags & ~InodeAttrX.sizeOffline))")
        }
        guard x.mask != 0 else { return }
        var rec = try inode(ino)
        let setsRetention = x.mask & InodeAttrX.retentionMask != 0
        let version = x.mask & InodeAttrX.dataVersionMask != 0 ? x.dataVersion : nil
        let size = x.mask & InodeAttrX.sizeMask != 0 ? x.size : nil
        let offline = x.flags & InodeAttrX.sizeOffline != 0
        try checkRestore(rec, version: version, size: size, offline: offline, "set-attr-x")
        if setsRetention && !rec.isRegular { throw ArchiveError(.invalidArgument, "set-attr-x: only regular files can be retained") }
        if rec.isRetained && !(setsRetention && x.bits & InodeAttrX.retentionBit == 0) {
            throw ArchiveError(.notPermitted, "set-attr-x: the file is retained; a change must clear its retention flag too (-t 0)")
        }
        if offline && (rec.onlineBlocks != 0 || rec.offlineBlocks != 0) {
            throw ArchiveError(.invalidArgument, "set-attr-x: offline needs a file with no blocks")
        }
        try restore(ino, &rec, version: version, size: size, offline: offline)
        if x.mask & InodeAttrX.ctimeMask != 0 { rec.ctime = x.ctime }
        if x.mask & InodeAttrX.crtimeMask != 0 { rec.crtime = x.crtime }
        if setsRetention {
            rec.flags = x.bits & InodeAttrX.retentionBit != 0 ? rec.flags | InodeRecord.Flags.retention : rec.flags & ~InodeRecord.Flags.retention
        }
        if x.mask & InodeAttrX.projectIDMask != 0 { rec.projectID = x.projectID }
        try putInode(ino, &rec)
    }

    /// The rules SETATTR_MORE and SET_ATTR_X share for restoring a file's contents (`verb`
    /// names the caller in refusals): a data version is not 0; size and data version only on
    /// a new, never written regular file; a non-zero size needs a data version; offline needs
    /// a non-zero size; sizes within the largest file.
    func checkRestore(_ rec: InodeRecord, version: UInt64?, size: UInt64?, offline: Bool, _ verb: String) throws {
        if version == 0 { throw ArchiveError(.invalidArgument, "\(verb): a data version must not be 0") }
        if (size != nil || version != nil) && (!rec.isRegular || rec.dataVersion != 0) {
            throw ArchiveError(.invalidArgument, "\(verb): size and data version can only be set on a new, never written regular file")
        }
        if let size, size > 0, version == nil {
            throw ArchiveError(.invalidArgument, "\(verb): a non-zero size needs a non-zero data version")
        }
        if offline && (size ?? 0) == 0 { throw ArchiveError(.invalidArgument, "\(verb): offline needs a non-zero size") }
        if let size, size > UInt64(Int64.max) { throw ArchiveError(.fileTooLarge, "\(verb): size \(size) is too large") }
    }

    /// Applies what `checkRestore` allowed: with `offline`, the whole size as one offline
    /// region (the file has no extents: it was never written), then version and size.
    func restore(_ ino: UInt64, _ rec: inout InodeRecord, version: UInt64?, size: UInt64?, offline: Bool) throws {
        if offline, let size {
            let blocks = (size + blockSize - 1) / blockSize
            try putOfflineExtent(ino, from: 0, through: blocks - 1)
            rec.offlineBlocks = blocks
        }
        if let version {
            rec.dataVersion = version
            try markDataChanged(ino, &rec)
        }
        if let size { rec.size = size }
    }

    /// Restores a new, never written file's metadata (root only): size, data_version, times;
    /// with `offline`, the whole size as one offline region to be staged later.
    func setattrMore(_ ino: UInt64, _ s: SetattrMore) throws {
        var rec = try archiveFile(ino, "setattr")
        guard rec.dataVersion == 0 else {
            throw ArchiveError(.invalidArgument, "setattr: the file has data version \(rec.dataVersion); only a new, never written file can be restored")
        }
        let version = s.dataVersion != 0 ? s.dataVersion : nil
        try checkRestore(rec, version: version, size: s.size, offline: s.offline, "setattr")
        try restore(ino, &rec, version: version, size: s.size, offline: s.offline)
        if let t = s.ctime { rec.ctime = t } else { rec.ctime = .now }
        if let t = s.crtime { rec.crtime = t }
        try putInode(ino, &rec)
    }
}

extension Filesystem {
    /// Runs an archive operation on `inos` (write-locked), passing its reason along with the errno.
    func archive<T>(_ space: SpaceUse, _ inos: UInt64..., body: (FSCore) throws -> T) throws(ArchiveError) -> T {
        var plan = LockPlan()
        for ino in inos { plan.write(ino) }
        return try archive(space, plan: plan, body: body)
    }

    /// Runs an operation under `plan`, passing the reason of an `ArchiveError` along with its errno.
    func archive<T>(_ space: SpaceUse, plan: LockPlan, body: (FSCore) throws -> T) throws(ArchiveError) -> T {
        var reason: ArchiveError?
        do {
            return try locked(space, plan) { c in
                do {
                    return try body(c)
                } catch let e as ArchiveError {
                    reason = e
                    throw e.errno
                }
            }
        } catch {
            throw reason ?? ArchiveError(error, "\(error)")
        }
    }

    public func release(_ ino: UInt64, dataVersion: UInt64, offset: UInt64, length: UInt64) throws(ArchiveError) {
        try archive(.frees, ino) { try $0.release(ino, version: dataVersion, offset: offset, length: length) }
    }

    @discardableResult
    public func stage(_ ino: UInt64, dataVersion: UInt64, offset: UInt64, data: [UInt8]) throws(ArchiveError) -> Int {
        try archive(.grows, ino) { try $0.stage(ino, version: dataVersion, offset: offset, data: data) }
    }

    public func setattrMore(_ ino: UInt64, _ s: SetattrMore) throws(ArchiveError) {
        try archive(.grows, ino) { try $0.setattrMore(ino, s) }
    }

    public func punchOffline(_ ino: UInt64, dataVersion: UInt64, offset: UInt64, length: UInt64) throws(ArchiveError) {
        try archive(.frees, ino) { try $0.punchOffline(ino, version: dataVersion, offset: offset, length: length) }
    }

    /// Moves `from`'s data extents into `to` (see `FSCore.moveBlocks`).
    public func moveBlocks(from: UInt64, fromOffset: UInt64, length: UInt64, to: UInt64, toOffset: UInt64,
                           stage: Bool = false, dataVersion: UInt64 = 0) throws(ArchiveError) {
        try archive(.grows, from, to) {
            try $0.moveBlocks(from: from, fromOffset: fromOffset, length: length, to: to, toOffset: toOffset,
                              stage: stage, version: dataVersion)
        }
    }

    public func setAttrX(_ ino: UInt64, _ x: InodeAttrX) throws(ArchiveError) {
        try archive(.grows, ino) { try $0.setAttrX(ino, x) }
    }

    /// The fields `mask` names (the original's GET_ATTR_X); unknown bits are EINVAL.
    public func getAttrX(_ ino: UInt64, mask: UInt64) throws(ArchiveError) -> InodeAttrX {
        guard mask & ~InodeAttrX.knownMask == 0 else {
            throw ArchiveError(.invalidArgument, "get-attr-x: unknown attribute bits \(hex(mask & ~InodeAttrX.knownMask))")
        }
        var plan = LockPlan()
        plan.read(ino)
        let r: InodeRecord
        do {
            r = try locked(.reads, plan) { try $0.inode(ino) }
        } catch {
            throw ArchiveError(error, "get-attr-x: \(error)")
        }
        var x = InodeAttrX(mask: mask)
        func has(_ m: UInt64) -> Bool { mask & m != 0 }
        if has(InodeAttrX.metaSeqMask) { x.metaSeq = r.metaSeq }
        if has(InodeAttrX.dataSeqMask) { x.dataSeq = r.dataSeq }
        if has(InodeAttrX.dataVersionMask) { x.dataVersion = r.dataVersion }
        if has(InodeAttrX.onlineBlocksMask) { x.onlineBlocks = r.onlineBlocks }
        if has(InodeAttrX.offlineBlocksMask) { x.offlineBlocks = r.offlineBlocks }
        if has(InodeAttrX.ctimeMask) { x.ctime = r.ctime }
        if has(InodeAttrX.crtimeMask) { x.crtime = r.crtime }
        if has(InodeAttrX.sizeMask) { x.size = r.size }
        if has(InodeAttrX.retentionMask) && r.isRetained { x.bits |= InodeAttrX.retentionBit }
        if has(InodeAttrX.projectIDMask) { x.projectID = r.projectID }
        return x
    }

    /// The inode numbers in use from `start` through the end of its inode group: one group,
    /// one lock, as the original's GET_ALLOCATED_INOS (not a way to list every inode).
    public func allocatedInodes(from start: UInt64) throws(Errno) -> [UInt64] {
        var plan = LockPlan()
        plan.add(.inodeGroup(start), .read)
        let last = start | (LockRange.groupSize - 1)
        return try locked(.reads, plan) { c in
            var inos: [UInt64] = []
            var ino = start
            while true {
                if try c.get(Keys.inode(ino)) != nil { inos.append(ino) }
                if ino == last { return inos }
                ino += 1
            }
        }
    }

    public func statMore(_ ino: UInt64) throws(Errno) -> InodeStatMore {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { c in
            let r = try c.inode(ino)
            return InodeStatMore(metaSeq: r.metaSeq, dataSeq: r.dataSeq, dataVersion: r.dataVersion,
                                 onlineBlocks: r.onlineBlocks, offlineBlocks: r.offlineBlocks, crtime: r.crtime)
        }
    }

    /// The file's extents from logical block `first` on as FIEMAP reports them (FUSE never
    /// passes FIEMAP to a daemon): runs of one kind merged — offline ones when their logical
    /// blocks run on, mapped ones when their device blocks do too —, offline ones marked
    /// `unknown` (no device position), fallocated ones `unwritten`; at most `limit` of them.
    /// `end` when the file has no more, its last one then marked `last`. A run split by the
    /// limit is not returned: the next call, from the end of the last one returned, has it
    /// whole.
    public func fiemap(_ ino: UInt64, fromBlock first: UInt64, limit: Int) throws(Errno) -> (extents: [FiemapExtent], end: Bool) {
        var plan = LockPlan()
        plan.read(ino)
        let limit = max(limit, 1)
        return try locked(.reads, plan) { c in
            var out: [FiemapExtent] = []
            var run: FiemapExtent?
            var more = false
            try c.forEachExtent(ino, from: first, through: .max) { key, start, fe in
                let flags = fe.flags.contains(.offline) ? FiemapExtent.unknown : fe.flags.contains(.unwritten) ? FiemapExtent.unwritten : 0
                let e = FiemapExtent(logical: start * blockSize, physical: fe.blkno * blockSize, length: key.third * blockSize, flags: flags)
                if var r = run, r.flags == e.flags, r.logical + r.length == e.logical,
                   flags == FiemapExtent.unknown || r.physical + r.length == e.physical {
                    r.length += e.length
                    run = r
                    return true
                }
                if let r = run { out.append(r) }
                if out.count == limit {
                    more = true
                    return false
                }
                run = e
                return true
            }
            if !more, var r = run {
                r.flags |= FiemapExtent.last
                out.append(r)
            }
            return (out, !more)
        }
    }

    public func statfsMore() throws(Errno) -> FilesystemStatMore {
        try? host.refreshServerFigures()
        return try runOperation(held: HeldLocks()) { c in
            let sb = c.shared.layout
            let store = c.items.store
            return FilesystemStatMore(fsid: sb.fsid, rid: c.items.rid, committedSeq: c.stableSeq,
                                      totalMetaBlocks: store.metaTotalBlocks, totalDataBlocks: store.dataTotalBlocks,
                                      freeMetaBlocks: c.items.withStore { store.freeMetaBlocks },
                                      freeDataBlocks: c.items.freeDataBlocks)
        }
    }

    /// Grows the filesystem onto more of its devices (`scoutfs resize-devices`, the original's
    /// RESIZE_DEVICES): new totals in 64 KiB metadata and 4 KiB data blocks, 0 or the current
    /// total leaving a device as it is. The server adds the new blocks to its free space and
    /// commits; every client checks against the new totals from its next roots on, this one
    /// at once. EINVAL, with the reason, for a smaller total or one past a device's end.
    public func resizeDevices(metaTotalBlocks: UInt64, dataTotalBlocks: UInt64) throws {
        if let why = host.fenced {
            shared.log("error: \(why)")
            throw ArchiveError(.ioError, why)
        }
        do {
            try host.resizeDevices(metaTotalBlocks: metaTotalBlocks, dataTotalBlocks: dataTotalBlocks)
        } catch let e as StoreError where e.code == .invalid {
            // The verb answers as the original's does, with the errno alone: the reason is here.
            shared.log("resize-devices refused: \(e.message)")
            throw ArchiveError(.invalidArgument, e.message)
        } catch {
            throw ArchiveError(errno(of: error), "resizing the devices failed: \(error)")
        }
    }

    /// Makes requests waiting for offline data give up with EIO once `check` says the mount is
    /// going away.
    public func abandonDataWaits(when check: @escaping @Sendable () -> Bool) {
        waits.setAbandonCheck(check)
    }

    /// Requests blocked on offline data, after `(ino, iblock)`.
    public func dataWaiters(after ino: UInt64, _ iblock: UInt64, limit: Int) -> [DataWaiter] {
        waits.list(after: ino, iblock, limit: limit)
    }

    /// Makes waiters on `ino` in bytes `[offset, offset + count)` doing one of `ops` fail with
    /// `error`; returns how many.
    public func failDataWaiters(ino: UInt64, offset: UInt64, count: UInt64, ops: DataWaitOperation, error: Int32) throws(ArchiveError) -> Int {
        guard count > 0 else { return 0 }
        let (end, overflow) = offset.addingReportingOverflow(count - 1)
        guard !overflow else { throw ArchiveError(.invalidArgument, "data-wait-err: offset \(offset) + count \(count) overflows") }
        guard error > 0, error < 4096 else { throw ArchiveError(.invalidArgument, "data-wait-err: errno \(error) is out of range") }
        guard !ops.isEmpty, ops.isSubset(of: [.read, .write, .changeSize]) else {
            throw ArchiveError(.invalidArgument, "data-wait-err: unknown operation bits \(ops.rawValue)")
        }
        return waits.fail(ino: ino, blocks: offset / blockSize...end / blockSize, ops: ops, error: error)
    }
}
