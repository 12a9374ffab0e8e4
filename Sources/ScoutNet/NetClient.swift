import NIOCore
import NIOPosix
import Dispatch
public import ScoutFormat
import Synchronization

/// A node's connection to the server: connects, proves it holds the cluster key and checks
/// that the server does (`ClientHandshake`), then carries messages both ways and calls with
/// their answers.
///
/// `call` blocks its thread until the answer comes; it must not be made on a network thread
/// (NIO refuses to wait there). What the server sends unasked reaches `onMessage` on a queue of
/// this connection's own, in order; calls may be made from it.
public final class NetClient: Sendable {
    public let client: ClientID
    let channel: any Channel
    let state: Mutex<CallState>
    let log: @Sendable (String) -> Void

    struct CallState {
        var nextID: UInt64 = 1
        var pending: [UInt64: EventLoopPromise<[UInt8]>] = [:]
        /// Why the connection ended, once it has.
        var closed: String?
    }

    private init(client: ClientID, channel: any Channel, state: Mutex<CallState>, log: @escaping @Sendable (String) -> Void) {
        self.client = client
        self.channel = channel
        self.state = state
        self.log = log
    }

    /// Connects to the server at `host:port` as `client` of filesystem `fsid`; returns once the
    /// server has welcomed it. Throws with the server's reason when refused, or when the
    /// server cannot be reached or does not answer within the silence timeout.
    public static func connect(host: String, port: Int, fsid: UInt64, client: ClientID, key: ClusterKey,
                               timers: NetTimers = NetTimers(),
                               onMessage: @escaping @Sendable (NetKind, [UInt8]) -> Void,
                               onClose: @escaping @Sendable (String) -> Void = { _ in },
                               log: @escaping @Sendable (String) -> Void) throws -> NetClient {
        let group = MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        let established = loop.makePromise(of: Void.self)
        let state = Mutex(CallState())
        let nonce = NetServer.nonce()
        let bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(TimeAmount(timers.silenceTimeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(NetFrameDecoder()),
                        MessageToByteHandler(NetFrameEncoder()),
                        IdleStateHandler(readTimeout: TimeAmount(timers.silenceTimeout), writeTimeout: TimeAmount(timers.heartbeatInterval)),
                        ClientConnection(handshake: ClientHandshake(fsid: fsid, client: client, key: key, nonce: nonce),
                                         established: established, state: state, timers: timers,
                                         onMessage: onMessage, onClose: onClose, log: log),
                    ])
                }
            }
        let channel: any Channel
        do {
            channel = try bootstrap.connect(host: host, port: port).wait()
        } catch {
            established.fail(error)
            throw NetError("cannot connect to the server at \(host):\(port): \(error)")
        }
        // A server that accepts and then says nothing is given up like a silent peer.
        let timeout = loop.scheduleTask(in: TimeAmount(timers.silenceTimeout)) {
            established.fail(NetError("server at \(host):\(port) did not finish the handshake within \(timers.silenceTimeout)"))
            channel.close(promise: nil)
        }
        do {
            try established.futureResult.wait()
            timeout.cancel()
        } catch {
            timeout.cancel()
            channel.close(promise: nil)
            throw NetError("connecting to the server at \(host):\(port) as client \(client): \(error)")
        }
        return NetClient(client: client, channel: channel, state: state, log: log)
    }

    /// Sends a message that expects no answer. Dropped if the connection is gone (the caller
    /// learns that through `onClose`).
    public func send(_ kind: NetKind, _ body: [UInt8]) {
        channel.writeAndFlush(NetFrame(kind, body: body), promise: nil)
    }

    /// Calls the server and waits for its answer.
    public func call(_ body: [UInt8]) throws -> [UInt8] {
        let promise = channel.eventLoop.makePromise(of: [UInt8].self)
        let id: UInt64? = state.withLock { s in
            guard s.closed == nil else { return nil }
            defer { s.nextID += 1 }
            s.pending[s.nextID] = promise
            return s.nextID
        }
        guard let id else {
            promise.fail(NetError("closed"))
            throw NetError("call to the server: the connection is closed (\(state.withLock { $0.closed ?? "" }))")
        }
        channel.writeAndFlush(NetFrame(.call, id: id, body: body), promise: nil)
        return try promise.futureResult.wait()
    }

    /// Calls not answered yet.
    public var callsInFlight: Int { state.withLock { $0.pending.count } }

    /// Whether the connection is still up.
    public var isConnected: Bool { state.withLock { $0.closed == nil } }

    /// Closes the connection; calls in flight fail.
    public func close() {
        try? channel.close().wait()
    }
}

