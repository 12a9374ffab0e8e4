import NIOCore
import NIOPosix
import Dispatch
public import ScoutFormat
import Synchronization

/// What the server does with what its nodes send. Every call is made on a queue of the
/// sending node's own (never on a network thread), one at a time per node and in the order
/// the node sent them, so a handler may block — on the store, on a commit — without stalling
/// other nodes or the network.
///
/// `connected` and `disconnected` bracket a node's *session*, not its TCP connections: a node
/// that loses its connection and comes back within `NetTimers.sessionLinger` resumes its
/// session, and nothing sent either way is lost or delivered twice (`NetSession`).
public protocol NetServerHandler: AnyObject, Sendable {
    /// `client` began a session.
    func connected(_ client: ClientID)
    /// `client`'s session ended: it did not come back in time, a new mount of it took its id,
    /// or the server forgot it.
    func disconnected(_ client: ClientID)
    /// A message that expects no answer (`.lock`, `.notice`). What it throws closes the node's
    /// connection (the message is not sent again). May run on an event loop: must not block.
    func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID) throws
    /// A call; what it returns is the answer, what it throws fails the node's call with its
    /// description.
    func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8]
    /// `client`'s connection closed; its session lingers for a reconnect. Called on an event
    /// loop: must not block (a handler that finds the node gone for good may `forget` it).
    func connectionLost(_ client: ClientID)
}

extension NetServerHandler {
    public func connectionLost(_ client: ClientID) {}
}

/// The server's end of the network: listens, admits nodes that prove they hold the cluster
/// key (`ServerHandshake`), keeps one session per client id across reconnects, and carries
/// frames between the nodes and a `NetServerHandler`.
public final class NetServer: Sendable {
    public let fsid: UInt64
    /// This run of the server: sessions of another run cannot resume here.
    public let instance: UInt64
    let key: ClusterKey
    let timers: NetTimers
    let handler: any NetServerHandler
    let log: @Sendable (String) -> Void
    let group: any EventLoopGroup
    private let sessions = Mutex<[ClientID: ServerSession]>([:])
    private let listener = Mutex<(any Channel)?>(nil)
    private let reaper = Mutex<RepeatedTask?>(nil)

    /// Network threads are NIO's shared event loops.
    public init(fsid: UInt64, key: ClusterKey, handler: any NetServerHandler, timers: NetTimers = NetTimers(),
                log: @escaping @Sendable (String) -> Void) {
        self.fsid = fsid
        self.key = key
        self.handler = handler
        self.timers = timers
        group = MultiThreadedEventLoopGroup.singleton
        instance = UInt64.random(in: 1 ... .max)
        self.log = log
    }

