import NIOCore
import NIOPosix
import Dispatch
public import ScoutFormat
import Synchronization

/// What the server does with what its nodes send. Every call is made on a queue of the
/// sending node's own (never on a network thread), one at a time per node and in the order
/// the node sent them, so a handler may block — on the store, on a commit — without stalling
/// other nodes or the network.
public protocol NetServerHandler: AnyObject, Sendable {
    /// `client` finished its handshake.
    func connected(_ client: ClientID)
    /// `client`'s connection is gone (closed, broken or silent too long).
    func disconnected(_ client: ClientID)
    /// A message that expects no answer (`.lock`).
    func received(_ kind: NetKind, _ body: [UInt8], from client: ClientID)
    /// A call; what it returns is the answer, what it throws fails the node's call with its
    /// description.
    func call(_ body: [UInt8], from client: ClientID) throws -> [UInt8]
}

/// The server's end of the network: listens, admits nodes that prove they hold the cluster
/// key (`ServerHandshake`), one connection per client id, and carries frames between them
/// and a `NetServerHandler`.
public final class NetServer: Sendable {
    public let fsid: UInt64
    let key: ClusterKey
    let timers: NetTimers
    let handler: any NetServerHandler
    let log: @Sendable (String) -> Void
    let group: any EventLoopGroup
    private let connections = Mutex<[ClientID: any Channel]>([:])
    private let listener = Mutex<(any Channel)?>(nil)

    /// Network threads are NIO's shared event loops.
    public init(fsid: UInt64, key: ClusterKey, handler: any NetServerHandler, timers: NetTimers = NetTimers(),
                log: @escaping @Sendable (String) -> Void) {
        self.fsid = fsid
        self.key = key
        self.handler = handler
        self.timers = timers
        group = MultiThreadedEventLoopGroup.singleton
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
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(NetFrameDecoder()),
                        MessageToByteHandler(NetFrameEncoder()),
                        IdleStateHandler(readTimeout: TimeAmount(timers.silenceTimeout), writeTimeout: TimeAmount(timers.heartbeatInterval)),
                        ServerConnection(server: self, nonce: Self.nonce()),
                    ])
                }
            }
        let channel: any Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            throw NetError("server cannot listen on \(host):\(port): \(error); is another server running there?")
        }
        listener.withLock { $0 = channel }
        return channel.localAddress?.port ?? port
    }

    /// Stops listening and closes every connection.
    public func stop() {
        let l = listener.withLock { l in defer { l = nil }; return l }
        try? l?.close().wait()
        for c in connections.withLock({ Array($0.values) }) { try? c.close().wait() }
    }

    /// Sends `frame` to `client`; false if it is not connected.
    @discardableResult
    public func send(_ frame: NetFrame, to client: ClientID) -> Bool {
        guard let c = connections.withLock({ $0[client] }) else { return false }
        c.writeAndFlush(frame, promise: nil)
        return true
    }

    /// Nodes connected now.
    public var connectedClients: [ClientID] { connections.withLock { $0.keys.sorted() } }

    /// Closes `client`'s connection (a node the cluster has given up on).
    public func disconnect(_ client: ClientID) {
        connections.withLock { $0[client] }?.close(promise: nil)
    }

    static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<NetHandshake.nonceSize).map { _ in UInt8.random(in: .min ... .max, using: &g) }
    }

    func admit(_ client: ClientID, _ channel: any Channel) -> Bool {
        connections.withLock { m in
            guard m[client] == nil else { return false }
            m[client] = channel
            return true
        }
    }

    func release(_ client: ClientID, _ channel: any Channel) {
        connections.withLock { m in
            if m[client] === channel { m[client] = nil }
        }
    }
}

/// One node's connection, on its event loop: the handshake, then frames to the handler's queue.
final class ServerConnection: ChannelInboundHandler {
    typealias InboundIn = NetFrame
    typealias OutboundOut = NetFrame

    let server: NetServer
    var handshake: ServerHandshake
    var client: ClientID?
    var closing = false
    let queue = DispatchQueue(label: "scoutfs.net.client")

    init(server: NetServer, nonce: [UInt8]) {
        self.server = server
        handshake = ServerHandshake(fsid: server.fsid, key: server.key, nonce: nonce)
    }

    private func peer(_ context: ChannelHandlerContext) -> String {
        let addr = context.channel.remoteAddress.map { "\($0)" } ?? "an unknown address"
        return client.map { "client \($0) (\(addr))" } ?? addr
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(handshake.hello), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let frame = unwrapInboundIn(data)
        let channel = context.channel
        switch handshake.received(frame, admit: { server.admit($0, channel) }) {
        case .welcome(let welcome, let c):
            client = c
            context.writeAndFlush(wrapOutboundOut(welcome), promise: nil)
            server.log("network: client \(c) connected from \(channel.remoteAddress.map { "\($0)" } ?? "?")")
            let handler = server.handler
            queue.async { handler.connected(c) }
        case .refuse(let refusal, let reason):
            refuse(context, refusal, reason)
        case .deliver(let f):
            deliver(context, f)
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: NetFrame, _ reason: String) {
        server.log("network: refused \(peer(context)): \(reason)")
        closing = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(refusal)).whenComplete { _ in channel.close(promise: nil) }
    }

    private func deliver(_ context: ChannelHandlerContext, _ f: NetFrame) {
        guard let c = client else { return }
        let handler = server.handler
        let channel = context.channel
        switch f.kind {
        case .heartbeat:
            return
        case .lock:
            guard f.flags.isEmpty, f.id == 0 else {
                return refuse(context, NetFrame(.refusal, body: NetRefusal("lock frame with call flags").encoded), "lock frame with call flags")
            }
            let body = f.body
            queue.async { handler.received(.lock, body, from: c) }
        case .call:
            guard f.flags.isEmpty, f.id != 0 else {
                return refuse(context, NetFrame(.refusal, body: NetRefusal("call frame without an id or with answer flags").encoded),
                              "call frame without an id or with answer flags")
            }
            let body = f.body
            let id = f.id
            queue.async {
                let answer: NetFrame
                do {
                    answer = NetFrame(.call, flags: .answer, id: id, body: try handler.call(body, from: c))
                } catch {
                    answer = NetFrame(.call, flags: [.answer, .failed], id: id, body: Array("\(error)".utf8.prefix(NetHandshake.maxReason)))
                }
                channel.writeAndFlush(answer, promise: nil)
            }
        case .hello, .greeting, .welcome, .refusal:
            refuse(context, NetFrame(.refusal, body: NetRefusal("a \(f.kind) frame after the handshake").encoded), "a \(f.kind) frame after the handshake")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent else { return context.fireUserInboundEventTriggered(event) }
        switch idle {
        case .write:
            if !closing { context.writeAndFlush(wrapOutboundOut(NetFrame(.heartbeat)), promise: nil) }
        case .read:
            server.log("network: \(peer(context)) silent for \(server.timers.silenceTimeout); closing its connection")
            closing = true
            context.close(promise: nil)
        case .all:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        server.log("network: \(peer(context)): \(error); closing its connection")
        closing = true
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let c = client {
            server.release(c, context.channel)
            server.log("network: client \(c) disconnected")
            let handler = server.handler
            queue.async { handler.disconnected(c) }
        }
        context.fireChannelInactive()
    }
}
