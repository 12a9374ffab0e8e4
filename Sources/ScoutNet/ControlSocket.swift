#if canImport(Glibc)
import Glibc
#endif
public import ScoutFormat
import Synchronization

/// A failure of the control socket itself (not of a request it carried).
public struct ControlSocketError: Error, CustomStringConvertible, Sendable {
    public var errno: Int32
    public var description: String

    /// With the errno of the call that just failed.
    public init(_ what: String) {
        self.init(what, errno: Glibc.errno)
    }

    public init(_ what: String, errno: Int32) {
        self.errno = errno
        description = errno == 0 ? what : "\(what): \(String(cString: strerror(errno)))"
    }
}

/// Who is on the other end of a connection, as the kernel saw it connect (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// Framing shared by both ends: a 4-byte little-endian length, then the body; up to
/// `requestDescriptors` descriptors may ride along with the first bytes (SCM_RIGHTS).
enum ControlFrame {
    enum Received {
        case message([UInt8], fds: [Int32])
        case closed
        /// The peer announced more than `ControlMessage.maxBody`; nothing of it was read.
        case oversized(Int)
        /// The connection ended inside a message.
        case truncated
        /// More descriptors came than fit (MSG_CTRUNC); all that arrived were closed.
        case tooManyDescriptors
    }