    /// Listens on `host:port` (port 0: any free one); returns the port.
    @discardableResult
    public func start(host: String, port: Int) throws -> Int {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addNetHandlers(timers, ServerConnection(server: self, nonce: randomBytes(NetHandshake.nonceSize)))
                }
            }
        let channel: any Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            throw NetError("server cannot listen on \(host):\(port): \(error); is another server running there?")
        }
        listener.withLock { $0 = channel }
        let every = TimeAmount(min(timers.sessionLinger / 4, .seconds(1)))
        reaper.withLock { $0 = group.next().scheduleRepeatedTask(initialDelay: every, delay: every) { [self] _ in endLingeringSessions() } }
        return channel.localAddress?.port ?? port
    }

    /// Stops listening and closes every connection; sessions end.
    public func stop() {
        reaper.withLock { r in r?.cancel(); r = nil }
        let l = listener.withLock { l in defer { l = nil }; return l }
        try? l?.close().wait()
        for c in sessions.withLock({ Array($0.keys) }) { forget(c) }
    }

    /// Sends `kind` to `client`'s session: now if it is connected, else when it resumes.
    /// False if it has no session.
    @discardableResult
    public func send(_ kind: NetKind, _ body: [UInt8], to client: ClientID) -> Bool {
        guard let s = sessions.withLock({ $0[client] }) else { return false }
        s.send(NetFrame(kind, body: body))
        return true
    }

    /// Nodes with a session now (connected, or gone for less than the linger).
    public var connectedClients: [ClientID] { sessions.withLock { $0.keys.sorted() } }

    /// Whether `client` has a connection up now.
    public func isConnected(_ client: ClientID) -> Bool {
        sessions.withLock { $0[client] }?.state.withLock { $0.channel != nil } ?? false
    }

    /// Ends `client`'s session now (a node the cluster has given up on).
    public func forget(_ client: ClientID) {
        guard let s = sessions.withLock({ m in m.removeValue(forKey: client) }) else { return }
        end(s, why: "forgotten")
    }

    /// `client` is leaving cleanly: its session ends as soon as its connection closes, rather
    /// than lingering for a reconnect that will not come.
    public func leaving(_ client: ClientID) {
        sessions.withLock { $0[client] }?.state.withLock { $0.leaving = true }
    }

    /// Closes `client`'s connection and keeps its session, as a network fault would (tests).
    public func dropConnection(_ client: ClientID) {
        sessions.withLock { $0[client] }?.state.withLock { $0.channel }?.close(promise: nil)
    }

    /// Decides on a greeting that proved the key; the session it returns is the connection's.
    func admit(_ g: NetGreeting) -> (ServerHandshake.Admission, ServerSession?) {
        var ended: ServerSession?
        defer { if let ended { end(ended, why: "a new mount of client \(String(g.client, radix: 16)) took its id") } }
        return sessions.withLock { m in
            if let s = m[g.client] {
                let (connected, sent) = s.state.withLock { ($0.channel != nil, $0.net.nextSeq - 1) }
                if s.incarnation == g.incarnation && g.resumeInstance == instance {
                    guard g.received <= sent else {
                        return (.refused("client \(String(g.client, radix: 16)) says it took in \(g.received) frames, the server sent \(sent)"), nil)
                    }
                    return (.resumed(received: s.state.withLock { $0.net.received }), s)
                }
                if connected && s.incarnation != g.incarnation {
                    return (.refused("client \(String(g.client, radix: 16)) is connected already"), nil)
                }
                m[g.client] = nil
                ended = s
            }
            let s = ServerSession(client: g.client, incarnation: g.incarnation)
            m[g.client] = s
            return (.newSession, s)
        }
    }

    func began(_ s: ServerSession) {
        let handler = handler
        s.enqueue { handler.connected(s.client) }
    }

    private func end(_ s: ServerSession, why: String) {
        let channel = s.state.withLock { st in
            st.ended = true
            defer { st.channel = nil }
            return st.channel
        }
        channel?.close(promise: nil)
        log("network: session of client \(String(s.client, radix: 16)) ended: \(why)")
        let handler = handler
        s.enqueue { handler.disconnected(s.client) }
    }

    private func endLingeringSessions() {
        let now = ContinuousClock.now
        let gone: [ServerSession] = sessions.withLock { m in
            let old = m.values.filter { s in s.state.withLock { st in st.channel == nil && st.lostAt.map { now - $0 >= timers.sessionLinger } ?? false } }
            for s in old { m[s.client] = nil }
            return old
        }
        for s in gone { end(s, why: "not back within \(timers.sessionLinger)") }
    }
}

/// One node's session on the server: what it sent and took in, its handler queue, and the
/// connection carrying it now (if any).
final class ServerSession: Sendable {
    let client: ClientID
    let incarnation: UInt64
    let queue: DispatchQueue

    struct State {
        var net = NetSession()
        var channel: (any Channel)?
        var lostAt: ContinuousClock.Instant?
        var ended = false
        /// The node said farewell: when its connection closes the session ends at once.
        var leaving = false
    }
    let state = Mutex(State())

    init(client: ClientID, incarnation: UInt64) {
        self.client = client
        self.incarnation = incarnation
        queue = DispatchQueue(label: "scoutfs.net.client-\(client)")
    }

    /// Work on `queue` not finished yet.
    private let queued = Atomic<Int>(0)

    /// Runs `work` on the session's queue, after everything queued before it.
    func enqueue(_ work: @escaping @Sendable () -> Void) {
        queued.add(1, ordering: .relaxed)
        queue.async { [self] in
            work()
            queued.subtract(1, ordering: .releasing)
        }
    }

    /// Nothing of this session waits on its queue or runs there: what comes now may be handled
    /// on the event loop without passing anything sent before it.
    var queueIsIdle: Bool { queued.load(ordering: .acquiring) == 0 }

    /// Numbers and sends `frame`; written under the session's mutex so that frames leave in
    /// the order they were numbered.
    func send(_ frame: NetFrame) {
        state.withLock { s in
            guard !s.ended else { return }
            let f = s.net.stamp(frame)
            s.channel?.post(f)
        }
    }

    /// The connection `channel` carries the session from now: what the node did not take in
    /// (`peerReceived` says how much it did) goes again, first.
    func attach(_ channel: any Channel, peerReceived: UInt64) throws(NetError) {
        try state.withLock { s throws(NetError) in
            let resend = try s.net.resume(peerReceived: peerReceived)
            let old = s.channel
            s.channel = channel
            s.lostAt = nil
            if let old, old !== channel { old.closeLater() }
            for f in resend { channel.post(f) }
        }
    }

    /// `channel` is gone; true if it was carrying the session (which now waits for the node).
    func detach(_ channel: any Channel) -> Bool {
        state.withLock { s in
            guard s.channel === channel, !s.ended else { return false }
            s.channel = nil
            s.lostAt = .now
            return true
        }
    }
}

/// One connection, on its event loop: the handshake, then frames to its session.
final class ServerConnection: ChannelInboundHandler {
    typealias InboundIn = NetFrame
    typealias OutboundOut = NetFrame

