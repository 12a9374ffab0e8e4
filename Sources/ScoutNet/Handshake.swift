public import ScoutFormat

/// The opening of a connection, as plain state machines: each takes what arrived and returns
/// what to do, and the network shell (`NetServer`, `NetClient`) only carries it out. Nothing a
/// peer sends before the handshake ends reaches the filesystem.
///
/// Server side: send `NetHello` with a fresh nonce; accept one `NetGreeting` for this
/// filesystem and protocol version whose proof checks and that the server admits (a client id
/// connected from another mount is not; a reconnect of the same mount resumes its session);
/// answer with `NetWelcome`. Anything else is refused with a reason, and closed.
public struct ServerHandshake: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingGreeting
        case established(client: ClientID)
        case refused
    }

    /// What the server makes of a greeting that proved the key.
    public enum Admission: Sendable, Equatable {
        case newSession
        /// The node's session goes on; the server took in `received` of its frames.
        case resumed(received: UInt64)
        case refused(String)
    }

    public enum Action: Sendable, Equatable {
        /// Send the welcome; the connection now belongs to the greeting's client.
        case welcome(NetFrame, NetGreeting, resumed: Bool)
        /// Send the refusal, close, and log `reason`.
        case refuse(NetFrame, reason: String)
        /// A frame of the established connection, for the server to handle.
        case deliver(NetFrame)
    }

    public private(set) var state = State.awaitingGreeting
    let fsid: UInt64
    let key: ClusterKey
    let instance: UInt64
    let nonce: [UInt8]

    public init(fsid: UInt64, key: ClusterKey, instance: UInt64, nonce: [UInt8]) {
        self.fsid = fsid
        self.key = key
        self.instance = instance
        self.nonce = nonce
    }

    /// The first frame on the connection.
    public var hello: NetFrame { NetFrame(.hello, body: NetHello(fsid: fsid, instance: instance, nonce: nonce).encoded) }

    /// `admit` decides on a greeting that proved the key (and claims the client id for this
    /// connection if it admits it).
    public mutating func received(_ frame: NetFrame, admit: (NetGreeting) -> Admission) -> Action {
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
            guard key.verify(g.proof, of: NetHandshake.greetingProofInput(g, serverNonce: nonce)) else {
                return refuse("node \(g.client) does not hold this cluster's key")
            }
            var welcome: NetWelcome
            switch admit(g) {
            case .refused(let why): return refuse(why)
            case .newSession: welcome = NetWelcome(resumed: false, received: 0)
            case .resumed(let n): welcome = NetWelcome(resumed: true, received: n)
            }
            state = .established(client: g.client)
            welcome.proof = key.proof(of: NetHandshake.welcomeProofInput(welcome, fsid: fsid, client: g.client, serverNonce: nonce, clientNonce: g.nonce))
            return .welcome(NetFrame(.welcome, body: welcome.encoded), g, resumed: welcome.resumed)
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
        case awaitingWelcome(serverNonce: [UInt8], serverInstance: UInt64)
        case established
        case failed(String)
    }

    public enum Action: Sendable, Equatable {
        case send(NetFrame)
        /// In: `welcome` says whether the session resumed and how many frames the server took in.
        case established(serverInstance: UInt64, NetWelcome)
        /// Close; the connection attempt failed for `reason`.
        case fail(reason: String)
        case deliver(NetFrame)
    }

    public private(set) var state = State.awaitingHello
    let fsid: UInt64
    let client: ClientID
    let key: ClusterKey
    let incarnation: UInt64
    let resumeInstance: UInt64
    let resumeReceived: UInt64
    let nonce: [UInt8]

    /// `resumeInstance` and `resumeReceived`: the session the node has (0, 0: none).
    public init(fsid: UInt64, client: ClientID, key: ClusterKey, incarnation: UInt64,
                resumeInstance: UInt64 = 0, resumeReceived: UInt64 = 0, nonce: [UInt8]) {
        self.fsid = fsid
        self.client = client
        self.key = key
        self.incarnation = incarnation
        self.resumeInstance = resumeInstance
        self.resumeReceived = resumeReceived
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
            state = .awaitingWelcome(serverNonce: h.nonce, serverInstance: h.instance)
            var g = NetGreeting(fsid: fsid, client: client, incarnation: incarnation, resumeInstance: resumeInstance,
                                received: resumeReceived, nonce: nonce)
            g.proof = key.proof(of: NetHandshake.greetingProofInput(g, serverNonce: h.nonce))
            return .send(NetFrame(.greeting, body: g.encoded))
        case .awaitingWelcome(let serverNonce, let serverInstance):
            guard frame.kind == .welcome else { return fail("server sent a \(frame.kind) frame before its welcome") }
            let w: NetWelcome
            do { w = try NetWelcome(decoding: frame.body) } catch { return fail("malformed welcome: \(error)") }
            let input = NetHandshake.welcomeProofInput(w, fsid: fsid, client: client, serverNonce: serverNonce, clientNonce: nonce)
            guard key.verify(w.proof, of: input) else {
                return fail("server does not hold this cluster's key")
            }
            guard !w.resumed || serverInstance == resumeInstance else {
                return fail("server \(hex(serverInstance)) resumed a session of server \(hex(resumeInstance))")
            }
            state = .established
            return .established(serverInstance: serverInstance, w)
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
