public import ScoutFormat
import ScoutStore
public import SystemPackage

/// The tags of a `scoutfs.` xattr name: `scoutfs.` followed by one or more of `hide.`, `srch.`
/// and `totl.` in any order, then the rest of the name.
///
/// - `.hide.` keeps the name out of listxattr (`list-hidden-xattrs` shows it).
/// - `.srch.` adds a search item `(srch, hash of name, ino, xattr id)`, so `search-xattrs`
///   finds the inode without reading it. Different names can share a hash: a search may name
///   inodes without the xattr, never miss one that has it.
/// - `.totl.` names end in three dotted u64s A.B.C and hold a u64 value; every change adds a
///   delta `{total, count}` to the item `(totl, A, 0, B, C)`, so writers never read the total
///   and deltas from many log trees add up.
/// - `.indx.` names end in `.MAJOR.MINOR` (a u8 and a u64) and hold no value; the inode is
///   listed at that position by `read-xattr-index`. Each xattr adds a count delta to the item
///   `(indx, MAJOR, 0, MINOR, ino)`, so two xattrs of one inode at one position make one entry
///   that stays until both are gone.
struct XattrTags: Equatable {
    var hide = false
    var srch = false
    var totl = false
    var indx = false
    /// A, B and C of a `.totl.` name.
    var totlName: XattrTotalName?
    /// MAJOR and MINOR of an `.indx.` name.
    var indexPosition: XattrIndexPosition?

    static let prefix = Array("scoutfs.".utf8)
    static let tagLength = 5
    /// The longest `.totl.` number, as the original allows (enough for any u64 in octal).
    static let maxTotlDigits = 23

    /// The tags of `name`, nil for a name outside `scoutfs.`. EINVAL for a `scoutfs.` name
    /// without a tag, with a tag twice, with nothing after its tags, with both `.totl.` and
    /// `.indx.`, a `.totl.` name that does not end in three numbers or an `.indx.` name that
    /// does not end in a u8 and a u64.
    static func parse(_ name: [UInt8]) throws(Errno) -> XattrTags? {
        guard name.starts(with: prefix) else { return nil }
        var tags = XattrTags()
        var at = prefix.count
        var found = false
        while name.count - at >= tagLength {
            let tag = name[at..<at + tagLength]
            if tag.elementsEqual("hide.".utf8) {
                if tags.hide { throw .invalidArgument }
                tags.hide = true
            } else if tag.elementsEqual("srch.".utf8) {
                if tags.srch { throw .invalidArgument }
                tags.srch = true
            } else if tag.elementsEqual("totl.".utf8) {
                if tags.totl { throw .invalidArgument }
                tags.totl = true
            } else if tag.elementsEqual("indx.".utf8) {
                if tags.indx { throw .invalidArgument }
                tags.indx = true
            } else {
                break
            }
            found = true
            at += tagLength
        }
        guard found, at < name.count, !(tags.totl && tags.indx) else { throw .invalidArgument }
        if tags.totl {
            guard let n = totlName(name) else { throw .invalidArgument }
            tags.totlName = n
        }
        if tags.indx {
            guard let p = trailingNumbers(name, 2), p[0] <= UInt64(UInt8.max) else { throw .invalidArgument }
            tags.indexPosition = XattrIndexPosition(major: UInt8(p[0]), minor: p[1])
        }
        return tags
    }

    /// The last three dot-separated numbers of a `.totl.` name.
    static func totlName(_ name: [UInt8]) -> XattrTotalName? {
        guard let p = trailingNumbers(name, 3) else { return nil }
        return XattrTotalName(a: p[0], b: p[1], c: p[2])
    }

    /// The last `count` dot-separated numbers of `name`, in order.
    static func trailingNumbers(_ name: [UInt8], _ count: Int) -> [UInt64]? {
        var parts: [UInt64] = []
        var end = name.count
        var i = name.count - 1
        while i >= 0 && parts.count < count {
            if name[i] == UInt8(ascii: ".") {
                guard let v = parseNumber(name[(i + 1)..<end]) else { return nil }
                parts.append(v)
                end = i
            }
            i -= 1
        }
        guard parts.count == count else { return nil }
        return parts.reversed()
    }

