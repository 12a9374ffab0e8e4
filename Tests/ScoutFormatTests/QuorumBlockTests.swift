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
        bytes[BlockHeader.encodedSize] = 2
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
        bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize + 48] = 200  // host length beyond its field
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
        bytes = QuorumBlock(state: .mounted, host: "a").encode(fsid: 1, slot: 0)
        bytes[BlockHeader.encodedSize + 49] = 0xff  // not UTF-8
        #expect(throws: FormatError.self) { try QuorumBlock(decoding: bytes) }
    }
}
