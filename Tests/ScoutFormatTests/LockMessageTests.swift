import ScoutFormat
import Testing

@Suite struct LockMessageTests {
    let k = Key(zone: Zone.fs, first: 4096, type: ItemType.inode, second: 7, third: 9, fourth: 1)

    @Test func messagesRoundTrip() throws {
        let m = LockMessage(key: k, writeSeq: 0xDEAD_BEEF_0102, oldMode: .read, newMode: .write, id: 1 << 40 | 5)
        let client: [LockClientMessage] = [
            .request(m), .invalidated(m),
            .recoverReply(LockRecoverReply(entries: (0..<22).map { LockRecoverEntry(key: Key(zone: 16, first: UInt64($0)), writeSeq: UInt64($0) * 3, mode: .writeOnly) })),
            .recoverReply(LockRecoverReply(entries: [])),
        ]
        for c in client { #expect(try LockClientMessage(decoding: c.encoded) == c) }
        let server: [LockServerMessage] = [.grant(m), .invalidate(m), .recover(k)]
        for s in server { #expect(try LockServerMessage(decoding: s.encoded) == s) }
        #expect(LockClientMessage.request(m).encoded.count == 1 + LockMessage.encodedSize)
    }

    @Test func badMessagesAreErrorsNotTraps() {
        let m = LockClientMessage.request(LockMessage(key: k, oldMode: .null, newMode: .read)).encoded
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: Array(m.dropLast())) }
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: m + [0]) }
        var badMode = m
        badMode[badMode.count - 1] = 9
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: badMode) }
        // A server message kind sent by a client.
        var kind = m
        kind[0] = 4
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: kind) }
        #expect(throws: FormatError.self) { try LockServerMessage(decoding: []) }
        // A recovery reply claiming more entries than allowed, or more than it carries.
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: [3, 23, 0]) }
        #expect(throws: FormatError.self) { try LockClientMessage(decoding: [3, 2, 0] + [UInt8](repeating: 0, count: LockRecoverEntry.encodedSize)) }
    }

    @Test func modeRules() {
        #expect(LockMode.write.satisfies(.read))
        #expect(!LockMode.write.satisfies(.writeOnly))
        #expect(!LockMode.read.satisfies(.write))
        #expect(LockMode.compatibleAcrossClients(.read, .read))
        #expect(LockMode.compatibleAcrossClients(.writeOnly, .writeOnly))
        #expect(!LockMode.compatibleAcrossClients(.read, .writeOnly))
        #expect(!LockMode.compatibleAcrossClients(.write, .read))
        #expect(LockMode.invalidationTarget(held: .write, wanted: .read) == .read)
        #expect(LockMode.invalidationTarget(held: .write, wanted: .write) == .null)
        #expect(LockMode.invalidationTarget(held: .read, wanted: .write) == .null)
        #expect(LockMode.covering(.read, .write) == .write)
        #expect(LockMode.covering(.write, .writeOnly) == nil)
    }

    @Test func everyKeyMapsToTheRangeThatContainsIt() throws {
        let g = LockRange.inodeGroup(5000)
        #expect(g.start == Key(zone: Zone.fs, first: 4096))
        #expect(g.contains(Key(zone: Zone.fs, first: 5119, type: .max, second: .max, third: .max, fourth: .max)))
        #expect(!g.contains(Key(zone: Zone.fs, first: 5120)))
        #expect(!g.overlaps(LockRange.inodeGroup(5120)))
        for key in [k, Key(zone: Zone.inodeIndex, type: ItemType.dataSeq, second: 77_777, third: 12),
                    Key(zone: Zone.orphan, type: ItemType.orphan, second: 99), Key(zone: Zone.xattrTotl, first: 1, second: 2, third: 3),
                    Key(zone: Zone.srch, first: 0xfeed, second: 42, third: 7)] {
            let r = try #require(LockRange.covering(key))
            #expect(r.contains(key))
            #expect(LockRange.covering(r.start) == r)
            #expect(LockRange.covering(r.end) == r)
        }
        let meta = LockRange.index(ItemType.metaSeq, seq: 2048)
        let data = LockRange.index(ItemType.dataSeq, seq: 2048)
        #expect(!meta.overlaps(data))
        #expect(LockRange.covering(Key(zone: Zone.logTrees)) == nil)
        #expect(LockRange.covering(LockRange.rename.start) == LockRange.rename)
    }
}
