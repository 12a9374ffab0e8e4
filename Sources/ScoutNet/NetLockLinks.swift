public import ScoutFormat

/// A lock client's link to its server over the network.
public struct NetLockServerLink: LockServerLink {
    let client: NetClient

    public init(_ client: NetClient) {
        self.client = client
    }

    public func send(_ message: LockClientMessage) {
        client.send(.lock, message.encoded)
    }
}

/// A lock server's links to its clients over the network. A message to a node without a
/// session is dropped, as `LockClientLinks` allows: the node is gone, and recovery or fencing
/// decides what becomes of its locks.
public struct NetLockClientLinks: LockClientLinks {
    let server: NetServer
    /// Sent to the node right before each grant, on the same connection (the server's roots:
    /// without them the node would ask for them before its users go on, a round trip per
    /// hand-over).
    let beforeGrant: (@Sendable () -> NetNotice)?

    public init(_ server: NetServer, beforeGrant: (@Sendable () -> NetNotice)? = nil) {
        self.server = server
        self.beforeGrant = beforeGrant
    }

    public func send(_ message: LockServerMessage, to client: ClientID) {
        if case .grant = message, let beforeGrant { _ = server.send(.notice, beforeGrant().encoded, to: client) }
        server.send(.lock, message.encoded, to: client)
    }
}

extension LockClientMessage {
    /// Decodes a message a node sent over the network, refusing one about a key that starts
    /// no lock range (the server would otherwise keep state for a lock that cannot exist).
    public init(fromNetwork bytes: [UInt8]) throws(FormatError) {
        try self.init(decoding: bytes)
        switch self {
        case .request(let m), .invalidated(let m):
            try Self.checkRange(m.key)
        case .recoverReply(let r):
            for e in r.entries { try Self.checkRange(e.key) }
        }
    }

    static func checkRange(_ key: Key) throws(FormatError) {
        guard LockRange.covering(key)?.start == key else {
            throw FormatError("lock message for key \(key), which starts no lock range")
        }
    }
}

extension LockServerMessage {
    /// Decodes a message the server sent over the network, refusing grants and invalidations
    /// of keys that start no lock range.
    public init(fromNetwork bytes: [UInt8]) throws(FormatError) {
        try self.init(decoding: bytes)
        switch self {
        case .grant(let m), .invalidate(let m):
            try LockClientMessage.checkRange(m.key)
        case .recover:
            break
        }
    }
}
