#if canImport(Glibc)
import Glibc
#endif

/// Looks at `cond` every `interval` seconds until it holds or `seconds` have passed, and once
/// more at the end; whether it held. For what another thread or process brings about.
public func eventually(within seconds: Double = 5, every interval: Double = 0.01, _ cond: () throws -> Bool) rethrows -> Bool {
    let step = max(1, useconds_t(interval * 1e6))
    for _ in 0..<max(1, Int(seconds / interval)) {
        if try cond() { return true }
        usleep(step)
    }
    return try cond()
}
