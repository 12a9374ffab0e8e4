import ScoutFormat

/// Which inode number a client gives each new inode. Every directory's new entries come from
/// an inode group of this client's that is the directory's alone, and every new directory
/// starts a group of its own: a file usually shares its parent's group (one cluster lock
/// covers a create), and two threads or processes creating in their own directories never
/// share an inode group, its lock or its item cache partition. Numbers are never reused;
/// those left in a group when its directory is forgotten here, or at unmount, are lost, as
/// 2^54 groups allow.
public struct InodeNumbers: Sendable {
    /// Numbers from the server not yet given to a directory: whole groups, except that the
    /// first may be the tail of one (the first batch of a filesystem starts after the root).
    private var spare: Range<UInt64> = 0..<0
    /// What is left of each directory's current group, and when it was last used.
    private var byParent: [UInt64: (left: Range<UInt64>, used: UInt64)] = [:]
    private var tick: UInt64 = 0
    /// How many directories keep a group here; past it, the least recently used quarter
    /// give theirs up.
    public let parentLimit: Int
    /// How many numbers to ask the server for at once: several groups, so that making
    /// directories rarely waits for the server.
    public static let batch: UInt64 = 16 * LockRange.groupSize

    public init(parentLimit: Int = 4096) {
        precondition(parentLimit > 0, "a client must keep a group for at least one directory")
        self.parentLimit = parentLimit
    }

    /// A number for a new inode in `parent`; a `directory` starts a group. `refill` asks the
    /// server for more numbers, which must end on a group boundary.
    public mutating func take(parent: UInt64, directory: Bool, refill: () throws -> Range<UInt64>) rethrows -> UInt64 {
        tick += 1
        if !directory, let entry = byParent[parent], let ino = entry.left.first {
            byParent[parent] = (entry.left.dropFirst(), tick)
            return ino
        }
        if spare.isEmpty {
            spare = try refill()
            precondition(!spare.isEmpty && spare.upperBound & (LockRange.groupSize - 1) == 0,
                         "the server's inode batch \(spare) must end on an inode group boundary")
        }
        let groupEnd = (spare.lowerBound | (LockRange.groupSize - 1)) + 1
        let group = spare.lowerBound..<groupEnd
        spare = groupEnd..<spare.upperBound
        let ino = group.lowerBound
        byParent[directory ? ino : parent] = (group.dropFirst(), tick)
        if byParent.count > parentLimit { forgetLeastRecent() }
        return ino
    }

    /// The numbers left in `parent`'s current group, if it has one here.
    public func left(in parent: UInt64) -> Range<UInt64>? { byParent[parent]?.left }

    private mutating func forgetLeastRecent() {
        let drop = max(1, byParent.count / 4)
        for (parent, _) in byParent.sorted(by: { $0.value.used < $1.value.used }).prefix(drop) {
            byParent[parent] = nil
        }
    }
}
