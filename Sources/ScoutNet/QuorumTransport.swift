#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix
public import ScoutFormat
import Synchronization

/// The election's datagrams: a UDP socket on the slot's configured address and port (the
/// server's TCP port; UDP and TCP ports are separate), sending `QuorumMessage`s to the other
/// slots' and taking theirs in. Each datagram carries a proof under the cluster key, so a
/// host without the key cannot vote, stand or pose as a leader; what does not prove itself,
/// is of another filesystem or does not decode is dropped and counted (a flood of it must
/// not flood the log: the first of each minute is logged).
///
/// Datagrams may be lost, repeated or reordered: the election tolerates all three (a
/// repeated vote counts once, old terms are ignored).
public final class QuorumTransport: Sendable {
    public let fsid: UInt64
    let key: ClusterKey
    let peers: [UInt8: SocketAddress]
    let channel: any Channel
    let log: @Sendable (String) -> Void
    /// Datagrams dropped as unproven or unreadable (tests, status).
    public var refused: Int { handler.refused.load(ordering: .relaxed) }
    private let handler: Inbound

    static let label = Array("scoutfs quorum message".utf8)

    /// Binds `host:port` (port 0: any, for tests) and delivers every proven message to
    /// `receive`, on a network thread: it must not block.
    public init(host: String, port: Int, fsid: UInt64, key: ClusterKey, peers: [UInt8: (host: String, port: Int)],
                log: @escaping @Sendable (String) -> Void, receive: @escaping @Sendable (QuorumMessage) -> Void) throws {
        self.fsid = fsid
        self.key = key
        self.log = log
        var resolved: [UInt8: SocketAddress] = [:]
        for (slot, p) in peers {
            do {
                resolved[slot] = try SocketAddress.makeAddressResolvingHost(p.host, port: p.port)
            } catch {
                throw NetError("quorum slot \(slot)'s address \(p.host) port \(p.port) does not resolve: \(error); fix it with mkfs -Q")
            }
        }
        self.peers = resolved
        let handler = Inbound(fsid: fsid, key: key, log: log, receive: receive)
        self.handler = handler
        let bootstrap = DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            throw NetError("the election cannot use UDP \(host) port \(port): \(error); is another mount of this slot, or another program, using it?")
        }
    }

    /// The port bound (tests bind port 0).
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// Sends `m` to `slot`'s address; a send that fails is as good as a lost datagram.
    public func send(_ m: QuorumMessage, to slot: UInt8) {
        guard let to = peers[slot] else { return }
        let body = m.encode(fsid: fsid)
        var buf = channel.allocator.buffer(capacity: body.count + NetHandshake.proofSize)
        buf.writeBytes(body)
        buf.writeBytes(key.proof(of: Self.label + body))
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: to, data: buf), promise: nil)
    }

    public func close() {
        try? channel.close().wait()
    }

    final class Inbound: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let fsid: UInt64
        let key: ClusterKey
        let log: @Sendable (String) -> Void
        let receive: @Sendable (QuorumMessage) -> Void
        let refused = Atomic<Int>(0)
        private let lastLogged = Atomic<Int64>(0)

        init(fsid: UInt64, key: ClusterKey, log: @escaping @Sendable (String) -> Void, receive: @escaping @Sendable (QuorumMessage) -> Void) {
            self.fsid = fsid
            self.key = key
            self.log = log
            self.receive = receive
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            var buf = envelope.data
            let bytes = buf.readBytes(length: buf.readableBytes) ?? []
            let size = QuorumMessage.encodedSize
            guard bytes.count == size + NetHandshake.proofSize else {
                return drop("a datagram of \(bytes.count) bytes", from: envelope.remoteAddress)
            }
            let body = Array(bytes[..<size])
            guard key.verify(Array(bytes[size...]), of: QuorumTransport.label + body) else {
                return drop("a message without the cluster key's proof", from: envelope.remoteAddress)
            }
            do {
                receive(try QuorumMessage(decoding: body, fsid: fsid))
            } catch {
                drop("\(error)", from: envelope.remoteAddress)
            }
        }

        private func drop(_ what: String, from: SocketAddress) {
            refused.add(1, ordering: .relaxed)
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let minute = Int64(ts.tv_sec) / 60
            if lastLogged.exchange(minute, ordering: .relaxed) != minute {
                log("warning: election: dropped \(what) from \(from) (only the first such datagram each minute is logged)")
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // An ICMP unreachable from a slot that is down surfaces here; the election copes.
        }
    }
}
