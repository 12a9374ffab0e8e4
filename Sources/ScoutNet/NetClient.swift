import NIOCore
import NIOPosix
import Dispatch
public import ScoutFormat
import Synchronization

/// A node's connection to the server: connects, proves it holds the cluster key and checks
/// that the server does (`ClientHandshake`), then carries messages both ways and calls with
/// their answers. When the connection breaks it reconnects by itself, resumes its session and
/// resends what the server did not take in (`NetSession`): callers see a wait, not an error.
/// If the server that answers is a new run (it restarted), the session cannot resume: calls in
/// flight fail, since it cannot be known whether they ran, and `onReset` tells the node, whose
/// lock state the new server must recover.
///
/// `call` blocks its thread until the answer comes. What the server sends unasked reaches
/// `onMessage` on a queue of this client's own, in order; calls may be made from it, and what
/// it throws closes the connection (the message is not sent again).
public final class NetClient: Sendable {
    public let client: ClientID
    /// Where the server is, asked at every connection attempt: a server that moves (a new
    /// leader of the quorum) is found at the next one; nil: not known yet, try again later.
    let resolve: @Sendable () -> (host: String, port: Int)?
    let fsid: UInt64
    let key: ClusterKey
    let incarnation: UInt64
    let timers: NetTimers
    let onMessage: @Sendable (NetKind, [UInt8]) throws -> Void
    let onReset: @Sendable () -> Void
    let log: @Sendable (String) -> Void
    let queue = DispatchQueue(label: "scoutfs.net.server-messages")
    let state = Mutex(State())

    struct State {
        var net = NetSession()
        var serverInstance: UInt64 = 0
        var channel: (any Channel)?
        var nextID: UInt64 = 1
        var pending: [UInt64: CallWaiter] = [:]
        /// Set by `close`: no reconnects, calls fail.
        var closed: String?
        /// The first connection's outcome, for `connect` to wait on.
        var first: CallWaiter?
        var reconnects = 0
        /// Wait before the next attempt; doubles while attempts fail, up to a second.
        var backoff: Duration = .zero
        /// Attempts that failed since the last connection (logged now and then, not each).
        var failures = 0
        /// Until when a first connection that finds no server listening tries again.
        var waitForServerUntil: ContinuousClock.Instant?
        /// Where the last attempt went.
        var address = ""
        /// Asks `resolve` now and then whether the server moved (`watchForMoves`).
        var watch: RepeatedTask?
    }

    private init(resolve: @escaping @Sendable () -> (host: String, port: Int)?, fsid: UInt64, client: ClientID, key: ClusterKey, timers: NetTimers,
                 onMessage: @escaping @Sendable (NetKind, [UInt8]) throws -> Void, onReset: @escaping @Sendable () -> Void,
                 log: @escaping @Sendable (String) -> Void) {
        self.resolve = resolve
        self.fsid = fsid
        self.client = client
        self.key = key
        self.timers = timers
        self.onMessage = onMessage
        self.onReset = onReset
        self.log = log
        incarnation = UInt64.random(in: 1 ... .max)
    }

    /// Connects to the server at `host:port` as `client` of filesystem `fsid`; returns once the
    /// server has welcomed it. Throws with the server's reason when refused, or when the
    /// server cannot be reached or does not answer within the silence timeout. With
    /// `waitForServer`, a server that cannot be reached yet (not started, or restarting) is
    /// tried again, with a log line now and then, for that long.
    public static func connect(host: String, port: Int, fsid: UInt64, client: ClientID, key: ClusterKey,
                               timers: NetTimers = NetTimers(), waitForServer: Duration = .zero,
                               onMessage: @escaping @Sendable (NetKind, [UInt8]) throws -> Void,
                               onReset: @escaping @Sendable () -> Void = {},
                               log: @escaping @Sendable (String) -> Void) throws -> NetClient {
        try connect(resolve: { (host, port) }, fsid: fsid, client: client, key: key, timers: timers, waitForServer: waitForServer,
                    onMessage: onMessage, onReset: onReset, log: log)
    }