    static func send(_ sock: Int32, _ body: [UInt8], fds: [Int32] = []) throws(ControlSocketError) {
        var frame = ByteWriter(capacity: 4 + body.count)
        frame.u32(UInt32(body.count))
        frame.raw(body)
        let bytes = frame.bytes
        var sent = 0
        if !fds.isEmpty {
            // The descriptors go with the first chunk of bytes.
            let n = sendWithDescriptors(sock, bytes, fds)
            if n < 0 { throw ControlSocketError("sending a control message with a file descriptor") }
            sent = n
        }
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(sock, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ControlSocketError("sending a control message")
            }
            sent += n
        }
    }

    private static func sendWithDescriptors(_ sock: Int32, _ bytes: [UInt8], _ fds: [Int32]) -> Int {
        var bytes = bytes
        let payload = fds.count * MemoryLayout<Int32>.size
        let space = MemoryLayout<cmsghdr>.stride + payload + 8
        var control = [UInt8](repeating: 0, count: space)
        return bytes.withUnsafeMutableBytes { buf -> Int in
            control.withUnsafeMutableBytes { cbuf -> Int in
                var iov = iovec(iov_base: buf.baseAddress, iov_len: buf.count)
                return withUnsafeMutablePointer(to: &iov) { iovp -> Int in
                    var msg = msghdr()
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    msg.msg_control = cbuf.baseAddress
                    msg.msg_controllen = Int(cmsgLength(payload))
                    let c = cbuf.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                    c.pointee.cmsg_level = SOL_SOCKET
                    c.pointee.cmsg_type = Int32(SCM_RIGHTS)
                    c.pointee.cmsg_len = Int(cmsgLength(payload))
                    for (i, fd) in fds.enumerated() {
                        (cbuf.baseAddress! + MemoryLayout<cmsghdr>.stride + i * MemoryLayout<Int32>.size).storeBytes(of: fd, as: Int32.self)
                    }
                    while true {
                        let n = sendmsg(sock, &msg, Int32(MSG_NOSIGNAL))
                        if n < 0 && errno == EINTR { continue }
                        return n
                    }
                }
            }
        }
    }

    private static func cmsgLength(_ n: Int) -> Int { MemoryLayout<cmsghdr>.stride + n }

    /// Room for this many descriptors in one message: a well-behaved peer sends at most
    /// `requestDescriptors`, and more than fit make the kernel set MSG_CTRUNC.
    static let descriptorRoom = 8
    /// Descriptors a request may carry: the file it is about, and for move-blocks the file the
    /// blocks come from.
    public static let requestDescriptors = 2

    /// Reads one frame. Descriptors that arrive are the caller's to close; any past the first
    /// `requestDescriptors` are closed here, since each one kept would pin a file of the mount
    /// (unmount would fail with EBUSY).
    static func receive(_ sock: Int32) -> Received {
        var header = [UInt8](repeating: 0, count: 4)
        var fds: [Int32] = []
        func closeAll() { for fd in fds { Glibc.close(fd) } }
        var got = 0
        var refused = false
        let space = MemoryLayout<cmsghdr>.stride + descriptorRoom * MemoryLayout<Int32>.stride + 8
        var control = [UInt8](repeating: 0, count: space)
        while got < 4 {
            let n: Int = header.withUnsafeMutableBytes { buf in
                control.withUnsafeMutableBytes { cbuf in
                    var iov = iovec(iov_base: buf.baseAddress! + got, iov_len: 4 - got)
                    return withUnsafeMutablePointer(to: &iov) { iovp in
                        var msg = msghdr()
                        msg.msg_iov = iovp
                        msg.msg_iovlen = 1
                        msg.msg_control = cbuf.baseAddress
                        msg.msg_controllen = cbuf.count
                        let n = recvmsg(sock, &msg, Int32(MSG_CMSG_CLOEXEC))
                        if n >= 0 {
                            for passed in descriptors(in: msg) {
                                if fds.count < requestDescriptors && !refused { fds.append(passed) } else { Glibc.close(passed) }
                            }
                            // Descriptors that did not fit were dropped by the kernel: the
                            // request is not what the peer sent.
                            if msg.msg_flags & Int32(MSG_CTRUNC) != 0 { refused = true }
                        }
                        return n
                    }
                }
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                closeAll()
                return got == 0 && n == 0 ? .closed : .truncated
            }
            got += n
        }
        if refused {
            closeAll()
            return .tooManyDescriptors
        }
        var r = ByteReader(header, what: "control frame")
        let length = Int((try? r.u32()) ?? 0)
        if length > ControlMessage.maxBody {
            closeAll()
            return .oversized(length)
        }
        // The body is read with plain reads: descriptors sent along with it are never
        // installed in this process (the kernel drops them with the bytes).
        var body = [UInt8](repeating: 0, count: length)
        var at = 0
        while at < length {
            let n = body.withUnsafeMutableBytes { read(sock, $0.baseAddress! + at, length - at) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                closeAll()
                return .truncated
            }
            at += n
        }
        return .message(body, fds: fds)
    }

    /// Every descriptor of every SCM_RIGHTS header in a received message.
    private static func descriptors(in msg: msghdr) -> [Int32] {
        guard let base = msg.msg_control else { return [] }
        var out: [Int32] = []
        var offset = 0
        let headerSize = MemoryLayout<cmsghdr>.stride
        while offset + headerSize <= msg.msg_controllen {
            let c = (base + offset).assumingMemoryBound(to: cmsghdr.self).pointee
            let len = Int(c.cmsg_len)
            guard len >= headerSize, offset + len <= msg.msg_controllen else { break }
            if c.cmsg_level == SOL_SOCKET && c.cmsg_type == Int32(SCM_RIGHTS) {
                let count = (len - headerSize) / MemoryLayout<Int32>.size
                for i in 0..<count {
                    out.append((base + offset + headerSize + i * MemoryLayout<Int32>.size).loadUnaligned(as: Int32.self))
                }
            }
            // CMSG_NXTHDR: headers are padded to the size of a long.
            offset += (len + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1)
        }
        return out
    }
}

/// The mount's end: accepts connections on a Unix socket and answers each message through
/// `handler` on a thread per connection (connections are short: one CLI command each).
public final class ControlServer: Sendable {
    /// `files`: the descriptors sent with the request (at most `requestDescriptors`), closed
    /// once the handler returns.
    public typealias Handler = @Sendable (_ request: [UInt8], _ files: [Int32], _ peer: PeerCredentials) -> [UInt8]

    public let path: String
    private let listener: Int32
    private let handler: Handler
    private let log: @Sendable (String) -> Void
    private let stopped = Atomic(false)
    /// Connections being served; past `maxConnections` new ones are answered EBUSY and closed,
    /// so idle or slow peers cannot take every thread and descriptor of the daemon.
    private let connections = Atomic(0)
    public let maxConnections: Int
    /// A connection that sends nothing for this long is closed.
    public let idleTimeout: Duration

