import ScoutFormat

/// Lets file data be read from the data device outside the transaction, safely.
///
/// A reader maps its extents with the transaction held and enters the gate before letting it
/// go; it then reads the device and leaves. Blocks a truncate or unlink freed become
/// allocatable (to this client, or to any once handed back) when the commit holding those
/// frees is durable, so that commit must not complete while a reader that mapped them before
/// the commit's switch is still reading. Readers are counted in two epochs: the switch (made
/// with the transaction held alone, so nobody is entering) starts a new epoch, and the commit
/// waits only for the readers of the old one. Readers that enter after the switch never wait:
/// they cannot have mapped a block the committing transaction freed.
public final class DataReadGate: Sendable {
    private struct State {
        var epoch = 0
        var inside = [0, 0]
        var waiting = false
    }
    private let state = Mutex(State())
    private let drained = Parker()

    public init() {}

    /// Enters; pass the token to `leave`.
    public func enter() -> Int {
        state.withLock { s in
            let e = s.epoch & 1
            s.inside[e] += 1
            return e
        }
    }

    public func leave(_ token: Int) {
        let wake = state.withLock { s in
            s.inside[token] -= 1
            return s.waiting && token != (s.epoch & 1) && s.inside[token] == 0
        }
        if wake { drained.unpark() }
    }

    /// Starts a new epoch (the caller holds the transaction alone); returns the old one.
    public func switchEpoch() -> Int {
        state.withLock { s in
            let old = s.epoch & 1
            s.epoch += 1
            return old
        }
    }

    /// Waits until every reader of epoch `old` has left (one commit at a time calls this).
    public func waitForReaders(of old: Int) {
        while true {
            let done = state.withLock { s in
                s.waiting = s.inside[old] != 0
                return !s.waiting
            }
            if done { return }
            drained.park()
        }
    }
}
