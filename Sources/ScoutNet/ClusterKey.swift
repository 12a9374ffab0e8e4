import Crypto
#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat

/// The secret every node of one cluster holds (mkfs makes it): a connection whose peer cannot
/// prove it holds the same key is refused before anything else is said. Kept in a file that
/// only its owner may read, as 64 hex digits and a newline, so that it can be copied to the
/// other nodes as text.
public struct ClusterKey: Sendable {
    public static let size = 32
    private let key: SymmetricKey

    public init(bytes: [UInt8]) throws(ClusterKeyError) {
        guard bytes.count == Self.size else {
            throw ClusterKeyError("a cluster key is \(Self.size) bytes, not \(bytes.count)")
        }
        key = SymmetricKey(data: bytes)
    }

    /// A new random key.
    public static func generate() -> ClusterKey {
        // The size is right by construction.
        try! ClusterKey(bytes: randomBytes(size))
    }

    /// HMAC-SHA256 of `input` under the key.
    public func proof(of input: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: input, using: key))
    }

    /// Whether `proof` is the key's proof of `input` (compared in constant time).
    public func verify(_ proof: [UInt8], of input: [UInt8]) -> Bool {
        proof.count == NetHandshake.proofSize && HMAC<SHA256>.isValidAuthenticationCode(proof, authenticating: input, using: key)
    }

    /// The key as it is kept in its file.
    public var fileText: String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        key.withUnsafeBytes { for b in $0 { text += [digits[Int(b >> 4)], digits[Int(b & 15)]] } }
        return String(decoding: text, as: UTF8.self) + "\n"
    }

    /// Parses the file's text: 64 hex digits, surrounding whitespace ignored.
    public init(fileText: String) throws(ClusterKeyError) {
        let hex = Array(fileText.utf8).filter { !($0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09) }
        guard hex.count == 2 * Self.size else {
            throw ClusterKeyError("a cluster key file holds \(2 * Self.size) hex digits, this one \(hex.count) characters")
        }
        func digit(_ c: UInt8) throws(ClusterKeyError) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: throw ClusterKeyError("a cluster key file holds only hex digits")
            }
        }
        var bytes: [UInt8] = []
        var i = 0
        while i < hex.count {
            bytes.append(try digit(hex[i]) << 4 | digit(hex[i + 1]))
            i += 2
        }
        try self.init(bytes: bytes)
    }

    /// Reads the key at `path`, refusing a file that others than its owner may read.
    public static func load(from path: String) throws(ClusterKeyError) -> ClusterKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ClusterKeyError("cannot open cluster key \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ClusterKeyError("cannot stat cluster key \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & 0o077 == 0 else {
            throw ClusterKeyError("cluster key \(path) may be read by others (mode \(String(st.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`")
        }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw ClusterKeyError("cannot read cluster key \(path): \(String(cString: strerror(errno)))") }
        do {
            return try ClusterKey(fileText: String(decoding: buf[..<n], as: UTF8.self))
        } catch {
            throw ClusterKeyError("cluster key \(path): \(error.description)")
        }
    }

    /// Writes the key to a new file at `path` that only its owner may read; an existing file
    /// is left alone and refused (it may be another cluster's key).
    public func save(to path: String) throws(ClusterKeyError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ClusterKeyError("cannot create cluster key \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let text = Array(fileText.utf8)
        let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == text.count, fsync(fd) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(path)
            throw ClusterKeyError("cannot write cluster key \(path): \(e)")
        }
    }
}

public struct ClusterKeyError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
