import Foundation
import Logging

/// The mount daemon's log, through swift-log. Each record is one line written with one
/// write(2), so lines of different threads never mix.
///
/// - `file`: a timestamp, the level and the message, for the log file a detached daemon
///   writes (and for a terminal).
/// - `journal`: the level as a syslog priority prefix (`<3>` error … `<7>` debug) and no
///   timestamp: journald reads the prefix and stamps the time itself. Chosen when stderr is
///   the journal (systemd sets JOURNAL_STREAM) and the daemon stays in the foreground.
struct DaemonLogHandler: LogHandler {
    enum Style: Sendable { case file, journal }

    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    let style: Style

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level = event.level, message = event.message
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        let details = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text: String
        switch style {
        case .journal:
            text = "<\(Self.priority(level))>\(message)\(details)\n"
        case .file:
            text = "\(Self.timestamp()) \(level) \(message)\(details)\n"
        }
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { b in
            var off = 0
            while off < b.count {
                let n = write(STDERR_FILENO, b.baseAddress! + off, b.count - off)
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    return
                }
                off += n
            }
        }
    }

    /// syslog(3) priorities.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// UTC, to the millisecond: "2026-12-06T03:40:01.123Z".
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        var buf = [CChar](repeating: 0, count: 32)
        let n = strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let head = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let ms = ts.tv_nsec / 1_000_000
        return head + "." + (ms < 10 ? "00" : ms < 100 ? "0" : "") + String(ms) + "Z"
    }

    /// The style for this process: the journal's when stderr is the journal and stays so.
    static func style(foreground: Bool) -> Style {
        foreground && ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil ? .journal : .file
    }
}

/// The lines of the layers below come as plain strings; their level is what they start with.
enum DaemonLog {
    /// Starts swift-log for this process (once) and returns the daemon's logger.
    static func start(level: Logger.Level, style: DaemonLogHandler.Style) -> Logger {
        LoggingSystem.bootstrap { _ in DaemonLogHandler(logLevel: level, style: style) }
        return Logger(label: "scoutfs")
    }

    /// "error: …" is an error, "warning: …" a warning, anything else information.
    static func level(of line: String) -> (Logger.Level, Substring) {
        if line.hasPrefix("error: ") { return (.error, line.dropFirst(7)) }
        if line.hasPrefix("warning: ") { return (.warning, line.dropFirst(9)) }
        return (.info, Substring(line))
    }

    /// A sink for the layers below that logs each line at its level.
    static func sink(_ logger: Logger) -> @Sendable (String) -> Void {
        { line in
            let (level, text) = level(of: line)
            logger.log(level: level, "\(text)")
        }
    }
}
