#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutFS
import ScoutFUSE
import ScoutStore
import ScoutTestSupport
import Testing

/// A FUSE mount of one client while another client of the same cluster, in this process,
/// changes what the mount's kernel has cached. The kernel keeps names and attributes for a
/// minute; only the lock hooks' invalidations make it see the other client's changes.
@Suite(.serialized) struct KernelCacheTests {
    final class Mounted {
        let local: LocalCluster
        let a: Filesystem
        let b: Filesystem
        let fuse: FUSEMount
        let loop: ScoutTestSupport.Thread
        let dir: String

        init() throws {
            let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
            let data = MemoryBlockDevice(name: "data", size: 256 << 20)
            let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
            local = try LocalCluster(store: store, several: true)
            a = try Filesystem(joining: local, options: FilesystemOptions(clientID: 1))
            b = try Filesystem(joining: local, options: FilesystemOptions(clientID: 2))
            var template = Array("/tmp/scoutfs-kcache-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw Errno(errno)
            }
            dir = String(cString: made)
            fuse = try FUSEMount(filesystem: a, mountpoint: dir)
            let f = Loop(fuse)
            loop = ScoutTestSupport.Thread { _ = f.mount.run() }
            loop.start()
        }

        func unmount() {
            umount2(dir, Int32(MNT_DETACH))
            loop.join()
            fuse.close()
            rmdir(dir)
        }
    }

    /// The session's loop runs on its own thread; nothing else touches the mount meanwhile.
    final class Loop: @unchecked Sendable {
        let mount: FUSEMount
        init(_ m: FUSEMount) { mount = m }
    }

    struct Errno: Error { var code: Int32; init(_ c: Int32) { code = c } }

    static func name(_ s: String) -> [UInt8] { Array(s.utf8) }

    static func statOf(_ path: String) -> stat? {
        var st = stat()
        return stat(path, &st) == 0 ? st : nil
    }

    static func contents(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    static func list(_ path: String) -> Set<String> {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out = Set<String>()
        while let e = readdir(d) {
            let n = direntName(e)
            if n != "." && n != ".." { out.insert(n) }
        }
        return out
    }

    /// `cond` holds within two seconds (the notifier runs on its own thread, just after the
    /// lock went); the kernel alone would take a minute.
    static func soon(_ cond: () -> Bool) -> Bool {
        for _ in 0..<200 {
            if cond() { return true }
            usleep(10_000)
        }
        return false
    }

    static func write(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        guard fd >= 0 else { throw Errno(errno) }
        defer { close(fd) }
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw Errno(errno) }
    }

    @Test func anotherClientsRenameChmodWriteAndCreateReachTheKernel() throws {
        let m = try Mounted()
        defer { m.unmount() }
        try #require(mkdir(m.dir + "/d", 0o755) == 0)
        try Self.write(m.dir + "/d/f", Self.name("one"))
        // The kernel now caches d, d/f and f's attributes and pages.
        #expect(Self.statOf(m.dir + "/d/f")?.st_size == 3)
        #expect(Self.contents(m.dir + "/d/f") == Self.name("one"))
        #expect(Self.list(m.dir + "/d") == ["f"])

        let d = try m.b.lookup(1, Self.name("d")).ino
        let f = try m.b.lookup(d, Self.name("f")).ino
        let bytes = Self.name("written by the other client")
        _ = try m.b.write(f, offset: 0, data: bytes)
        _ = try m.b.setattr(f, AttributeChanges(mode: 0o600))
        #expect(Self.soon { Self.statOf(m.dir + "/d/f")?.st_size == Int(bytes.count) })
        #expect(Self.soon { Self.statOf(m.dir + "/d/f").map { $0.st_mode & 0o7777 } == 0o600 })
        #expect(Self.soon { Self.contents(m.dir + "/d/f") == bytes })

        try m.b.rename(d, Self.name("f"), d, Self.name("g"))
        let h = try m.b.create(d, Self.name("h"), mode: 0o644, flags: O_RDWR, caller: .root)
        try m.b.release(h.ino)
        #expect(Self.soon { Self.statOf(m.dir + "/d/f") == nil })
        #expect(Self.soon { Self.statOf(m.dir + "/d/g")?.st_ino == UInt(f) })
        #expect(Self.soon { Self.list(m.dir + "/d") == ["g", "h"] })

        try m.b.unlink(d, Self.name("h"))
        #expect(Self.soon { Self.statOf(m.dir + "/d/h") == nil })
    }
}
