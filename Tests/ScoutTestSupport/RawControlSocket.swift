#if canImport(Glibc)
import Glibc
#endif

/// A peer of a control socket that does what the CLI never would: any bytes, any number of
/// descriptors. Frames are a 4-byte little-endian length and the body.
public enum RawControlSocket {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// A connected socket, or throws.
    public static func connect(_ path: String) throws -> Int32 {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p.copyBytes(from: Array(path.utf8))
            p[path.utf8.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            close(s)
            throw Failure(description: "connect \(path): \(String(cString: strerror(errno)))")
        }
        return s
    }

    /// Sends `bytes` as they are, with `fds` attached to them (SCM_RIGHTS).
    public static func send(_ s: Int32, _ bytes: [UInt8], fds: [Int32] = []) throws {
        var bytes = bytes
        let header = MemoryLayout<cmsghdr>.stride
        let controlLength = fds.isEmpty ? 0 : header + fds.count * 4
        var control = [UInt8](repeating: 0, count: controlLength + 8)
        let n = bytes.withUnsafeMutableBytes { buf in
            control.withUnsafeMutableBytes { cbuf -> Int in
                var iov = iovec(iov_base: buf.baseAddress, iov_len: buf.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr()
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    if !fds.isEmpty {
                        msg.msg_control = cbuf.baseAddress
                        msg.msg_controllen = controlLength
                        let c = cbuf.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                        c.pointee.cmsg_level = SOL_SOCKET
                        c.pointee.cmsg_type = Int32(SCM_RIGHTS)
                        c.pointee.cmsg_len = controlLength
                        for (i, fd) in fds.enumerated() { (cbuf.baseAddress! + header + i * 4).storeBytes(of: fd, as: Int32.self) }
                    }
                    return sendmsg(s, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
        if n != bytes.count { throw Failure(description: "sendmsg: \(String(cString: strerror(errno)))") }
    }

    /// `body` framed.
    public static func frame(_ body: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(body.count).littleEndian, Array.init) + body
    }

    /// One reply body, or nil when the peer closed first.
    public static func reply(_ s: Int32) -> [UInt8]? {
        var all: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if all.count >= 4 {
                let length = Int(all[0]) | Int(all[1]) << 8 | Int(all[2]) << 16 | Int(all[3]) << 24
                if all.count >= 4 + length { return Array(all[4..<4 + length]) }
            }
            let n = buf.withUnsafeMutableBytes { read(s, $0.baseAddress, $0.count) }
            if n <= 0 { return nil }
            all += buf[0..<n]
        }
    }

    /// Descriptors of this process open on `path` now (other tests run beside the caller, so
    /// a plain count would not do).
    public static func descriptors(of path: String) -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        var target = [CChar](repeating: 0, count: 4096)
        while let e = readdir(dir) {
            let name = direntName(e)
            let len = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
            if len > 0 && String(decoding: target[0..<len].map { UInt8(bitPattern: $0) }, as: UTF8.self) == path { n += 1 }
        }
        return n
    }
}

/// O_PATH, which Glibc's Swift overlay leaves out (it needs _GNU_SOURCE).
public let O_PATH: Int32 = 0o10000000