/// The node's end of a connection, on its event loop.
final class ClientConnection: ChannelInboundHandler {
    typealias InboundIn = NetFrame
    typealias OutboundOut = NetFrame

    var handshake: ClientHandshake
    let established: EventLoopPromise<Void>
    let state: Mutex<NetClient.CallState>
    let timers: NetTimers
    let onMessage: @Sendable (NetKind, [UInt8]) -> Void
    let onClose: @Sendable (String) -> Void
    let log: @Sendable (String) -> Void
    let queue = DispatchQueue(label: "scoutfs.net.server-messages")
    var closeReason: String?

    init(handshake: ClientHandshake, established: EventLoopPromise<Void>, state: Mutex<NetClient.CallState>, timers: NetTimers,
         onMessage: @escaping @Sendable (NetKind, [UInt8]) -> Void, onClose: @escaping @Sendable (String) -> Void,
         log: @escaping @Sendable (String) -> Void) {
        self.handshake = handshake
        self.established = established
        self.state = state
        self.timers = timers
        self.onMessage = onMessage
        self.onClose = onClose
        self.log = log
    }

    private func close(_ context: ChannelHandlerContext, _ reason: String) {
        guard closeReason == nil else { return }
        closeReason = reason
        established.fail(NetError(reason))
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard closeReason == nil else { return }
        switch handshake.received(unwrapInboundIn(data)) {
        case .send(let f):
            context.writeAndFlush(wrapOutboundOut(f), promise: nil)
        case .established:
            established.succeed(())
        case .fail(let reason):
            log("network: \(reason)")
            close(context, reason)
        case .deliver(let f):
            deliver(context, f)
        }
    }

    private func deliver(_ context: ChannelHandlerContext, _ f: NetFrame) {
        switch f.kind {
        case .heartbeat:
            return
        case .lock:
            let body = f.body
            let onMessage = onMessage
            queue.async { onMessage(.lock, body) }
        case .call where f.flags.contains(.answer):
            guard let promise = state.withLock({ $0.pending.removeValue(forKey: f.id) }) else {
                return close(context, "server answered call \(f.id), which is not waiting")
            }
            if f.flags.contains(.failed) {
                promise.fail(NetError(String(decoding: f.body, as: UTF8.self)))
            } else {
                promise.succeed(f.body)
            }
        case .refusal:
            let why = (try? NetRefusal(decoding: f.body).reason) ?? "no reason given"
            log("network: server closed the connection: \(why)")
            close(context, "server closed the connection: \(why)")
        case .call, .hello, .greeting, .welcome:
            close(context, "server sent a \(f.kind) frame after the handshake")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent else { return context.fireUserInboundEventTriggered(event) }
        switch idle {
        case .write:
            if closeReason == nil, handshake.state == .established { context.writeAndFlush(wrapOutboundOut(NetFrame(.heartbeat)), promise: nil) }
        case .read:
            log("network: server silent for \(timers.silenceTimeout); closing the connection")
            close(context, "server silent for \(timers.silenceTimeout)")
        case .all:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log("network: connection to the server: \(error)")
        close(context, "\(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        let reason = closeReason ?? "connection closed"
        closeReason = reason
        established.fail(NetError(reason))
        let pending = state.withLock { s in
            s.closed = reason
            defer { s.pending = [:] }
            return Array(s.pending.values)
        }
        for p in pending { p.fail(NetError("connection to the server lost before it answered: \(reason)")) }
        let onClose = onClose
        queue.async { onClose(reason) }
        context.fireChannelInactive()
    }
}
