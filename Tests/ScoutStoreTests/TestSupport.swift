import ScoutFormat
@testable import ScoutStore


/// A device that loses power on command. Writes wait in a volatile queue until `flush` makes
/// them durable; at the armed event (a write or a flush) the device "crashes": that event and
/// everything after it fail, unflushed writes are lost and, in tear mode, the write in flight
/// lands half-done. `durableImage()` is what a reboot would find.
final class FaultyDevice: BlockDevice {
    let durable: MemoryBlockDevice
    private var volatileWrites: [(UInt64, [UInt8])] = []
    private(set) var events = 0
    var crashAt: Int?
    var tear = false
    private(set) var crashed = false
    /// Where the torn write landed, in tear mode.
    private(set) var tornOffset: UInt64?

    init(size: UInt64, name: String) {
        durable = MemoryBlockDevice(name: name, size: size)
    }

    init(image: MemoryBlockDevice) {
        durable = image
    }

    var name: String { durable.name }
    var size: UInt64 { durable.size }

    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        if crashed { throw StoreError(.io, "\(name): device lost power") }
        var out = try durable.read(at: offset, count: count)
        for (at, bytes) in volatileWrites {
            let lo = max(at, offset), hi = min(at + UInt64(bytes.count), offset + UInt64(count))
            if lo < hi {
                out.replaceSubrange(Int(lo - offset)..<Int(hi - offset), with: bytes[Int(lo - at)..<Int(hi - at)])
            }
        }
        return out
    }

    func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        try event {
            if tear {
                tornOffset = offset
                try durable.write(at: offset, Array(bytes.prefix(bytes.count / 2)))
            }
        }
        volatileWrites.append((offset, bytes))
    }

    func flush() throws {
        try event {}
        for (at, bytes) in volatileWrites { try durable.write(at: at, bytes) }
        volatileWrites.removeAll()
    }

    private func event(onCrash: () throws -> Void) throws {
        if crashed { throw StoreError(.io, "\(name): device lost power") }
        defer { events += 1 }
        if let crashAt, events == crashAt {
            crashed = true
            try onCrash()
            volatileWrites.removeAll()
            throw StoreError(.io, "\(name): device lost power")
        }
    }

    /// The durable contents, as a fresh device.
    func durableImage() -> MemoryBlockDevice { durable.snapshot() }
}

/// Small devices and small btree blocks, so trees grow tall from a few thousand items.
enum Fixture {
    static let metaSize: UInt64 = 256 << 20
    static let dataSize: UInt64 = 256 << 20
    static let smallNodes = StoreOptions(cacheBlocks: 256, nodeCapacity: 4096)
    static let slots = [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)]

    static func devices() -> (MemoryBlockDevice, MemoryBlockDevice) {
        (MemoryBlockDevice(name: "meta", size: metaSize), MemoryBlockDevice(name: "data", size: dataSize))
    }

    static func format(_ meta: any BlockDevice, _ data: any BlockDevice, options: StoreOptions = smallNodes) throws -> Store {
        try Store.format(meta: meta, data: data, quorumSlots: slots, options: options)
    }

    static func key(_ n: UInt64, _ sub: UInt64 = 0) -> Key {
        Key(zone: Zone.fs, first: n, type: ItemType.inode, second: sub)
    }

    /// Every item of a tree, in order.
    static func contents(_ store: Store, _ tree: TreeID = .fs) throws -> [Item] {
        try store.tree(tree).items(in: store)
    }
}

/// A sorted reference model of one tree, with O(1) random picks of a present key.
struct ReferenceMap {
    private(set) var items: [Key: Item] = [:]
    private var keyList: [Key] = []
    private var position: [Key: Int] = [:]

    var count: Int { items.count }
    var sorted: [Item] { items.values.sorted { $0.key < $1.key } }

    subscript(key: Key) -> Item? { items[key] }

    mutating func set(_ item: Item) {
        if items.updateValue(item, forKey: item.key) == nil {
            position[item.key] = keyList.count
            keyList.append(item.key)
        }
    }

    @discardableResult
    mutating func remove(_ key: Key) -> Item? {
        guard let old = items.removeValue(forKey: key), let at = position.removeValue(forKey: key) else { return nil }
        let last = keyList.removeLast()
        if at < keyList.count {
            keyList[at] = last
            position[last] = at
        }
        return old
    }

    func randomKey(using rng: inout some RandomNumberGenerator) -> Key? {
        keyList.isEmpty ? nil : keyList[Int.random(in: 0..<keyList.count, using: &rng)]
    }

    var allKeys: [Key] { keyList }

    func next(from k: Key) -> Item? { items.values.filter { $0.key >= k }.min { $0.key < $1.key } }
    func prev(from k: Key) -> Item? { items.values.filter { $0.key <= k }.max { $0.key < $1.key } }
}

/// A memory device that remembers which 64 KiB blocks were written.
final class RecordingDevice: BlockDevice {
    let inner: MemoryBlockDevice
    var written = Set<UInt64>()

    init(size: UInt64, name: String) { inner = MemoryBlockDevice(name: name, size: size) }

    var name: String { inner.name }
    var size: UInt64 { inner.size }
    func read(at offset: UInt64, count: Int) throws -> [UInt8] { try inner.read(at: offset, count: count) }
    func flush() throws {}

    func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        let shift = UInt64(Layout.metaBlockShift)
        for b in (offset >> shift)...((offset + UInt64(bytes.count) - 1) >> shift) { written.insert(b) }
        try inner.write(at: offset, bytes)
    }
}

extension Store {
    /// Every metadata block reachable from the committed superblock's roots.
    func committedBlocks() throws -> Set<UInt64> {
        var out = Set<UInt64>()
        func walk(_ ref: BlockRef, _ name: String) throws {
            out.insert(ref.blkno)
            let b = try readBlock(ref, tree: name)
            for c in b.children { try walk(c, name) }
        }
        for t in TreeID.allCases where !superblock.root(t).isEmpty {
            try walk(superblock.root(t).ref, t.description)
        }
        return out
    }
}
