/// A structure read from a device or the wire did not decode: the bytes are too short, a count or
/// length is out of range, or a magic/version does not match. Decoders return this instead of
/// trapping so that a bad block becomes an error naming the block, never a crash.
public struct FormatError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
