import Foundation
import ScoutTestSupport
import Testing
import ScoutFormat

/// Runs the built `scoutfs` binary against sparse device files, as a user would.
@Suite struct CLITests {
    func run(_ args: [String]) throws -> CLI.Result {
        try CLI.run(args)
    }

    /// A fresh folder with sparse META and DATA files of the given sizes.
    func devices(meta: UInt64 = 1 << 30, data: UInt64 = 2 << 30) throws -> (dir: URL, meta: String, data: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("scoutfs-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let m = dir.appendingPathComponent("meta").path, d = dir.appendingPathComponent("data").path
        for (path, size) in [(m, meta), (d, data)] { try Sys.sparseFile(path, size: size) }
        return (dir, m, d)
    }

    func json(_ text: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func mkfsPrintCheckOnAFreshFilesystem() throws {
        let (dir, m, d) = try devices()
        defer { try? FileManager.default.removeItem(at: dir) }
        let mk = try mkfs(dir, ["-Q", "0,127.0.0.1,7100", "-Q", "2,::1,7102", m, d])
        #expect(mk.status == 0, "\(mk.stderr)")
        #expect(mk.stdout.contains("64KB metadata blocks: 16384"))
        #expect(mk.stdout.contains("4KB data blocks:      524288"))

        let pr = try run(["print", "--json", m])
        #expect(pr.status == 0, "\(pr.stderr)")
        let o = try json(pr.stdout)
        #expect(o["metaTotalBlocks"] as? Int == 16384)
        #expect(o["seq"] as? Int == 1)
        let slots = try #require(o["quorumSlots"] as? [[String: Any]])
        #expect(slots.map { $0["slot"] as? Int } == [0, 2])
        #expect(slots.map { $0["address"] as? String } == ["127.0.0.1", "::1"])
        let trees = try #require(o["trees"] as? [[String: Any]])
        let metaFree = try #require(trees.first { $0["name"] as? String == "meta-free" })
        #expect(metaFree["items"] as? Int == 2)  // one free extent, indexed twice
        #expect((o["metaFreeBlocks"] as? Int ?? 0) + (o["metaReserveBlocks"] as? Int ?? 0) + 2 + 4 == 16384)
        #expect(o["dataFreeBlocks"] as? Int == 524288 - 64)

        let text = try run(["print", m])
        #expect(text.stdout.contains("quorum_slots:"))
        #expect(text.stdout.contains("0: 127.0.0.1 port 7100"))

        let ck = try run(["check", m, d])
        #expect(ck.status == 0, "\(ck.stdout)\(ck.stderr)")
        #expect(ck.stdout.hasPrefix("clean:"))
        let cj = try json(try run(["check", "--json", m, d]).stdout)
        #expect(cj["clean"] as? Bool == true)
        #expect(cj["metaReferenced"] as? Int == 2)
    }

    /// The original's mkfs options: -A allows small devices (with a warning), -m and -d cap
    /// the sizes used (rounded down, saying so), -V names the one format version written.
    @Test func mkfsTakesTheOriginalsSizeAndVersionOptions() throws {
        let (dir, m, d) = try devices()
        defer { try? FileManager.default.removeItem(at: dir) }
        let capped = try mkfs(dir, ["-Q", "0,127.0.0.1,7100", "-m", "300M", "-d", "314572801", "-V", "1", m, d])
        #expect(capped.status == 0, "\(capped.stderr)")
        #expect(capped.stderr.contains("Data dev size 314572801 rounded down to 314572800 bytes"), "\(capped.stderr)")
        #expect(capped.stdout.contains("64KB metadata blocks: 4800") && capped.stdout.contains("4KB data blocks:      76800"), "\(capped.stdout)")
        let v2 = try mkfs(dir, ["-f", "-Q", "0,127.0.0.1,7100", "-V", "2", m, d])
        #expect(v2.status == 64 && v2.stderr.contains("format-version 2 is outside supported range of 1-1"), "\(v2.stderr)")

        let (dir2, small, d2) = try devices(meta: 64 << 20, data: 64 << 20)
        defer { try? FileManager.default.removeItem(at: dir2) }
        let refused = try mkfs(dir2, ["-Q", "0,127.0.0.1,7100", small, d2])
        #expect(refused.status == 1 && refused.stderr.contains("-A allows down to"), "\(refused.stderr)")
        let allowed = try mkfs(dir2, ["-A", "-Q", "0,127.0.0.1,7100", small, d2])
        #expect(allowed.status == 0 && allowed.stderr.contains("warning: the metadata device is 64 MiB, below the 256 MiB minimum"), "\(allowed.stderr)")
        #expect(allowed.stdout.contains("64KB metadata blocks: 1024"))
        let ck = try CLI.run(["check", small, d2])
        #expect(ck.status == 0, "\(ck.stdout)")
        let tiny = try mkfs(dir2, ["-A", "-f", "-Q", "0,127.0.0.1,7100", "-m", "16M", small, d2])
        #expect(tiny.status == 1 && tiny.stderr.contains("scoutfs needs at least 32 MiB"), "\(tiny.stderr)")
    }

    /// change-quorum-config, change-format-version and prepare-empty-data-device, offline.
    @Test(.timeLimit(.minutes(3))) func offlineVerbsChangeAnUnmountedFilesystem() throws {
        let m = try TestMount()
        defer { m.cleanup() }
        let noF = try CLI.run(["change-quorum-config", "-Q", "0,127.0.0.1,7211", m.meta])
        #expect(noF.status == 64 && noF.stderr.contains("only offline changes are supported"), "\(noF.stderr)")
        let p0 = try TestPorts.block(), p2 = try TestPorts.block()
        let changed = try CLI.run(["change-quorum-config", "-F", "-Q", "0,127.0.0.1,\(p0)", "-Q", "2,127.0.0.1,\(p2)", m.meta])
        #expect(changed.status == 0 && changed.stdout.contains("to 0: 127.0.0.1:\(p0), 2: 127.0.0.1:\(p2)"), "\(changed.stdout)\(changed.stderr)")
        let printed = try CLI.run(["print", m.meta])
        #expect(printed.stdout.contains("2: 127.0.0.1 port \(p2)"), "\(printed.stdout.prefix(600))")
        #expect(try m.check().status == 0)
        // It mounts on the new configuration; a mounted filesystem is refused.
        try m.mount()
        try Sys.writeFile(m.path("f"), [1, 2, 3], fsync: true)
        let busy = try CLI.run(["change-quorum-config", "-F", "-Q", "0,127.0.0.1,7100", m.meta])
        #expect(busy.status == 1 && busy.stderr.contains("in use by a mount"), "\(busy.stderr)")
        try m.unmount()

        #expect(try CLI.run(["change-format-version", "-F", "-V", "2", m.meta, m.data]).status == 64)
        let same = try CLI.run(["change-format-version", "-F", m.meta, m.data])
        #expect(same.status == 0 && same.stdout == "both metadata and data device format version are already 1, nothing to do.\n", "\(same.stdout)\(same.stderr)")

        // A data device with blocks in use cannot be left; once they are freed it can.
        let other = m.dir.appendingPathComponent("data2").path
        #expect(FileManager.default.createFile(atPath: other, contents: nil) && truncate(other, 2 << 30) == 0)
        let inUse = try CLI.run(["prepare-empty-data-device", "-c", m.meta, other])
        #expect(inUse.status == 1 && inUse.stderr.contains("data blocks are in use"), "\(inUse.stderr)")
        try m.mount()
        #expect(unlink(m.path("f")) == 0)
        try m.unmount()
        let small = try CLI.run(["prepare-empty-data-device", "-c", m.meta, other])
        #expect(small.status == 1 && small.stderr.contains("is 2147483648 bytes; the filesystem has 1048576 data blocks"), "\(small.stderr)")
        #expect(truncate(other, 4 << 30) == 0)
        #expect(try CLI.run(["prepare-empty-data-device", "-c", m.meta, other]).status == 0)
        let prepared = try CLI.run(["prepare-empty-data-device", m.meta, other])
        #expect(prepared.status == 0, "\(prepared.stderr)")
        #expect(try CLI.run(["check", m.meta, other]).status == 0)
    }

    @Test func mkfsRefusesExistingFilesystemsSmallDevicesAndBadSlots() throws {
        let (dir, m, d) = try devices()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try mkfs(dir, ["-Q", "0,127.0.0.1,7100", m, d]).status == 0)
        let again = try mkfs(dir, ["-Q", "0,127.0.0.1,7100", m, d])
        #expect(again.status == 1)
        #expect(again.stderr == "scoutfs mkfs: \(m) already holds a scoutfs filesystem; use --force to overwrite it\n")
        let forced = try mkfs(dir, ["--force", "-Q", "0,127.0.0.1,7100", m, d])
        #expect(forced.status == 0, "\(forced.stderr)")

        let (dir2, small, d2) = try devices(meta: 64 << 20)
        defer { try? FileManager.default.removeItem(at: dir2) }
        let tooSmall = try mkfs(dir, ["-Q", "0,127.0.0.1,7100", small, d2])
        #expect(tooSmall.status == 1)
        #expect(tooSmall.stderr.contains("is 64 MiB; scoutfs needs at least 256 MiB"))
        #expect(tooSmall.stderr.split(separator: "\n").count == 1)
        #expect(tooSmall.stderr.contains("(-A allows down to 32 MiB of metadata and 16 MiB of data)"))

        let missing = try mkfs(dir, ["-Q", "0,127.0.0.1,7100", dir.appendingPathComponent("nope").path, d])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("does not exist"))

        for bad in ["15,127.0.0.1,7100", "0,localhost,7100", "0,127.0.0.1", "0,127.0.0.1,0"] {
            let r = try mkfs(dir, ["-f", "-Q", bad, m, d])
            #expect(r.status != 0, "accepted -Q \(bad)")
        }
        #expect(try mkfs(dir, ["-f", m, d]).status != 0)
    }

