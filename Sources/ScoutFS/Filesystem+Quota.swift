import ScoutClient
public import ScoutFormat
import ScoutStore
import Synchronization
public import SystemPackage

/// What this mount knows of the quota rules (DESIGN.md §12), as the original keeps it: the
/// rules, read under the quota zone's read lock and trusted until that lock is lost (another
/// node changed a rule) or a rule changes here; and the outcome of recent checks by input, so
/// that a create or write with rules costs a hash lookup. A check reads its `.totl.` item
/// without a lock (what other nodes committed, and this node's own changes): its outcome may
/// lag other nodes' total changes by up to `checkLifetime`, the staleness the original
/// accepts so that quotas take no global lock.
final class QuotaState: Sendable {
    struct Input: Hashable {
        var op: UInt8
        var project: UInt64
        var uid: UInt64
        var gid: UInt64
    }

    private struct State {
        var rules: [QuotaRule] = []
        var loaded = false
        var checks: [Input: (refused: Bool, until: UInt64)] = [:]
    }

    private let state = Mutex(State())
    static let checkLifetimeNanos: UInt64 = 5_000_000_000
    /// Cached outcomes past this many are dropped whole: inputs are (op, project, uid, gid),
    /// few on most systems.
    static let checkLimit = 100_000

    /// No rules read, or they changed since: `Filesystem.prepareQuota` reads them again. Until
    /// then checks use the rules read before.
    var needsLoad: Bool { state.withLock { !$0.loaded } }

    func install(_ rules: [QuotaRule]) {
        state.withLock {
            $0.rules = rules
            $0.loaded = true
            $0.checks.removeAll()
        }
    }

    /// A rule changed (here, or on a node that took the quota lock away).
    func invalidate() {
        state.withLock {
            $0.loaded = false
            $0.checks.removeAll()
        }
    }

    /// A `.totl.` total changed here: outcomes computed from the old one go.
    func forgetChecks() {
        state.withLock { if !$0.checks.isEmpty { $0.checks.removeAll() } }
    }

    /// The rules and a fresh cached outcome for `input`, in one visit to the mutex.
    func lookup(_ input: Input, now: UInt64) -> (rules: [QuotaRule], refused: Bool?) {
        state.withLock { s in
            guard !s.rules.isEmpty else { return ([], false) }
            if let c = s.checks[input], c.until > now { return (s.rules, c.refused) }
            return (s.rules, nil)
        }
    }

    func remember(_ input: Input, refused: Bool, now: UInt64) {
        state.withLock {
            if $0.checks.count >= Self.checkLimit { $0.checks.removeAll() }
            $0.checks[input] = (refused, now + Self.checkLifetimeNanos)
        }
    }
}

extension Keys {
    /// A quota rule: the hash of its encoding, then a number among rules sharing that hash.
    static func quota(_ hash: UInt64, _ index: UInt64) -> Key { Key(zone: Zone.quota, first: hash, second: index) }
}

extension QuotaRule {
    var storageHash: UInt64 { nameHash(encoded) }
}

extension FSCore {
    func loadQuotaRules() throws -> [QuotaRule] {
        var rules: [QuotaRule] = []
        try scan(Key(zone: Zone.quota), .last(in: Zone.quota)) { it in
            do {
                rules.append(try QuotaRule(decoding: it.value))
            } catch {
                throw StoreError(.corrupt, "quota rule item \(it.key): \(error); run `scoutfs check`")
            }
            return true
        }
        return rules
    }

    /// The key of the stored rule equal to `rule`, and the first free key of its hash.
    func findQuotaRule(_ rule: QuotaRule) throws -> (found: Key?, free: Key) {
        let h = rule.storageHash
        var found: Key?
        var free: UInt64 = 0
        try scan(Keys.quota(h, 0), Keys.quota(h, .max)) { it in
            if (try? QuotaRule(decoding: it.value)) == rule {
                found = it.key
                return false
            }
            if it.key.second == free { free += 1 }
            return true
        }
        return (found, Keys.quota(h, free))
    }

