#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ScoutFormat
import ScoutNet
import ScoutTestSupport
import Synchronization
import Testing

/// Records what the server's handler saw; answers a call with its body reversed, fails one
/// whose body is "fail", and holds one whose body is "hold" until `release`.
final class RecordingHandler: NetServerHandler {
    struct Seen {
        var connected: [ClientID] = []
        var disconnected: [ClientID] = []
        var messages: [(ClientID, [UInt8])] = []
        var calls: [[UInt8]] = []
    }
    let seen = Mutex(Seen())
    let held = DispatchSemaphore(value: 0)
    let holding = DispatchSemaphore(value: 0)

    func connected(_ client: ClientID) { seen.withLock { $0.connected.append(client) } }
    func disconnected(_ client: ClientID) { seen.withLock { $0.disconnected.append(client) } }
    func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws {
        if body == Array("bad".utf8) { throw NetError("a message no lock server could take") }
        seen.withLock { $0.messages.append((client, body)) }
    }
    func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8] {
        seen.withLock { $0.calls.append(body) }
        if body == Array("fail".utf8) { throw NetError("no space left for client \(client)") }
        if body == Array("hold".utf8) {
            holding.signal()
            held.wait()
        }
        return body.reversed()
    }
}

final class LogLines: Sendable {
    let lines = Mutex<[String]>([])
    var sink: @Sendable (String) -> Void { { [self] l in lines.withLock { $0.append(l) } } }
    func contains(_ s: String) -> Bool { lines.withLock { $0.contains { $0.contains(s) } } }
}

/// A plain TCP socket to the server, for saying what no NetClient would.
struct RawPeer {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw NetError("raw connect failed") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// One frame from the server, or nil at end of stream.
    func readFrame() -> NetFrame? {
        guard let len = read(4) else { return nil }
        let n = Int(UInt32(len[0]) | UInt32(len[1]) << 8 | UInt32(len[2]) << 16 | UInt32(len[3]) << 24)
        guard let rest = read(n) else { return nil }
        return try? NetFrame(decodingAfterLength: rest)
    }

    /// Reads until the server closes; true if it did within the receive timeout.
    func closedByServer() -> Bool {
        var b = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
            if n < 0 { return false }
        }
    }

    private func read(_ n: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var b = [UInt8](repeating: 0, count: n)
        while out.count < n {
            let got = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress, n - out.count, 0) }
            if got <= 0 { return nil }
            out += b[..<got]
        }
        return out
    }

    func close() { Glibc.close(fd) }
}

@Suite(.serialized) struct NetTransportTests {
    let key = ClusterKey.generate()
    let fsid: UInt64 = 0x5c0f_f5

    func server(_ handler: RecordingHandler, _ log: LogLines, timers: NetTimers = NetTimers()) throws -> (NetServer, Int) {
        let s = NetServer(fsid: fsid, key: key, handler: handler, timers: timers, log: log.sink)
        let port = try s.start(host: "127.0.0.1", port: 0)
        return (s, port)
    }

