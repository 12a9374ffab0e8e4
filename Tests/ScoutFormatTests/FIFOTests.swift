import ScoutFormat
import Testing

@Suite struct FIFOTests {
    @Test func keepingLastHoldsEachKeptElementOnceWhereItLastCameInLine() {
        var line = FIFO<UInt64>()
        for e: UInt64 in [1, 2, 3, 1, 4, 2, 5] { line.append(e) }
        #expect(line.popFirst() == 1)
        // 2 and 1 came back in line; 3 is no longer wanted.
        line.keepLast { $0 != 3 }
        var order: [UInt64] = []
        while let e = line.popFirst() { order.append(e) }
        #expect(order == [1, 4, 2, 5])
    }

    /// Taken in batches while more come in, far past the point where the taken front is let
    /// go: every element comes out once, in order.
    @Test func batchesComeOutInOrderAcrossTheFrontBeingLetGo() {
        var line = FIFO<Int>()
        var out: [Int] = []
        var next = 0
        for round in 0..<500 {
            line.append(contentsOf: next..<(next + 40))
            next += 40
            out += line.popFirst(upTo: round % 7 == 0 ? 5 : 37)
        }
        while !line.isEmpty { out += line.popFirst(upTo: 100) }
        #expect(out == Array(0..<next))
        #expect(line.popFirst(upTo: 3).isEmpty && line.popFirst() == nil && line.count == 0)
    }
}
