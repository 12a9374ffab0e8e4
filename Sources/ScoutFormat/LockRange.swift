/// The key range `[start, end]` one cluster lock covers. A lock is named by its start key; every
/// key maps to exactly one range (`LockRange.covering`), so two clients asking about the same key
/// always name the same lock.
public struct LockRange: Hashable, Sendable, CustomStringConvertible {
    public var start: Key
    public var end: Key

    public init(start: Key, end: Key) {
        precondition(start <= end, "lock range \(start)...\(end) is empty")
        self.start = start
        self.end = end
    }

    @inlinable
    public func contains(_ key: Key) -> Bool { start <= key && key <= end }

    @inlinable
    public func overlaps(_ other: LockRange) -> Bool { start <= other.end && other.start <= end }

    public var description: String { "[\(start) ... \(end)]" }
}

extension LockRange {
    /// Inodes per inode-group lock and seqs per index lock (`SCOUTFS_LOCK_INODE_GROUP_NR`,
    /// `SCOUTFS_LOCK_SEQ_GROUP_MASK + 1` in the original).
    public static let groupSize: UInt64 = 1024
    static let groupMask: UInt64 = groupSize - 1

    /// Every fs item of the inodes `ino & ~1023 ... ino | 1023`: inode, xattrs, dirents, link
    /// backrefs, symlink parts and extents all sort under the inode number.
    public static func inodeGroup(_ ino: UInt64) -> LockRange {
        LockRange(start: Key(zone: Zone.fs, first: ino & ~groupMask),
                  end: Key(zone: Zone.fs, first: ino | groupMask, type: .max, second: .max, third: .max, fourth: .max))
    }

    /// The inode group (inode number / `groupSize`) this range locks, if it is an inode
    /// group's lock.
    public var inodeGroupNumber: UInt64? {
        guard start.zone == Zone.fs, self == Self.inodeGroup(start.first) else { return nil }
        return start.first / Self.groupSize
    }

    /// 1024 consecutive seqs of one inode index (`ItemType.metaSeq` or `.dataSeq`).
    public static func index(_ type: UInt8, seq: UInt64) -> LockRange {
        LockRange(start: Key(zone: Zone.inodeIndex, type: type, second: seq & ~groupMask),
                  end: Key(zone: Zone.inodeIndex, type: type, second: seq | groupMask, third: .max, fourth: .max))
    }

    /// The whole orphan zone: one lock, taken write-only by every mount that adds an orphan.
    public static let orphan = wholeZone(Zone.orphan)

    /// The whole `.totl.` zone: one lock, write-only for delta updates.
    public static let totals = wholeZone(Zone.xattrTotl)

    /// The whole search zone (`.srch.` xattr items): one lock, write-only for the writers, which
    /// only add and remove unique items. Searches read committed items without it, as the
    /// original's do: another node's xattr is found once its transaction is committed.
    public static let search = wholeZone(Zone.srch)

    /// The whole quota zone: the rules, read by every mount that enforces them and written by
    /// quota-add and quota-del.
    public static let quota = wholeZone(Zone.quota)

    /// The whole `.indx.` zone: one lock, write-only for the xattrs' count deltas.
    public static let xattrIndex = wholeZone(Zone.xattrIndx)

    /// The one global key that serializes renames across directories (which must not create a
    /// cycle that two per-directory locks could not see).
    public static let rename = LockRange(start: renameKey, end: renameKey)
    static let renameKey = Key(zone: Zone.lock, type: ItemType.renameLock)

    static func wholeZone(_ zone: UInt8) -> LockRange {
        LockRange(start: Key(zone: zone), end: .last(in: zone))
    }

    /// The lock that protects `key`, or `nil` for keys no cluster lock covers (server-only
    /// zones such as log trees, free extents and mounted clients).
    public static func covering(_ key: Key) -> LockRange? {
        switch key.zone {
        case Zone.fs: return inodeGroup(key.first)
        case Zone.inodeIndex:
            // The index type sits in `type` with `first` zero; a key outside that shape still
            // maps to one well-defined range of its own type.
            guard key.first == 0 else { return nil }
            return index(key.type, seq: key.second)
        case Zone.orphan: return orphan
        case Zone.xattrTotl: return totals
        case Zone.srch: return search
        case Zone.xattrIndx: return xattrIndex
        case Zone.quota: return quota
        case Zone.lock where key == renameKey: return rename
        default: return nil
        }
    }
}
