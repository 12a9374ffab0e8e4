import NIOCore
import ScoutFormat

/// Cuts a TCP stream into `NetFrame`s. The length is checked as soon as its four bytes are in,
/// so a peer announcing an oversized or undersized frame is refused before anything of the
/// frame is buffered (the length-field decoders of NIO's extras accept up to 2 GiB).
struct NetFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = NetFrame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
            return .needMoreData
        }
        let n = try NetFrame.checkLength(length)
        guard buffer.readableBytes >= NetFrame.lengthSize + n else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: NetFrame.lengthSize)
        guard let bytes = buffer.readBytes(length: n) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(try NetFrame(decodingAfterLength: bytes)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 {
            let left = buffer.readableBytes
            buffer.moveReaderIndex(forwardBy: left)
            throw NetError("connection ended inside a frame (\(left) bytes of it arrived)")
        }
        return .needMoreData
    }
}

struct NetFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = NetFrame

    func encode(data: NetFrame, out: inout ByteBuffer) throws {
        out.writeBytes(data.encoded)
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The handlers every connection starts with, both ends: frames in and out, and the timer
    /// that sends heartbeats and notices a silent peer; then `connection`, which speaks the
    /// protocol.
    func addNetHandlers(_ timers: NetTimers, _ connection: some ChannelInboundHandler) throws {
        try addHandlers([
            ByteToMessageHandler(NetFrameDecoder()),
            MessageToByteHandler(NetFrameEncoder()),
            IdleStateHandler(readTimeout: TimeAmount(timers.silenceTimeout), writeTimeout: TimeAmount(timers.heartbeatInterval)),
            connection,
        ])
    }
}

/// `count` bytes from the system's random source: nonces and keys.
func randomBytes(_ count: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &g) }
}

extension Channel {
    /// Writes `frame` from the channel's event loop after everything posted before it, never
    /// inline. Sessions write while holding their mutex (so frames leave in the order they were
    /// numbered); a write made inline on the event loop that fails closes the channel on the
    /// spot, and its inactive handler takes that same mutex: the event loop deadlocked on itself
    /// when a node's reconnect took over a connection on the same loop.
    func post(_ frame: NetFrame) {
        let channel = self
        eventLoop.execute { channel.writeAndFlush(frame, promise: nil) }
    }

    /// Closes the channel from its event loop, never inline (see `post`).
    func closeLater() {
        let channel = self
        eventLoop.execute { channel.close(promise: nil) }
    }
}

/// A failure of a connection or of a call over it.
public struct NetError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// The call was in flight when the server it went to ended: a new server run answered the
    /// reconnect, and whether the old one ran the call cannot be known from the network. A
    /// caller that must know asks the new server what it recorded (a commit:
    /// `LogTreeRecord.commits`).
    public var serverRestarted = false
    public init(_ description: String) { self.description = description }

    public static var serverRestarted: NetError {
        var e = NetError("the server restarted before it answered; it may or may not have run the call")
        e.serverRestarted = true
        return e
    }
}

/// How often each side sends a heartbeat when it has nothing else to say, and how long it
/// waits for any frame from the other before it gives the connection up. The timeout covers
/// the handshake too: a peer that connects and says nothing is dropped. How long the server
/// keeps a node's session after its connection is lost, for it to resume; and how long a node
/// waits between attempts to reconnect (doubling from `reconnectDelay` up to a second).
public struct NetTimers: Sendable {
    public var heartbeatInterval: Duration
    public var silenceTimeout: Duration
    public var sessionLinger: Duration
    public var reconnectDelay: Duration

    public init(heartbeatInterval: Duration = .seconds(1), silenceTimeout: Duration = .seconds(10),
                sessionLinger: Duration = .seconds(30), reconnectDelay: Duration = .milliseconds(50)) {
        self.heartbeatInterval = heartbeatInterval
        self.silenceTimeout = silenceTimeout
        self.sessionLinger = sessionLinger
        self.reconnectDelay = reconnectDelay
    }
}

extension TimeAmount {
    init(_ d: Duration) {
        let (s, atto) = d.components
        self = .nanoseconds(s * 1_000_000_000 + atto / 1_000_000_000)
    }
}
