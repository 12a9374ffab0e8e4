import ArgumentParser
import Foundation
import ScoutFormat
import ScoutNet
import ScoutStore

struct MkfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkfs",
        abstract: "Format a metadata device and a data device as a new filesystem."
    )

    @Option(name: [.customShort("Q"), .customLong("quorum-slot")],
            help: ArgumentHelp("A quorum member: SLOT,ADDRESS,PORT (slot 0 to 14). Repeat for each member.", valueName: "SLOT,ADDRESS,PORT"))
    var quorumSlots: [String] = []

    @Flag(name: [.short, .long], help: "Overwrite devices that already hold a scoutfs filesystem.")
    var force = false

    @Option(name: .customLong("cluster-key"),
            help: ArgumentHelp("The cluster key file every node proves itself with: used if it exists, else written (owner-only). Default: \(clusterKeyDirectory)/cluster-FSID.key. Copy it to every machine that mounts.", valueName: "PATH"))
    var clusterKey: String?

    @Flag(name: [.customShort("A"), .customLong("allow-small-size")],
          help: "Allow devices smaller than the 256 MiB minimum (down to 32 MiB of metadata and 16 MiB of data), with a warning.")
    var allowSmallSize = false

    @Option(name: [.customShort("m"), .customLong("max-meta-size")],
            help: ArgumentHelp("Use at most this much of the metadata device (bytes or KMGTP units; rounded down to 64 KiB).", valueName: "SIZE"))
    var maxMetaSize: String?

    @Option(name: [.customShort("d"), .customLong("max-data-size")],
            help: ArgumentHelp("Use at most this much of the data device (bytes or KMGTP units; rounded down to 4 KiB).", valueName: "SIZE"))
    var maxDataSize: String?

    @Option(name: [.customShort("V"), .customLong("format-version")],
            help: ArgumentHelp("The format version to write; this scoutfs writes and reads version \(FormatVersion.current) only.", valueName: "VERSION"))
    var formatVersion: ScoutNumber?

    @Option(name: [.customShort("z"), .customLong("data-alloc-zone-blocks")],
            help: ArgumentHelp("Divide the data device into zones of this many 4 KiB blocks, so that each mount writes into zones of its own (at least \(SuperBlock.minDataAllocZoneBlocks), and at most \(SuperBlock.maxDataAllocZones) zones).", valueName: "BLOCKS"))
    var dataAllocZoneBlocks: ScoutNumber?

    @Argument(help: "Metadata device (block device or file).")
    var meta: String

    @Argument(help: "Data device (block device or file).")
    var data: String

    func validate() throws {
        if quorumSlots.isEmpty {
            throw ValidationError("at least one -Q SLOT,ADDRESS,PORT is required")
        }
        for s in quorumSlots { _ = try Self.parseSlot(s) }
        if let v = formatVersion?.value, v != FormatVersion.current {
            throw ValidationError("format-version \(v) is outside supported range of \(FormatVersion.current)-\(FormatVersion.current)")
        }
        if dataAllocZoneBlocks?.value == 0 { throw ValidationError("must provide non-zero data-alloc-zone-blocks") }
        if let maxMetaSize { _ = try parseSize(maxMetaSize) }
        if let maxDataSize { _ = try parseSize(maxDataSize) }
    }

    /// A size option rounded down to `unit`, saying so as the original does.
    static func limit(_ text: String?, unit: UInt64, _ what: String) throws -> UInt64? {
        guard let text else { return nil }
        let v = try parseSize(text)
        let r = v / unit * unit
        if r != v { FileHandle.standardError.write(Data("\(what) dev size \(v) rounded down to \(r) bytes\n".utf8)) }
        return r
    }

    /// Quorum slots as mkfs and change-quorum-config print them: `0: ADDRESS:PORT, …`.
    static func describe(_ slots: [QuorumSlot]) -> String {
        slots.map { "\($0.slot): \($0.address):\($0.port)" }.joined(separator: ", ")
    }

    static func parseSlot(_ text: String) throws -> QuorumSlot {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let slot = UInt8(parts[0]), Int(slot) < Layout.maxQuorumSlots,
              let port = UInt16(parts[2]), port > 0
        else {
            throw ValidationError("quorum slot '\(text)': expected SLOT,ADDRESS,PORT with SLOT 0 to \(Layout.maxQuorumSlots - 1) and PORT 1 to 65535")
        }
        var buf = [UInt8](repeating: 0, count: 16)
        guard inet_pton(AF_INET, parts[1], &buf) == 1 || inet_pton(AF_INET6, parts[1], &buf) == 1 else {
            throw ValidationError("quorum slot '\(text)': '\(parts[1])' is not an IPv4 or IPv6 address")
        }
        return QuorumSlot(slot: slot, address: parts[1], port: port)
    }

    func run() throws {
        do {
            let slots = try quorumSlots.map(Self.parseSlot)
            let m = try openDevice(meta)
            let d = try openDevice(data)
            // Not even --force formats devices a mount is using: here, by its lock; elsewhere,
            // by a live heartbeat in the quorum blocks of the filesystem they hold.
            guard try MountClaim.lockDevices(meta: m, data: d) else {
                throw StoreError(.exists, "\(meta) or \(data) is in use by a mount on this machine (see `scoutfs status`); unmount it before formatting")
            }
            if let sb = try? Store.readSuperblock(m) {
                try MountClaim.refuseWhileClaimed(meta: m, superblock: sb) { _ in }
            }
            // The key before the format, so that a key that cannot be had leaves the devices as
            // they were.
            let given = clusterKey.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil }
            let key = try given.map { try ClusterKey.load(from: $0) } ?? ClusterKey.generate()
            let metaBytes = try Self.limit(maxMetaSize, unit: UInt64(Layout.metaBlockSize), "Meta")
            let dataBytes = try Self.limit(maxDataSize, unit: UInt64(Layout.dataBlockSize), "Data")
            if allowSmallSize {
                for (what, size, minimum) in [("metadata", min(m.size, metaBytes ?? .max), Layout.minMetaDeviceBytes),
                                              ("data", min(d.size, dataBytes ?? .max), Layout.minDataDeviceBytes)] where size < minimum {
                    FileHandle.standardError.write(Data("warning: the \(what) device is \(size >> 20) MiB, below the \(minimum >> 20) MiB minimum; it will fill quickly\n".utf8))
                }
            }
            let store = try Store.format(meta: m, data: d, quorumSlots: slots, force: force,
                                         metaBytes: metaBytes, dataBytes: dataBytes, allowSmall: allowSmallSize,
                                         dataAllocZoneBlocks: dataAllocZoneBlocks?.value ?? 0)
            let sb = store.superblock
            let keyPath = clusterKey ?? defaultClusterKeyPath(fsid: sb.fsid)
            if given == nil {
                do {
                    if clusterKey == nil { try FileManager.default.createDirectory(atPath: clusterKeyDirectory, withIntermediateDirectories: true) }
                    try key.save(to: keyPath)
                } catch {
                    throw StoreError(.io, "the filesystem is made, but its cluster key could not be written: \(error); nothing can mount it until a key is given (`scoutfs mkfs --force --cluster-key PATH …` again)")
                }
            }
            let zones = sb.dataAllocZoneBlocks == 0 ? "" : "\n  data alloc zones:     \(sb.dataAllocZoneBlocks) blocks each"
            print("""
                Created scoutfs filesystem:
                  meta device path:     \(meta)
                  data device path:     \(data)
                  fsid:                 \(hex(sb.fsid))
                  uuid:                 \(sb.uuidString)
                  format version:       \(sb.formatVersion)
                  64KB metadata blocks: \(sb.metaTotalBlocks)
                  4KB data blocks:      \(sb.dataTotalBlocks)
                  quorum slots:         \(Self.describe(sb.quorumSlots))\(zones)
                  cluster key:          \(keyPath)\(given == nil ? "" : " (kept)")
                """)
        } catch let e as ValidationError {
            throw e
        } catch {
            throw fail("mkfs", error)
        }
    }
}
