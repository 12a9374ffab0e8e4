import ScoutFormat
import Testing

@Suite struct ServerCallTests {
    let record = LogTreeRecord(root: BTreeRoot(ref: BlockRef(blkno: 77, seq: 9), height: 2), items: 12,
                               dataPool: [Extent(start: 100, length: 8)], metaPool: [Extent(start: 300, length: 4)])
    let roots = ServerRoots(seq: 41, fs: BTreeRoot(ref: BlockRef(blkno: 5, seq: 40), height: 3), logTrees: .empty,
                            transactionSeq: 42, stableSeq: 41, metaAllocatable: 900, dataFree: 5000, dataPendingFree: 12,
                            metaTotalBlocks: 4096, dataTotalBlocks: 1 << 20)

    let lock = RecordLock(ino: 4100, kind: .posix, type: .write, start: 10, end: RecordLock.toEnd,
                          holder: RecordLockOwner(client: 3, owner: 0xdead_beef), pid: 4242)

    let mounted = MountedClient(rid: 0, slot: 2, pid: 4242, mountedAt: 1_700_000_000, host: "node-b", bootID: "3f2a-boot", address: "10.0.0.2")

    /// A mounted-client record as the tree keeps it: read back whole, and refused when its
    /// version, slot or length is wrong.
    @Test func mountedClientRecordsRoundTripAndBadOnesAreRefused() throws {
        var m = mounted
        m.rid = 0x2a
        let item = Item(key: MountedClient.key(rid: 0x2a), seq: 1, value: m.encoded)
        #expect(try MountedClient(item: item) == m)
        var plain = m
        plain.slot = nil
        #expect(try MountedClient(item: Item(key: item.key, seq: 1, value: plain.encoded)) == plain)
        let long = MountedClient(rid: 0x2a, slot: 0, pid: 1, mountedAt: 0, host: String(repeating: "h", count: 400), bootID: "", address: "")
        #expect(try MountedClient(item: Item(key: item.key, seq: 1, value: long.encoded)).host.count == MountedClient.maxText)
        var bad = m.encoded
        bad[0] = 9
        #expect(throws: FormatError.self) { try MountedClient(item: Item(key: item.key, seq: 1, value: bad)) }
        bad = m.encoded
        bad[1] = 15
        #expect(throws: FormatError.self) { try MountedClient(item: Item(key: item.key, seq: 1, value: bad)) }
        #expect(throws: FormatError.self) { try MountedClient(item: Item(key: item.key, seq: 1, value: Array(m.encoded.dropLast()))) }
        #expect(throws: FormatError.self) { try MountedClient(item: Item(key: item.key, seq: 1, value: m.encoded + [0])) }
        #expect(throws: FormatError.self) { try ServerCall(decoding: Array(ServerCall.join(m, rejoin: true).encoded.dropLast())) }
    }

