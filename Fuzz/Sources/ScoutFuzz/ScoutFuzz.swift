#if canImport(Glibc)
import Glibc
#endif
import ScoutFormat
import ScoutFS
import ScoutStore

// The first input byte picks what is fuzzed: an even byte feeds the rest to one of the
// decoders (the second byte picks which), an odd one mutates a small filesystem image (blocks
// resealed with valid checksums, so the damage reaches past the checksum test) and runs
// `check`, then mounts the image and reads everything it can. Any trap is a finding: damaged
// input must come out as an error value, never a crash of the mount.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    if mode & 1 == 0 {
        decode(Array(input.dropFirst()))
    } else {
        mutateImage(Array(input.dropFirst()))
    }
    return 0
}

/// Every decoder of bytes that come from a device or a socket.
func decode(_ input: [UInt8]) {
    guard let which = input.first else { return }
    let bytes = Array(input.dropFirst())
    switch which % 13 {
    case 0:
        // A whole block: padded to the block size the way a read returns one.
        var block = bytes
        if block.count < Layout.metaBlockSize { block += [UInt8](repeating: 0, count: Layout.metaBlockSize - block.count) }
        _ = BlockHeader.verify(block, magic: BlockMagic.btree, fsid: nil, blkno: 4, seq: nil)
        _ = try? BTreeBlock(decoding: block)
    case 1:
        var block = bytes
        if block.count < Layout.smallBlockSize { block += [UInt8](repeating: 0, count: Layout.smallBlockSize - block.count) }
        _ = try? SuperBlock(decoding: block)
        _ = try? QuorumBlock(decoding: block)
    case 2: _ = try? InodeRecord(decoding: bytes)
    case 3: _ = try? DirentRecord(decoding: bytes)
    case 4: _ = try? FileExtent(decoding: bytes)
    case 5:
        // An extent item: 27 key bytes, then the value.
        guard bytes.count >= Key.encodedSize else { return }
        var r = ByteReader(bytes, what: "fuzz key")
        guard let key = try? Key(decoding: &r) else { return }
        _ = try? ExtentItem(key: key, value: Array(bytes.dropFirst(Key.encodedSize)), dataTotalBlocks: 1 << 20)
    case 6: _ = try? LogTreeRecord(decoding: bytes)
    case 7: _ = try? ControlRequest(decoding: bytes)
    case 8: _ = try? ControlReply(decoding: bytes)
    case 9: _ = try? LockClientMessage(decoding: bytes)
    case 10: _ = try? LockServerMessage(decoding: bytes)
    case 11:
        // What a peer sends over the network, before and after the handshake.
        if let f = try? NetFrame(decodingAfterLength: bytes) {
            _ = try? NetHello(decoding: f.body)
            _ = try? NetGreeting(decoding: f.body)
            _ = try? NetWelcome(decoding: f.body)
            _ = try? NetRefusal(decoding: f.body)
        }
        _ = try? ServerCall(decoding: bytes)
        _ = try? ServerAnswer(decoding: bytes)
        _ = try? NetNotice(decoding: bytes)
        if bytes.count >= 4 { _ = try? NetFrame.checkLength(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24) }
    default:
        var r = ByteReader(bytes, what: "fuzz")
        _ = try? BTreeRoot(decoding: &r)
        _ = try? BlockRef(decoding: &r)
    }
}

/// A small filesystem with something of everything: directories, files with data, a hard link,
/// a symlink, plain and tagged xattrs, a released region; merged, then a little more left in an
/// unmerged log tree. Made once.
struct Image {
    let meta: MemoryBlockDevice
    let data: MemoryBlockDevice
    /// Blocks worth mutating: (byte offset, size) of the superblocks, quorum blocks and every
    /// btree block in use.
    let blocks: [(offset: UInt64, size: Int)]

    static let shared: Image = {
        do { return try Image() } catch { fatalError("fuzz image: \(error)") }
    }()

