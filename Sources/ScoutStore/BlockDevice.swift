#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A device the store reads and writes: a regular file or a block device. Offsets and lengths
/// are in bytes. `flush` returns only when every write before it is durable; the store's commit
/// order (blocks, flush, superblock, flush) depends on that.
///
/// Reads may run concurrently with each other and with writes to other ranges (file data is
/// read outside the transaction and the store lock); everything else is serialized by the
/// store.
public protocol BlockDevice: AnyObject {
    /// What to call this device in messages (usually its path).
    var name: String { get }
    var size: UInt64 { get }
    /// Measures the device again and returns its size now: it may have grown since it was
    /// opened (an online resize), and reads and writes past the old end become possible.
    func remeasure() throws -> UInt64
    func read(at offset: UInt64, count: Int) throws -> [UInt8]
    /// Reads `buffer.count` bytes into `buffer` (file data goes straight into a reply buffer).
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// Reads `count` bytes and lends them to `body` (valid only during the call): a metadata
    /// block is checked and decoded straight from the read, without a copy of its own.
    func withBytes<T>(at offset: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T
    /// Reads a metadata block into `buffer`, from the medium where the device allows it, as
    /// `withBytes` reads: straight in when `buffer` is aligned for direct I/O, else through a
    /// bounce buffer.
    func readBlock(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    func write(at offset: UInt64, _ bytes: [UInt8]) throws
    func flush() throws
    /// Puts every write completed before the call on the device, out of this machine's
    /// caches, without making it durable: another machine reads it there, and the next flush
    /// of the device, by any machine, makes it durable.
    func writeBack() throws
    /// Another machine wrote to this device: the next `flush` must reach the device even if
    /// this one wrote nothing since its last.
    func noteWritesElsewhere()
    /// Reads what the medium holds now, past any cache this machine keeps: another machine
    /// sharing the device may have written it since (quorum heartbeats).
    func readUncached(at offset: UInt64, count: Int) throws -> [UInt8]
}

extension BlockDevice {
    public func remeasure() throws -> UInt64 { size }

    public func writeBack() throws { try flush() }

    public func noteWritesElsewhere() {}

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let bytes = try read(at: offset, count: buffer.count)
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
    }

    public func readUncached(at offset: UInt64, count: Int) throws -> [UInt8] {
        try read(at: offset, count: count)
    }

    public func readBlock(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try withBytes(at: offset, count: buffer.count) { buffer.copyMemory(from: $0) }
    }

    public func withBytes<T>(at offset: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        try read(at: offset, count: count).withUnsafeBytes(body)
    }
}

/// A device backed by a file or block device through pread/pwrite/fdatasync.
public final class FileBlockDevice: BlockDevice {
    public let name: String
    public var size: UInt64 { measured.load(ordering: .acquiring) }
    private let measured: Atomic<UInt64>
    private let fd: Int32
    /// A second descriptor opened with O_DIRECT, for reads of whole 4 KiB blocks (-1: none).
    private let directFD: Int32
    /// Writes completed through this device, and how many of them the last flush covered: a
    /// flush with nothing new to cover skips the fdatasync, which costs a device cache flush
    /// even then. Each commit flushes both devices, and a commit that wrote no file data
    /// (most of a lock hand-over's) needs none on the data device.
    private let writesDone = Atomic<UInt64>(0)
    private let writesFlushed = Atomic<UInt64>(0)
    /// fdatasync calls made (tests).
    let syncs = Atomic<Int>(0)