    /// Binds `path` (replacing a stale socket file) with mode 0666: anyone may connect, and
    /// every request is checked against the caller's credentials.
    public init(path: String, maxConnections: Int = 64, idleTimeout: Duration = .seconds(60),
                log: @escaping @Sendable (String) -> Void = { _ in }, handler: @escaping Handler) throws(ControlSocketError) {
        self.path = path
        self.handler = handler
        self.log = log
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        var addr = try unixAddress(path)
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if s < 0 { throw ControlSocketError("creating the control socket") }
        unlink(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = ControlSocketError("binding the control socket \(path)")
            Glibc.close(s)
            throw e
        }
        chmod(path, 0o666)
        if listen(s, 64) != 0 {
            let e = ControlSocketError("listening on the control socket \(path)")
            Glibc.close(s)
            throw e
        }
        listener = s
    }

    /// Starts accepting on a thread of its own.
    public func start() throws(ThreadError) {
        try JoinableThread.detach("the control socket") { [self] in acceptLoop() }
    }

    /// Stops accepting and removes the socket file; connections being served finish.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        unlink(path)
    }

    deinit {
        Glibc.close(listener)
    }

    private func acceptLoop() {
        var lastComplaint: timespec?
        while !stopped.load(ordering: .acquiring) {
            let c = accept(listener, nil, nil)
            if c < 0 {
                let e = errno
                if e == EINTR || e == ECONNABORTED { continue }
                if stopped.load(ordering: .acquiring) { return }
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                    // Out of descriptors or memory for now: keep the socket and try again once
                    // some are given back, saying so at most once a minute.
                    var now = timespec()
                    clock_gettime(CLOCK_MONOTONIC, &now)
                    if lastComplaint.map({ now.tv_sec - $0.tv_sec >= 60 }) ?? true {
                        log("control socket: accept failed: \(String(cString: strerror(e))); retrying")
                        lastComplaint = now
                    }
                    usleep(100_000)
                    continue
                }
                log("control socket: accept failed: \(String(cString: strerror(e))); no more archive requests are served")
                return
            }
            // accept4 is not exported without _GNU_SOURCE; nothing here forks, so setting
            // close-on-exec after the accept leaves no window that matters.
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            if connections.add(1, ordering: .acquiringAndReleasing).newValue > maxConnections {
                connections.subtract(1, ordering: .acquiringAndReleasing)
                let reply = ControlReply.failure(errno: EBUSY, message: "the mount is serving \(maxConnections) control connections already; try again")
                try? ControlFrame.send(c, reply.encoded)
                Glibc.close(c)
                continue
            }
            var tv = timeval(tv_sec: Int(idleTimeout.components.seconds), tv_usec: Int(idleTimeout.components.attoseconds / 1_000_000_000_000))
            _ = setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            do {
                try JoinableThread.detach("a control connection") { [self] in
                    serve(c)
                    connections.subtract(1, ordering: .acquiringAndReleasing)
                }
            } catch {
                log("control socket: \(error)")
                connections.subtract(1, ordering: .acquiringAndReleasing)
                Glibc.close(c)
            }
        }
    }

    /// Connections being served now (tests watch idle ones go).
    public var activeConnections: Int { connections.load(ordering: .acquiring) }

    private func serve(_ c: Int32) {
        defer { Glibc.close(c) }
        // struct ucred {pid_t pid; uid_t uid; gid_t gid}, which Glibc exports only with _GNU_SOURCE.
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else {
            log("control socket: no peer credentials: \(String(cString: strerror(errno)))")
            return
        }
        let peer = PeerCredentials(pid: cred.0, uid: cred.1, gid: cred.2)
        while true {
            switch ControlFrame.receive(c) {
            case .closed:
                return
            case .truncated:
                log("control socket: pid \(peer.pid) closed the connection inside a message; nothing was done")
                return
            case .oversized(let n):
                // The rest cannot be skipped reliably: answer and hang up.
                let reply = ControlReply.failure(errno: EMSGSIZE, message: "control message of \(n) bytes is larger than the \(ControlMessage.maxBody) allowed")
                try? ControlFrame.send(c, reply.encoded)
                return
            case .tooManyDescriptors:
                let reply = ControlReply.failure(errno: EINVAL, message: "a control request carries at most \(ControlFrame.requestDescriptors) file descriptors; more came and all were closed")
                try? ControlFrame.send(c, reply.encoded)
                return
            case .message(let body, let fds):
                let reply = handler(body, fds, peer)
                for fd in fds { Glibc.close(fd) }
                do {
                    try ControlFrame.send(c, reply)
                } catch {
                    return
                }
            }
        }
    }
}

