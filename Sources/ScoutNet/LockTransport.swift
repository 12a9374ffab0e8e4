public import ScoutFormat
import Synchronization

/// A mount's id in the cluster (the original's `rid`).
public typealias ClientID = UInt64

/// How a lock client reaches its server. `send` must not block on the server's answer: answers
/// come back through the client's `receive`, possibly on another thread.
public protocol LockServerLink: Sendable {
    func send(_ message: LockClientMessage)
}

/// How a lock server reaches its clients. A message to a client that is gone is dropped.
public protocol LockClientLinks: Sendable {
    func send(_ message: LockServerMessage, to client: ClientID)
}

/// Lock messages between clients and a server in one process, for tests, simulations and
/// benchmarks. Every message goes through its wire encoding, so the codecs are exercised too.
///
/// In *immediate* mode `send` delivers on the caller's thread. In *queued* mode messages wait
/// until `deliverOne(using:)` picks one at random among the oldest message of each channel
/// (direction, client, lock): messages about different locks are reordered, as they would be by
/// receive queues on a real network, while each lock's messages stay in order.
public final class InMemoryLockNetwork: Sendable {
    public typealias ClientHandler = @Sendable (LockServerMessage) -> Void
    public typealias ServerHandler = @Sendable (ClientID, LockClientMessage) -> Void

    struct Channel: Hashable {
        var toServer: Bool
        var client: ClientID
        var key: Key?
    }

    struct Envelope {
        var channel: Channel
        var bytes: [UInt8]
    }

    struct State {
        var clients: [ClientID: ClientHandler] = [:]
        var server: ServerHandler?
        var queue: [Envelope] = []
        var delivered = 0
        var tap: (@Sendable (String) -> Void)?
    }

    public let immediate: Bool
    private let state = Mutex(State())

    public init(immediate: Bool) {
        self.immediate = immediate
    }

    public func attachServer(_ handler: @escaping ServerHandler) {
        state.withLock { $0.server = handler }
    }

    public func attachClient(_ id: ClientID, _ handler: @escaping ClientHandler) {
        state.withLock { $0.clients[id] = handler }
    }

    public func detachClient(_ id: ClientID) {
        state.withLock { s in
            s.clients[id] = nil
            s.queue.removeAll { $0.channel.client == id }
        }
    }

    /// Whether client `id` is attached here.
    public func isAttached(_ id: ClientID) -> Bool {
        state.withLock { $0.clients[id] != nil }
    }

    /// The link a client sends on.
    public func serverLink(for client: ClientID) -> some LockServerLink {
        ToServer(network: self, client: client)
    }

    /// The links a server sends on.
    public var clientLinks: some LockClientLinks { ToClients(network: self) }

    /// Messages sent and not yet delivered.
    public var inFlight: Int { state.withLock { $0.queue.count } }

    /// Messages delivered so far.
    public var deliveredCount: Int { state.withLock { $0.delivered } }

    /// Sees every message as it is delivered (tracing a failing simulation).
    public func setTap(_ tap: (@Sendable (String) -> Void)?) {
        state.withLock { $0.tap = tap }
    }

    /// Loses every message in flight, as a server crash and reconnect would.
    public func dropAll() {
        state.withLock { $0.queue.removeAll() }
    }

    /// Delivers one queued message, chosen at random among the heads of the channels; false
    /// when nothing is queued.
    @discardableResult
    public func deliverOne(using rng: inout some RandomNumberGenerator) -> Bool {
        let picked: Envelope? = state.withLock { s in
            guard !s.queue.isEmpty else { return nil }
            var seen = Set<Channel>()
            var heads: [Int] = []
            for (i, e) in s.queue.enumerated() where seen.insert(e.channel).inserted {
                heads.append(i)
            }
            let i = heads[Int.random(in: 0..<heads.count, using: &rng)]
            return s.queue.remove(at: i)
        }
        guard let picked else { return false }
        deliver(picked)
        return true
    }

    func enqueue(_ e: Envelope) {
        if immediate {
            deliver(e)
        } else {
            state.withLock { $0.queue.append(e) }
        }
    }

    private func deliver(_ e: Envelope) {
        if e.channel.toServer {
            let (handler, tap) = state.withLock { s in
                s.delivered += 1
                return (s.server, s.tap)
            }
            // A message that does not decode is a bug in the encoder; the real network
            // closes the connection, here the test must fail loudly.
            guard let handler else { return }
            do {
                let m = try LockClientMessage(decoding: e.bytes)
                tap?("client \(e.channel.client) -> server: \(m)")
                handler(e.channel.client, m)
            } catch {
                preconditionFailure("in-memory lock network: \(error)")
            }
        } else {
            let (handler, tap) = state.withLock { s in
                s.delivered += 1
                return (s.clients[e.channel.client], s.tap)
            }
            guard let handler else { return }
            do {
                let m = try LockServerMessage(decoding: e.bytes)
                tap?("server -> client \(e.channel.client): \(m)")
                handler(m)
            } catch {
                preconditionFailure("in-memory lock network: \(error)")
            }
        }
    }

    struct ToServer: LockServerLink {
        let network: InMemoryLockNetwork
        let client: ClientID
        func send(_ message: LockClientMessage) {
            network.enqueue(Envelope(channel: Channel(toServer: true, client: client, key: message.key),
                                     bytes: message.encoded))
        }
    }

    struct ToClients: LockClientLinks {
        let network: InMemoryLockNetwork
        func send(_ message: LockServerMessage, to client: ClientID) {
            network.enqueue(Envelope(channel: Channel(toServer: false, client: client, key: message.key),
                                     bytes: message.encoded))
        }
    }
}