    /// Opens `path` read-write (or read-only). The size of a block device comes from seeking to
    /// its end, which works for both files and block devices without an ioctl.
    ///
    /// `directReads` (the metadata device of a mount): aligned reads bypass the page cache.
    /// The store caches decoded blocks itself, so the page cache only doubled the memory, and
    /// filling it cost a cold 64 KiB block read more CPU (allocating, zeroing and copying its
    /// pages) than the read itself; buffered reads also read ahead, which random block reads
    /// only waste. Writes stay buffered: a direct read first writes back the dirty pages it
    /// covers, so it sees them. Where O_DIRECT is refused (tmpfs) reads stay buffered, without
    /// readahead.
    public init(path: String, readOnly: Bool = false, directReads: Bool = false) throws {
        name = path
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        if fd < 0 {
            let e = Glibc.errno
            throw StoreError(.io, "cannot open \(path): \(String(cString: strerror(e)))")
        }
        let end = lseek(fd, 0, SEEK_END)
        if end < 0 {
            let e = Glibc.errno
            close(fd)
            throw StoreError(.io, "cannot find the size of \(path): \(String(cString: strerror(e)))")
        }
        self.fd = fd
        measured = Atomic(UInt64(end))
        directFD = directReads ? open(path, O_RDONLY | O_CLOEXEC | linuxODirect) : -1
        if directReads && directFD < 0 {
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM)
        }
    }

    deinit {
        close(fd)
        if directFD >= 0 { close(directFD) }
    }

    /// Bytes O_DIRECT needs offsets, lengths and buffers aligned to (the largest logical block
    /// size of the devices in use).
    static let directAlignment = 4096

