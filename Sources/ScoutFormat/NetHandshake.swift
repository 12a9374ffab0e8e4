/// The messages that open a connection between a node and the server. Nothing else is said
/// before them: the server challenges (`NetHello`), the node proves it holds the cluster key
/// and names itself (`NetGreeting`), the server proves the same back (`NetWelcome`) or says why
/// not (`NetRefusal`) and closes. Proofs are HMAC-SHA256 over `greetingProofInput` and
/// `welcomeProofInput`, keyed with the cluster key; each side's fresh nonce makes a recorded
/// proof worthless on another connection.
///
/// The same messages resume a session after a broken connection: the hello names the server's
/// instance (new at each start), the greeting the instance and the node's incarnation (new at
/// each mount) of the session it had and how many frames it took in, the welcome whether the
/// session goes on and how many the server took in. The proofs cover these too.
public enum NetHandshake {
    /// Bumped when a message of the protocol changes; both ends must match.
    public static let version: UInt16 = 1
    public static let nonceSize = 32
    public static let proofSize = 32
    /// Longest refusal reason sent or accepted.
    public static let maxReason = 1024

    /// What the node's proof covers: the filesystem, who it says it is, both challenges and
    /// what it asks to resume.
    public static func greetingProofInput(_ g: NetGreeting, serverNonce: [UInt8]) -> [UInt8] {
        proofInput("scoutfs greeting", fsid: g.fsid, client: g.client, serverNonce, g.nonce,
                   [g.incarnation, g.resumeInstance, g.received])
    }

    /// What the server's proof covers: the same, in the other order and with another label, so
    /// a node's proof can never be replayed as the server's, and what it resumes.
    public static func welcomeProofInput(_ w: NetWelcome, fsid: UInt64, client: UInt64, serverNonce: [UInt8], clientNonce: [UInt8]) -> [UInt8] {
        proofInput("scoutfs welcome", fsid: fsid, client: client, clientNonce, serverNonce, [w.resumed ? 1 : 0, w.received])
    }

    private static func proofInput(_ label: String, fsid: UInt64, client: UInt64, _ a: [UInt8], _ b: [UInt8], _ fields: [UInt64]) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + 2 * nonceSize + 8 * fields.count)
        w.raw(Array(label.utf8))
        w.u16(version)
        w.u64(fsid)
        w.u64(client)
        w.raw(a)
        w.raw(b)
        for f in fields { w.u64(f) }
        return w.bytes
    }
}

/// Server → node: the first message on every connection.
public struct NetHello: Sendable, Equatable {
    public var version: UInt16
    public var fsid: UInt64
    /// This run of the server (random at its start): a session of another cannot resume.
    public var instance: UInt64
    public var nonce: [UInt8]

    public init(version: UInt16 = NetHandshake.version, fsid: UInt64, instance: UInt64, nonce: [UInt8]) {
        self.version = version
        self.fsid = fsid
        self.instance = instance
        self.nonce = nonce
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 18 + NetHandshake.nonceSize)
        w.u16(version)
        w.u64(fsid)
        w.u64(instance)
        w.raw(nonce)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "hello")
        version = try r.u16()
        fsid = try r.u64()
        instance = try r.u64()
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
    /// This mount of the node (random at its start): tells a reconnect of the same mount from
    /// another mount claiming the same id.
    public var incarnation: UInt64
    /// The server instance of the session to resume (0: none).
    public var resumeInstance: UInt64
    /// Sequenced frames the node took in on that session.
    public var received: UInt64
    public var nonce: [UInt8]
    /// HMAC of `NetHandshake.greetingProofInput` with the cluster key.
    public var proof: [UInt8]

    public init(version: UInt16 = NetHandshake.version, fsid: UInt64, client: UInt64, incarnation: UInt64,
                resumeInstance: UInt64 = 0, received: UInt64 = 0, nonce: [UInt8], proof: [UInt8] = []) {
        self.version = version
        self.fsid = fsid
        self.client = client
        self.incarnation = incarnation
        self.resumeInstance = resumeInstance
        self.received = received
        self.nonce = nonce
        self.proof = proof
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 42 + NetHandshake.nonceSize + NetHandshake.proofSize)
        w.u16(version)
        w.u64(fsid)
        w.u64(client)
        w.u64(incarnation)
        w.u64(resumeInstance)
        w.u64(received)
        w.raw(nonce)
        w.raw(proof)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "greeting")
        version = try r.u16()
        fsid = try r.u64()
        client = try r.u64()
        incarnation = try r.u64()
        resumeInstance = try r.u64()
        received = try r.u64()
        nonce = try r.raw(NetHandshake.nonceSize)
        proof = try r.raw(NetHandshake.proofSize)
        try r.finish()
    }
}

/// Server → node: the node is in, and the server holds the key too.
public struct NetWelcome: Sendable, Equatable {
    /// The session the node asked for goes on (else a new one starts, and what the node had
    /// unanswered on the old one is lost with the server that had it).
    public var resumed: Bool
    /// Sequenced frames the server took in on the resumed session.
    public var received: UInt64
    /// HMAC of `NetHandshake.welcomeProofInput` with the cluster key.
    public var proof: [UInt8]

    public init(resumed: Bool, received: UInt64, proof: [UInt8] = []) {
        self.resumed = resumed
        self.received = received
        self.proof = proof
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 9 + NetHandshake.proofSize)
        w.u8(resumed ? 1 : 0)
        w.u64(received)
        w.raw(proof)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        var r = ByteReader(bytes, what: "welcome")
        let flag = try r.u8()
        guard flag <= 1 else { throw FormatError("welcome with resumed flag \(flag)") }
        resumed = flag == 1
        received = try r.u64()
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