    /// Connects to the server wherever `resolve` says it is at each attempt (nil: not known
    /// yet, which counts as not reachable).
    public static func connect(resolve: @escaping @Sendable () -> (host: String, port: Int)?, fsid: UInt64, client: ClientID, key: ClusterKey,
                               timers: NetTimers = NetTimers(), waitForServer: Duration = .zero,
                               onMessage: @escaping @Sendable (NetKind, [UInt8]) throws -> Void,
                               onReset: @escaping @Sendable () -> Void = {},
                               log: @escaping @Sendable (String) -> Void) throws -> NetClient {
        let c = NetClient(resolve: resolve, fsid: fsid, client: client, key: key, timers: timers,
                          onMessage: onMessage, onReset: onReset, log: log)
        let first = CallWaiter()
        c.state.withLock { s in
            s.first = first
            if waitForServer > .zero { s.waitForServerUntil = .now + waitForServer }
        }
        c.attempt()
        do {
            _ = try first.wait()
        } catch {
            c.close(why: "first connection failed")
            throw NetError("connecting to the server\(c.resolve().map { " at \($0.host):\($0.port)" } ?? "") as client \(String(client, radix: 16)): \(error)")
        }
        c.watchForMoves()
        return c
    }

    /// A server that is cut off or hung keeps its connection open and silent until the
    /// silence timeout, while the quorum has elected another that waits for this node (its
    /// recovery timeout may be shorter). So every heartbeat interval `resolve` is asked again,
    /// and a connection to another address than it names now is dropped: the reconnect goes
    /// to the new server.
    private func watchForMoves() {
        let every = TimeAmount(timers.heartbeatInterval)
        let task = MultiThreadedEventLoopGroup.singleton.next().scheduleRepeatedTask(initialDelay: every, delay: every) { [weak self] _ in
            self?.leaveIfMoved()
        }
        let stale = state.withLock { s -> RepeatedTask? in
            guard s.closed == nil else { return task }
            s.watch = task
            return nil
        }
        stale?.cancel()
    }

    private func leaveIfMoved() {
        guard let (host, port) = resolve() else { return }
        let now = "\(host):\(port)"
        let (channel, was) = state.withLock { s -> ((any Channel)?, String) in
            guard s.closed == nil, let ch = s.channel, s.address != now else { return (nil, s.address) }
            return (ch, s.address)
        }
        guard let channel else { return }
        log("network: the quorum names a new server at \(now); leaving the one at \(was)")
        channel.close(promise: nil)
    }

    /// Sends a message that expects no answer: now, or when the connection is back.
    public func send(_ kind: NetKind, _ body: [UInt8]) {
        state.withLock { s in
            guard s.closed == nil else { return }
            let f = s.net.stamp(NetFrame(kind, body: body))
            s.channel?.post(f)
        }
    }

    /// Calls the server and waits for its answer, across reconnects.
    public func call(_ body: [UInt8]) throws -> [UInt8] {
        let waiter = CallWaiter()
        try state.withLock { s throws(NetError) in
            if let why = s.closed { throw NetError("call to the server: the connection is closed (\(why))") }
            let id = s.nextID
            s.nextID += 1
            s.pending[id] = waiter
            let f = s.net.stamp(NetFrame(.call, id: id, body: body))
            s.channel?.post(f)
        }
        return try waiter.wait()
    }

    /// Calls not answered yet.
    public var callsInFlight: Int { state.withLock { $0.pending.count } }
    /// Whether a connection is up now.
    public var isConnected: Bool { state.withLock { $0.channel != nil } }
    /// Connections made after the first.
    public var reconnects: Int { state.withLock { $0.reconnects } }

    /// Closes the connection for good; calls in flight fail.
    public func close() { close(why: "closed by this node") }