    /// A bounce buffer for a direct read. Cold btree blocks do not come through here: they are
    /// read straight into the block arena's slots (`readBlock`), so what does (superblocks,
    /// quorum blocks, unaligned callers) is small or rare.
    private func takeBuffer(_ count: Int) throws -> UnsafeMutableRawPointer {
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, Self.directAlignment, count) == 0, let raw else {
            throw StoreError(.io, "\(name): no memory for an aligned read of \(count) bytes")
        }
        return raw
    }

    private func readsDirectly(_ offset: UInt64, _ count: Int) -> Bool {
        directFD >= 0 && count > 0 && offset % UInt64(Self.directAlignment) == 0 && count % Self.directAlignment == 0
    }

    public func withBytes<T>(at offset: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        try checkRange("read", offset, count)
        guard readsDirectly(offset, count) else { return try read(at: offset, count: count).withUnsafeBytes(body) }
        return try readAligned(directFD, at: offset, count: count, "read", body)
    }

    public func readBlock(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange("read", offset, buffer.count)
        guard readsDirectly(offset, buffer.count), let p = buffer.baseAddress,
              Int(bitPattern: p) % Self.directAlignment == 0 else {
            return try withBytes(at: offset, count: buffer.count) { buffer.copyMemory(from: $0) }
        }
        try readFully(directFD, p, buffer.count, at: offset, "read")
    }

    /// Reads through an O_DIRECT descriptor into an aligned buffer lent to `body`.
    private func readAligned<T>(_ fd: Int32, at offset: UInt64, count: Int, _ what: String,
                                _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        let b = try takeBuffer(count)
        defer { free(b) }
        try readFully(fd, b, count, at: offset, what)
        return try body(UnsafeRawBufferPointer(start: b, count: count))
    }

    public func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        try checkRange("read", offset, count)
        if readsDirectly(offset, count) {
            return try readAligned(directFD, at: offset, count: count, "read") { [UInt8]($0) }
        }
        // Read straight into uninitialized storage: zeroing 64 KiB first showed up in profiles.
        return try [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            try read(at: offset, into: UnsafeMutableRawBufferPointer(buf))
            initialized = count
        }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange("read", offset, buffer.count)
        guard buffer.count > 0 else { return }
        try readFully(fd, buffer.baseAddress!, buffer.count, at: offset, "read")
    }

    /// Fails unless `[offset, offset + count)` lies on the device (and does not overflow). Past
    /// the end as last measured, the device is measured again first: another node may have
    /// grown the filesystem onto a device grown since this one opened it.
    private func checkRange(_ what: String, _ offset: UInt64, _ count: Int) throws {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        if overflow || end > size, try overflow || end > remeasure() {
            throw StoreError(.io, "\(name): \(what) of \(count) bytes at \(offset) runs past the end of the device (\(size) bytes)")
        }
    }

    public func remeasure() throws -> UInt64 {
        let end = lseek(fd, 0, SEEK_END)
        if end < 0 {
            let e = Glibc.errno
            throw StoreError(.io, "cannot find the size of \(name): \(String(cString: strerror(e)))")
        }
        // Devices only grow while mounted; a smaller answer is not believed.
        let now = UInt64(end)
        _ = measured.max(now, ordering: .acquiringAndReleasing)
        return size
    }

    /// pread until `count` bytes are in, through EINTR and short reads.
    private func readFully(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ count: Int, at offset: UInt64, _ what: String) throws {
        var done = 0
        while done < count {
            let n = pread(fd, p + done, count - done, off_t(offset) + off_t(done))
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                throw StoreError(.io, "\(name): \(what) at byte \(offset): \(String(cString: strerror(e)))")
            }
            if n == 0 { throw StoreError(.io, "\(name): unexpected end of device at byte \(offset + UInt64(done))") }
            done += n
        }
    }

    public func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        try checkRange("write", offset, bytes.count)
        var done = 0
        try bytes.withUnsafeBytes { buf in
            while done < bytes.count {
                let n = pwrite(fd, buf.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    let e = Glibc.errno
                    if e == EINTR { continue }
                    throw StoreError(.io, "\(name): write at byte \(offset): \(String(cString: strerror(e)))")
                }
                done += n
            }
        }
        writesDone.add(1, ordering: .releasing)
    }

    /// Writes back this device's dirty pages and waits for them (sync_file_range), without the
    /// device cache flush and the file's own metadata that fdatasync adds: on one machine the
    /// server's fdatasync of the same file covers those.
    public func writeBack() throws {
        guard let sync = syncFileRange else { return try flush() }
        // SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER, over the whole file.
        while sync(fd, 0, 0, 7) != 0 {
            let e = Glibc.errno
            if e == EINTR { continue }
            throw StoreError(.io, "\(name): write-back failed: \(String(cString: strerror(e)))")
        }
    }

    public func noteWritesElsewhere() {
        writesDone.add(1, ordering: .releasing)
    }

    /// Makes every write this device completed before the call durable, and those of other
    /// processes and machines it was told of (`noteWritesElsewhere`).
    public func flush() throws {
        let covered = writesDone.load(ordering: .acquiring)
        guard covered != writesFlushed.load(ordering: .acquiring) else { return }
        if fdatasync(fd) != 0 {
            let e = Glibc.errno
            throw StoreError(.io, "\(name): flush failed: \(String(cString: strerror(e)))")
        }
        syncs.add(1, ordering: .relaxed)
        var seen = writesFlushed.load(ordering: .relaxed)
        while seen < covered {
            let (done, now) = writesFlushed.compareExchange(expected: seen, desired: covered, ordering: .acquiringAndReleasing)
            if done { break }
            seen = now
        }
    }

    /// Takes an exclusive lock on a byte range of the device that lasts as long as this open
    /// device (an open file description lock, so threads of one process do not share it, and
    /// it ends when the process dies). Returns false if another holder has it.
    /// `shared`: a read lock, which other shared holders may take too but no exclusive one.
    public func tryLock(offset: UInt64, length: UInt64, shared: Bool = false) throws -> Bool {
        let F_OFD_SETLK: Int32 = 37  // Linux; not exported by Glibc's Swift overlay
        var lk = flock()
        lk.l_type = Int16(shared ? F_RDLCK : F_WRLCK)
        lk.l_whence = Int16(SEEK_SET)
        lk.l_start = off_t(offset)
        lk.l_len = off_t(length)
        lk.l_pid = 0
        if fcntl(fd, F_OFD_SETLK, &lk) == 0 { return true }
        let e = Glibc.errno
        if e == EAGAIN || e == EACCES { return false }
        throw StoreError(.io, "\(name): cannot lock bytes \(offset)..<\(offset + length): \(String(cString: strerror(e)))")
    }

    /// Reads with O_DIRECT through a second descriptor, so the bytes come from the medium and
    /// not from this machine's page cache. Where O_DIRECT is refused (tmpfs), the cached pages
    /// of the range are dropped first instead. Offsets and counts are in whole 4 KiB blocks.
    public func readUncached(at offset: UInt64, count: Int) throws -> [UInt8] {
        let align = Self.directAlignment
        precondition(offset % UInt64(align) == 0 && count % align == 0, "uncached reads are in whole 4 KiB blocks")
        try checkRange("uncached read", offset, count)
        let direct = directFD >= 0 ? directFD : open(name, O_RDONLY | O_CLOEXEC | linuxODirect)
        guard direct >= 0 else {
            _ = posix_fadvise(fd, off_t(offset), off_t(count), POSIX_FADV_DONTNEED)
            return try read(at: offset, count: count)
        }
        defer { if direct != directFD { close(direct) } }
        return try readAligned(direct, at: offset, count: count, "uncached read") { [UInt8]($0) }
    }

    /// Asks the kernel to drop this device's clean pages from its page cache, so the next reads
    /// come from the medium (benchmarks of cold reads). Flushes first: dirty pages would stay.
    public func evictOSCache() throws {
        try flush()
        let rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        if rc != 0 {
            throw StoreError(.io, "\(name): cannot drop cached pages: \(String(cString: strerror(rc)))")
        }
    }
}

