import CoreMetrics
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ScoutFS
import Synchronization

/// The mount's figures in Prometheus's text format, on `http://ADDRESS:PORT/metrics` when the
/// mount is asked for them (`--metrics`): cluster lock traffic and waits, commits and their
/// sizes, merges, requests waiting for data or record locks, and every FUSE request by kind
/// and latency. Off, none of it exists and no request is timed.
///
/// Counters the layers below keep anyway are read when the endpoint is scraped; only the
/// FUSE request timers and the commit sizes are recorded as they happen.
final class MountMetrics: Sendable {
    static let requestTimerLabel = "scoutfs_fuse_request_duration_seconds"
    static let commitItemsLabel = "scoutfs_commit_items"

    private let registry: PrometheusCollectorRegistry
    private let fs: Filesystem
    private let last = Mutex(Filesystem.Statistics())
    private let lockRequests = CoreMetrics.Counter(label: "scoutfs_lock_requests_total")
    private let lockGrants = CoreMetrics.Counter(label: "scoutfs_lock_grants_total")
    private let lockInvalidations = CoreMetrics.Counter(label: "scoutfs_lock_invalidations_total")
    private let lockWaits = CoreMetrics.Counter(label: "scoutfs_lock_waits_total")
    private let commits = CoreMetrics.Counter(label: "scoutfs_commits_total")
    private let merges = CoreMetrics.Counter(label: "scoutfs_merges_total")
    private let invalidationTimeouts = CoreMetrics.Counter(label: "scoutfs_kernel_invalidation_timeouts_total")
    private let locksHeld = CoreMetrics.Gauge(label: "scoutfs_locks_held")
    private let recordLockWaiters = CoreMetrics.Gauge(label: "scoutfs_record_lock_waiters")
    private let dataWaiters = CoreMetrics.Gauge(label: "scoutfs_data_waiters")

    /// Makes this process's metrics go to a registry of its own (once per process), then the
    /// figures of `fs`.
    static func start(_ fs: Filesystem) -> MountMetrics {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // FUSE requests take microseconds, not the web requests' milliseconds.
        factory.durationHistogramBuckets[requestTimerLabel] = [
            .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100),
            .milliseconds(250), .seconds(1), .seconds(5),
        ]
        factory.valueHistogramBuckets[commitItemsLabel] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
        MetricsSystem.bootstrap(factory)
        return MountMetrics(fs, registry)
    }

    private init(_ fs: Filesystem, _ registry: PrometheusCollectorRegistry) {
        self.fs = fs
        let commitItems = CoreMetrics.Recorder(label: Self.commitItemsLabel, aggregate: true)
        fs.observeCommits { commitItems.record($0) }
        self.registry = registry
    }

    /// The text a scrape returns: the counters brought up to date, then every metric.
    func exposition() -> [UInt8] {
        let now = fs.statistics
        let before = last.withLock { l in defer { l = now }; return l }
        let counters: [(CoreMetrics.Counter, Int, Int)] = [
            (lockRequests, now.lockRequests, before.lockRequests), (lockGrants, now.lockGrants, before.lockGrants),
            (lockInvalidations, now.lockInvalidations, before.lockInvalidations), (lockWaits, now.lockWaits, before.lockWaits),
            (commits, now.commits, before.commits), (merges, now.merges, before.merges),
            (invalidationTimeouts, now.kernelInvalidationTimeouts, before.kernelInvalidationTimeouts),
        ]
        for (c, n, b) in counters where n > b { c.increment(by: n - b) }
        locksHeld.record(now.locksHeld)
        recordLockWaiters.record(now.recordLockWaiters)
        dataWaiters.record(now.dataWaiters)
        return registry.emitToBuffer()
    }
}

/// A minimal HTTP/1.1 server for the metrics: GET /metrics and nothing else.
final class MetricsEndpoint: Sendable {
    private let channel: any Channel
    private let host: String

    var port: Int { channel.localAddress?.port ?? 0 }

    /// Where it serves (the port the system chose, if asked for port 0).
    var url: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)/metrics" }

    init(host: String, port: Int, metrics: MountMetrics) throws {
        self.host = host
        channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(metrics: metrics))
                }
            }
            .bind(host: host, port: port).wait()
    }

    func close() {
        try? channel.close().wait()
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let metrics: MountMetrics
    init(metrics: MountMetrics) { self.metrics = metrics }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let ok = head.method == .GET && (head.uri == "/metrics" || head.uri.hasPrefix("/metrics?"))
        let body = ok ? metrics.exposition() : Array("only GET /metrics is served here\n".utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.count))
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: ok ? .ok : .notFound, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let keepAlive = head.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
