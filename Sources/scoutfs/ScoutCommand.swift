import ArgumentParser
import Foundation
import ScoutFormat
import ScoutStore

@main
struct ScoutCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scoutfs",
        abstract: "A clustered, archival POSIX filesystem in user space.",
        subcommands: [MkfsCommand.self, MountCommand.self, UnmountCommand.self, StatusCommand.self, PrintCommand.self, CheckCommand.self,
                      WalkInodesCommand.self, StatCommand.self, StatfsCommand.self, ReleaseCommand.self, StageCommand.self,
                      SetattrCommand.self, DataWaitingCommand.self, DataWaitErrCommand.self, InoPathCommand.self,
                      GetReferringEntriesCommand.self, SearchXattrsCommand.self, ReadXattrTotalsCommand.self,
                      ListHiddenXattrsCommand.self, DfCommand.self, SyncCommand.self, GetFiemapCommand.self,
                      PunchOfflineCommand.self, MoveBlocksCommand.self, GetAttrXCommand.self, SetAttrXCommand.self,
                      ReadXattrIndexCommand.self, QuotaAddCommand.self, QuotaDelCommand.self, QuotaListCommand.self,
                      QuotaWipeCommand.self, QuotaRestoreCommand.self, GetAllocatedInosCommand.self,
                      ChangeQuorumConfigCommand.self, ChangeFormatVersionCommand.self, PrepareEmptyDataDeviceCommand.self,
                      ResizeDevicesCommand.self]
    )

    /// Runs the command line, answering argument errors in the original's (argp's) form —
    /// `VERB: message` and a hint — which scripts written for it match on; `--usage` is taken
    /// as `--help`.
    static func main() {
        let args = CommandLine.arguments.dropFirst().map { $0 == "--usage" ? "--help" : $0 }
        do {
            var command = try parseAsRoot(args)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            let verbs = configuration.subcommands.map { $0.configuration.commandName ?? "" }
            if code == .validationFailure, let verb = args.first(where: { verbs.contains($0) }) {
                FileHandle.standardError.write(Data("\(verb): \(message(for: error))\nTry `\(verb) --help' or `\(verb) --usage' for more information.\n".utf8))
                Foundation.exit(code.rawValue)
            }
            exit(withError: error)
        }
    }
}

/// Prints `scoutfs VERB: message` on stderr and exits 1: the one-line failure every verb uses
/// for errors a user can act on (a bad device, a full disk), as opposed to usage errors.
func fail(_ verb: String, _ error: any Error) -> ExitCode {
    fail(verb, "\(error)")
}

func fail(_ verb: String, _ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("scoutfs \(verb): \(message)\n".utf8))
    return ExitCode(1)
}

/// Where mkfs writes a filesystem's cluster key and mount looks for it, unless told.
let clusterKeyDirectory = "/etc/scoutfs"

func defaultClusterKeyPath(fsid: UInt64) -> String {
    clusterKeyDirectory + "/cluster-" + hex(fsid) + ".key"
}

func openDevice(_ path: String, readOnly: Bool = false, directReads: Bool = false) throws -> FileBlockDevice {
    if !FileManager.default.fileExists(atPath: path) {
        throw StoreError(.io, "\(path) does not exist; give a block device or create a file (truncate -s 1G \(path))")
    }
    return try FileBlockDevice(path: path, readOnly: readOnly, directReads: directReads)
}

func printJSON(_ value: some Encodable) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try enc.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}
