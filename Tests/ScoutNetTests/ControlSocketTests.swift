#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutNet
import ScoutTestSupport
import Synchronization
import Testing

@Suite struct ControlSocketTests {
    func socketPath() -> String {
        "/tmp/scoutfs-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    }

    /// Echoes the request with the caller's uid and the passed files' sizes appended.
    func echoServer(_ path: String) throws -> ControlServer {
        let server = try ControlServer(path: path) { body, fds, peer in
            var out = body + [UInt8(truncatingIfNeeded: peer.uid)]
            for fd in fds {
                var st = stat()
                fstat(fd, &st)
                out += [UInt8(truncatingIfNeeded: st.st_size)]
            }
            return out
        }
        try server.start()
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
        #expect(try client.call([9], files: [fd]) == [9, UInt8(truncatingIfNeeded: getuid()), 5])
        // Two descriptors (move-blocks sends the file the blocks come from as well), in order.
        let other = file + ".2"
        let fd2 = open(other, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        defer { close(fd2); unlink(other) }
        _ = write(fd2, "hi", 2)
        #expect(try client.call([8], files: [fd2, fd]) == [8, UInt8(truncatingIfNeeded: getuid()), 2, 5])
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
        try server.start()
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

    // MARK: hostile peers

    @Test func extraDescriptorsAreClosedAndTooManyAreRefused() throws {
        let path = socketPath()
        let server = try echoServer(path)
        defer { server.stop() }
        let file = "/tmp/scoutfs-test-fds-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        close(open(file, O_CREAT | O_RDWR, 0o600))
        defer { unlink(file) }
        for count in [3, 12] {
            let fds = (0..<count).map { _ in open(file, O_PATH | O_CLOEXEC) }
            let s = try RawControlSocket.connect(path)
            try RawControlSocket.send(s, RawControlSocket.frame([5]), fds: fds)
            let answer = RawControlSocket.reply(s) ?? []
            close(s)
            for fd in fds { close(fd) }
            if count <= 8 {
                // The first two are the request's; the rest were closed unread.
                #expect(answer == [5, UInt8(truncatingIfNeeded: getuid()), 0, 0], "\(answer)")
            } else {
                guard case .failure(let e, let message)? = try? ControlReply(decoding: answer) else {
                    Issue.record("expected a refusal for \(count) descriptors, got \(answer)")
                    continue
                }
                #expect(e == EINVAL && message.contains("at most 2 file descriptors"))
            }
        }
        // Everything the server received was closed again.
        var waited = 0
        while RawControlSocket.descriptors(of: file) > 0 && waited < 100 { usleep(10_000); waited += 1 }
        #expect(RawControlSocket.descriptors(of: file) == 0)
    }

    @Test func idleConnectionsAreBoundedAndTimedOut() throws {
        let path = socketPath()
        let server = try ControlServer(path: path, maxConnections: 4, idleTimeout: .milliseconds(500)) { body, _, _ in body }
        try server.start()
        defer { server.stop() }
        let idle = try (0..<4).map { _ in try ControlClient(path: path) }
        var waited = 0
        while server.activeConnections < 4 && waited < 200 { usleep(10_000); waited += 1 }
        // The fifth is turned away with a reason.
        let extra = try ControlClient(path: path)
        let answer = try ControlReply(decoding: try extra.receiveReply())
        guard case .failure(let e, let message) = answer else {
            Issue.record("expected EBUSY, got \(answer)")
            return
        }
        #expect(e == EBUSY && message.contains("4 control connections"))
        // Idle ones are closed after the timeout, and service goes on.
        waited = 0
        while server.activeConnections > 0 && waited < 300 { usleep(10_000); waited += 1 }
        #expect(server.activeConnections == 0)
        #expect(throws: ControlSocketError.self) { _ = try idle[0].call([1]) }
        #expect(try ControlClient(path: path).call([7]) == [7])
    }

    @Test func randomFramesNeverStopTheServer() throws {
        let path = socketPath()
        let server = try echoServer(path)
        defer { server.stop() }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let client = try ControlClient(path: path)
            let n = Int.random(in: 0...64, using: &rng)
            try? client.sendRaw((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) })
            client.finishSending()
        }
        // On a loaded machine the server may still be reading the last of those: a call now
        // could find every connection slot taken (EBUSY), which is the bound working, not the
        // server stopping.
        var waited = 0
        while server.activeConnections > 0 && waited < 1000 { usleep(10_000); waited += 1 }
        #expect(server.activeConnections == 0)
        #expect(try ControlClient(path: path).call([8]) == [8, UInt8(truncatingIfNeeded: getuid())])
    }

    @Test func theClientGivesUpOnAServerThatNeverAnswers() throws {
        let path = socketPath()
        let server = try ControlServer(path: path) { body, _, _ in
            usleep(3_000_000)
            return body
        }
        try server.start()
        defer { server.stop() }
        let client = try ControlClient(path: path, timeout: .milliseconds(300))
        let start = ContinuousClock.now
        let e = #expect(throws: ControlSocketError.self) { _ = try client.call([1]) }
        #expect(e?.errno == ETIMEDOUT)
        #expect(e?.description.contains("did not answer within") == true, "\(String(describing: e))")
        #expect(ContinuousClock.now - start < .seconds(2))
    }
}
