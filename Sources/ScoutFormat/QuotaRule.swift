/// A quota rule, the original's `scoutfs_quota_rule_val`: an operation (inode creation or data
/// allocation) is refused with EDQUOT when the `.totl.` total (or count) its three names point
/// at has reached `limit`. Each name is a literal value or an attribute of the inode the
/// operation is about (project, uid, gid); a name marked `select` makes the rule apply only to
/// inodes whose attribute equals its value. Of the rules that apply, the one that sorts last
/// (priority first) is enforced.
public struct QuotaRule: Hashable, Comparable, Sendable {
    public struct Name: Hashable, Sendable {
        public var value: UInt64
        public var source: UInt8
        public var flags: UInt8
        public init(value: UInt64, source: UInt8 = QuotaRule.literal, flags: UInt8 = 0) {
            self.value = value
            self.source = source
            self.flags = flags
        }
        public var selects: Bool { flags & QuotaRule.select != 0 }
    }

    public var priority: UInt8
    public var names: [Name]
    public var op: UInt8
    public var limit: UInt64
    public var flags: UInt8

    /// Operations.
    public static let inodeOp: UInt8 = 0
    public static let dataOp: UInt8 = 1
    /// Name sources.
    public static let literal: UInt8 = 0
    public static let project: UInt8 = 1
    public static let uid: UInt8 = 2
    public static let gid: UInt8 = 3
    /// Name flag: the rule applies only where the attribute equals the value.
    public static let select: UInt8 = 1
    /// Rule flag: compare the number of xattrs in the total, not their sum.
    public static let totlCount: UInt8 = 1

    public static let encodedSize = 3 + 3 * 10 + 8

    public init(priority: UInt8, names: [Name], op: UInt8, limit: UInt64, flags: UInt8 = 0) {
        self.priority = priority
        self.names = names
        self.op = op
        self.limit = limit
        self.flags = flags
    }

    /// The original's checks: a known op and flags; only attributes can be selected, and no
    /// two names select different values of one attribute.
    public var isValid: Bool {
        guard names.count == 3, op <= Self.dataOp, flags & ~Self.totlCount == 0 else { return false }
        for (i, n) in names.enumerated() {
            guard n.flags & ~Self.select == 0, n.source <= Self.gid else { return false }
            if n.selects {
                guard n.source != Self.literal else { return false }
                for (j, o) in names.enumerated() where j != i && o.selects && o.source == n.source && o.value != n.value {
                    return false
                }
            }
        }
        return true
    }

    /// Whether the rule applies to an operation `op` on an inode with these attributes.
    public func applies(op: UInt8, project: UInt64, uid: UInt64, gid: UInt64) -> Bool {
        guard op == self.op else { return false }
        return names.allSatisfy { !$0.selects || Self.attribute($0.source, project, uid, gid) == $0.value }
    }

    /// The `.totl.` name the rule checks for an inode with these attributes.
    public func totalName(project: UInt64, uid: UInt64, gid: UInt64) -> XattrTotalName {
        let v = names.map { $0.source == Self.literal ? $0.value : Self.attribute($0.source, project, uid, gid) }
        return XattrTotalName(a: v[0], b: v[1], c: v[2])
    }

    static func attribute(_ source: UInt8, _ p: UInt64, _ u: UInt64, _ g: UInt64) -> UInt64 {
        switch source {
        case Self.project: p
        case Self.uid: u
        default: g
        }
    }

    /// The original's sort order: priority, then each name's value, source and flags, then
    /// op, limit and flags.
    public static func < (a: QuotaRule, b: QuotaRule) -> Bool { a.sortKey.lexicographicallyPrecedes(b.sortKey) }

    private var sortKey: [UInt64] {
        [UInt64(priority)] + names.flatMap { [$0.value, UInt64($0.source), UInt64($0.flags)] } + [UInt64(op), limit, UInt64(flags)]
    }

    public func encode(into w: inout ByteWriter) {
        w.u8(priority)
        w.u8(op)
        w.u8(flags)
        for n in names {
            w.u64(n.value)
            w.u8(n.source)
            w.u8(n.flags)
        }
        w.u64(limit)
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: Self.encodedSize)
        encode(into: &w)
        return w.bytes
    }

    public init(decoding r: inout ByteReader) throws(FormatError) {
        priority = try r.u8()
        op = try r.u8()
        flags = try r.u8()
        names = []
        for _ in 0..<3 { names.append(Name(value: try r.u64(), source: try r.u8(), flags: try r.u8())) }
        limit = try r.u64()
    }

    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == Self.encodedSize else { throw FormatError("quota rule is \(bytes.count) bytes, expected \(Self.encodedSize)") }
        var r = ByteReader(bytes, what: "quota rule")
        try self.init(decoding: &r)
        guard isValid else { throw FormatError("quota rule with unknown op, source or flags") }
    }
}
