#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutNet
import Testing

@Suite struct HandshakeTests {
    let key = ClusterKey.generate()
    let nonceA = Array(repeating: UInt8(1), count: 32)
    let nonceB = Array(repeating: UInt8(2), count: 32)

    /// Runs a whole handshake between the two machines; returns what each ended in.
    func run(server: inout ServerHandshake, client: inout ClientHandshake,
             admit: ServerHandshake.Admission = .newSession) -> (ServerHandshake.State, ClientHandshake.State) {
        var toServer: [NetFrame] = []
        var toClient: [NetFrame] = [server.hello]
        while !toClient.isEmpty || !toServer.isEmpty {
            if let f = toClient.first {
                toClient.removeFirst()
                if case .send(let out) = client.received(f) { toServer.append(out) }
            }
            if let f = toServer.first {
                toServer.removeFirst()
                switch server.received(f, admit: { _ in admit }) {
                case .welcome(let out, _, _), .refuse(let out, _): toClient.append(out)
                case .deliver: break
                }
            }
        }
        return (server.state, client.state)
    }

    @Test func bothSidesProveTheKeyAndTheNodeIsNamed() {
        var s = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        var c = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, nonce: nonceB)
        let (ss, cs) = run(server: &s, client: &c)
        #expect(ss == .established(client: 9))
        #expect(cs == .established)
        // After the handshake frames pass through to the shells.
        #expect(s.received(NetFrame(.lock, body: [1]), admit: { _ in .refused("no") }) == .deliver(NetFrame(.lock, body: [1])))
        #expect(c.received(NetFrame(.heartbeat)) == .deliver(NetFrame(.heartbeat)))
    }

    @Test func aNodeWithAnotherKeyOrFilesystemOrADuplicateIdIsRefused() {
        func refusal(_ c: ClientHandshake.State) -> String {
            if case .failed(let why) = c { return why }
            return "not failed: \(c)"
        }
        var s = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        var c = ClientHandshake(fsid: 5, client: 9, key: ClusterKey.generate(), incarnation: 3, nonce: nonceB)
        var (ss, cs) = run(server: &s, client: &c)
        #expect(ss == .refused)
        #expect(refusal(cs).contains("does not hold this cluster's key"))

        s = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        c = ClientHandshake(fsid: 6, client: 9, key: key, incarnation: 3, nonce: nonceB)
        (ss, cs) = run(server: &s, client: &c)
        #expect(ss == .awaitingGreeting, "the node checks the filesystem itself and never greets")
        #expect(refusal(cs).contains("serves filesystem 0x5"))

        s = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        c = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, nonce: nonceB)
        (ss, cs) = run(server: &s, client: &c, admit: .refused("client 9 is connected already"))
        #expect(ss == .refused)
        #expect(refusal(cs).contains("client 9 is connected already"))
    }

    @Test func aServerWithoutTheKeyIsNotBelieved() {
        var c = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, nonce: nonceB)
        guard case .send = c.received(NetFrame(.hello, body: NetHello(fsid: 5, instance: 77, nonce: nonceA).encoded)) else {
            Issue.record("no greeting")
            return
        }
        // An impostor answers with a proof made under another key.
        var forged = NetWelcome(resumed: false, received: 0)
        forged.proof = ClusterKey.generate().proof(of: NetHandshake.welcomeProofInput(forged, fsid: 5, client: 9, serverNonce: nonceA, clientNonce: nonceB))
        #expect(c.received(NetFrame(.welcome, body: forged.encoded)) == .fail(reason: "server does not hold this cluster's key"))
        // A node's own proof sent back as the server's does not pass either.
        var c2 = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, nonce: nonceB)
        guard case .send(let g) = c2.received(NetFrame(.hello, body: NetHello(fsid: 5, instance: 77, nonce: nonceA).encoded)) else { return }
        let replayed = (try? NetGreeting(decoding: g.body))?.proof ?? []
        #expect(c2.received(NetFrame(.welcome, body: NetWelcome(resumed: false, received: 0, proof: replayed).encoded)) == .fail(reason: "server does not hold this cluster's key"))
        // A genuine proof whose resume fields were changed on the way does not pass.
        var c3 = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, resumeInstance: 77, resumeReceived: 4, nonce: nonceB)
        _ = c3.received(NetFrame(.hello, body: NetHello(fsid: 5, instance: 77, nonce: nonceA).encoded))
        var honest = NetWelcome(resumed: true, received: 10)
        honest.proof = key.proof(of: NetHandshake.welcomeProofInput(honest, fsid: 5, client: 9, serverNonce: nonceA, clientNonce: nonceB))
        var altered = honest
        altered.received = 2
        #expect(c3.received(NetFrame(.welcome, body: altered.encoded)) == .fail(reason: "server does not hold this cluster's key"))
        var c4 = ClientHandshake(fsid: 5, client: 9, key: key, incarnation: 3, resumeInstance: 77, resumeReceived: 4, nonce: nonceB)
        _ = c4.received(NetFrame(.hello, body: NetHello(fsid: 5, instance: 77, nonce: nonceA).encoded))
        #expect(c4.received(NetFrame(.welcome, body: honest.encoded)) == .established(serverInstance: 77, honest))
    }

    @Test func framesBeforeTheGreetingAndMalformedGreetingsAreRefused() {
        var s = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        guard case .refuse(_, let why) = s.received(NetFrame(.lock, body: [1, 2]), admit: { _ in .newSession }) else {
            Issue.record("a lock frame before the greeting was let in")
            return
        }
        #expect(why == "a lock frame before the greeting")
        #expect(s.state == .refused)
        var s2 = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        guard case .refuse(_, let why2) = s2.received(NetFrame(.greeting, body: [0, 1]), admit: { _ in .newSession }) else {
            Issue.record("a malformed greeting was let in")
            return
        }
        #expect(why2.hasPrefix("malformed greeting"))
        var s3 = ServerHandshake(fsid: 5, key: key, instance: 77, nonce: nonceA)
        let old = NetGreeting(version: 99, fsid: 5, client: 1, incarnation: 1, nonce: nonceB, proof: Array(repeating: 0, count: 32))
        guard case .refuse(_, let why3) = s3.received(NetFrame(.greeting, body: old.encoded), admit: { _ in .newSession }) else { return }
        #expect(why3.contains("protocol version 99"))
    }

    @Test func keyFilesAreOwnerOnlyAndRoundTrip() throws {
        let dir = "/tmp/scoutfs-key-test-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = unlink(dir + "/k"); _ = unlink(dir + "/open"); rmdir(dir) }
        try key.save(to: dir + "/k")
        let back = try ClusterKey.load(from: dir + "/k")
        #expect(back.fileText == key.fileText)
        #expect(key.fileText.count == 65)
        #expect(throws: ClusterKeyError.self) { try key.save(to: dir + "/k") }
        let fd = open(dir + "/open", O_CREAT | O_WRONLY, 0o644)
        _ = key.fileText.withCString { write(fd, $0, strlen($0)) }
        fchmod(fd, 0o644)
        close(fd)
        #expect { try ClusterKey.load(from: dir + "/open") } throws: { "\($0)".contains("chmod 600") }
        #expect(throws: ClusterKeyError.self) { try ClusterKey(fileText: "abc") }
        #expect(throws: ClusterKeyError.self) { try ClusterKey(fileText: String(repeating: "zz", count: 32)) }
    }
}
