import ScoutFormat
import Testing

@Suite struct InodeRecordTests {
    func record() -> InodeRecord {
        var r = InodeRecord(mode: 0o100644, uid: 1, gid: 2, now: Timestamp(seconds: 3, nanoseconds: 4))
        r.size = 5
        r.dataVersion = 6
        r.flags = InodeRecord.Flags.retention
        r.projectID = .max
        return r
    }

    @Test func flagsAndProjectIdsRoundTrip() throws {
        let r = record()
        let back = try InodeRecord(decoding: r.encoded)
        #expect(back == r && back.isRetained && back.projectID == .max)
    }

    /// Items written before flags and project ids existed read with both zero.
    @Test func itemsWithoutTheNewFieldsStillRead() throws {
        let old = Array(record().encoded.dropLast(16))
        #expect(old.count == InodeRecord.encodedSizeWithoutProject)
        let back = try InodeRecord(decoding: old)
        #expect(back.flags == 0 && back.projectID == 0 && back.size == 5 && back.dataVersion == 6)
    }

    @Test func unknownFlagsAndOtherSizesAreRefused() {
        var r = record()
        r.flags = 0x4
        #expect(throws: FormatError.self) { _ = try InodeRecord(decoding: r.encoded) }
        #expect(throws: FormatError.self) { _ = try InodeRecord(decoding: Array(record().encoded.dropLast(8))) }
    }
}