/// O_DIRECT, which Glibc's Swift overlay leaves out (it needs _GNU_SOURCE); its value differs
/// between architectures.
#if arch(arm64)
let linuxODirect: Int32 = 0o200000
#else
let linuxODirect: Int32 = 0o40000
#endif

/// A sparse in-memory device, for tests and benchmarks that should not touch a disk.
// @unchecked Sendable: `pages` is only touched under `lock`.
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    public var size: UInt64 { lock.withLock { _ in bytes } }
    private var bytes: UInt64
    static let pageSize = 4096
    private var pages: [UInt64: [UInt8]] = [:]
    private let lock = Mutex(())

    public init(name: String = "memory", size: UInt64) {
        self.name = name
        bytes = size
    }

    /// Makes the device larger, as growing a volume does.
    public func grow(to size: UInt64) {
        lock.withLock { _ in bytes = max(bytes, size) }
    }

    public func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        if offset + UInt64(count) > size { throw StoreError(.io, "\(name): read past the end of the device") }
        var out = [UInt8](repeating: 0, count: count)
        lock.withLock { _ in
            forEachPage(offset, count) { page, pageOff, outOff, n in
                if let p = pages[page] { out.replaceSubrange(outOff..<outOff + n, with: p[pageOff..<pageOff + n]) }
            }
        }
        return out
    }

    public func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        if offset + UInt64(bytes.count) > size { throw StoreError(.io, "\(name): write past the end of the device") }
        lock.withLock { _ in
            forEachPage(offset, bytes.count) { page, pageOff, inOff, n in
                var p = pages[page] ?? [UInt8](repeating: 0, count: Self.pageSize)
                p.replaceSubrange(pageOff..<pageOff + n, with: bytes[inOff..<inOff + n])
                pages[page] = p
            }
        }
    }

    public func flush() throws {}

    /// A copy of the current contents, so a test can keep a device image across a simulated crash.
    public func snapshot() -> MemoryBlockDevice {
        let d = MemoryBlockDevice(name: name, size: size)
        d.pages = lock.withLock { _ in pages }
        return d
    }

    private func forEachPage(_ offset: UInt64, _ count: Int, _ body: (UInt64, Int, Int, Int) -> Void) {
        var done = 0
        while done < count {
            let at = offset + UInt64(done)
            let page = at / UInt64(Self.pageSize)
            let pageOff = Int(at % UInt64(Self.pageSize))
            let n = min(Self.pageSize - pageOff, count - done)
            body(page, pageOff, done, n)
            done += n
        }
    }
}

/// sync_file_range(2), which Glibc's Swift overlay leaves out (it needs _GNU_SOURCE), looked up
/// once; nil where the C library has none (then a write-back is a flush).
private let syncFileRange: (@convention(c) (Int32, Int64, Int64, UInt32) -> Int32)? = {
    // RTLD_DEFAULT, null in glibc: every object the process has loaded.
    guard let symbol = dlsym(nil, "sync_file_range") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int64, Int64, UInt32) -> Int32).self)
}()
