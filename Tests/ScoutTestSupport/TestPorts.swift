import Glibc
import Synchronization

/// Ports for servers a test starts later by number (a filesystem's quorum slots, a metrics
/// endpoint). A port the kernel picked with bind(0) and let go can be taken again, before the
/// test binds it, by any socket of a concurrent test: a client's connect and every other bind(0)
/// draw from the same ephemeral range. These come from below that range, where only explicit
/// binds land, and one cursor per process hands each caller a block nobody else here got.
public enum TestPorts {
    /// Below the kernel's default ephemeral range (32768–60999) and above the well-known and
    /// registered services a test machine is likely to run.
    static let range = 20_000..<32_000
    private static let cursor = Mutex<Int?>(nil)

    /// The first of `count` consecutive ports, each free for TCP and UDP on 127.0.0.1 now.
    public static func block(_ count: Int = 1) throws -> Int {
        precondition(count >= 1 && count < 64, "a block of \(count) ports")
        for _ in 0..<(range.count / count) {
            let first = cursor.withLock { at -> Int in
                // Processes started together (two test runs) begin at different places.
                var next = at ?? range.lowerBound + Int(getpid()) * 64 % (range.count - 64)
                if next + count > range.upperBound { next = range.lowerBound }
                at = next + count
                return next
            }
            if (first..<first + count).allSatisfy({ isFree($0, type: SOCK_STREAM) && isFree($0, type: SOCK_DGRAM) }) { return first }
        }
        throw NoFreeTestPorts()
    }

    private static func isFree(_ port: Int, type: __socket_type) -> Bool {
        let fd = socket(AF_INET, Int32(type.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// Every block of the range was taken: something else on the machine binds there.
public struct NoFreeTestPorts: Error, CustomStringConvertible {
    public var description: String { "no free block of ports in \(TestPorts.range) on 127.0.0.1; is another program binding there?" }
}
