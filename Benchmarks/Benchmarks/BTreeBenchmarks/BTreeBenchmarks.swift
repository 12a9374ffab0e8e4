import Benchmark
import Foundation
import ScoutFormat
import ScoutStore

// Figures for the foundation: btree inserts and lookups at 1M items (store cache warm, and cold
// from a device file whose OS page cache was dropped), and commit latency for 1k / 10k dirty
// items on a device file (fdatasync included) and on a memory device (CPU only).

let itemCount = 1_000_000
let valueBytes = 100
let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)]

/// Distinct keys in a scattered order: inode numbers through an odd multiplier (a bijection).
@inline(__always)
func key(_ i: Int) -> Key {
    Key(zone: Zone.fs, first: UInt64(truncatingIfNeeded: i) &* 0x9E37_79B9_7F4A_7C15, type: ItemType.inode)
}

let value = [UInt8](repeating: 0xab, count: valueBytes)

func memoryStore(cacheBlocks: Int = 8192) throws -> Store {
    try Store.format(meta: MemoryBlockDevice(name: "meta", size: 4 << 30), data: MemoryBlockDevice(name: "data", size: 1 << 30),
                     quorumSlots: slots, options: StoreOptions(cacheBlocks: cacheBlocks))
}

let fixtureDir = NSTemporaryDirectory() + "scoutfs-bench-\(getpid())"

/// A device file pair in the temp folder with `count` items committed, made once per process.
final class FileFixture: @unchecked Sendable {
    // Built once before any benchmark reads it and never mutated after; safe to share.
    let dir: String
    let meta: String
    let data: String

    static let shared: FileFixture = try! FileFixture(items: itemCount)

    init(items: Int) throws {
        dir = fixtureDir
        // Remove the device files when the benchmark process ends.
        atexit { try? FileManager.default.removeItem(atPath: fixtureDir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        meta = dir + "/meta"
        data = dir + "/data"
        for (p, size) in [(meta, UInt64(4) << 30), (data, UInt64(1) << 30)] {
            guard FileManager.default.createFile(atPath: p, contents: nil) else {
                throw StoreError(.io, "cannot create benchmark device file \(p)")
            }
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: p))
            try h.truncate(atOffset: size)
            try h.close()
        }
        let s = try Store.format(meta: FileBlockDevice(path: meta), data: FileBlockDevice(path: data), quorumSlots: slots, force: true)
        for i in 0..<items {
            try s.insert(Item(key: key(i), seq: 1, value: value), into: .fs)
            if i % 100_000 == 99_999 { try s.commit() }
        }
        try s.commit()
    }

    func open(cacheBlocks: Int, evict: Bool) throws -> Store {
        let m = try FileBlockDevice(path: meta)
        let d = try FileBlockDevice(path: data)
        if evict { try m.evictOSCache() }
        return try Store.open(meta: m, data: d, options: StoreOptions(cacheBlocks: cacheBlocks))
    }
}

/// A memory store holding 1M committed items, every block cached.
final class MemoryFixture: @unchecked Sendable {
    // Built once and then only read by the lookup benchmark.
    let store: Store
    static let shared: MemoryFixture = try! MemoryFixture()

    init() throws {
        store = try memoryStore()
        for i in 0..<itemCount { try store.insert(Item(key: key(i), seq: 1, value: value), into: .fs) }
        try store.commit()
        for i in 0..<itemCount { _ = try store.lookup(key(i), in: .fs) }
    }
}

/// Rewrites `count` random items of the 1M (unmeasured), then measures the commit alone.
func dirtyThenCommit(_ s: Store, _ count: Int, _ benchmark: Benchmark) throws {
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<count {
        try s.insert(Item(key: key(Int.random(in: 0..<itemCount, using: &rng)), seq: 2, value: value), into: .fs)
    }
    benchmark.startMeasurement()
    try s.commit()
    benchmark.stopMeasurement()
}

let benchmarks: @Sendable () -> Void = {
    let metrics: [BenchmarkMetric] = [.wallClock, .throughput, .cpuTotal, .peakMemoryResident, .syscalls]
    Benchmark.defaultConfiguration = .init(metrics: metrics, warmupIterations: 0)

    Benchmark("btree insert, 1M items, one transaction",
              configuration: .init(scalingFactor: .mega, maxDuration: .seconds(120), maxIterations: 3)) { benchmark in
        let s = try memoryStore()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            try s.insert(Item(key: key(i), seq: 1, value: value), into: .fs)
        }
        benchmark.stopMeasurement()
    }

    Benchmark("btree lookup, 1M items, cache warm",
              configuration: .init(scalingFactor: .mega, maxDuration: .seconds(120), maxIterations: 5,
                                   setup: { _ = MemoryFixture.shared })) { benchmark in
        let s = MemoryFixture.shared.store
        for i in benchmark.scaledIterations {
            blackHole(try s.lookup(key((i &* 7919) % itemCount), in: .fs))
        }
    }

    Benchmark("btree lookup, 1M items, cold from device file",
              configuration: .init(scalingFactor: .kilo, maxDuration: .seconds(120), maxIterations: 5,
                                   setup: { _ = FileFixture.shared })) { benchmark in
        // A 64-block store cache and the file's pages dropped from the OS cache: nearly every
        // lookup reads its leaf from the device.
        let s = try FileFixture.shared.open(cacheBlocks: 64, evict: true)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(try s.lookup(key((i &* 104_729) % itemCount), in: .fs))
        }
        benchmark.stopMeasurement()
    }

    for dirty in [1_000, 10_000] {
        Benchmark("commit \(dirty) dirty items, device file",
                  configuration: .init(metrics: [.wallClock, .cpuTotal, .syscalls], maxDuration: .seconds(60), maxIterations: 30,
                                       setup: { _ = FileFixture.shared })) { benchmark in
            try dirtyThenCommit(try FileFixture.shared.open(cacheBlocks: 8192, evict: false), dirty, benchmark)
        }

        Benchmark("commit \(dirty) dirty items, memory device",
                  configuration: .init(metrics: [.wallClock, .cpuTotal], maxDuration: .seconds(60), maxIterations: 30,
                                       setup: { _ = MemoryFixture.shared })) { benchmark in
            try dirtyThenCommit(MemoryFixture.shared.store, dirty, benchmark)
        }
    }
}