    func addQuotaRule(_ rule: QuotaRule) throws {
        guard rule.isValid else {
            throw ArchiveError(.invalidArgument, "quota-add: the rule has an unknown op or flags, selects a literal, or selects two values of one attribute")
        }
        let (found, free) = try findQuotaRule(rule)
        if found != nil { throw ArchiveError(.fileExists, "quota-add: the rule exists already") }
        try put(free, rule.encoded)
    }

    func deleteQuotaRule(_ rule: QuotaRule) throws {
        guard let key = try findQuotaRule(rule).found else { throw ArchiveError(.noSuchFileOrDirectory, "quota-del: no such rule") }
        try remove(key)
    }

    func quotaRules(from: QuotaRulePosition, limit: Int) throws -> (rules: [QuotaRule], next: QuotaRulePosition?) {
        var rules: [QuotaRule] = []
        var next: QuotaRulePosition?
        try scan(Keys.quota(from.hash, from.index), .last(in: Zone.quota)) { it in
            if rules.count == limit {
                next = QuotaRulePosition(hash: it.key.first, index: it.key.second)
                return false
            }
            rules.append(try QuotaRule(decoding: it.value))
            return true
        }
        return (rules, next)
    }

    /// Refuses with EDQUOT an operation `op` on an inode with these attributes when the rule
    /// that applies to it (the last in sort order of those that do) finds its `.totl.` total
    /// (or count) at or over its limit.
    func checkQuota(op: UInt8, project: UInt64, uid: UInt32, gid: UInt32) throws {
        let q = shared.quotas
        let input = QuotaState.Input(op: op, project: project, uid: UInt64(uid), gid: UInt64(gid))
        let now = LockClient.monotonicNow()
        let (rules, cached) = q.lookup(input, now: now)
        if rules.isEmpty { return }
        if let cached {
            if cached { throw Errno.diskQuotaExceeded }
            return
        }
        var match: QuotaRule?
        for r in rules where r.applies(op: op, project: input.project, uid: input.uid, gid: input.gid) {
            if match.map({ $0 < r }) ?? true { match = r }
        }
        var refused = false
        if let m = match {
            let key = Keys.totl(m.totalName(project: input.project, uid: input.uid, gid: input.gid))
            try items.forEach(from: key, through: key) { it in
                let t = try XattrTotal(item: it)
                let use = m.flags & QuotaRule.totlCount != 0 ? UInt64(bitPattern: t.count) : UInt64(bitPattern: t.total)
                refused = use >= m.limit
                return false
            }
        }
        q.remember(input, refused: refused, now: now)
        if refused { throw Errno.diskQuotaExceeded }
    }
}

extension Filesystem {
    /// Reads the quota rules when this mount has none it trusts; operations that create inodes
    /// or write data call it before they take their locks.
    func prepareQuota() throws(Errno) {
        guard shared.quotas.needsLoad else { return }
        var plan = LockPlan()
        plan.add(.quota, .read)
        let rules = try locked(.reads, plan) { try $0.loadQuotaRules() }
        shared.quotas.install(rules)
    }

    private func quotaChange(_ body: (FSCore) throws -> Void) throws(ArchiveError) {
        var plan = LockPlan()
        plan.add(.quota, .write)
        try archive(.grows, plan: plan, body: body)
        shared.quotas.invalidate()
    }

    public func addQuotaRule(_ rule: QuotaRule) throws(ArchiveError) {
        try quotaChange { try $0.addQuotaRule(rule) }
    }

    public func deleteQuotaRule(_ rule: QuotaRule) throws(ArchiveError) {
        try quotaChange { try $0.deleteQuotaRule(rule) }
    }

    /// Rules in storage order from `from`, at most `limit`; `next` is where more start.
    public func quotaRules(from: QuotaRulePosition = QuotaRulePosition(hash: 0, index: 0), limit: Int = 1024) throws(Errno) -> (rules: [QuotaRule], next: QuotaRulePosition?) {
        var plan = LockPlan()
        plan.add(.quota, .read)
        return try locked(.reads, plan) { try $0.quotaRules(from: from, limit: max(limit, 1)) }
    }
}