    @Test func callsAndAnswersRoundTrip() throws {
        let calls: [ServerCall] = [
            .roots, .allocateInodes(count: 1024), .refillDataPool(atLeast: 8192), .refillMetaPool(atLeast: 64), .dataSpace,
            .recordedLogTree,
            .commitLogTree(record, freed: [Extent(start: 1, length: 2)], freedMeta: [], merge: true),
            .commitLogTree(LogTreeRecord(root: .empty, items: 0, dataPool: [], metaPool: []), freed: [], freedMeta: [Extent(start: 9, length: 1)], merge: false),
            .openElsewhere(ino: 77), .leave,
            .setRecordLock(lock, wait: true), .setRecordLock(lock, wait: false), .testRecordLock(lock),
            .join(mounted, rejoin: false), .join(MountedClient(rid: 0, slot: nil, pid: 1, mountedAt: 0, host: "", bootID: "", address: ""), rejoin: true),
            .reclaimRecordLocks([], last: true), .reclaimRecordLocks([lock, lock], last: false),
            .resizeDevices(metaTotalBlocks: 8192, dataTotalBlocks: 0),
        ]
        for c in calls { #expect(try ServerCall(decoding: c.encoded) == c) }
        let answers: [ServerAnswer] = [
            .roots(roots), .inodes(1024..<2048), .dataPool([Extent(start: 8, length: 8192)]), .metaPool([]),
            .dataSpace(free: 10, pendingFree: 3), .recordedLogTree(nil), .recordedLogTree(record),
            .committed(LogCommit(seq: 42, merged: true), roots, records: nil),
            .committed(LogCommit(seq: 43, merged: false), roots, records: [7: record, 9: record]),
            .held(true), .held(false), .left, .recordLock(conflict: nil), .recordLock(conflict: lock), .joined(true), .joined(false),
            .recordLocksRecovering, .reclaimed, .resized(errno: 0, reason: ""),
            .resized(errno: 22, reason: "the data device cannot shrink"),
        ]
        for a in answers { #expect(try ServerAnswer(decoding: a.encoded) == a) }
    }

    @Test func noticesRoundTripAndBadOnesAreRefused() throws {
        for n in [NetNotice.openQuery(id: 1, ino: .max), .openReply(id: 9, held: true), .openReply(id: 0, held: false),
                  .recordLocksChanged(ino: 4100), .roots(roots, records: nil), .roots(roots, records: [:]),
                  .roots(roots, records: [7: LogTreeRecord(root: roots.fs, items: 3, dataPool: [Extent(start: 90, length: 8)], metaPool: [], commits: 2),
                                          2: LogTreeRecord(root: .empty, items: 0, dataPool: [], metaPool: [])])] {
            #expect(try NetNotice(decoding: n.encoded) == n)
        }
        // Roots or records cut short, and a kind no notice has.
        let withRecords = NetNotice.roots(roots, records: [7: LogTreeRecord(root: roots.fs, items: 3, dataPool: [], metaPool: [])]).encoded
        #expect(throws: FormatError.self) { try NetNotice(decoding: Array(withRecords.dropLast())) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: Array(NetNotice.roots(roots, records: nil).encoded.dropLast())) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: [5] + [UInt8](repeating: 0, count: 8)) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: []) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: [3]) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: [4] + [UInt8](repeating: 0, count: 8)) }
        #expect(throws: FormatError.self) { try NetNotice(decoding: NetNotice.openReply(id: 1, held: true).encoded + [0]) }
        var badFlag = NetNotice.openReply(id: 1, held: true).encoded
        badFlag[9] = 2
        #expect(throws: FormatError.self) { try NetNotice(decoding: badFlag) }
        #expect(throws: FormatError.self) { try ServerAnswer(decoding: [ServerAnswer.held(true).encoded[0], 2]) }
    }

    @Test func badCallsAndAnswersAreRefused() {
        #expect(throws: FormatError.self) { try ServerCall(decoding: []) }
        // A reclaim that claims more locks than it carries, or a bad last flag.
        var reclaim = ServerCall.reclaimRecordLocks([lock], last: true).encoded
        reclaim[2] = 2
        #expect(throws: FormatError.self) { try ServerCall(decoding: reclaim) }
        reclaim = ServerCall.reclaimRecordLocks([lock], last: true).encoded
        reclaim[1] = 3
        #expect(throws: FormatError.self) { try ServerCall(decoding: reclaim) }
        #expect(throws: FormatError.self) { try ServerAnswer(decoding: [ServerAnswer.recordLocksRecovering.encoded[0], 3]) }
        #expect(throws: FormatError.self) { try ServerCall(decoding: [99]) }
        #expect(throws: FormatError.self) { try ServerCall(decoding: ServerCall.dataSpace.encoded + [0]) }
        // A list longer than its bytes, and an extent that wraps around.
        var w = ByteWriter()
        w.u8(7)
        w.u8(0)
        w.u32(1_000_000)
        #expect(throws: FormatError.self) { try ServerCall(decoding: w.bytes) }
        let wrapping = ServerCall.commitLogTree(record, freed: [Extent(start: .max - 1, length: 5)], freedMeta: [], merge: false)
        #expect(throws: FormatError.self) { try ServerCall(decoding: wrapping.encoded) }
        var badMerge = ServerCall.commitLogTree(record, freed: [], freedMeta: [], merge: false).encoded
        badMerge[1] = 2
        #expect(throws: FormatError.self) { try ServerCall(decoding: badMerge) }
        // Answers that cannot be right.
        #expect(throws: FormatError.self) { try ServerAnswer(decoding: ServerAnswer.inodes(5..<5).encoded.enumerated().map { $0.offset == 1 ? 9 : $0.element }) }
        let backwards = ServerRoots(seq: 1, fs: .empty, logTrees: .empty, transactionSeq: 4, stableSeq: 4)
        #expect(throws: FormatError.self) { try ServerAnswer(decoding: ServerAnswer.roots(backwards).encoded) }
        // Record locks that name no range of a file, or no kind or type.
        let lockCall = ServerCall.testRecordLock(lock).encoded
        var backwardsRange = RecordLock(ino: 1, kind: .flock, type: .read, start: 9, end: 3,
                                        holder: RecordLockOwner(client: 1, owner: 1), pid: 0)
        #expect(throws: FormatError.self) { try ServerCall(decoding: ServerCall.testRecordLock(backwardsRange).encoded) }
        backwardsRange.start = 0
        backwardsRange.end = .max
        #expect(throws: FormatError.self) { try ServerCall(decoding: ServerCall.testRecordLock(backwardsRange).encoded) }
        for (at, bad) in [(9, UInt8(0)), (9, 3), (10, 0), (10, 4)] {
            var b = lockCall
            b[at] = bad
            #expect(throws: FormatError.self) { try ServerCall(decoding: b) }
        }
        var waitFlag = ServerCall.setRecordLock(lock, wait: true).encoded
        waitFlag[1] = 2
        #expect(throws: FormatError.self) { try ServerCall(decoding: waitFlag) }
        #expect(throws: FormatError.self) { try ServerCall(decoding: Array(lockCall.dropLast())) }
        var g = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            let b = (0..<Int.random(in: 0..<120, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            _ = try? ServerCall(decoding: b)
            _ = try? ServerAnswer(decoding: b)
        }
    }
}