    init() throws {
        meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
        data = MemoryBlockDevice(name: "data", size: 256 << 20)
        let store = try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)],
                                     options: StoreOptions(cacheBlocks: 64, nodeCapacity: 4096))
        let fs = try Filesystem(store: store)
        let root = Caller.root
        let d = try fs.mkdir(1, Array("dir".utf8), mode: 0o755, caller: root)
        for i in 0..<40 {
            let f = try fs.create(i % 2 == 0 ? 1 : d.ino, Array("file-\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: root)
            _ = try fs.write(f.ino, offset: UInt64(i) * 4096, data: [UInt8](repeating: UInt8(i), count: 5000))
            try fs.setXattr(f.ino, Array("user.x\(i)".utf8), [UInt8](repeating: 7, count: i * 30), flags: 0, caller: root)
            if i % 5 == 0 { try fs.setXattr(f.ino, Array("scoutfs.totl.t.\(i).0.0".utf8), Array("\(i)".utf8), flags: 0, caller: root) }
            if i % 7 == 0 { try fs.setXattr(f.ino, Array("scoutfs.hide.srch.s\(i)".utf8), [1], flags: 0, caller: root) }
            if i == 3 {
                _ = try fs.link(f.ino, d.ino, Array("hard".utf8))
                let v = try fs.getattr(f.ino).dataVersion
                try fs.release(f.ino, dataVersion: v, offset: 0, length: 8192)
            }
            try fs.release(f.ino)
        }
        _ = try fs.symlink(1, Array("link".utf8), target: Array("dir/file-1".utf8), caller: root)
        try fs.syncAndMerge()
        _ = try fs.mkdir(d.ino, Array("later".utf8), mode: 0o700, caller: root)
        try fs.unlink(1, Array("file-0".utf8))
        try fs.sync()
        var blocks: [(UInt64, Int)] = [(Layout.superOffset(copy: 0), 4096), (Layout.superOffset(copy: 1), 4096),
                                       (Layout.quorumSmallBlkno(slot: 0) * 4096, 4096)]
        for blkno in Layout.metaFirstBlkno..<UInt64(4096) {
            let off = blkno << UInt64(Layout.metaBlockShift)
            let head = try meta.read(at: off, count: 8)
            if head[4..<8].elementsEqual(withUnsafeBytes(of: BlockMagic.btree.littleEndian, Array.init)) {
                blocks.append((off, Layout.metaBlockSize))
            }
        }
        self.blocks = blocks
    }
}

/// Applies 4-byte mutations (block, offset high, offset low, xor) to a copy of the image,
/// reseals each block touched, then checks and mounts it.
func mutateImage(_ input: [UInt8]) {
    let image = Image.shared
    let meta = image.meta.snapshot()
    let data = image.data.snapshot()
    var touched = Set<Int>()
    var i = 0
    while i + 4 <= input.count && i < 4 * 16 {
        let which = Int(input[i]) % image.blocks.count
        let b = image.blocks[which]
        // Small blocks take offsets within 4 KiB, tree blocks within 64 KiB.
        let at = (Int(input[i + 1]) << 8 | Int(input[i + 2])) % b.size
        if at >= 4, var byte = try? meta.read(at: b.offset + UInt64(at), count: 1) {
            byte[0] ^= input[i + 3] == 0 ? 0xff : input[i + 3]
            try? meta.write(at: b.offset + UInt64(at), byte)
            touched.insert(which)
        }
        i += 4
    }
    for which in touched {
        let b = image.blocks[which]
        guard var block = try? meta.read(at: b.offset, count: b.size) else { continue }
        let crc = CRC32C.checksum(block, from: 4)
        withUnsafeBytes(of: crc.littleEndian) { c in for k in 0..<4 { block[k] = c[k] } }
        try? meta.write(at: b.offset, block)
    }
    let report = Checker.check(meta: meta, data: data)
    if report.isClean, let store = try? Store.open(meta: meta, data: data, options: StoreOptions(cacheBlocks: 64)) {
        _ = FilesystemCheck.check(store)
    }
    exercise(meta, data)
}

/// Mounts the image and reads what it can: every entry of every directory, its attributes,
/// data, xattrs and link target; then a few changes and a commit.
func exercise(_ meta: MemoryBlockDevice, _ data: MemoryBlockDevice) {
    guard let store = try? Store.open(meta: meta, data: data, options: StoreOptions(cacheBlocks: 64)),
          let fs = try? Filesystem(store: store) else { return }
    // Reads of offline data would wait for a stage that never comes: give up at once, as
    // waiters do at unmount.
    fs.abandonDataWaits { true }
    var dirs: [UInt64] = [1]
    var visited = 0
    while let dir = dirs.popLast(), visited < 200 {
        visited += 1
        guard let entries = try? fs.readdirPlus(dir, offset: 0, limit: 100) else { continue }
        for (e, a) in entries where e.nextOffset > 2 {
            if a.isDirectory { dirs.append(e.ino) }
            _ = try? fs.read(e.ino, offset: 0, count: 65536)
            _ = try? fs.listXattrs(e.ino)
            _ = try? fs.readlink(e.ino)
            _ = try? fs.seek(e.ino, offset: 0, whence: 3)
            _ = try? fs.write(e.ino, offset: 100, data: [1, 2, 3])
            _ = try? fs.setattr(e.ino, AttributeChanges(size: 1))
            try? fs.forget(e.ino, 1)
        }
        _ = try? fs.create(dir, Array("new".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try? fs.rename(dir, Array("new".utf8), 1, Array("moved".utf8))
    }
    _ = try? fs.walkInodes(.metaSeq, from: IndexPosition(seq: 0, ino: 0), through: IndexPosition(seq: .max, ino: .max), limit: 100)
    _ = try? fs.xattrTotals(after: nil, limit: 100)
    try? fs.sync()
}
