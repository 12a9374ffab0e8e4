import Testing
import ScoutFormat

@Suite struct QuorumBlockTests {
    @Test func claimRoundTrips() throws {
        let b = QuorumBlock(state: .mounted, heartbeat: 77, mountID: 0xfeed, intervalMillis: 1000, pid: 4242,
                            mountedAt: 1_800_000_000, heartbeatAtNanos: 1_800_000_000_123_456_789,
                            host: "node-ü-1", bootID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        let bytes = b.encode(fsid: 9, slot: 3)
        #expect(bytes.count == Layout.smallBlockSize)
        #expect(BlockHeader.verify(bytes, magic: BlockMagic.quorum, fsid: 9, blkno: Layout.quorumSmallBlkno(slot: 3), seq: nil) == .valid)
        #expect(try QuorumBlock(decoding: bytes) == b)
    }

    @Test func electionFieldsRoundTripAndVersionOneDecodesWithoutThem() throws {
        var b = QuorumBlock(state: .mounted, heartbeat: 3, mountID: 5, pid: 7, host: "h")
        b.term = 9
        b.votedTerm = 8
        b.votedFor = 2
        b.elected = .init(term: 7, atNanos: 70)
        b.fenced = .init(term: 7, atNanos: 71)
        b.stopped = .init(term: 6, atNanos: 60)
        #expect(try QuorumBlock(decoding: b.encode(fsid: 1, slot: 2)) == b)

        var v1 = b.encode(fsid: 1, slot: 2)
        v1[BlockHeader.encodedSize] = 1
        BlockHeader.seal(&v1, magic: BlockMagic.quorum, fsid: 1, seq: 3, blkno: Layout.quorumSmallBlkno(slot: 2))
        let old = try QuorumBlock(decoding: v1)
        #expect(old.host == "h" && old.term == 0 && old.elected.term == 0 && old.votedTerm == 0)
    }

    @Test func termsOutOfOrderAreRefused() {
        var b = QuorumBlock(state: .mounted, host: "h")
        b.term = 3
        b.elected = .init(term: 4)
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: b.encode(fsid: 1, slot: 0)) }
    }

    private func slot(elected: UInt64, fenced: UInt64 = 0, stopped: UInt64 = 0) -> QuorumBlock {
        var b = QuorumBlock(state: .mounted)
        b.term = max(elected, 1)
        b.elected.term = elected
        b.fenced.term = fenced
        b.stopped.term = stopped
        return b
    }

    @Test func theLeaderIsTheGreatestElectedTermThatHasNotStopped() {
        #expect(QuorumBlock.leader(of: [(0, slot(elected: 0)), (1, slot(elected: 0))]) == nil)
        let l = QuorumBlock.leader(of: [(0, slot(elected: 3, fenced: 3)), (1, slot(elected: 5)), (2, slot(elected: 0))])
        #expect(l?.slot == 1 && l?.term == 5)
        // The newest leader stopped: no server, even though an older one never did.
        #expect(QuorumBlock.leader(of: [(0, slot(elected: 3)), (1, slot(elected: 5, stopped: 5))]) == nil)
    }

    @Test func aNewLeaderFencesEveryEarlierLeaderNoFenceCoveredAndThatDidNotStop() {
        let blocks: [(slot: Int, block: QuorumBlock)] = [
            (0, slot(elected: 2)),              // covered by slot 1's fence in term 4
            (1, slot(elected: 4, fenced: 4)),   // the last leader, never stopped
            (2, slot(elected: 0)),              // never elected
            (3, slot(elected: 5, stopped: 5)),  // stopped cleanly
        ]
        #expect(QuorumBlock.toFence(blocks, leader: 2, term: 6) == [1])
        // Its own earlier leadership is not fenced by itself (its process is this one now).
        #expect(QuorumBlock.toFence(blocks, leader: 1, term: 6) == [])
        // Nothing covers a leader no one fenced.
        #expect(QuorumBlock.toFence([(0, slot(elected: 2)), (1, slot(elected: 0))], leader: 1, term: 3) == [0])
    }

    @Test func mkfsHeaderOnlyBlockIsUnclaimed() throws {
        var block = [UInt8](repeating: 0, count: Layout.smallBlockSize)
        BlockHeader.seal(&block, magic: BlockMagic.quorum, fsid: 1, seq: 0, blkno: Layout.quorumSmallBlkno(slot: 0))
        #expect(try QuorumBlock(decoding: block) == QuorumBlock())
    }

    @Test func longHostNamesAreCutOnACharacterBoundary() throws {
        let host = String(repeating: "é", count: 40)  // 80 bytes
        let b = try QuorumBlock(decoding: QuorumBlock(state: .mounted, host: host).encode(fsid: 1, slot: 0))
        #expect(b.host == String(repeating: "é", count: 31))
    }

    @Test func badStateVersionOrTextIsRefused() {
        var bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize + 1] = 9
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
        bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize] = 3
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
        bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize + 48] = 200  // host length beyond its field
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
        bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize + 49] = 0xff  // not UTF-8
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
    }
}