    /// A u64 as C's strtoull reads it with base 0 (`0x` hex, a leading `0` octal, else decimal),
    /// without a sign, spaces or a newline, at most 23 characters; nil otherwise or on overflow.
    static func parseNumber(_ s: ArraySlice<UInt8>) -> UInt64? {
        guard !s.isEmpty, s.count <= maxTotlDigits else { return nil }
        var digits = s[...]
        var radix: UInt64 = 10
        if digits.count > 2, digits.first == UInt8(ascii: "0"),
           digits.dropFirst().first == UInt8(ascii: "x") || digits.dropFirst().first == UInt8(ascii: "X") {
            radix = 16
            digits = digits.dropFirst(2)
        } else if digits.count > 1, digits.first == UInt8(ascii: "0") {
            radix = 8
            digits = digits.dropFirst()
        }
        var v: UInt64 = 0
        for c in digits {
            let d: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt64(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt64(c - UInt8(ascii: "A") + 10)
            default: return nil
            }
            guard d < radix else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: radix)
            let (sum, o2) = m.addingReportingOverflow(d)
            if o1 || o2 { return nil }
            v = sum
        }
        return v
    }
}

extension XattrTotal {
    /// A total from its item: the name is in the key, `{total i64, count i64}` the value.
    init(item it: Item) throws(FormatError) {
        var r = ByteReader(it.value, what: "xattr total")
        self.init(name: XattrTotalName(a: it.key.first, b: it.key.second, c: it.key.third), total: try r.i64(), count: try r.i64())
    }
}

extension Keys {
    static func srch(_ hash: UInt64, _ ino: UInt64, _ id: UInt64) -> Key {
        Key(zone: Zone.srch, first: hash, second: ino, third: id)
    }
    static func totl(_ n: XattrTotalName) -> Key {
        Key(zone: Zone.xattrTotl, first: n.a, second: n.b, third: n.c)
    }
    static func indx(_ p: XattrIndexPosition, _ ino: UInt64) -> Key {
        Key(zone: Zone.xattrIndx, first: UInt64(p.major), second: p.minor, third: ino)
    }
}

extension FSCore {
    /// Adds or takes away one tagged xattr's search item and total. `value` is the xattr's
    /// value, which `.totl.` names must hold as a number.
    func applyTags(_ tags: XattrTags, ino: UInt64, name: [UInt8], id: UInt64, value: [UInt8], adding: Bool) throws {
        try applySearch(tags, ino: ino, name: name, id: id, adding: adding)
        try applyTotal(tags, ino: ino, value: value, adding: adding)
        try applyIndex(tags, ino: ino, adding: adding)
    }

    /// Counts an `.indx.` xattr in or out of its inode's entry at its position; nothing for
    /// other tags.
    func applyIndex(_ tags: XattrTags, ino: UInt64, adding: Bool) throws {
        guard let p = tags.indexPosition else { return }
        try addDelta(Keys.indx(p, ino), [adding ? 1 : -1])
    }

    /// Adds or removes the search item of a `.srch.` xattr; nothing for other tags.
    func applySearch(_ tags: XattrTags, ino: UInt64, name: [UInt8], id: UInt64, adding: Bool) throws {
        guard tags.srch else { return }
        let key = Keys.srch(nameHash(name), ino, id)
        if adding { try put(key, []) } else { try remove(key) }
    }

    /// Adds `value` and one to a `.totl.` xattr's total, or takes them away; nothing for
    /// other tags.
    func applyTotal(_ tags: XattrTags, ino: UInt64, value: [UInt8], adding: Bool) throws {
        guard let n = tags.totlName else { return }
        guard let v = XattrTags.parseNumber(value[...]) else {
            log("inode \(ino): .totl. xattr holds \(value.count) bytes that are not a number")
            throw Errno.ioError
        }
        let total = Int64(bitPattern: v)
        try addDelta(Keys.totl(n), adding ? [total, 1] : [0 &- total, -1])
        // Quota checks computed from the old total are no longer this mount's answer.
        shared.quotas.forgetChecks()
    }

    /// Takes back the search items and totals of every tagged xattr of an inode being deleted.
    /// `xattr` is the first part of one xattr; the caller passes each as it deletes the items.
    func dropTags(ofXattrItem it: Item) throws {
        let head = try XattrHead(decoding: it.value)
        guard let tags = try? XattrTags.parse(head.name), tags.srch || tags.totl || tags.indx else { return }
        // A .totl. value always fits the first item.
        try applyTags(tags, ino: it.key.first, name: head.name, id: it.key.third, value: head.valueStart, adding: false)
    }

