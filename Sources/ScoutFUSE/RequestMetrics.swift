import CFuse3
import CoreMetrics
import Dispatch

// FUSE requests by kind and latency (swift-metrics), when the mount is asked for metrics:
// each handler is wrapped in one that times it, so a mount without metrics runs the plain
// handlers and pays nothing.

/// The request kinds timed, named as the kernel's opcodes are (lowercase).
enum RequestKind: Int, CaseIterable {
    case lookup, forget, forgetMulti, getattr, setattr, readlink, mknod, mkdir, symlink, link, unlink, rmdir, rename, open, create, read, write, flush, release, fsync, opendir, readdir, readdirplus, releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr, fallocate, lseek, getlk, setlk, flock

    var name: String {
        switch self {
        case .forgetMulti: "batch_forget"
        default: "\(self)"
        }
    }
}

/// One timer per kind, made when metrics are turned on.
final class RequestTimers: Sendable {
    let timers: [CoreMetrics.Timer]
    init(label: String) {
        timers = RequestKind.allCases.map { CoreMetrics.Timer(label: label, dimensions: [("op", $0.name)]) }
    }
}

// nonisolated(unsafe): written once by `instrumentRequests`, before the session's threads
// start (pthread_create orders the write before their reads), and only read after.
nonisolated(unsafe) private var original = fuse_lowlevel_ops()
nonisolated(unsafe) private var requestTimers: RequestTimers?

@inline(__always)
private func timed(_ kind: RequestKind, _ body: () -> Void) {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    requestTimers?.timers[kind.rawValue].recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- start))
}

/// Wraps every handler of `ops` in one that records its latency in `timers`.
func instrumentRequests(_ ops: inout fuse_lowlevel_ops, _ timers: RequestTimers) {
    original = ops
    requestTimers = timers
    if original.lookup != nil { ops.lookup = { r, a1, a2 in timed(.lookup) { original.lookup!(r, a1, a2) } } }
    if original.forget != nil { ops.forget = { r, a1, a2 in timed(.forget) { original.forget!(r, a1, a2) } } }
    if original.forget_multi != nil { ops.forget_multi = { r, a1, a2 in timed(.forgetMulti) { original.forget_multi!(r, a1, a2) } } }
    if original.getattr != nil { ops.getattr = { r, a1, a2 in timed(.getattr) { original.getattr!(r, a1, a2) } } }
    if original.setattr != nil { ops.setattr = { r, a1, a2, a3, a4 in timed(.setattr) { original.setattr!(r, a1, a2, a3, a4) } } }
    if original.readlink != nil { ops.readlink = { r, a1 in timed(.readlink) { original.readlink!(r, a1) } } }
    if original.mknod != nil { ops.mknod = { r, a1, a2, a3, a4 in timed(.mknod) { original.mknod!(r, a1, a2, a3, a4) } } }
    if original.mkdir != nil { ops.mkdir = { r, a1, a2, a3 in timed(.mkdir) { original.mkdir!(r, a1, a2, a3) } } }
    if original.symlink != nil { ops.symlink = { r, a1, a2, a3 in timed(.symlink) { original.symlink!(r, a1, a2, a3) } } }
    if original.link != nil { ops.link = { r, a1, a2, a3 in timed(.link) { original.link!(r, a1, a2, a3) } } }
    if original.unlink != nil { ops.unlink = { r, a1, a2 in timed(.unlink) { original.unlink!(r, a1, a2) } } }
    if original.rmdir != nil { ops.rmdir = { r, a1, a2 in timed(.rmdir) { original.rmdir!(r, a1, a2) } } }
    if original.rename != nil { ops.rename = { r, a1, a2, a3, a4, a5 in timed(.rename) { original.rename!(r, a1, a2, a3, a4, a5) } } }
    if original.open != nil { ops.open = { r, a1, a2 in timed(.open) { original.open!(r, a1, a2) } } }
    if original.create != nil { ops.create = { r, a1, a2, a3, a4 in timed(.create) { original.create!(r, a1, a2, a3, a4) } } }
    if original.read != nil { ops.read = { r, a1, a2, a3, a4 in timed(.read) { original.read!(r, a1, a2, a3, a4) } } }
    if original.write != nil { ops.write = { r, a1, a2, a3, a4, a5 in timed(.write) { original.write!(r, a1, a2, a3, a4, a5) } } }
    if original.flush != nil { ops.flush = { r, a1, a2 in timed(.flush) { original.flush!(r, a1, a2) } } }
    if original.release != nil { ops.release = { r, a1, a2 in timed(.release) { original.release!(r, a1, a2) } } }
    if original.fsync != nil { ops.fsync = { r, a1, a2, a3 in timed(.fsync) { original.fsync!(r, a1, a2, a3) } } }
    if original.opendir != nil { ops.opendir = { r, a1, a2 in timed(.opendir) { original.opendir!(r, a1, a2) } } }
    if original.readdir != nil { ops.readdir = { r, a1, a2, a3, a4 in timed(.readdir) { original.readdir!(r, a1, a2, a3, a4) } } }
    if original.readdirplus != nil { ops.readdirplus = { r, a1, a2, a3, a4 in timed(.readdirplus) { original.readdirplus!(r, a1, a2, a3, a4) } } }
    if original.releasedir != nil { ops.releasedir = { r, a1, a2 in timed(.releasedir) { original.releasedir!(r, a1, a2) } } }
    if original.fsyncdir != nil { ops.fsyncdir = { r, a1, a2, a3 in timed(.fsyncdir) { original.fsyncdir!(r, a1, a2, a3) } } }
    if original.statfs != nil { ops.statfs = { r, a1 in timed(.statfs) { original.statfs!(r, a1) } } }
    if original.setxattr != nil { ops.setxattr = { r, a1, a2, a3, a4, a5 in timed(.setxattr) { original.setxattr!(r, a1, a2, a3, a4, a5) } } }
    if original.getxattr != nil { ops.getxattr = { r, a1, a2, a3 in timed(.getxattr) { original.getxattr!(r, a1, a2, a3) } } }
    if original.listxattr != nil { ops.listxattr = { r, a1, a2 in timed(.listxattr) { original.listxattr!(r, a1, a2) } } }
    if original.removexattr != nil { ops.removexattr = { r, a1, a2 in timed(.removexattr) { original.removexattr!(r, a1, a2) } } }
    if original.fallocate != nil { ops.fallocate = { r, a1, a2, a3, a4, a5 in timed(.fallocate) { original.fallocate!(r, a1, a2, a3, a4, a5) } } }
    if original.lseek != nil { ops.lseek = { r, a1, a2, a3, a4 in timed(.lseek) { original.lseek!(r, a1, a2, a3, a4) } } }
    if original.getlk != nil { ops.getlk = { r, a1, a2, a3 in timed(.getlk) { original.getlk!(r, a1, a2, a3) } } }
    if original.setlk != nil { ops.setlk = { r, a1, a2, a3, a4 in timed(.setlk) { original.setlk!(r, a1, a2, a3, a4) } } }
    if original.flock != nil { ops.flock = { r, a1, a2, a3 in timed(.flock) { original.flock!(r, a1, a2, a3) } } }
}
