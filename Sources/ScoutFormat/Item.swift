/// Per-item flags stored with every item.
public struct ItemFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A tombstone: hides every older version of the key in the forest.
    public static let deletion = ItemFlags(rawValue: 1)
    /// A combinable delta: its value is a run of little-endian Int64s added to the older version.
    public static let delta = ItemFlags(rawValue: 2)

    public static let known: ItemFlags = [.deletion, .delta]
}

/// One persistent item: key, version (`seq`), flags and a small value.
public struct Item: Hashable, Sendable {
    public var key: Key
    public var seq: UInt64
    public var flags: ItemFlags
    public var value: [UInt8]

    /// Items bigger than this are split into numbered parts by their owners (xattrs, symlinks), so
    /// that every btree split leaves several items on each side.
    public static let maxValueLength = 896

    public init(key: Key, seq: UInt64, flags: ItemFlags = [], value: [UInt8] = []) {
        self.key = key
        self.seq = seq
        self.flags = flags
        self.value = value
    }

    public var isDeletion: Bool { flags.contains(.deletion) }
    public var isDelta: Bool { flags.contains(.delta) }
}
