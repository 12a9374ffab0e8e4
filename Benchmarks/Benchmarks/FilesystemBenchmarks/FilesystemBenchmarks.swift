import Benchmark
import BenchmarkThreads
import ScoutFS
import ScoutFormat
import ScoutStore

#if canImport(Glibc)
import Glibc
#endif

// Figures for one mount's operations in process, without FUSE: the same work by one thread
// and by two threads in directories of their own (different inode groups), which the
// client core lets run in parallel.

/// A filesystem on memory devices, with one directory per thread.
func mountWithDirectories(_ n: Int) -> (Filesystem, [UInt64]) {
    let meta = MemoryBlockDevice(name: "meta", size: 2 << 30)
    let data = MemoryBlockDevice(name: "data", size: 1 << 30)
    let store = try! Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
    let fs = try! Filesystem(store: store)
    let dirs = (0..<n).map { i in try! fs.mkdir(1, Array("d\(i)".utf8), mode: 0o755, caller: .root).ino }
    return (fs, dirs)
}

/// `n` clients of one cluster over one store, each with a directory of its own.
func clusterWithDirectories(_ n: Int) -> (LocalCluster, [Filesystem], [UInt64]) {
    let meta = MemoryBlockDevice(name: "meta", size: 2 << 30)
    let data = MemoryBlockDevice(name: "data", size: 1 << 30)
    let store = try! Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
    let local = try! LocalCluster(store: store, several: true)
    let clients = (0..<n).map { i in try! Filesystem(joining: local, options: FilesystemOptions(clientID: UInt64(i + 1))) }
    let dirs = (0..<n).map { i in try! clients[i].mkdir(1, Array("d\(i)".utf8), mode: 0o755, caller: .root).ino }
    return (local, clients, dirs)
}

let filesPerThread = 20_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput], maxDuration: .seconds(60), maxIterations: 40)

    for threads in [1, 2] {
        Benchmark("creates: \(threads) thread(s) × \(filesPerThread) files, own directories") { benchmark in
            let (fs, dirs) = mountWithDirectories(threads)
            benchmark.startMeasurement()
            onThreads(threads) { t in
                for i in 0..<filesPerThread {
                    let a = try! fs.create(dirs[t], Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
                    try! fs.release(a.ino)
                    try! fs.forget(a.ino, 1)
                }
            }
        }
        Benchmark("creates: \(threads) client(s) × \(filesPerThread) files, own directories") { benchmark in
            let (local, clients, dirs) = clusterWithDirectories(threads)
            benchmark.startMeasurement()
            onThreads(threads) { t in
                let fs = clients[t]
                for i in 0..<filesPerThread {
                    let a = try! fs.create(dirs[t], Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
                    try! fs.release(a.ino)
                    try! fs.forget(a.ino, 1)
                }
            }
            benchmark.stopMeasurement()
            withExtendedLifetime(local) {}
        }
        Benchmark("stats: \(threads) thread(s) × \(filesPerThread) lookups, own directories") { benchmark in
            let (fs, dirs) = mountWithDirectories(threads)
            var inos: [[UInt64]] = []
            for t in 0..<threads {
                inos.append((0..<filesPerThread).map { i in
                    let a = try! fs.create(dirs[t], Array("f\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
                    try! fs.release(a.ino)
                    return a.ino
                })
            }
            let all = inos
            benchmark.startMeasurement()
            onThreads(threads) { t in
                for ino in all[t] { _ = try! fs.getattr(ino) }
            }
        }
    }
}