    private func close(why: String) {
        let (channel, pending, watch) = state.withLock { s in
            defer {
                s.closed = s.closed ?? why
                s.channel = nil
                s.pending = [:]
                s.watch = nil
            }
            return (s.channel, Array(s.pending.values), s.watch)
        }
        watch?.cancel()
        for w in pending { w.finish(.failure(NetError("call to the server: the connection is closed (\(why))"))) }
        try? channel?.close().wait()
    }

    // MARK: connections

    /// One try at a connection; on failure, another after a delay (unless closed).
    func attempt(delay: Duration = .zero) {
        // (The delay is only when this attempt starts; `failed` sets the next one.)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        loop.scheduleTask(in: TimeAmount(delay)) { [self] in
            guard state.withLock({ $0.closed == nil }) else { return }
            let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(TimeAmount(timers.silenceTimeout))
                .channelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        let (instance, received) = state.withLock { ($0.serverInstance, $0.net.received) }
                        try channel.pipeline.syncOperations.addNetHandlers(timers, ClientConnection(client: self, handshake: ClientHandshake(
                            fsid: fsid, client: client, key: key, incarnation: incarnation,
                            resumeInstance: instance, resumeReceived: received, nonce: randomBytes(NetHandshake.nonceSize))))
                    }
                }
            guard let (host, port) = resolve() else {
                failed("no server is known yet (no quorum leader is recorded)", unreachable: true)
                return
            }
            state.withLock { $0.address = "\(host):\(port)" }
            bootstrap.connect(host: host, port: port).whenFailure { [self] error in
                failed("cannot connect to the server at \(host):\(port): \(error)", unreachable: true)
            }
        }
    }

    /// A connection attempt or a connection ended (`reason`): the first one fails `connect`;
    /// later ones try again.
    func failed(_ reason: String, unreachable: Bool = false) {
        let first = state.withLock { s -> CallWaiter? in
            if unreachable, let until = s.waitForServerUntil, ContinuousClock.now < until, s.closed == nil { return nil }
            defer { s.first = nil }
            return s.first
        }
        if let first {
            first.finish(.failure(NetError(reason)))
            return
        }
        let next: (Duration, Int)? = state.withLock { s in
            guard s.closed == nil else {
                s.first?.finish(.failure(NetError(reason)))
                return nil
            }
            s.backoff = s.backoff == .zero ? timers.reconnectDelay : min(s.backoff * 2, .seconds(1))
            s.failures += 1
            return (s.backoff, s.failures)
        }
        guard let (delay, failures) = next else { return }
        if failures == 1 || failures % 60 == 0 {
            log("network: \(state.withLock { $0.first } == nil ? "reconnecting" : "connecting") to the server failed \(failures) time(s), trying again every \(delay) or less: \(reason)")
        }
        attempt(delay: delay)
    }

    /// The handshake on `channel` ended in a welcome.
    func established(_ channel: any Channel, serverInstance: UInt64, _ w: NetWelcome) throws(NetError) {
        var lost: [CallWaiter] = []
        let (first, reset) = try state.withLock { s throws(NetError) in
            guard s.closed == nil else { throw NetError("closed") }
            let hadSession = s.serverInstance != 0
            if w.resumed {
                let resend = try s.net.resume(peerReceived: w.received)
                s.channel = channel
                for f in resend { channel.post(f) }
            } else {
                // A new session: whatever the old one held died with the server that had it.
                lost = Array(s.pending.values)
                s.pending = [:]
                s.net = NetSession()
                s.channel = channel
            }
            s.serverInstance = serverInstance
            s.backoff = .zero
            s.failures = 0
            if s.first == nil { s.reconnects += 1 }
            defer { s.first = nil }
            return (s.first, hadSession && !w.resumed)
        }
        for w in lost { w.finish(.failure(.serverRestarted)) }
        first?.finish(.success([]))
        if reset {
            log("network: the server is a new run (at \(state.withLock { $0.address })); session started again")
            let onReset = onReset
            queue.async { onReset() }
        } else if first == nil {
            log("network: reconnected to the server at \(state.withLock { $0.address })")
        }
    }

    /// A frame of an established connection. Throws if it breaks the session's order.
    func incoming(_ f: NetFrame) throws(NetError) {
        let (fresh, waiter) = try state.withLock { s throws(NetError) in
            let fresh = try s.net.accept(f)
            guard fresh, f.kind == .call else { return (fresh, nil as CallWaiter?) }
            guard f.flags.contains(.answer), let w = s.pending.removeValue(forKey: f.id) else {
                throw NetError("server sent call frame \(f.id), which no call of this node is waiting for")
            }
            return (fresh, w)
        }
        guard fresh else { return }
        if let waiter {
            waiter.finish(f.flags.contains(.failed) ? .failure(NetError(String(decoding: f.body, as: UTF8.self))) : .success(f.body))
        } else if f.kind == .lock || f.kind == .notice {
            let body = f.body
            let kind = f.kind
            queue.async { [self] in
                do {
                    try onMessage(kind, body)
                } catch {
                    log("network: refused a message of the server: \(error); reconnecting")
                    state.withLock { $0.channel }?.close(promise: nil)
                }
            }
        }
    }

    func heartbeat(_ channel: any Channel) {
        state.withLock { s in
            guard s.channel === channel else { return }
            channel.post(s.net.stamp(NetFrame(.heartbeat)))
        }
    }

    /// `channel` is gone (`reason`); the session waits for the next connection.
    func lost(_ channel: any Channel, _ reason: String) {
        let wasCurrent = state.withLock { s in
            guard s.channel === channel else { return false }
            s.channel = nil
            return true
        }
        if wasCurrent { log("network: lost the server at \(state.withLock { $0.address }): \(reason); reconnecting") }
        failed(reason)
    }
}

