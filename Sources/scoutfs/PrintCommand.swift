import ArgumentParser
import Foundation
import ScoutFormat
import ScoutStore

struct PrintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "print",
        abstract: "Print the superblock, a summary of every tree and the allocators of an unmounted filesystem."
    )

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Argument(help: "Metadata device.")
    var meta: String

    struct Output: Encodable {
        struct Slot: Encodable { var slot: Int; var address: String; var port: Int }
        struct Tree: Encodable { var name: String; var height: Int; var items: UInt64; var blocks: UInt64; var rootBlkno: UInt64; var rootSeq: UInt64 }
        var fsid: String
        var uuid: String
        var formatVersion: UInt64
        var seq: UInt64
        var metaTotalBlocks: UInt64
        var dataTotalBlocks: UInt64
        /// mkfs -z: blocks per data allocation zone (absent without zones).
        var dataAllocZoneBlocks: UInt64?
        var nextIno: UInt64
        var nextSeq: UInt64
        var quorumSlots: [Slot]
        /// What each configured slot's quorum block says: which mount claims the devices.
        struct Claim: Encodable {
            var slot: Int; var state: String; var host: String; var pid: UInt32
            var mountedAt: Int64; var heartbeat: UInt64; var intervalMillis: UInt32
            /// The election as the slot records it: the highest term it saw, its last vote,
            /// and the terms it was elected in, fenced earlier leaders in, and stopped serving in.
            var term: UInt64; var votedTerm: UInt64; var votedFor: Int
            var electedTerm: UInt64; var fencedTerm: UInt64; var stoppedTerm: UInt64
            var electedAt: Int64; var fencedAt: Int64; var stoppedAt: Int64
        }
        var quorumClaims: [Claim]
        /// The slot whose server the quorum blocks name (greatest elected term, not stopped).
        struct Leader: Encodable { var slot: Int; var term: UInt64 }
        var leader: Leader?
        var trees: [Tree]
        struct LogTree: Encodable { var rid: String; var height: Int; var items: UInt64; var blocks: UInt64; var poolBlocks: UInt64; var metaPoolBlocks: UInt64 }
        /// Clients' committed log trees the server has not merged into the fs tree yet, and
        /// the data blocks each client holds in its pool.
        var logTrees: [LogTree]
        var metaFreeBlocks: UInt64
        var metaReserveBlocks: Int
        var dataFreeBlocks: UInt64
        var problems: [String]
    }

    func run() throws {
        do {
            let m = try openDevice(meta, readOnly: true)
            let (sb, superProblems) = try Store.readSuperblockCopies(m)
            // print needs only the metadata device; reading trees never touches data blocks.
            let store = try Store.openMetadataOnly(meta: m, superblock: sb)
            let summary = Checker.summarize(store)
            var problems = superProblems + summary.problems
            var claims: [Output.Claim] = []
            var blocks: [(slot: Int, block: QuorumBlock)] = []
            for s in sb.quorumSlots {
                do {
                    let b = try MountClaim.read(m, fsid: sb.fsid, slot: Int(s.slot))
                    blocks.append((Int(s.slot), b))
                    claims.append(.init(slot: Int(s.slot), state: b.state == .mounted ? "mounted" : "unclaimed", host: b.host, pid: b.pid,
                                        mountedAt: b.mountedAt, heartbeat: b.heartbeat, intervalMillis: b.intervalMillis,
                                        term: b.term, votedTerm: b.votedTerm, votedFor: Int(b.votedFor),
                                        electedTerm: b.elected.term, fencedTerm: b.fenced.term, stoppedTerm: b.stopped.term,
                                        electedAt: b.elected.atNanos, fencedAt: b.fenced.atNanos, stoppedAt: b.stopped.atNanos))
                } catch {
                    problems.append("\(error)")
                }
            }
            let out = Output(
                fsid: hex(sb.fsid), uuid: sb.uuidString, formatVersion: sb.formatVersion, seq: sb.seq,
                metaTotalBlocks: sb.metaTotalBlocks, dataTotalBlocks: sb.dataTotalBlocks,
                dataAllocZoneBlocks: sb.dataAllocZoneBlocks == 0 ? nil : sb.dataAllocZoneBlocks,
                nextIno: sb.nextIno, nextSeq: sb.nextSeq,
                quorumSlots: sb.quorumSlots.map { .init(slot: Int($0.slot), address: $0.address, port: Int($0.port)) },
                quorumClaims: claims,
                leader: QuorumBlock.leader(of: blocks).map { .init(slot: $0.slot, term: $0.term) },
                trees: summary.trees.map { t, s in
                    let r = sb.root(t)
                    return .init(name: t.description, height: s.height, items: s.items, blocks: s.blocks,
                                 rootBlkno: r.ref.blkno, rootSeq: r.ref.seq)
                },
                logTrees: summary.logTrees.map { rid, s in
                    .init(rid: String(rid, radix: 16), height: s.height, items: s.items, blocks: s.blocks,
                          poolBlocks: summary.logTreePools[rid] ?? 0, metaPoolBlocks: summary.logTreeMetaPools[rid] ?? 0)
                },
                metaFreeBlocks: sb.metaFreeBlocks, metaReserveBlocks: sb.metaReserve.count,
                dataFreeBlocks: sb.dataFreeBlocks, problems: problems)
            if json {
                try printJSON(out)
            } else {
                printText(out)
            }
            // Scripts see damage by the status, as with check.
            if !problems.isEmpty { throw ExitCode(1) }
        } catch let e as ExitCode {
            throw e
        } catch {
            throw fail("print", error)
        }
    }

    func printText(_ o: Output) {
        print("superblock:")
        print("  fsid \(o.fsid) uuid \(o.uuid) format_version \(o.formatVersion) seq \(o.seq)")
        print("  meta_total_blocks \(o.metaTotalBlocks) (64 KiB)  data_total_blocks \(o.dataTotalBlocks) (4 KiB)")
        if let z = o.dataAllocZoneBlocks { print("  volume options:\n    data_alloc_zone_blocks: \(z)") }
        print("  next_ino \(o.nextIno) next_seq \(o.nextSeq)")
        print("  quorum_slots:")
        for s in o.quorumSlots { print("    \(s.slot): \(s.address) port \(s.port)") }
        print("  quorum_claims:")
        for c in o.quorumClaims {
            if c.state == "mounted" {
                print("    \(c.slot): mounted by host \(c.host) pid \(c.pid) since \(MountClaim.timeText(c.mountedAt)) UTC, heartbeat \(c.heartbeat) every \(c.intervalMillis) ms")
            } else {
                print("    \(c.slot): unclaimed")
            }
            guard c.term > 0 else { continue }
            var line = "       election: term \(c.term), voted in term \(c.votedTerm) for slot \(c.votedFor)"
            if c.electedTerm > 0 { line += ", elected in term \(c.electedTerm) at \(MountClaim.timeText(c.electedAt / 1_000_000_000)) UTC" }
            if c.fencedTerm > 0 { line += ", fenced earlier leaders in term \(c.fencedTerm)" }
            if c.stoppedTerm > 0 { line += ", stopped serving in term \(c.stoppedTerm)" }
            print(line)
        }
        if let l = o.leader {
            print("  quorum_leader: slot \(l.slot) in term \(l.term)")
        } else {
            print("  quorum_leader: none")
        }
        print("trees:")
        for t in o.trees {
            let name = t.name.padding(toLength: 16, withPad: " ", startingAt: 0)
            print("  \(name) height \(t.height) items \(t.items) blocks \(t.blocks) root \(t.rootBlkno)@\(t.rootSeq)")
        }
        for l in o.logTrees {
            let pool = (l.poolBlocks > 0 ? ", pool \(l.poolBlocks) data blocks" : "")
                + (l.metaPoolBlocks > 0 ? ", pool \(l.metaPoolBlocks) metadata blocks" : "")
            if l.height == 0 {
                print("  log tree of client \(l.rid): empty (merged)\(pool)")
            } else {
                print("  log tree of client \(l.rid): height \(l.height) items \(l.items) blocks \(l.blocks) (not merged yet)\(pool)")
            }
        }
        print("allocators:")
        print("  meta free_blocks \(o.metaFreeBlocks) reserve_blocks \(o.metaReserveBlocks) of \(o.metaTotalBlocks)")
        print("  data free_blocks \(o.dataFreeBlocks) of \(o.dataTotalBlocks)")
        for p in o.problems { print("problem: \(p)") }
    }
}
