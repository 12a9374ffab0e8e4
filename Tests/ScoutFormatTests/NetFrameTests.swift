import ScoutFormat
import Testing

@Suite struct NetFrameTests {
    @Test func framesAndHandshakeMessagesRoundTrip() throws {
        let f = NetFrame(.call, flags: [.answer, .failed], id: 0xdead_beef_0000_0001, seq: 12, ack: 7, body: Array("no space".utf8))
        let bytes = f.encoded
        #expect(bytes.count == NetFrame.lengthSize + NetFrame.headerSize + 8)
        #expect(bytes.prefix(4) == [36, 0, 0, 0])
        #expect(try NetFrame(decodingAfterLength: Array(bytes.dropFirst(4))) == f)

        let nonce = (0..<32).map { UInt8($0) }
        let hello = NetHello(fsid: 42, instance: 3, nonce: nonce)
        #expect(try NetHello(decoding: hello.encoded) == hello)
        let greeting = NetGreeting(fsid: 42, client: 7, incarnation: 5, resumeInstance: 3, received: 11, nonce: nonce, proof: Array(repeating: 9, count: 32))
        #expect(try NetGreeting(decoding: greeting.encoded) == greeting)
        let welcome = NetWelcome(resumed: true, received: 12, proof: Array(repeating: 3, count: 32))
        #expect(try NetWelcome(decoding: welcome.encoded) == welcome)
        #expect(try NetRefusal(decoding: NetRefusal("wrong filesystem").encoded).reason == "wrong filesystem")
    }

    @Test func badFramesAreRefusedNotTrapped() throws {
        // Lengths are judged before anything else is read.
        #expect(throws: FormatError.self) { try NetFrame.checkLength(27) }
        #expect(throws: FormatError.self) { try NetFrame.checkLength(UInt32(NetFrame.headerSize + NetFrame.maxBody + 1)) }
        #expect(throws: FormatError.self) { try NetFrame.checkLength(.max) }
        #expect(try NetFrame.checkLength(UInt32(NetFrame.headerSize + NetFrame.maxBody)) == NetFrame.headerSize + NetFrame.maxBody)
        var good = Array(NetFrame(.lock, body: [1, 2, 3]).encoded.dropFirst(4))
        #expect(try NetFrame(decodingAfterLength: good).body == [1, 2, 3])
        var unknownKind = good
        unknownKind[0] = 99
        #expect(throws: FormatError.self) { try NetFrame(decodingAfterLength: unknownKind) }
        var unknownFlag = good
        unknownFlag[2] = 0x80
        #expect(throws: FormatError.self) { try NetFrame(decodingAfterLength: unknownFlag) }
        good[3] = 1
        #expect(throws: FormatError.self) { try NetFrame(decodingAfterLength: good) }
        #expect(throws: FormatError.self) { try NetFrame(decodingAfterLength: [1, 0]) }
        // Handshake messages of the wrong size.
        #expect(throws: FormatError.self) { try NetHello(decoding: [1, 0, 42]) }
        #expect(throws: FormatError.self) { try NetGreeting(decoding: NetGreeting(fsid: 1, client: 2, incarnation: 1, nonce: Array(repeating: 0, count: 32), proof: Array(repeating: 0, count: 32)).encoded + [0]) }
        #expect(throws: FormatError.self) { try NetWelcome(decoding: Array(repeating: 0, count: 40)) }
        #expect(throws: FormatError.self) { try NetWelcome(decoding: [2] + Array(repeating: 0, count: 40)) }
        #expect(throws: FormatError.self) { try NetRefusal(decoding: Array(repeating: 65, count: NetHandshake.maxReason + 1)) }
        // Random bytes never trap.
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<80, using: &g)
            let b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            _ = try? NetFrame(decodingAfterLength: b)
            _ = try? NetHello(decoding: b)
            _ = try? NetGreeting(decoding: b)
            _ = try? NetRefusal(decoding: b)
        }
    }
}
