// mountbench: metadata and data rates of whatever filesystem holds a directory, measured with
// plain syscalls so that the tool itself costs little next to a FUSE round trip.
//
//   mountbench DIR [--files N] [--seq-mib M] [--json]
//
// Phases, each timed on its own: create N empty files, stat them, write 4 KiB into each
// (open-write-close), read them back (open-read-close, after dropping the page cache), list the
// directory, unlink them, then write and read one file of M MiB in 1 MiB calls (the read after
// dropping caches). Run as root so the cache drop works.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

struct Options {
    var dir = ""
    var files = 10_000
    var seqMiB = 1024
    var json = false
}

func parse() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    while let a = args.popFirst() {
        switch a {
        case "--files": o.files = Int(args.popFirst() ?? "") ?? o.files
        case "--seq-mib": o.seqMiB = Int(args.popFirst() ?? "") ?? o.seqMiB
        case "--json": o.json = true
        case "-h", "--help":
            print("usage: mountbench DIR [--files N] [--seq-mib M] [--json]")
            exit(0)
        default: o.dir = a
        }
    }
    if o.dir.isEmpty {
        FileHandle.standardError.write(Data("mountbench: give the directory to measure in\n".utf8))
        exit(2)
    }
    return o
}

func fail(_ what: String) -> Never {
    FileHandle.standardError.write(Data("mountbench: \(what): \(String(cString: strerror(errno)))\n".utf8))
    exit(1)
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func dropCaches() {
    sync()
    let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
    if fd >= 0 {
        _ = write(fd, "3\n", 2)
        close(fd)
    }
}

/// Runs `body` and returns operations per second.
func rate(_ count: Int, _ body: () -> Void) -> Double {
    let t0 = now()
    body()
    return Double(count) / (now() - t0)
}

let o = parse()
let work = o.dir + "/mountbench.\(getpid())"
if mkdir(work, 0o755) != 0 { fail("mkdir \(work)") }
let names = (0..<o.files).map { "\(work)/f\($0)" }
var results: [(String, Double, String)] = []

results.append(("creates", rate(o.files) {
    for n in names {
        let fd = open(n, O_CREAT | O_EXCL | O_WRONLY, 0o644)
        if fd < 0 { fail("create \(n)") }
        close(fd)
    }
}, "/s"))

results.append(("stats", rate(o.files) {
    var st = stat()
    for n in names where lstat(n, &st) != 0 { fail("stat \(n)") }
}, "/s"))

let block = [UInt8](repeating: 0x5a, count: 4096)
results.append(("4k writes", rate(o.files) {
    for n in names {
        let fd = open(n, O_WRONLY)
        if fd < 0 { fail("open \(n)") }
        if block.withUnsafeBytes({ write(fd, $0.baseAddress, 4096) }) != 4096 { fail("write \(n)") }
        close(fd)
    }
}, "/s"))

dropCaches()
var buf = [UInt8](repeating: 0, count: 1 << 20)
results.append(("4k reads", rate(o.files) {
    for n in names {
        let fd = open(n, O_RDONLY)
        if fd < 0 { fail("open \(n)") }
        if buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, 4096) }) != 4096 { fail("read \(n)") }
        close(fd)
    }
}, "/s"))

results.append(("readdir entries", rate(o.files) {
    guard let d = opendir(work) else { fail("opendir \(work)") }
    var seen = 0
    while readdir(d) != nil { seen += 1 }
    closedir(d)
    if seen != o.files + 2 {
        FileHandle.standardError.write(Data("mountbench: readdir saw \(seen) entries, expected \(o.files + 2)\n".utf8))
        exit(1)
    }
}, "/s"))

results.append(("unlinks", rate(o.files) {
    for n in names where unlink(n) != 0 { fail("unlink \(n)") }
}, "/s"))

let big = work + "/seq"
for i in 0..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i &* 31) }
let mib = Double(o.seqMiB)
results.append(("sequential write", rate(1) {
    let fd = open(big, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
    if fd < 0 { fail("create \(big)") }
    for _ in 0..<o.seqMiB where buf.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) != buf.count {
        fail("write \(big)")
    }
    if fsync(fd) != 0 { fail("fsync \(big)") }
    close(fd)
} * mib, "MB/s"))

dropCaches()
results.append(("sequential read", rate(1) {
    let fd = open(big, O_RDONLY)
    if fd < 0 { fail("open \(big)") }
    var total = 0
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { fail("read \(big)") }
        if n == 0 { break }
        total += n
    }
    close(fd)
    if total != o.seqMiB << 20 { fail("read \(big): got \(total) bytes") }
} * mib, "MB/s"))
unlink(big)
rmdir(work)

if o.json {
    let fields = results.map { "\"\($0.0)\": \(String(format: "%.1f", $0.1))" }
    print("{" + fields.joined(separator: ", ") + "}")
} else {
    for (name, value, unit) in results {
        print("\(name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(String(format: "%12.1f", value)) \(unit)")
    }
}