    /// mkfs with its cluster key beside the devices, not in the machine's key directory.
    func mkfs(_ dir: URL, _ args: [String]) throws -> CLI.Result {
        try run(["mkfs", "--cluster-key", dir.appendingPathComponent("cluster.key").path] + args)
    }

    @Test func checkReportsCorruptionAndWrongPairing() throws {
        let (dir, m, d) = try devices()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try mkfs(dir, ["-Q", "0,127.0.0.1,7100", m, d]).status == 0)
        let o = try json(try run(["print", "--json", m]).stdout)
        let trees = try #require(o["trees"] as? [[String: Any]])
        let root = try #require(trees.first { $0["name"] as? String == "data-free" }?["rootBlkno"] as? Int)
        // Flip one byte inside the data-free tree's root block.
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: m))
        let off = UInt64(root) << 16 + 100
        try h.seek(toOffset: off)
        let byte = try #require(try h.read(upToCount: 1))
        try h.seek(toOffset: off)
        try h.write(contentsOf: Data([byte[0] ^ 0xff]))
        try h.close()

        let ck = try run(["check", m, d])
        #expect(ck.status == 1)
        #expect(ck.stdout.contains("metadata block \(root) in data-free tree: checksum mismatch"))
        // print still prints what it can, and says by its status that it found damage.
        let pr = try run(["print", m])
        #expect(pr.status == 1)
        #expect(pr.stdout.contains("problem: metadata block \(root)"))

        let swapped = try run(["check", d, m])
        #expect(swapped.status == 1)
        #expect(swapped.stdout.contains("is a scoutfs data device"))

        let (dir2, m2, d2) = try devices()
        defer { try? FileManager.default.removeItem(at: dir2) }
        #expect(try mkfs(dir2, ["-Q", "0,127.0.0.1,7100", m2, d2]).status == 0)
        let mixed = try run(["check", m2, d])
        #expect(mixed.status == 1)
        #expect(mixed.stdout.contains("pair the devices"))
        let blank = try run(["print", dir2.appendingPathComponent("data").path])
        #expect(blank.status == 1)
    }
}
