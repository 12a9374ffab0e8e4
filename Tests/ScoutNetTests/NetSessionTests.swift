import ScoutFormat
import ScoutNet
import ScoutTestSupport
import Testing

@Suite struct NetSessionTests {
    /// Two sessions passing frames over connections that drop a random tail of what was in
    /// flight at each break: after resuming, each side has taken in every frame once, in order.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func framesArriveOnceInOrderAcrossBrokenConnections(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var a = NetSession()
        var b = NetSession()
        var aGot: [[UInt8]] = []
        var bGot: [[UInt8]] = []
        var wire: [(toB: Bool, frame: NetFrame)] = []
        var sentA = 0
        var sentB = 0
        for _ in 0..<3000 {
            switch rng.next() % 10 {
            case 0...2:
                wire.append((true, a.stamp(NetFrame(.lock, body: Array("a\(sentA)".utf8)))))
                sentA += 1
            case 3...5:
                wire.append((false, b.stamp(NetFrame(.call, id: UInt64(sentB + 1), body: Array("b\(sentB)".utf8)))))
                sentB += 1
            case 6:
                // A heartbeat carries the ack alone.
                wire.append((true, a.stamp(NetFrame(.heartbeat))))
            case 7, 8:
                // Deliver what is on the wire so far.
                for (toB, f) in wire {
                    if toB { if try b.accept(f) && f.kind != .heartbeat { bGot.append(f.body) } }
                    else if try a.accept(f) { aGot.append(f.body) }
                }
                wire = []
            default:
                // The connection breaks: a random part of what was on the wire arrives, then
                // both sides resume from what the other says it took in. Sometimes a count is
                // read before the old connection's last frames were taken in (the server's
                // old connection may still be reading while the new one is welcomed): those
                // frames come again and must be dropped.
                let stale = rng.next() % 2 == 0
                let (bBefore, aBefore) = (b.received, a.received)
                let keep = Int(rng.next() % UInt64(wire.count + 1))
                for (toB, f) in wire.prefix(keep) {
                    if toB { if try b.accept(f) && f.kind != .heartbeat { bGot.append(f.body) } }
                    else if try a.accept(f) { aGot.append(f.body) }
                }
                let toB = try a.resume(peerReceived: stale ? bBefore : b.received)
                let toA = try b.resume(peerReceived: stale ? aBefore : a.received)
                wire = toB.map { (true, $0) } + toA.map { (false, $0) }
            }
        }
        for (toB, f) in wire {
            if toB { if try b.accept(f) && f.kind != .heartbeat { bGot.append(f.body) } }
            else if try a.accept(f) { aGot.append(f.body) }
        }
        #expect(bGot == (0..<sentA).map { Array("a\($0)".utf8) })
        #expect(aGot == (0..<sentB).map { Array("b\($0)".utf8) })
        // Acks let go of what arrived.
        _ = try a.accept(b.stamp(NetFrame(.heartbeat)))
        #expect(a.unackedCount == 0)
    }

    @Test func aPeerThatSkipsOrOverclaimsIsRefused() throws {
        var a = NetSession()
        var b = NetSession()
        let f1 = a.stamp(NetFrame(.lock, body: [1]))
        let f2 = a.stamp(NetFrame(.lock, body: [2]))
        #expect(throws: NetError.self) { try b.accept(f2) }
        #expect(try b.accept(f1))
        #expect(try b.accept(f2))
        #expect(try !b.accept(f1), "a resent frame is dropped")
        #expect(throws: NetError.self) { try a.resume(peerReceived: 3) }
        var forged = b.stamp(NetFrame(.heartbeat))
        forged.ack = 9
        #expect(throws: NetError.self) { try a.accept(forged) }
        var numberedHeartbeat = NetFrame(.heartbeat)
        numberedHeartbeat.seq = 4
        #expect(throws: NetError.self) { try b.accept(numberedHeartbeat) }
    }
}