/// The CLI's end: one connection, messages answered in order.
public final class ControlClient {
    private let sock: Int32
    private let timeout: Duration

    /// `timeout` bounds the wait for each answer (and for a connection to be accepted): a hung
    /// daemon gives an error naming it instead of a CLI that never returns.
    public init(path: String, timeout: Duration = .seconds(120)) throws(ControlSocketError) {
        self.timeout = timeout
        var addr = try unixAddress(path)
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if s < 0 { throw ControlSocketError("creating a socket") }
        var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        _ = setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno == EAGAIN || errno == EINPROGRESS
                ? ControlSocketError("the mount's control socket \(path) did not accept the connection within \(timeout); the daemon may be hung (see its log)", errno: ETIMEDOUT)
                : ControlSocketError("connecting to the mount's control socket \(path) (is the daemon running?)")
            Glibc.close(s)
            throw e
        }
        sock = s
    }

    private var timedOut: ControlSocketError {
        ControlSocketError("the mount did not answer within \(timeout); the daemon may be hung or busy (see its log)", errno: ETIMEDOUT)
    }

    deinit { Glibc.close(sock) }

    /// Sends a request body (with open file descriptors when the request is about files: the
    /// one it is about first) and returns the reply body.
    public func call(_ body: [UInt8], files: [Int32] = []) throws(ControlSocketError) -> [UInt8] {
        do {
            try ControlFrame.send(sock, body, fds: files)
        } catch where error.errno == EAGAIN {
            throw timedOut
        } catch {
            // A daemon that turns the connection away (too many connections) answers first
            // and closes: its reason is worth more than the broken pipe.
            if case .message(let reply, let fds) = ControlFrame.receive(sock) {
                for fd in fds { Glibc.close(fd) }
                return reply
            }
            throw error
        }
        return try receiveReply()
    }

    /// Writes raw bytes (tests use it to send malformed frames).
    public func sendRaw(_ bytes: [UInt8]) throws(ControlSocketError) {
        let n = bytes.withUnsafeBytes { Glibc.send(sock, $0.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
        if n != bytes.count { throw ControlSocketError("sending raw bytes") }
    }

    /// Reads one reply frame (after `sendRaw`).
    public func receiveReply() throws(ControlSocketError) -> [UInt8] {
        switch ControlFrame.receive(sock) {
        case .message(let reply, let fds):
            for fd in fds { Glibc.close(fd) }
            return reply
        case .closed, .truncated, .tooManyDescriptors:
            if errno == EAGAIN { throw timedOut }
            throw ControlSocketError("the mount closed the control connection without answering", errno: ECONNRESET)
        case .oversized(let n):
            throw ControlSocketError("the mount answered with \(n) bytes, more than allowed", errno: EMSGSIZE)
        }
    }

    /// Closes the sending side, so the server sees the end of the stream.
    public func finishSending() { shutdown(sock, Int32(SHUT_WR)) }
}

/// The socket address of `path`.
private func unixAddress(_ path: String) throws(ControlSocketError) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
        throw ControlSocketError("control socket path \(path) is longer than a Unix socket path may be", errno: 0)
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { p in
        p.copyBytes(from: bytes)
        p[bytes.count] = 0
    }
    return addr
}