/// One call's answer, waited for by the calling thread.
final class CallWaiter: Sendable {
    private let result = Mutex<Result<[UInt8], NetError>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    func finish(_ r: Result<[UInt8], NetError>) {
        let first = result.withLock { v in
            guard v == nil else { return false }
            v = r
            return true
        }
        if first { done.signal() }
    }

    func wait() throws(NetError) -> [UInt8] {
        done.wait()
        return try result.withLock { $0! }.get()
    }
}

/// One connection of a node, on its event loop.
final class ClientConnection: ChannelInboundHandler {
    typealias InboundIn = NetFrame
    typealias OutboundOut = NetFrame

    let client: NetClient
    var handshake: ClientHandshake
    var closeReason: String?

    init(client: NetClient, handshake: ClientHandshake) {
        self.client = client
        self.handshake = handshake
    }

    private func close(_ context: ChannelHandlerContext, _ reason: String) {
        guard closeReason == nil else { return }
        closeReason = reason
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard closeReason == nil else { return }
        switch handshake.received(unwrapInboundIn(data)) {
        case .send(let f):
            context.writeAndFlush(wrapOutboundOut(f), promise: nil)
        case .established(let instance, let w):
            do {
                try client.established(context.channel, serverInstance: instance, w)
            } catch {
                close(context, "\(error)")
            }
        case .fail(let reason):
            client.log("network: \(reason)")
            close(context, reason)
        case .deliver(let f):
            switch f.kind {
            case .heartbeat, .lock, .call, .notice:
                do { try client.incoming(f) } catch { close(context, "\(error)") }
            case .refusal:
                let why = (try? NetRefusal(decoding: f.body).reason) ?? "no reason given"
                client.log("network: server closed the connection: \(why)")
                close(context, "server closed the connection: \(why)")
            case .hello, .greeting, .welcome:
                close(context, "server sent a \(f.kind) frame after the handshake")
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent else { return context.fireUserInboundEventTriggered(event) }
        switch idle {
        case .write:
            if closeReason == nil, handshake.state == .established { client.heartbeat(context.channel) }
        case .read:
            close(context, "server silent for \(client.timers.silenceTimeout)")
        case .all:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        close(context, "\(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.lost(context.channel, closeReason ?? "connection closed")
        context.fireChannelInactive()
    }
}
