import ScoutFormat
import Testing

@Suite struct ControlMessageTests {
    static let requests: [ControlRequest] = [
        .walkInodes(index: 1, firstSeq: 2, firstIno: 3, lastSeq: .max, lastIno: .max, limit: 128),
        .statMore, .statfsMore, .sync, .clusterStatus,
        .release(dataVersion: 7, offset: 4096, length: 1 << 30),
        .stage(dataVersion: 7, offset: 8192, data: [1, 2, 3]),
        .setattrMore(SetattrMore(dataVersion: 9, size: 12345, offline: true, ctime: Timestamp(seconds: 5, nanoseconds: 6), crtime: nil)),
        .dataWaiting(afterIno: 1, afterBlock: 2, limit: 3),
        .dataWaitErr(ino: 1, dataVersion: 2, offset: 3, count: 4, op: [.read, .write], errno: 5),
        .referringEntries(ino: 5, afterDir: 6, afterPos: 7, limit: 8),
        .inoPaths(ino: 5, afterDir: 0, afterPos: 0, limit: 1),
        .searchXattrs(name: Array("scoutfs.srch.x".utf8), firstIno: 1, lastIno: .max, limit: 10),
        .listHiddenXattrs(skip: 3, limit: 4),
        .readXattrTotals(after: nil, limit: 5),
        .readXattrTotals(after: XattrTotalName(a: 1, b: .max, c: 3), limit: 5),
        .fiemap(fromBlock: 0, limit: 1024), .fiemap(fromBlock: .max, limit: 0),
        .punchOffline(dataVersion: 3, offset: 4096, length: .max),
        .moveBlocks(fromOffset: 0, length: 123, toOffset: 8192, dataVersion: 0, stage: false),
        .moveBlocks(fromOffset: .max, length: 1, toOffset: 0, dataVersion: 9, stage: true),
        .getAttrX(mask: InodeAttrX.knownMask), .setAttrX(ControlMessageTests.attrX),
        .readXattrIndex(first: XattrIndexEntry(major: 0, minor: 0, ino: 0), last: XattrIndexEntry(major: 255, minor: .max, ino: .max), limit: 7),
        .addQuotaRule(ControlMessageTests.rule), .deleteQuotaRule(ControlMessageTests.rule),
        .quotaRules(from: QuotaRulePosition(hash: .max, index: 3), limit: 9),
        .allocatedInodes(start: 1025),
        .resizeDevices(metaTotalBlocks: 8192, dataTotalBlocks: 1 << 20),
    ]

    static let attrX: InodeAttrX = {
        var a = InodeAttrX(mask: InodeAttrX.retentionMask | InodeAttrX.projectIDMask | InodeAttrX.ctimeMask, flags: InodeAttrX.sizeOffline)
        (a.metaSeq, a.dataSeq, a.dataVersion, a.onlineBlocks, a.offlineBlocks, a.size, a.bits, a.projectID) = (1, 2, 3, 4, 5, 6, 1, .max)
        a.ctime = Timestamp(seconds: -7, nanoseconds: 8)
        a.crtime = Timestamp(seconds: 9, nanoseconds: 999_999_999)
        return a
    }()

    static let rule = QuotaRule(priority: 7, names: [QuotaRule.Name(value: 22222, source: QuotaRule.uid, flags: QuotaRule.select),
                                                     QuotaRule.Name(value: 15), QuotaRule.Name(value: .max)],
                                op: QuotaRule.dataOp, limit: 33, flags: QuotaRule.totlCount)

