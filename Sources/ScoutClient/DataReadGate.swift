/// Lets file data be read from the data device outside the transaction, safely.
///
/// A reader maps its extents with the transaction held and enters the gate before letting it
/// go; it then reads the device and leaves. A commit — the moment blocks freed by a
/// truncate or unlink become allocatable again — closes the gate and waits for readers inside
/// to leave, so no read can see a block after another file has been given it. No reader can
/// enter while a commit waits: entering needs the transaction, which the commit holds.
public final class DataReadGate: Sendable {
    private let rw = ReadWriteLock()

    public init() {}

    public func enter() { rw.lockShared() }

    public func leave() { rw.unlock() }

    /// Runs `body` with no reader inside.
    public func closed<T>(_ body: () throws -> T) rethrows -> T {
        try rw.withExclusive(body)
    }
}
