import Foundation
import Logging
import ScoutFUSE
import ScoutFormat
import ServiceLifecycle

/// The daemon's long-running parts as services of one `ServiceGroup`, which turns SIGTERM,
/// SIGINT and SIGHUP into a graceful shutdown of all of them (the mount then commits and
/// unmounts), and ends them all when one ends (an unmount ends the FUSE session).

/// Serves FUSE requests until the filesystem is unmounted or the group shuts down.
struct FUSEService: Service, CustomStringConvertible {
    /// @unchecked: the session is run on one thread and only `exit` is called from another,
    /// which libfuse allows.
    final class Session: @unchecked Sendable {
        let fuse: FUSEMount
        init(_ fuse: FUSEMount) { self.fuse = fuse }
    }

    let session: Session
    let description = "FUSE session"

    init(fuse: FUSEMount) { session = Session(fuse) }

    func run() async throws {
        let session = session
        let rc = await withGracefulShutdownHandler {
            // The session loop blocks its thread: it gets one of its own, not one of the
            // cooperative pool's few.
            await withCheckedContinuation { (done: CheckedContinuation<Int32, Never>) in
                do {
                    try JoinableThread.detach("the FUSE session") { done.resume(returning: session.fuse.run(handleSignals: false)) }
                } catch {
                    done.resume(returning: -1)
                }
            }
        } onGracefulShutdown: {
            session.fuse.exit()
        }
        if rc != 0 { throw FUSESessionError(status: rc) }
    }
}

struct FUSESessionError: Error, CustomStringConvertible {
    var status: Int32
    var description: String { "the FUSE session ended with status \(status)" }
}

/// The Prometheus endpoint, open until the group shuts down.
struct MetricsService: Service, CustomStringConvertible {
    let endpoint: MetricsEndpoint
    let description = "metrics endpoint"

    func run() async throws {
        // Returns at graceful shutdown; throws if the group is cancelled instead.
        try? await gracefulShutdown()
        endpoint.close()
    }
}

enum MountServices {
    /// Runs `services` until the first ends or a stop signal arrives; whether the FUSE
    /// session ended cleanly. Blocks the calling thread (the command's, outside Swift's pool).
    static func run(_ services: [any Service], logger: Logger) -> Bool {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map {
                .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: [.sigterm, .sigint, .sighup],
            logger: logger))
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await group.run()
            } catch {
                logger.error("\(error)")
                outcome.failed.withLock { $0 = true }
            }
            done.signal()
        }
        done.wait()
        return !outcome.failed.withLock { $0 }
    }

    final class Outcome: Sendable {
        let failed = BlockingMutex(false)
    }
}
