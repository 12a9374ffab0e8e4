import ScoutFormat
import Synchronization
import Testing

/// How far below `base` the stack is where this is called.
@inline(never)
private func stackDepth(below base: UInt) -> UInt {
    var here = 0
    return withUnsafeMutablePointer(to: &here) { base &- UInt(bitPattern: $0) }
}

@Suite struct CallbackTests {
    /// The way a thread reads a hook it calls at every turn: through the mutex, each time.
    @Test func aCallbackKeptInAMutexIsCalledAsShallowlyAfterManyReads() {
        var top = 0
        let base = withUnsafeMutablePointer(to: &top) { UInt(bitPattern: $0) }
        let depth = Mutex<UInt>(0)
        let slot = Mutex<Callback<Void, Void>?>(Callback { depth.withLock { $0 = stackDepth(below: base) } })
        slot.withLock { $0 }?.call(())
        let first = depth.withLock { $0 }
        for _ in 0..<20_000 { _ = slot.withLock { $0 } }
        slot.withLock { $0 }?.call(())
        let later = depth.withLock { $0 }
        #expect(first > 0)
        // Two thunks a read would put 40,000 frames between the two calls.
        #expect(later <= first + 4096, "the call went \(later - first) bytes deeper after 20,000 reads")
    }
}