    @Test func callsAreAnsweredByIdAndMessagesGoBothWays() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let (s, port) = try server(handler, log)
        defer { s.stop() }
        let got = Mutex<[[UInt8]]>([])
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 7, key: key,
                                      onMessage: { _, body in got.withLock { $0.append(body) } }, log: log.sink)
        defer { c.close() }
        #expect(eventually { handler.seen.withLock { $0.connected } == [7] })
        #expect(s.connectedClients == [7])
        #expect(log.contains("client 7 connected"))

        // Four threads of calls at once: each answer must reach the call that asked.
        let wrong = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for i in 0..<200 {
                let body = Array("t\(t) call \(i) of many".utf8)
                if (try? c.call(body)) != body.reversed() { wrong.add(1, ordering: .relaxed) }
            }
        }
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(c.callsInFlight == 0)
        #expect { try c.call(Array("fail".utf8)) } throws: { "\($0)" == "no space left for client 7" }

        c.send(.lock, [1, 2, 3])
        c.send(.lock, [4])
        #expect(eventually { handler.seen.withLock { $0.messages.map(\.1) } == [[1, 2, 3], [4]] })
        #expect(handler.seen.withLock { $0.messages.map(\.0) } == [7, 7])
        #expect(s.send(.lock, [9, 9], to: 7))
        #expect(!s.send(.lock, [9], to: 8))
        #expect(eventually { got.withLock { $0 } == [[9, 9]] })

        // A message the handler refuses closes the connection; the node comes back and what
        // it sent after goes through once.
        c.send(.lock, Array("bad".utf8))
        c.send(.lock, [5])
        #expect(eventually { log.contains("refused a message of client 7") })
        #expect(eventually { handler.seen.withLock { $0.messages.map(\.1) } == [[1, 2, 3], [4], [5]] })
        #expect(eventually { c.reconnects >= 1 && c.isConnected })
        #expect(try c.call([8, 9]) == [9, 8])
    }

    @Test func nodesWithoutTheKeyForAnotherFilesystemOrAnIdInUseAreRefused() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let (s, port) = try server(handler, log)
        defer { s.stop() }
        #expect {
            try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 1, key: ClusterKey.generate(), onMessage: { _, _ in }, log: { _ in })
        } throws: { "\($0)".contains("server refused: node 1 does not hold this cluster's key") }
        #expect(log.contains("refused"))
        #expect(log.contains("node 1 does not hold this cluster's key"))
        #expect {
            try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid + 1, client: 1, key: key, onMessage: { _, _ in }, log: { _ in })
        } throws: { "\($0)".contains("not this node's") }

        let first = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 3, key: key, onMessage: { _, _ in }, log: { _ in })
        #expect {
            try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 3, key: key, onMessage: { _, _ in }, log: { _ in })
        } throws: { "\($0)".contains("client 3 is connected already") }
        #expect(first.isConnected)
        #expect(try first.call([1, 2]) == [2, 1])
        first.close()
        // Its id is free again once the server saw it go, and the new mount's session
        // replaces the old one.
        #expect(eventually { !s.isConnected(3) })
        let again = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 3, key: key, onMessage: { _, _ in }, log: { _ in })
        #expect(try again.call([5]) == [5])
        again.close()
        #expect(eventually { handler.seen.withLock { $0.disconnected } == [3] })
        #expect(handler.seen.withLock { $0.connected } == [3, 3])
        #expect(!s.connectedClients.contains(1))
    }

    @Test func badBytesCloseTheConnectionAndTheServerGoesOn() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let (s, port) = try server(handler, log)
        defer { s.stop() }

        // An oversized frame is refused at its length, before its body is sent.
        var p = try RawPeer(port: port)
        #expect(p.readFrame()?.kind == .hello)
        p.send([0xf0, 0xff, 0xff, 0xff])
        #expect(p.closedByServer())
        p.close()
        #expect(eventually { log.contains("over the") })

        // A frame before the greeting is refused with a reason.
        p = try RawPeer(port: port)
        _ = p.readFrame()
        p.send(NetFrame(.lock, body: [1]).encoded)
        let refusal = p.readFrame()
        #expect(refusal?.kind == .refusal)
        #expect(refusal.flatMap { try? NetRefusal(decoding: $0.body).reason } == "a lock frame before the greeting")
        #expect(p.closedByServer())
        p.close()

        // A frame of an unknown kind, and one cut short by the end of the stream.
        p = try RawPeer(port: port)
        _ = p.readFrame()
        var unknown = NetFrame(.lock, body: [1]).encoded
        unknown[4] = 77
        p.send(unknown)
        #expect(p.closedByServer())
        p.close()
        #expect(eventually { log.contains("unknown kind 77") })
        p = try RawPeer(port: port)
        _ = p.readFrame()
        p.send(Array(NetFrame(.greeting, body: Array(repeating: 0, count: 80)).encoded.prefix(30)))
        shutdown(p.fd, Int32(SHUT_WR))
        #expect(p.closedByServer())
        p.close()
        #expect(eventually { log.contains("ended inside a frame") })

        // None of it got near the handler, and a real node still gets in.
        #expect(handler.seen.withLock { $0.connected.isEmpty && $0.messages.isEmpty })
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 11, key: key, onMessage: { _, _ in }, log: { _ in })
        #expect(try c.call([1, 2, 3]) == [3, 2, 1])
        c.close()
    }

    @Test func aSilentPeerIsDroppedAndHeartbeatsKeepAQuietNodeIn() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let timers = NetTimers(heartbeatInterval: .milliseconds(50), silenceTimeout: .milliseconds(400))
        let (s, port) = try server(handler, log, timers: timers)
        defer { s.stop() }
        let p = try RawPeer(port: port)
        let start = ContinuousClock.now
        #expect(p.closedByServer())
        #expect(ContinuousClock.now - start < .seconds(4))
        p.close()
        #expect(eventually { log.contains("silent for") })

        // A node with nothing to say for several timeouts stays connected.
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 4, key: key, timers: timers, onMessage: { _, _ in }, log: { _ in })
        usleep(1_500_000)
        #expect(c.isConnected)
        #expect(s.connectedClients == [4])
        #expect(try c.call([7]) == [7])
        c.close()
    }

    /// Connections dropped again and again under calls and messages both ways: every call is
    /// answered once and run once, every message arrives once and in order.
    @Test func brokenConnectionsLoseNothingAndRepeatNothing() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let (s, port) = try server(handler, log)
        defer { s.stop() }
        let pushed = Mutex<[[UInt8]]>([])
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 21, key: key,
                                      onMessage: { _, body in pushed.withLock { $0.append(body) } }, log: log.sink)
        defer { c.close() }
        let stop = Atomic<Bool>(false)
        let breaker = Thread {
            while !stop.load(ordering: .relaxed) {
                usleep(15_000)
                s.dropConnection(21)
            }
        }
        breaker.start()
        let wrong = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for i in 0..<150 {
                if t == 0 {
                    c.send(.lock, Array("up \(i)".utf8))
                    s.send(.lock, Array("down \(i)".utf8), to: 21)
                }
                let body = Array("t\(t) call \(i)".utf8)
                if (try? c.call(body)) != body.reversed() { wrong.add(1, ordering: .relaxed) }
            }
        }
        stop.store(true, ordering: .relaxed)
        breaker.join()
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(c.reconnects > 3, "the connection broke only \(c.reconnects) times")
        #expect(eventually { handler.seen.withLock { $0.messages.count } == 150 })
        #expect(handler.seen.withLock { $0.messages.map(\.1) } == (0..<150).map { Array("up \($0)".utf8) })
        #expect(eventually { pushed.withLock { $0.count } == 150 })
        #expect(pushed.withLock { $0 } == (0..<150).map { Array("down \($0)".utf8) })
        // The handler ran each call once: a resent call is not run again.
        let calls = handler.seen.withLock { $0.calls }
        #expect(calls.count == 600)
        #expect(Set(calls).count == 600)
        // The reconnects were one session all along.
        #expect(handler.seen.withLock { $0.connected } == [21])
        #expect(handler.seen.withLock { $0.disconnected }.isEmpty)
        #expect(log.contains("client 15 reconnected"), "client ids are logged in hex: 21 is 15")
    }

    /// A new run of the server cannot resume the old one's sessions: a call in flight fails
    /// (it may or may not have run), the node is told, and new calls go to the new run.
    @Test func aRestartedServerStartsANewSessionAndFailsCallsInFlight() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let (s1, port) = try server(handler, log)
        let resets = Atomic<Int>(0)
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 5, key: key,
                                      onMessage: { _, _ in }, onReset: { resets.add(1, ordering: .relaxed) }, log: log.sink)
        defer { c.close() }
        let outcome = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            do {
                _ = try c.call(Array("hold".utf8))
                outcome.withLock { $0 = "answered" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        handler.holding.wait()
        #expect(c.callsInFlight == 1)
        s1.stop()
        handler.held.signal()
        let handler2 = RecordingHandler()
        let s2 = NetServer(fsid: fsid, key: key, handler: handler2, log: log.sink)
        _ = try s2.start(host: "127.0.0.1", port: port)
        defer { s2.stop() }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(outcome.withLock { $0 }?.contains("restarted before it answered") == true)
        #expect(eventually { resets.load(ordering: .relaxed) == 1 })
        #expect(try c.call([1, 2]) == [2, 1])
        #expect(handler2.seen.withLock { $0.connected } == [5])
        #expect(eventually { handler.seen.withLock { $0.disconnected } == [5] })
    }

    /// A node that does not come back within the linger loses its session; one that closes
    /// fails its own later calls at once.
    @Test func aSessionEndsWhenItsNodeStaysAway() throws {
        let handler = RecordingHandler()
        let log = LogLines()
        let timers = NetTimers(sessionLinger: .milliseconds(300))
        let (s, port) = try server(handler, log, timers: timers)
        defer { s.stop() }
        let c = try NetClient.connect(host: "127.0.0.1", port: port, fsid: fsid, client: 6, key: key, timers: timers, onMessage: { _, _ in }, log: { _ in })
        #expect(try c.call([1]) == [1])
        c.close()
        #expect { try c.call([1]) } throws: { "\($0)".contains("connection is closed") }
        #expect(eventually { handler.seen.withLock { $0.disconnected } == [6] })
        #expect(s.connectedClients.isEmpty)
        #expect(log.contains("not back within"))
    }
}
