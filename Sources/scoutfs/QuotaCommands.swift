import ArgumentParser
import Foundation
import ScoutFormat

// The quota verbs, with the original's rule strings:
// "PRIO VAL,SRC,FLAG VAL,SRC,FLAG VAL,SRC,FLAG OP LIMIT FLAG", sources L(iteral), P(roject),
// U(id), G(id), name flag S(elect) or -, op I(node) or D(ata), rule flag C(ount) or -.

enum QuotaText {
    static let sources: [Character] = ["L", "P", "U", "G"]
    static let ops: [Character] = ["I", "D"]

    /// A rule as the original's quota-list prints it.
    static func format(_ r: QuotaRule) -> String {
        let prio = String(r.priority)
        var s = String(repeating: " ", count: max(0, 3 - prio.count)) + prio + " "
        for n in r.names { s += "\(n.value),\(sources[Int(n.source)]),\(n.selects ? "S" : "-") " }
        return s + "\(ops[Int(r.op)]) \(r.limit) \(r.flags & QuotaRule.totlCount != 0 ? "C" : "-")"
    }

    /// A rule string as the original's parse_rule reads one, with its messages.
    static func parse(_ str: String) throws -> QuotaRule {
        let t = str.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        let missing = VerbError("invalid rule, missing fields: \(str)", errno: EINVAL)
        guard t.count == 7, let prio = UInt8(t[0]), let limit = UInt64(t[5]), t[4].count == 1, t[6].count == 1 else { throw missing }
        var names: [QuotaRule.Name] = []
        for (i, n) in t[1...3].enumerated() {
            let parts = n.split(separator: ",", omittingEmptySubsequences: false)
            guard parts.count == 3, let v = UInt64(parts[0]), parts[1].count == 1, parts[2].count == 1 else { throw missing }
            guard let src = sources.firstIndex(of: parts[1].first!) else {
                throw VerbError("invalid name source '\(parts[1])' in name #\(i + 1) in rule:\n\t\(str)", errno: EINVAL)
            }
            let flag = parts[2].first!
            guard flag == "-" || flag == "S" else {
                throw VerbError("invalid name flags '\(flag)' in name #\(i + 1) in rule:\n\t\(str)", errno: EINVAL)
            }
            names.append(QuotaRule.Name(value: v, source: UInt8(src), flags: flag == "S" ? QuotaRule.select : 0))
        }
        guard let op = ops.firstIndex(of: t[4].first!) else { throw VerbError("invalid op '\(t[4])' in rule:\n\t\(str)", errno: EINVAL) }
        let rf = t[6].first!
        guard rf == "-" || rf == "C" else { throw VerbError("invalid rule flags '\(rf)' in rule:\n\t\(str)", errno: EINVAL) }
        return QuotaRule(priority: prio, names: names, op: UInt8(op), limit: limit, flags: rf == "C" ? QuotaRule.totlCount : 0)
    }

    /// Every rule of the mount, in storage order.
    static func all(_ t: ControlTarget) throws -> [QuotaRule] {
        var rules: [QuotaRule] = []
        var from = QuotaRulePosition(hash: 0, index: 0)
        while true {
            guard case let .quotaRules(page, next) = try t.call(.quotaRules(from: from, limit: 1024)) else {
                throw VerbError("unexpected reply from the mount")
            }
            rules += page
            guard let next else { return rules }
            from = next
        }
    }
}

struct QuotaAddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quota-add", abstract: "Add a quota rule (root only).",
        discussion: "RULE is \"PRIO VAL,SRC,FLAG VAL,SRC,FLAG VAL,SRC,FLAG OP LIMIT FLAG\": an operation OP (I inode creation, D data) on an inode is refused with EDQUOT once the .totl. total named by the three names (each a literal L, or the inode's P project, U uid or G gid; S selects only inodes with that value) reaches LIMIT (C: the count of xattrs instead of their sum). Of the rules that apply, the highest in sort order (PRIO first) is enforced.")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: .shortAndLong, help: "The rule string.") var rule: String

    func run() throws {
        try runVerb("quota-add") {
            let r = try QuotaText.parse(rule)
            let t = try ControlTarget.open(path)
            defer { t.close() }
            _ = try t.call(.addQuotaRule(r))
        }
    }
}

struct QuotaDelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quota-del", abstract: "Delete a quota rule equal in every field (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Option(name: .shortAndLong, help: "The rule string.") var rule: String

    func run() throws {
        try runVerb("quota-del") {
            let r = try QuotaText.parse(rule)
            let t = try ControlTarget.open(path)
            defer { t.close() }
            _ = try t.call(.deleteQuotaRule(r))
        }
    }
}

struct QuotaListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quota-list", abstract: "List quota rules, highest in enforcement order first (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?
    @Flag(name: [.customShort("U"), .customLong("unsorted")], help: "In storage order.") var unsorted = false
    @Flag(help: "Print JSON.") var json = false

    struct Entry: Encodable {
        var rule: String
    }

    func run() throws {
        try runVerb("quota-list") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            var rules = try QuotaText.all(t)
            if !unsorted { rules.sort(by: >) }
            if json {
                try printJSON(rules.map { Entry(rule: QuotaText.format($0)) })
            } else {
                for r in rules { print(QuotaText.format(r)) }
            }
        }
    }
}

struct QuotaWipeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quota-wipe", abstract: "Delete every quota rule (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?

    func run() throws {
        try runVerb("quota-wipe") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            for r in try QuotaText.all(t) {
                _ = try t.call(.deleteQuotaRule(r), failing: "Failed to delete following rule:\n    \(QuotaText.format(r))\n")
            }
        }
    }
}

struct QuotaRestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quota-restore", abstract: "Add the rules read from standard input, one per line as quota-list prints them (root only).")
    @Option(name: .shortAndLong, help: "A path in the filesystem.") var path: String?

    func run() throws {
        try runVerb("quota-restore") {
            let t = try ControlTarget.open(path)
            defer { t.close() }
            while let line = readLine() {
                if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
                let r = try QuotaText.parse(line)
                _ = try t.call(.addQuotaRule(r), failing: "Failed to add following rule:\n    \(QuotaText.format(r))\n")
            }
        }
    }
}
