/// A closure behind a class reference, for keeping one in a `BlockingMutex`.
///
/// A closure kept directly as a `BlockingMutex`'s value is wrapped anew each time `withLock`
/// lends it out: the generic mutex stores it in its most general form, the caller's block
/// takes it in its own, and the write-back after the block stores the caller's form wrapped
/// in two conversion thunks, around whatever was there. So every read made the closure two
/// calls deeper. A mount's commit wake-up read on each operation past the dirty limit grew
/// to thousands of thunks (a sixth of the daemon's CPU during unlinks), and kept growing until
/// a call would overflow the stack. A reference is copied as it is.
public final class Callback<Argument, Output>: Sendable {
    public let call: @Sendable (Argument) -> Output

    public init(_ call: @escaping @Sendable (Argument) -> Output) { self.call = call }
}
