public import ScoutFormat

/// The opening of a connection, as plain state machines: each takes what arrived and returns
/// what to do, and the network shell (`NetServer`, `NetClient`) only carries it out. Nothing a
/// peer sends before the handshake ends reaches the filesystem.
///
/// Server side: send `NetHello` with a fresh nonce; accept one `NetGreeting` for this
/// filesystem and protocol version whose proof checks and whose client id is not connected
/// already; answer with `NetWelcome`. Anything else is refused with a reason, and closed.
public struct ServerHandshake: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingGreeting
        case established(client: ClientID)
        case refused
    }

    public enum Action: Sendable, Equatable {
        /// Send the welcome; the connection now belongs to `client`.
        case welcome(NetFrame, client: ClientID)
        /// Send the refusal, close, and log `reason`.
        case refuse(NetFrame, reason: String)
        /// A frame of the established connection, for the server to handle.
        case deliver(NetFrame)
    }

    public private(set) var state = State.awaitingGreeting
    let fsid: UInt64
    let key: ClusterKey
    let nonce: [UInt8]

    public init(fsid: UInt64, key: ClusterKey, nonce: [UInt8]) {
        self.fsid = fsid
        self.key = key
        self.nonce = nonce
    }

    /// The first frame on the connection.
    public var hello: NetFrame { NetFrame(.hello, body: NetHello(fsid: fsid, nonce: nonce).encoded) }

    /// `admit` claims the client id for this connection (false: it is connected already).
    public mutating func received(_ frame: NetFrame, admit: (ClientID) -> Bool) -> Action {
        switch state {
        case .established:
            return .deliver(frame)
        case .refused:
            return refuse("frame after a refusal")
        case .awaitingGreeting:
            guard frame.kind == .greeting else {
                return refuse("a \(frame.kind) frame before the greeting")
            }
            let g: NetGreeting
            do { g = try NetGreeting(decoding: frame.body) } catch { return refuse("malformed greeting: \(error)") }
            guard g.version == NetHandshake.version else {
                return refuse("protocol version \(g.version) is not this server's \(NetHandshake.version); run the same scoutfs on every node")
            }
            guard g.fsid == fsid else {
                return refuse("node \(g.client) greeted filesystem \(hex(g.fsid)), this server serves \(hex(fsid))")
            }
            let input = NetHandshake.greetingProofInput(fsid: fsid, client: g.client, serverNonce: nonce, clientNonce: g.nonce)
            guard key.verify(g.proof, of: input) else {
                return refuse("node \(g.client) does not hold this cluster's key")
            }
            guard admit(g.client) else {
                return refuse("client \(g.client) is connected already")
            }
            state = .established(client: g.client)
            let proof = key.proof(of: NetHandshake.welcomeProofInput(fsid: fsid, client: g.client, serverNonce: nonce, clientNonce: g.nonce))
            return .welcome(NetFrame(.welcome, body: NetWelcome(proof: proof).encoded), client: g.client)
        }
    }

    private mutating func refuse(_ reason: String) -> Action {
        state = .refused
        return .refuse(NetFrame(.refusal, body: NetRefusal(reason).encoded), reason: reason)
    }
}

/// Node side: answer the server's `NetHello` for this filesystem with a proof and a fresh
/// nonce, then accept only a `NetWelcome` whose proof shows the server holds the key too.
public struct ClientHandshake: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingHello
        case awaitingWelcome(serverNonce: [UInt8])
        case established
        case failed(String)
    }

    public enum Action: Sendable, Equatable {
        case send(NetFrame)
        case established
        /// Close; the connection attempt failed for `reason`.
        case fail(reason: String)
        case deliver(NetFrame)
    }

    public private(set) var state = State.awaitingHello
    let fsid: UInt64
    let client: ClientID
    let key: ClusterKey
    let nonce: [UInt8]

    public init(fsid: UInt64, client: ClientID, key: ClusterKey, nonce: [UInt8]) {
        self.fsid = fsid
        self.client = client
        self.key = key
        self.nonce = nonce
    }

    public mutating func received(_ frame: NetFrame) -> Action {
        switch state {
        case .established:
            return .deliver(frame)
        case .failed(let why):
            return .fail(reason: why)
        case .awaitingHello, .awaitingWelcome:
            if frame.kind == .refusal {
                let why = (try? NetRefusal(decoding: frame.body).reason) ?? "no reason given"
                return fail("server refused: \(why)")
            }
        }
        switch state {
        case .awaitingHello:
            guard frame.kind == .hello else { return fail("server sent a \(frame.kind) frame before its hello") }
            let h: NetHello
            do { h = try NetHello(decoding: frame.body) } catch { return fail("malformed hello: \(error)") }
            guard h.version == NetHandshake.version else {
                return fail("server speaks protocol version \(h.version), this node \(NetHandshake.version); run the same scoutfs on every node")
            }
            guard h.fsid == fsid else {
                return fail("server serves filesystem \(hex(h.fsid)), not this node's \(hex(fsid)); check the server address")
            }
            state = .awaitingWelcome(serverNonce: h.nonce)
            let proof = key.proof(of: NetHandshake.greetingProofInput(fsid: fsid, client: client, serverNonce: h.nonce, clientNonce: nonce))
            return .send(NetFrame(.greeting, body: NetGreeting(fsid: fsid, client: client, nonce: nonce, proof: proof).encoded))
        case .awaitingWelcome(let serverNonce):
            guard frame.kind == .welcome else { return fail("server sent a \(frame.kind) frame before its welcome") }
            let w: NetWelcome
            do { w = try NetWelcome(decoding: frame.body) } catch { return fail("malformed welcome: \(error)") }
            let input = NetHandshake.welcomeProofInput(fsid: fsid, client: client, serverNonce: serverNonce, clientNonce: nonce)
            guard key.verify(w.proof, of: input) else {
                return fail("server does not hold this cluster's key")
            }
            state = .established
            return .established
        case .established, .failed:
            preconditionFailure("handled above")
        }
    }

    private mutating func fail(_ reason: String) -> Action {
        state = .failed(reason)
        return .fail(reason: reason)
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