    static let replies: [ControlReply] = [
        .failure(errno: 116, message: "data version 3 is not the file's 4"),
        .done, .count(42),
        .walk([IndexPosition(seq: 1, ino: 2), IndexPosition(seq: 3, ino: 4)]),
        .statMore(InodeStatMore(metaSeq: 1, dataSeq: 2, dataVersion: 3, onlineBlocks: 4, offlineBlocks: 5, crtime: Timestamp(seconds: 6, nanoseconds: 7))),
        .statfsMore(FilesystemStatMore(fsid: 1, rid: 2, committedSeq: 3, totalMetaBlocks: 4, totalDataBlocks: 5, freeMetaBlocks: 6, freeDataBlocks: 7)),
        .waiters([DataWaiter(ino: 9, iblock: 10, op: .changeSize)]),
        .entries([ReferringEntry(dir: 1, pos: 2, type: 8, name: Array("f".utf8))]),
        .paths([InodePath(dir: 1, pos: 2, path: Array("a/b".utf8))]),
        .inodes([1, 5, .max], end: true), .inodes([], end: false),
        .names([Array("scoutfs.hide.a".utf8), Array("scoutfs.hide.bb".utf8)]),
        .totals([XattrTotal(name: XattrTotalName(a: 1, b: 2, c: 3), total: -4, count: 5)]),
        .clusterStatus(ClusterStatus(isServer: true, connected: true, nodes: [2, .max], locksHeld: 3, lockRequests: 4, lockGrants: 5, lockInvalidations: 6)),
        .clusterStatus(ClusterStatus(isServer: false, connected: false, nodes: [], locksHeld: 0, lockRequests: 0, lockGrants: 0, lockInvalidations: 0)),
        .clusterStatus(ClusterStatus(isServer: true, connected: true, nodes: [7], locksHeld: 1, lockRequests: 2, lockGrants: 3, lockInvalidations: 4,
                                     memory: MemoryUse(blockBytes: 256 << 20, blockBytesInUse: 5 << 16, itemBytes: 12345, kernelInodes: .max))),
        .fiemap([FiemapExtent(logical: 0, physical: 0, length: 4096, flags: FiemapExtent.unknown),
                 FiemapExtent(logical: 8192, physical: 1 << 40, length: 1 << 30, flags: FiemapExtent.last)], end: true),
        .fiemap([], end: false),
        .attrX(ControlMessageTests.attrX), .attrX(InodeAttrX(mask: 0)),
        .quotaRules([], next: nil), .quotaRules([ControlMessageTests.rule, ControlMessageTests.rule], next: QuotaRulePosition(hash: 1, index: 2)),
        .indexEntries([]), .indexEntries([XattrIndexEntry(major: 5, minor: 100, ino: 4097), XattrIndexEntry(major: 255, minor: .max, ino: 1)]),
    ]

    @Test func everyRequestAndReplyRoundTrips() throws {
        for r in Self.requests { #expect(try ControlRequest(decoding: r.encoded) == r) }
        for r in Self.replies { #expect(try ControlReply(decoding: r.encoded) == r) }
    }

    @Test func truncatedOrPaddedOrUnknownMessagesAreRefused() {
        for r in Self.requests {
            let e = r.encoded
            for cut in 0..<e.count { #expect(throws: FormatError.self) { _ = try ControlRequest(decoding: Array(e[..<cut])) } }
            #expect(throws: FormatError.self) { _ = try ControlRequest(decoding: e + [0]) }
        }
        for r in Self.replies {
            let e = r.encoded
            for cut in 0..<e.count { #expect(throws: FormatError.self) { _ = try ControlReply(decoding: Array(e[..<cut])) } }
        }
        #expect(throws: FormatError.self) { _ = try ControlRequest(decoding: [200]) }
        // Flags that are neither 0 nor 1.
        var totals = ControlRequest.readXattrTotals(after: nil, limit: 1).encoded
        totals[1] = 2
        #expect(throws: FormatError.self) { _ = try ControlRequest(decoding: totals) }
        var inodes = ControlReply.inodes([1], end: true).encoded
        inodes[1] = 7
        #expect(throws: FormatError.self) { _ = try ControlReply(decoding: inodes) }
        var fiemap = ControlReply.fiemap([], end: true).encoded
        fiemap[1] = 2
        #expect(throws: FormatError.self) { _ = try ControlReply(decoding: fiemap) }
        // A count claiming more entries than the bytes could hold is refused before allocating.
        #expect(throws: FormatError.self) { _ = try ControlReply(decoding: [3, 0xff, 0xff, 0xff, 0x7f]) }
        // A stage chunk over the limit.
        var big = ByteWriter()
        big.u8(5); big.u64(1); big.u64(0); big.u32(UInt32(ControlMessage.stageChunk + 1))
        #expect(throws: FormatError.self) { _ = try ControlRequest(decoding: big.bytes + [UInt8](repeating: 0, count: ControlMessage.stageChunk + 1)) }
    }
}
