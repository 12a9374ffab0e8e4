#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutNet
import Synchronization
import Testing

@Suite struct ControlSocketTests {
    func socketPath() -> String {
        "/tmp/scoutfs-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    }

    /// Echoes the request with the caller's uid and the passed file's size appended.
    func echoServer(_ path: String) throws -> ControlServer {
        let server = try ControlServer(path: path) { body, fd, peer in
            var out = body + [UInt8(truncatingIfNeeded: peer.uid)]
            if let fd {
                var st = stat()
                fstat(fd, &st)
                out += [UInt8(truncatingIfNeeded: st.st_size)]
            }
            return out
        }
        server.start()
        return server
    }

    @Test func messagesDescriptorsAndCredentialsArrive() throws {
        let path = socketPath()
        let server = try echoServer(path)
        defer { server.stop() }
        let client = try ControlClient(path: path)
        #expect(try client.call([1, 2, 3]) == [1, 2, 3, UInt8(truncatingIfNeeded: getuid())])
        let file = "/tmp/scoutfs-test-fd-\(getpid())"
        let fd = open(file, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        defer { close(fd); unlink(file) }
        _ = write(fd, "hello", 5)
        #expect(try client.call([9], file: fd) == [9, UInt8(truncatingIfNeeded: getuid()), 5])
        // A big body crosses several reads.
        let big = [UInt8](repeating: 7, count: 900_000)
        #expect(try client.call(big).count == big.count + 1)
    }

    @Test func anOversizedFrameIsAnsweredAndTheConnectionClosed() throws {
        let path = socketPath()
        let server = try echoServer(path)
        defer { server.stop() }
        let client = try ControlClient(path: path)
        var w = ByteWriter()
        w.u32(UInt32(ControlMessage.maxBody + 1))
        try client.sendRaw(w.bytes)
        let reply = try ControlReply(decoding: try client.receiveReply())
        guard case .failure(let e, let message) = reply else {
            Issue.record("expected a failure, got \(reply)")
            return
        }
        #expect(e == EMSGSIZE)
        #expect(message.contains("larger than"))
        #expect(throws: ControlSocketError.self) { _ = try client.call([1]) }
    }

    @Test func aTruncatedFrameIsDroppedWithoutCallingTheHandler() throws {
        let path = socketPath()
        let calls = Atomic(0)
        let server = try ControlServer(path: path) { body, _, _ in
            calls.add(1, ordering: .relaxed)
            return body
        }
        server.start()
        defer { server.stop() }
        let client = try ControlClient(path: path)
        var w = ByteWriter()
        w.u32(100)
        w.raw([1, 2, 3])
        try client.sendRaw(w.bytes)
        client.finishSending()
        #expect(throws: ControlSocketError.self) { _ = try client.receiveReply() }
        // Another connection is served as usual.
        #expect(try ControlClient(path: path).call([4]) == [4])
        #expect(calls.load(ordering: .relaxed) == 1)
    }

    @Test func stopRemovesTheSocket() throws {
        let path = socketPath()
        let server = try echoServer(path)
        server.stop()
        #expect(access(path, F_OK) != 0)
        #expect(throws: ControlSocketError.self) { _ = try ControlClient(path: path) }
    }
}
