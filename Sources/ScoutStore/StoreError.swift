#if canImport(Glibc)
import Glibc
#endif

/// An error from the store: what failed, where, and what to do about it. `code` lets callers map
/// it to an errno at the filesystem boundary without parsing the message.
public struct StoreError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        /// A device read or write failed, or a block kept reading stale.
        case io
        /// A block's bytes are damaged: checksum mismatch, or a decode of a checksummed block failed.
        case corrupt
        /// A block is intact but is not the one the reference names: the reader followed an old
        /// root and should fetch new roots and retry.
        case stale
        /// No free metadata blocks or data extents.
        case noSpace
        /// A device is smaller than the format needs.
        case tooSmall
        /// The device holds no scoutfs filesystem, or a different one than expected.
        case notScoutFS
        /// The device already holds a filesystem and overwriting was not asked for.
        case exists
        /// A caller passed something out of range (value too long, bad slot, …).
        case invalid
        /// A previous commit failed part way; the in-memory state no longer matches the device.
        case failed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// The errno a filesystem operation should return for this error.
    public var errno: Int32 {
        switch code {
        case .io, .corrupt, .stale, .failed: EIO
        case .noSpace: ENOSPC
        case .invalid: EINVAL
        case .tooSmall, .notScoutFS, .exists: EINVAL
        }
    }
}
