#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
@testable import ScoutFS
import ScoutStore
import ScoutTestSupport
import Synchronization
import SystemPackage
import Testing

/// Operations of one mount in parallel: threads in their own directories and in one shared
/// directory, while another thread commits and another gives locks back (their hooks commit
/// and drop cached items). Each thread keeps a model of what it made and checks the
/// filesystem against it as it goes; at the end every model is checked again after a clean
/// unmount and a remount, and `check` must find nothing wrong.
@Suite struct ParallelFilesystemTests {
    let devices = MemoryMount()

    /// What one worker made: file name → contents, in its own directory and in the shared one.
    struct Model {
        var own: [String: [UInt8]] = [:]
        var shared: [String: [UInt8]] = [:]
    }

    final class Failures: Sendable {
        let lines = Mutex<[String]>([])
        func add(_ s: String) { lines.withLock { if $0.count < 20 { $0.append(s) } } }
        var all: [String] { lines.withLock { $0 } }
    }

    static func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// Contents of `name` in `dir`, or nil if it is not there.
    static func contents(_ fs: Filesystem, _ dir: UInt64, _ name: String) throws -> [UInt8]? {
        let a: Attributes
        do { a = try fs.lookup(dir, Self.name(name)) } catch Errno.noSuchFileOrDirectory { return nil }
        defer { try? fs.forget(a.ino, 1) }
        return try fs.read(a.ino, offset: 0, count: Int(a.size))
    }

    /// One worker's random steps; returns its model.
    static func work(_ fs: Filesystem, worker w: Int, own: UInt64, shared: UInt64, steps: Int, failures: Failures) -> Model {
        var rng = SplitMix64(seed: UInt64(w) &* 0x9E37_79B9 &+ 7)
        var m = Model()
        let user = Caller(uid: 1000, gid: 100)
        for step in 0..<steps {
            let inShared = rng.next() % 4 == 0
            let dir = inShared ? shared : own
            let names = inShared ? m.shared : m.own
            let op = rng.next() % 6
            do {
                switch op {
                case 0, 1:
                    // Create (or overwrite) a file with random contents.
                    let n = "w\(w)-\(rng.next() % 40)"
                    let bytes = (0..<Int(rng.next() % 9000)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    let ino: UInt64
                    if names[n] != nil {
                        ino = try fs.lookup(dir, name(n)).ino
                        try fs.open(ino, flags: O_RDWR | O_TRUNC, caller: user)
                    } else {
                        ino = try fs.create(dir, name(n), mode: 0o644, flags: O_RDWR, caller: user).ino
                    }
                    if !bytes.isEmpty { _ = try fs.write(ino, offset: 0, data: bytes) }
                    try fs.release(ino)
                    try fs.forget(ino, 1)
                    if inShared { m.shared[n] = bytes } else { m.own[n] = bytes }
                case 2:
                    // Read one back.
                    guard let n = names.keys.sorted().randomElement(using: &rng) else { continue }
                    let got = try contents(fs, dir, n)
                    if got != names[n] { failures.add("worker \(w) step \(step): \(n) holds \(got?.count ?? -1) bytes, not \(names[n]!.count)") }
                case 3:
                    // Unlink one.
                    guard let n = names.keys.sorted().randomElement(using: &rng) else { continue }
                    try fs.unlink(dir, name(n))
                    if inShared { m.shared[n] = nil } else { m.own[n] = nil }
                case 4:
                    // Rename one within its directory (over another of the worker's, maybe).
                    guard let n = names.keys.sorted().randomElement(using: &rng) else { continue }
                    let to = "w\(w)-\(rng.next() % 40)"
                    try fs.rename(dir, name(n), dir, name(to))
                    if inShared {
                        m.shared[to] = m.shared.removeValue(forKey: n)
                    } else {
                        m.own[to] = m.own.removeValue(forKey: n)
                    }
                default:
                    // An xattr on the directory's inode of this worker's own directory.
                    let v = name("\(step)")
                    try fs.setXattr(own, name("user.w\(w)"), v, flags: 0, caller: .root)
                    let back = try fs.getXattr(own, name("user.w\(w)"))
                    if back != v { failures.add("worker \(w) step \(step): xattr reads back \(back)") }
                }
            } catch {
                failures.add("worker \(w) step \(step) op \(op): \(error)")
            }
        }
        return m
    }

    static func verify(_ fs: Filesystem, _ models: [Model], own: [UInt64], shared: UInt64, failures: Failures) throws {
        var sharedNames: [String: [UInt8]] = [:]
        for (w, m) in models.enumerated() {
            let listed = try fs.readdir(own[w], offset: 0, limit: 10_000).map { String(decoding: $0.name, as: UTF8.self) }.filter { $0 != "." && $0 != ".." }
            if Set(listed) != Set(m.own.keys) { failures.add("worker \(w)'s directory lists \(listed.count) names, its model \(m.own.count)") }
            for (n, bytes) in m.own where try contents(fs, own[w], n) != bytes { failures.add("worker \(w): \(n) differs") }
            sharedNames.merge(m.shared) { a, _ in a }
        }
        let listed = try fs.readdir(shared, offset: 0, limit: 10_000).map { String(decoding: $0.name, as: UTF8.self) }.filter { $0 != "." && $0 != ".." }
        if Set(listed) != Set(sharedNames.keys) { failures.add("the shared directory lists \(listed.count) names, the models \(sharedNames.count)") }
        for (n, bytes) in sharedNames where try contents(fs, shared, n) != bytes { failures.add("shared \(n) differs") }
    }

    @Test func workersCommitsAndLockShrinkingInParallel() throws {
        let fs = try devices.mount()
        let workers = 4
        let steps = 1000
        // Directories in different inode groups: each worker's files come from batches of
        // its own as the mount hands them out, and the shared directory mixes them.
        var own: [UInt64] = []
        for w in 0..<workers { own.append(try fs.mkdir(1, Self.name("d\(w)"), mode: 0o755, caller: .root).ino) }
        let shared = try fs.mkdir(1, Self.name("shared"), mode: 0o777, caller: .root).ino
        let failures = Failures()
        let models = Mutex([Model](repeating: Model(), count: workers))
        let stop = Atomic(false)
        let ownDirs = own
        var threads: [ScoutTestSupport.Thread] = []
        for w in 0..<workers {
            threads.append(ScoutTestSupport.Thread {
                let m = Self.work(fs, worker: w, own: ownDirs[w], shared: shared, steps: steps, failures: failures)
                models.withLock { $0[w] = m }
            })
        }
        let background = [
            ScoutTestSupport.Thread {
                while !stop.load(ordering: .relaxed) {
                    do { try fs.sync() } catch { failures.add("sync: \(error)") }
                    usleep(2_000)
                }
            },
            ScoutTestSupport.Thread {
                while !stop.load(ordering: .relaxed) {
                    fs.cluster.locks.shrink(64)
                    usleep(3_000)
                }
            },
        ]
        for t in threads + background { t.start() }
        for t in threads { t.join() }
        stop.store(true, ordering: .relaxed)
        for t in background { t.join() }
        #expect(fs.cluster.locks.failedInvalidations.isEmpty)
        let all = models.withLock { $0 }
        try Self.verify(fs, all, own: own, shared: shared, failures: failures)
        try fs.syncAndMerge()
        let again = try devices.mount()
        try Self.verify(again, all, own: own, shared: shared, failures: failures)
        try again.syncAndMerge()
        #expect(failures.all == [], "\(failures.all.joined(separator: "\n"))")
        #expect(Checker.check(meta: devices.meta, data: devices.data).problems == [])
    }
}
