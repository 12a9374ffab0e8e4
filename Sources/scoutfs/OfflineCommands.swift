import ArgumentParser
import Foundation
import ScoutFormat
import ScoutStore

// The original's offline administration verbs: changes made to the devices of a filesystem
// that no one mounts.

/// The metadata device, locked against mounts and mkfs on this machine and checked for live
/// mounts elsewhere (their quorum heartbeats), with its superblock.
func openUnmounted(_ meta: String) throws -> (FileBlockDevice, SuperBlock) {
    let m = try openDevice(meta)
    guard try MountClaim.lockDevice(m) else {
        throw StoreError(.exists, "\(meta) is in use by a mount on this machine (see `scoutfs status`); unmount it first")
    }
    let sb = try Store.readSuperblock(m)
    try MountClaim.refuseWhileClaimed(meta: m, superblock: sb) { _ in }
    return (m, sb)
}

/// Writes `sb` as the next commit of the metadata device: to the copy the current one is not
/// in, one seq on, so a torn write leaves the current superblock to mount from.
func writeNextSuperblock(_ sb: SuperBlock, to m: FileBlockDevice) throws {
    var next = sb
    next.seq += 1
    let copy = Int(next.seq % 2)
    try m.write(at: Layout.superOffset(copy: copy), next.encode(smallBlkno: Layout.superSmallBlkno[copy]))
    try m.flush()
}

struct ChangeQuorumConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "change-quorum-config",
        abstract: "Replace the quorum configuration of an unmounted filesystem.",
        discussion: "The new slots replace the old ones entirely: give every slot to keep. Only offline changes are supported (-F), with every mount of the filesystem unmounted.")
    @Option(name: [.customShort("Q"), .customLong("quorum-slot")],
            help: ArgumentHelp("A quorum member: SLOT,ADDRESS,PORT (slot 0 to 14). Repeat for each member.", valueName: "SLOT,ADDRESS,PORT"))
    var quorumSlots: [String] = []
    @Flag(name: [.customShort("F"), .customLong("offline")], help: "Change the devices directly; nothing may mount them meanwhile.") var offline = false
    @Argument(help: "Metadata device.") var meta: String

    func validate() throws {
        if quorumSlots.isEmpty { throw ValidationError("must provide at least one -Q SLOT,ADDRESS,PORT") }
        if !offline { throw ValidationError("only offline changes are supported: give -F (--offline) with every mount unmounted") }
        var seen = Set<UInt8>()
        for s in quorumSlots {
            let slot = try MkfsCommand.parseSlot(s)
            if !seen.insert(slot.slot).inserted { throw ValidationError("Quorum slot \(slot.slot) already specified before slot '\(s)'") }
        }
    }

    func run() throws {
        do {
            let slots = try quorumSlots.map(MkfsCommand.parseSlot).sorted { $0.slot < $1.slot }
            let (m, sb) = try openUnmounted(meta)
            var next = sb
            next.quorumSlots = slots
            try writeNextSuperblock(next, to: m)
            print("quorum slots of \(meta) changed from \(MkfsCommand.describe(sb.quorumSlots)) to \(MkfsCommand.describe(slots))")
        } catch {
            throw fail("change-quorum-config", error)
        }
    }
}

struct ChangeFormatVersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "change-format-version",
        abstract: "Change the format version of an unmounted filesystem.",
        discussion: "The supported range is \(FormatVersion.current)-\(FormatVersion.current): this scoutfs writes and reads one format version, so the only change there is to make is none.")
    @Option(name: [.customShort("V"), .customLong("format-version")], help: "The version (default: the newest supported).") var version: ScoutNumber?
    @Flag(name: [.customShort("F"), .customLong("offline")], help: "Change the devices directly; nothing may mount them meanwhile.") var offline = false
    @Argument(help: "Metadata device.") var meta: String
    @Argument(help: "Data device.") var data: String

    func validate() throws {
        if let v = version?.value, v != FormatVersion.current {
            throw ValidationError("format-version \(v) is outside supported range of \(FormatVersion.current)-\(FormatVersion.current)")
        }
    }

    func run() throws {
        do {
            let (_, sb) = try openUnmounted(meta)
            let d = try openDevice(data, readOnly: true)
            try Store.checkDataDevice(d, matches: sb)
            let target = version?.value ?? FormatVersion.current
            guard sb.formatVersion == target else {
                throw StoreError(.invalid, "meta super block has format version \(sb.formatVersion) outside of supported version range \(FormatVersion.current)-\(FormatVersion.current)")
            }
            print("both metadata and data device format version are already \(target), nothing to do.")
        } catch {
            throw fail("change-format-version", error)
        }
    }
}

struct PrepareEmptyDataDeviceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare-empty-data-device",
        abstract: "Prepare an unused device as the data device of an existing, unmounted filesystem.",
        discussion: "Every data block must be free (no file holds data, no mount's pool holds blocks), and the new device must hold as many data blocks as the filesystem has. A data superblock is written to DATA-DEVICE, destroying what it held; the metadata device and the old data device are not changed.")
    @Flag(name: [.customShort("c"), .customLong("check")], help: "Only check that the devices could be used; write nothing.") var check = false
    @Argument(help: "Metadata device.") var meta: String
    @Argument(help: "The new data device.") var data: String

    func run() throws {
        do {
            let (_, sb) = try openUnmounted(meta)
            let usable = sb.dataTotalBlocks - Layout.dataFirstBlkno
            guard sb.dataFreeBlocks == usable else {
                throw StoreError(.invalid, "\(usable - min(usable, sb.dataFreeBlocks)) data blocks are in use (by files, or by a mount that did not finish its recovery); free them before moving to another data device")
            }
            let d = try openDevice(data, readOnly: check)
            let needed = sb.dataTotalBlocks << UInt64(Layout.dataBlockShift)
            guard d.size >= needed else {
                throw StoreError(.tooSmall, "\(data) is \(d.size) bytes; the filesystem has \(sb.dataTotalBlocks) data blocks of 4 KiB (\(needed) bytes)")
            }
            if check {
                print("\(data) can be the data device of \(meta): all \(usable) data blocks are free and it holds \(d.size) bytes")
                return
            }
            guard try MountClaim.lockDevice(d) else {
                throw StoreError(.exists, "\(data) is in use by a mount on this machine")
            }
            var dsb = sb
            dsb.flags.insert(.isDataDevice)
            dsb.seq = 1
            try d.write(at: Layout.dataSuperOffset, dsb.encode(smallBlkno: Layout.dataSuperSmallBlkno))
            try d.flush()
            print("\(data) is now the data device of \(meta) (filesystem \(sb.uuidString)); mount with it in place of the old one")
        } catch {
            throw fail("prepare-empty-data-device", error)
        }
    }
}
