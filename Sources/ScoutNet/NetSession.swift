public import ScoutFormat

/// Exactly-once, in-order delivery across reconnects, as a plain state machine: one per
/// direction pair of a node and the server, outliving the connections that carry it.
///
/// Lock messages, calls and answers are *sequenced*: each gets the next `seq` (from 1) and is
/// kept until the peer acknowledges it. Every frame carries `ack`, how many sequenced frames
/// this side has taken in, so the peer can let go of them. When a connection breaks and a new
/// one resumes the session, each side tells the other how many it took in (the greeting and
/// the welcome), and resends the rest; a frame that arrives twice is dropped the second time.
/// That is what makes a resent call run once, and a grant or an invalidation arrive once.
public struct NetSession: Sendable {
    public private(set) var nextSeq: UInt64 = 1
    /// Sequenced frames taken in from the peer, in order.
    public private(set) var received: UInt64 = 0
    /// Sent and not yet acknowledged, in seq order.
    private var unacked: [NetFrame] = []
    private var unackedStart = 0

    public init() {}

    /// Frames kept for a resend.
    public var unackedCount: Int { unacked.count - unackedStart }

    public static func isSequenced(_ kind: NetKind) -> Bool { kind == .lock || kind == .call || kind == .notice }

    /// `frame` numbered and stamped with this side's ack; a sequenced one is kept until the
    /// peer acknowledges it.
    public mutating func stamp(_ frame: NetFrame) -> NetFrame {
        var f = frame
        f.ack = received
        if Self.isSequenced(f.kind) {
            f.seq = nextSeq
            nextSeq += 1
            unacked.append(f)
        } else {
            f.seq = 0
        }
        return f
    }

    /// Takes in a frame from the peer: true if it is to be delivered, false if it came before
    /// (a resend of something delivered). Throws on a frame that skips ahead or an ack of
    /// frames never sent: the peer is broken, and the connection must close.
    public mutating func accept(_ frame: NetFrame) throws(NetError) -> Bool {
        try acknowledge(frame.ack)
        guard Self.isSequenced(frame.kind) else {
            guard frame.seq == 0 else { throw NetError("a \(frame.kind) frame with seq \(frame.seq); only lock, call and notice frames are numbered") }
            return true
        }
        if frame.seq <= received { return false }
        guard frame.seq == received + 1 else {
            throw NetError("frame \(frame.seq) arrived after frame \(received): \(frame.seq - received - 1) lost without a reconnect")
        }
        received = frame.seq
        return true
    }

    /// What to send again on a new connection, given how many frames the peer says it took in.
    public mutating func resume(peerReceived: UInt64) throws(NetError) -> [NetFrame] {
        try acknowledge(peerReceived)
        return unacked[unackedStart...].map { f in
            var f = f
            f.ack = received
            return f
        }
    }

    private mutating func acknowledge(_ n: UInt64) throws(NetError) {
        guard n < nextSeq else {
            throw NetError("peer acknowledged \(n) frames, only \(nextSeq - 1) were sent")
        }
        while unackedStart < unacked.count, unacked[unackedStart].seq <= n {
            unackedStart += 1
        }
        // Let go of the acknowledged front now and then, not at every ack.
        if unackedStart > 64, unackedStart * 2 > unacked.count {
            unacked.removeFirst(unackedStart)
            unackedStart = 0
        }
    }
}