    func searchXattrs(_ name: [UInt8], from first: UInt64, through last: UInt64, limit: Int) throws -> (inos: [UInt64], end: Bool) {
        guard let tags = try XattrTags.parse(name), tags.srch else { throw Errno.invalidArgument }
        guard first <= last, limit > 0 else { return ([], true) }
        let h = nameHash(name)
        var inos: [UInt64] = []
        var end = true
        // Searches take no lock, as the original's do: they see what other clients committed
        // and this client's own changes (the cache holds them under its write-only lock).
        try items.forEach(from: Keys.srch(h, first, 0), through: Keys.srch(h, last, .max)) { it in
            if inos.last == it.key.second { return true }
            if inos.count == limit {
                end = false
                return false
            }
            inos.append(it.key.second)
            return true
        }
        return (inos, end)
    }

    /// Inodes listed by `.indx.` xattrs from `first` through `last` in (major, minor, ino)
    /// order, each once, at most `limit`.
    func xattrIndex(from first: XattrIndexEntry, through last: XattrIndexEntry, limit: Int) throws -> [XattrIndexEntry] {
        var out: [XattrIndexEntry] = []
        guard limit > 0, first <= last else { return out }
        let lo = Keys.indx(XattrIndexPosition(major: first.major, minor: first.minor), first.ino)
        let hi = Keys.indx(XattrIndexPosition(major: last.major, minor: last.minor), last.ino)
        try scan(lo, hi) { it in
            var r = ByteReader(it.value, what: ".indx. count")
            // The last xattr of a position gone leaves a zero count behind: no entry.
            if (try? r.i64()) ?? 0 > 0 {
                out.append(XattrIndexEntry(major: UInt8(truncatingIfNeeded: it.key.first), minor: it.key.second, ino: it.key.third))
            }
            return out.count < limit
        }
        return out
    }

    func xattrTotals(after: XattrTotalName?, limit: Int) throws -> [XattrTotal] {
        var start = Keys.totl(XattrTotalName(a: 0, b: 0, c: 0))
        if let after {
            guard let s = Keys.totl(after).successor else { return [] }
            start = s
        }
        var out: [XattrTotal] = []
        guard limit > 0 else { return out }
        try scan(start, .last(in: Zone.xattrTotl)) { it in
            let t = try XattrTotal(item: it)
            // Every xattr of a name gone leaves a zero item behind; it is not a total.
            if t.total != 0 || t.count != 0 { out.append(t) }
            return out.count < limit
        }
        return out
    }
}

extension Filesystem {
    /// Inodes in `[first, last]` that may carry the `.srch.` xattr `name`, in order, at most
    /// `limit`; `end` is true when no more follow.
    public func searchXattrs(_ name: [UInt8], from first: UInt64 = 0, through last: UInt64 = .max,
                             limit: Int = 1024) throws(Errno) -> (inos: [UInt64], end: Bool) {
        try locked(.reads) { try $0.searchXattrs(name, from: first, through: last, limit: limit) }
    }

    /// The `.totl.` totals after `after` (from the start when nil) in name order, at most `limit`.
    public func xattrTotals(after: XattrTotalName? = nil, limit: Int = 1024) throws(Errno) -> [XattrTotal] {
        // A read of the totals zone: every client's write-only deltas are committed first (the
        // lock's hooks), so the sums are whole.
        var plan = LockPlan()
        plan.add(.totals, .read)
        return try locked(.reads, plan) { try $0.xattrTotals(after: after, limit: limit) }
    }

    /// The inodes `.indx.` xattrs list from `first` through `last` (root only at the control
    /// socket, as the original's CAP_SYS_ADMIN).
    public func xattrIndex(from first: XattrIndexEntry, through last: XattrIndexEntry, limit: Int = 1024) throws(Errno) -> [XattrIndexEntry] {
        // A read of the zone: every client's write-only deltas are committed first.
        var plan = LockPlan()
        plan.add(.xattrIndex, .read)
        return try locked(.reads, plan) { try $0.xattrIndex(from: first, through: last, limit: limit) }
    }

    /// The names of an inode's `.hide.` xattrs.
    public func hiddenXattrs(_ ino: UInt64) throws(Errno) -> [[UInt8]] {
        var plan = LockPlan()
        plan.read(ino)
        return try locked(.reads, plan) { try $0.listXattrs(ino, hidden: true) }
    }
}