    let server: NetServer
    var handshake: ServerHandshake
    var session: ServerSession?
    var closing = false

    init(server: NetServer, nonce: [UInt8]) {
        self.server = server
        handshake = ServerHandshake(fsid: server.fsid, key: server.key, instance: server.instance, nonce: nonce)
    }

    private func peer(_ context: ChannelHandlerContext) -> String {
        let addr = context.channel.remoteAddress.map { "\($0)" } ?? "an unknown address"
        return session.map { "client \(String($0.client, radix: 16)) (\(addr))" } ?? addr
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(handshake.hello), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let frame = unwrapInboundIn(data)
        var admitted: ServerSession?
        switch handshake.received(frame, admit: { g in
            let (a, s) = server.admit(g)
            admitted = s
            return a
        }) {
        case .welcome(let welcome, let g, let resumed):
            guard let s = admitted else { return close(context, "admitted without a session") }
            session = s
            context.writeAndFlush(wrapOutboundOut(welcome), promise: nil)
            do {
                // A new session starts from nothing: the greeting's count was of another one.
                try s.attach(context.channel, peerReceived: resumed ? g.received : 0)
            } catch {
                // A session the node cannot take up is no session: it must not linger unseen.
                if !resumed { server.forget(g.client) }
                return close(context, "\(error)")
            }
            server.log("network: client \(String(g.client, radix: 16)) \(resumed ? "reconnected" : "connected") from \(context.channel.remoteAddress.map { "\($0)" } ?? "an unknown address")")
            if !resumed { server.began(s) }
        case .refuse(let refusal, let reason):
            refuse(context, refusal, reason)
        case .deliver(let f):
            deliver(context, f)
        }
    }

    private func close(_ context: ChannelHandlerContext, _ reason: String) {
        server.log("network: \(peer(context)): \(reason); closing its connection")
        closing = true
        context.close(promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: NetFrame, _ reason: String) {
        server.log("network: refused \(peer(context)): \(reason)")
        closing = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(refusal)).whenComplete { _ in channel.close(promise: nil) }
    }

    private func refuse(_ context: ChannelHandlerContext, _ reason: String) {
        refuse(context, NetFrame(.refusal, body: NetRefusal(reason).encoded), reason)
    }

    private func deliver(_ context: ChannelHandlerContext, _ f: NetFrame) {
        guard let s = session else { return }
        switch f.kind {
        case .heartbeat, .lock, .call, .notice:
            break
        case .hello, .greeting, .welcome, .refusal:
            return refuse(context, "a \(f.kind) frame after the handshake")
        }
        if f.kind == .lock || f.kind == .notice, !(f.flags.isEmpty && f.id == 0) { return refuse(context, "\(f.kind) frame with call flags") }
        if f.kind == .call, !(f.flags.isEmpty && f.id != 0) { return refuse(context, "call frame without an id or with answer flags") }
        let fresh: Bool
        do {
            fresh = try s.state.withLock { st throws(NetError) in try st.net.accept(f) }
        } catch {
            return close(context, "\(error)")
        }
        guard fresh, f.kind != .heartbeat else { return }
        let handler = server.handler
        let c = s.client
        let body = f.body
        if f.kind == .lock || f.kind == .notice {
            let server = server
            let kind = f.kind
            let receive: @Sendable () -> Void = {
                do {
                    try handler.received(kind, body, from: c)
                } catch {
                    server.log("network: refused a message of client \(String(c, radix: 16)): \(error); closing its connection")
                    server.dropConnection(c)
                }
            }
            // A lock message with nothing before it still to handle is handled here: the
            // handler's `received` never blocks, and the queue's thread hop was a tenth of a
            // lock hand-over's network time. Behind a call (which may block), it waits its turn.
            if s.queueIsIdle { receive() } else { s.enqueue(receive) }
            return
        }
        let id = f.id
        s.enqueue {
            let answer: NetFrame
            do {
                answer = NetFrame(.call, flags: .answer, id: id, body: try handler.call(body, from: c))
            } catch {
                answer = NetFrame(.call, flags: [.answer, .failed], id: id, body: Array("\(error)".utf8.prefix(NetHandshake.maxReason)))
            }
            s.send(answer)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent else { return context.fireUserInboundEventTriggered(event) }
        switch idle {
        case .write:
            if !closing, let s = session { s.send(NetFrame(.heartbeat)) }
        case .read:
            close(context, "silent for \(server.timers.silenceTimeout)")
        case .all:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        close(context, "\(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let s = session, s.detach(context.channel) {
            if s.state.withLock({ $0.leaving }) {
                server.forget(s.client)
            } else {
                server.log("network: client \(String(s.client, radix: 16)) connection lost; its session waits \(server.timers.sessionLinger) for it")
                server.handler.connectionLost(s.client)
            }
        }
        context.fireChannelInactive()
    }
}
