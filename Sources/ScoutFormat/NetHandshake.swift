/// The messages that open a connection between a node and the server. Nothing else is said
/// before them: the server challenges (`NetHello`), the node proves it holds the cluster key
/// and names itself (`NetGreeting`), the server proves the same back (`NetWelcome`) or says why
/// not (`NetRefusal`) and closes. Proofs are HMAC-SHA256 over `greetingProofInput` and
/// `welcomeProofInput`, keyed with the cluster key; each side's fresh nonce makes a recorded
/// proof worthless on another connection.
public enum NetHandshake {
    /// Bumped when a message of the protocol changes; both ends must match.
    public static let version: UInt16 = 1
    public static let nonceSize = 32
    public static let proofSize = 32
    /// Longest refusal reason sent or accepted.
    public static let maxReason = 1024

    /// What the node's proof covers: the filesystem, who it says it is, and both challenges.
    public static func greetingProofInput(fsid: UInt64, client: UInt64, serverNonce: [UInt8], clientNonce: [UInt8]) -> [UInt8] {
        proofInput("scoutfs greeting", fsid: fsid, client: client, serverNonce, clientNonce)
    }

    /// What the server's proof covers: the same, in the other order and with another label, so
    /// a node's proof can never be replayed as the server's.
    public static func welcomeProofInput(fsid: UInt64, client: UInt64, serverNonce: [UInt8], clientNonce: [UInt8]) -> [UInt8] {
        proofInput("scoutfs welcome", fsid: fsid, client: client, clientNonce, serverNonce)
    }

    private static func proofInput(_ label: String, fsid: UInt64, client: UInt64, _ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + 2 * nonceSize)
        w.raw(Array(label.utf8))
        w.u16(version)
        w.u64(fsid)
        w.u64(client)
        w.raw(a)
        w.raw(b)
        return w.bytes
    }
}

/// Server → node: the first message on every connection.
public struct NetHello: Sendable, Equatable {
    public var version: UInt16
    public var fsid: UInt64
    public var nonce: [UInt8]

    public init(version: UInt16 = NetHandshake.version, fsid: UInt64, nonce: [UInt8]) {
        self.version = version
        self.fsid = fsid
        self.nonce = nonce
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 10 + NetHandshake.nonceSize)
        w.u16(version)
        w.u64(fsid)
        w.raw(nonce)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "hello")
        version = try r.u16()
        fsid = try r.u64()
        nonce = try r.raw(NetHandshake.nonceSize)
        try r.finish()
    }
}

/// Node → server: the answer to `NetHello`.
public struct NetGreeting: Sendable, Equatable {
    public var version: UInt16
    public var fsid: UInt64
    /// The node's client id (its `rid`), stable across its remounts.
    public var client: UInt64
    public var nonce: [UInt8]
    /// HMAC of `NetHandshake.greetingProofInput` with the cluster key.
    public var proof: [UInt8]

    public init(version: UInt16 = NetHandshake.version, fsid: UInt64, client: UInt64, nonce: [UInt8], proof: [UInt8]) {
        self.version = version
        self.fsid = fsid
        self.client = client
        self.nonce = nonce
        self.proof = proof
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 18 + NetHandshake.nonceSize + NetHandshake.proofSize)
        w.u16(version)
        w.u64(fsid)
        w.u64(client)
        w.raw(nonce)
        w.raw(proof)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "greeting")
        version = try r.u16()
        fsid = try r.u64()
        client = try r.u64()
        nonce = try r.raw(NetHandshake.nonceSize)
        proof = try r.raw(NetHandshake.proofSize)
        try r.finish()
    }
}

/// Server → node: the node is in, and the server holds the key too.
public struct NetWelcome: Sendable, Equatable {
    /// HMAC of `NetHandshake.welcomeProofInput` with the cluster key.
    public var proof: [UInt8]

    public init(proof: [UInt8]) {
        self.proof = proof
    }

    public var encoded: [UInt8] { proof }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "welcome")
        proof = try r.raw(NetHandshake.proofSize)
        try r.finish()
    }
}

/// Either way: why the connection closes.
public struct NetRefusal: Sendable, Equatable {
    public var reason: String

    public init(_ reason: String) {
        self.reason = reason
    }

    public var encoded: [UInt8] { Array(reason.utf8.prefix(NetHandshake.maxReason)) }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count <= NetHandshake.maxReason else {
            throw FormatError("refusal reason of \(bytes.count) bytes is over the \(NetHandshake.maxReason)-byte limit")
        }
        // A reason is only ever shown; bytes that are not UTF-8 are shown replaced.
        reason = String(decoding: bytes, as: UTF8.self)
    }
}
