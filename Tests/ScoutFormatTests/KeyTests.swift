import Testing
import ScoutFormat

@Suite struct KeyTests {
    func encoded(_ k: Key) -> [UInt8] {
        var w = ByteWriter()
        k.encode(into: &w)
        return w.bytes
    }

    @Test func encodedByteOrderIsKeyOrder() throws {
        var g = SystemRandomNumberGenerator()
        func field() -> UInt64 { [0, 1, .max, .max - 1, 1 << 32, UInt64.random(in: 0...UInt64.max, using: &g)].randomElement(using: &g)! }
        for _ in 0..<2000 {
            let a = Key(zone: UInt8.random(in: 0...3, using: &g), first: field(), type: UInt8.random(in: 0...2, using: &g),
                        second: field(), third: field(), fourth: UInt8.random(in: 0...1, using: &g))
            let b = Key(zone: UInt8.random(in: 0...3, using: &g), first: field(), type: UInt8.random(in: 0...2, using: &g),
                        second: field(), third: field(), fourth: UInt8.random(in: 0...1, using: &g))
            #expect((a < b) == encoded(a).lexicographicallyPrecedes(encoded(b)), "\(a) vs \(b)")
            #expect(encoded(a).count == Key.encodedSize)
            var r = ByteReader(encoded(a), what: "key")
            #expect(try Key(decoding: &r) == a)
        }
    }

    @Test func successorAndPredecessorCarry() {
        let k = Key(zone: 1, first: 2, type: 3, second: .max, third: .max, fourth: .max)
        #expect(k.successor == Key(zone: 1, first: 2, type: 4, second: 0, third: 0, fourth: 0))
        #expect(k.successor!.predecessor == k)
        #expect(Key.max.successor == nil)
        #expect(Key.min.predecessor == nil)
        #expect(Key.min.successor == Key(zone: 0, fourth: 1))
        #expect(Key(zone: 5).description == "5.0.0.0.0.0")
    }

    @Test func truncatedKeyIsAnErrorNotATrap() {
        var r = ByteReader([1, 2, 3], what: "key")
        #expect(throws: FormatError.self) { try Key(decoding: &r) }
    }
}

@Suite struct CRC32CTests {
    @Test func knownVectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xff, count: 32)) == 0x62A8_AB43)
    }

    @Test func slicedAndBytewisePathsAgree() {
        // Lengths around the 8-byte stride exercise both loops and their hand-over.
        var g = SystemRandomNumberGenerator()
        let data = (0..<300).map { _ in UInt8.random(in: 0...255, using: &g) }
        for n in 0..<40 {
            let bytes = Array(data.prefix(n + 200))
            var slow: UInt32 = ~0
            for b in bytes {
                slow ^= UInt32(b)
                for _ in 0..<8 { slow = (slow & 1) != 0 ? (slow >> 1) ^ 0x82F6_3B78 : slow >> 1 }
            }
            #expect(CRC32C.checksum(bytes) == ~slow)
            let sw = bytes.withUnsafeBytes { CRC32C.software($0) }
            #expect(sw == ~slow)
            // Continuing a sum over two pieces equals summing the whole.
            let half = bytes.count / 2
            let first = CRC32C.checksum(Array(bytes[..<half]))
            let both = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[half...]), crc: first) }
            #expect(both == ~slow)
        }
    }

    /// Sums long enough for the interleaved streams, at and around their round size, with a
    /// sum in progress carried in, agree with the table-driven sum.
    @Test func interleavedStreamsAgreeWithTheTables() {
        var g = SystemRandomNumberGenerator()
        let data = (0..<(70_000)).map { _ in UInt8.random(in: 0...255, using: &g) }
        for n in [6143, 6144, 6145, 6151, 12_288 + 7, 65_536, 65_536 - 4, 69_999] {
            data.withUnsafeBytes { raw in
                let buf = UnsafeRawBufferPointer(rebasing: raw[..<n])
                #expect(CRC32C.checksum(buf) == CRC32C.software(buf), "length \(n)")
                let carried = UInt32.random(in: 0...UInt32.max, using: &g)
                #expect(CRC32C.checksum(buf, crc: carried) == CRC32C.software(buf, crc: carried), "length \(n), carried sum")
            }
        }
    }
}
