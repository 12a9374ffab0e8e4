import ArgumentParser
import Foundation
import ScoutFS
import ScoutStore

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify an unmounted filesystem: checksums, tree invariants, that every block is free or referenced exactly once, and that index items match inodes.",
        discussion: "Exits 0 when clean, 1 with one line per problem otherwise."
    )

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Argument(help: "Metadata device.")
    var meta: String

    @Argument(help: "Data device.")
    var data: String

    struct Output: Encodable {
        var clean: Bool
        var problems: [String]
        var metaBlocks: UInt64
        var metaReferenced: UInt64
        var metaFree: UInt64
        var dataBlocks: UInt64
        var dataReferenced: UInt64
        var dataPooled: UInt64
        var dataFree: UInt64
        var inodes: UInt64
        var searchItems: UInt64
        var xattrTotals: Int
    }

    func run() throws {
        var report: CheckReport
        var index = FilesystemCheck.Report()
        do {
            let m = try openDevice(meta, readOnly: true)
            let d = try openDevice(data, readOnly: true)
            report = Checker.check(meta: m, data: d)
            // Index items are read through the trees, which must be sound first.
            if report.isClean {
                index = FilesystemCheck.check(try Store.open(meta: m, data: d, options: StoreOptions(cacheBlocks: 1024)))
                report.problems += index.problems
            }
        } catch {
            throw fail("check", error)
        }
        let out = Output(clean: report.isClean, problems: report.problems,
                         metaBlocks: report.metaBlocks, metaReferenced: report.metaReferenced, metaFree: report.metaFree,
                         dataBlocks: report.dataBlocks, dataReferenced: report.dataReferenced, dataPooled: report.dataPooled, dataFree: report.dataFree,
                         inodes: index.inodes, searchItems: index.searchItems, xattrTotals: index.totals)
        if json {
            try printJSON(out)
        } else {
            for p in report.problems { print(p) }
            if report.isClean {
                print("clean: \(report.metaReferenced) metadata blocks referenced, \(report.metaFree) free of \(report.metaBlocks); \(report.dataReferenced) data blocks referenced, \(report.dataPooled > 0 ? "\(report.dataPooled) in clients' pools, " : "")\(report.dataFree) free of \(report.dataBlocks); \(index.inodes) inodes, their index items, \(index.searchItems) search items and \(index.totals) xattr totals match")
            } else {
                print("\(report.problems.count) problem\(report.problems.count == 1 ? "" : "s") found")
            }
        }
        if !report.isClean { throw ExitCode(1) }
    }
}
