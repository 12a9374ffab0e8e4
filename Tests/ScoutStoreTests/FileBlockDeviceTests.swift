#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ScoutStore
import ScoutFormat

/// Direct reads (the metadata device of a mount) must see what buffered writes just wrote,
/// aligned or not, uncached or not, and reads past the end must fail.
@Suite struct FileBlockDeviceTests {
    @Test func directReadsSeeBufferedWrites() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fbd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("meta").path
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        #expect(truncate(path, 1 << 20) == 0)
        let dev = try FileBlockDevice(path: path, directReads: true)
        let block = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        for round in 0..<3 {
            let bytes = block.map { $0 &+ UInt8(round) }
            try dev.write(at: 128 << 10, bytes)
            #expect(try dev.read(at: 128 << 10, count: 64 << 10) == bytes, "round \(round)")
            #expect(try dev.withBytes(at: 128 << 10, count: 64 << 10) { [UInt8]($0) } == bytes, "round \(round)")
            // Unaligned reads take the buffered path and see the same bytes.
            #expect(try dev.read(at: (128 << 10) + 5, count: 100) == Array(bytes[5..<105]))
        }
        // Uncached reads (quorum heartbeats) go through the same direct descriptor, and through
        // a descriptor of their own on a device opened without direct reads.
        try dev.flush()
        let plain = try FileBlockDevice(path: path)
        for d in [dev, plain] {
            #expect(try d.readUncached(at: 128 << 10, count: 8 << 10) == Array(block.map { $0 &+ 2 }[0..<(8 << 10)]))
        }
        #expect(throws: StoreError.self) { try dev.withBytes(at: 1 << 20, count: 64 << 10) { $0.count } }

        // Block reads land in arena slots (aligned: read directly) and in unaligned memory
        // (read through a bounce buffer), both seeing the last write.
        let slot = try BlockArena.shared.take()
        try dev.readBlock(at: 128 << 10, into: UnsafeMutableRawBufferPointer(start: slot.base, count: slot.count))
        #expect(Array(slot.buffer) == block.map { $0 &+ 2 })
        let odd = UnsafeMutableRawPointer.allocate(byteCount: (64 << 10) + 8, alignment: 16)
        defer { odd.deallocate() }
        try dev.readBlock(at: 128 << 10, into: UnsafeMutableRawBufferPointer(start: odd + 8, count: 64 << 10))
        #expect(Array(UnsafeRawBufferPointer(start: odd + 8, count: 64 << 10)) == block.map { $0 &+ 2 })
        #expect(throws: StoreError.self) { try dev.readBlock(at: 1 << 20, into: UnsafeMutableRawBufferPointer(start: slot.base, count: slot.count)) }
    }

    /// The arena hands out aligned block slots and takes back the ones blocks let go of.
    @Test func arenaSlotsAreAlignedAndReused() throws {
        let arena = BlockArena()
        var held = try (0..<40).map { _ in try arena.take() }
        #expect(held.allSatisfy { Int(bitPattern: $0.base) % 4096 == 0 && $0.count == Layout.metaBlockSize })
        #expect(Set(held.map(\.base)).count == 40)
        #expect(arena.chunkCount == 2)
        let freed = held.removeLast().base
        #expect(try arena.take().base == freed)
        held.removeAll()
        #expect(arena.freeSlots == 2 * (2 << 20) / Layout.metaBlockSize)
        _ = try arena.take()
        #expect(arena.chunkCount == 2)
    }

    /// A reservation takes whole chunks once; taking what it reserved takes no more.
    @Test func reservedSlotsServeTakesWithoutNewChunks() throws {
        let arena = BlockArena()
        let perChunk = (2 << 20) / Layout.metaBlockSize
        try arena.reserve(slots: perChunk + 1)
        #expect(arena.chunkCount == 2 && arena.freeSlots == 2 * perChunk)
        try arena.reserve(slots: perChunk)
        #expect(arena.chunkCount == 2)
        let held = try (0..<(2 * perChunk)).map { _ in try arena.take() }
        #expect(arena.chunkCount == 2 && arena.freeSlots == 0)
        #expect(Set(held.map(\.base)).count == 2 * perChunk)
        // The pages are there and writable.
        for b in held { b.base.storeBytes(of: 0xabcd, as: UInt32.self) }
        #expect(held.allSatisfy { $0.base.load(as: UInt32.self) == 0xabcd })
    }

    /// A flush covers the writes completed before it; one with none new to cover skips the
    /// fdatasync (a device cache flush each), and a write after it makes the next one sync.
    @Test func aFlushWithNothingNewSkipsTheSync() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fbd-sync-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20)))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let d = try FileBlockDevice(path: path)
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 0)
        try d.write(at: 4096, [UInt8](repeating: 7, count: 4096))
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 1)
        try d.flush()
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 1)
        try d.write(at: 0, [1])
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 2)
        #expect(try d.read(at: 0, count: 1) == [1])
        // Another machine's writes (a node's log tree) make the next flush sync as well.
        d.noteWritesElsewhere()
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 3)
        try d.flush()
        #expect(d.syncs.load(ordering: .relaxed) == 3)
        // A write-back is no flush (sync_file_range, not fdatasync), and leaves the write
        // readable from the medium.
        try d.write(at: 8192, [UInt8](repeating: 9, count: 4096))
        try d.writeBack()
        #expect(d.syncs.load(ordering: .relaxed) == 3)
        #expect(try d.readUncached(at: 8192, count: 4096) == [UInt8](repeating: 9, count: 4096))
    }
}
