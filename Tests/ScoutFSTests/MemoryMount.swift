@testable import ScoutFS
import ScoutFormat
import ScoutStore

/// A filesystem on memory devices: formatted on first mount, opened again afterwards.
struct MemoryMount {
    let meta = MemoryBlockDevice(name: "meta", size: 256 << 20)
    let data = MemoryBlockDevice(name: "data", size: 256 << 20)

    func mount() throws -> Filesystem {
        let store = Store.holdsFilesystem(meta)
            ? try Store.open(meta: meta, data: data)
            : try Store.format(meta: meta, data: data, quorumSlots: [QuorumSlot(slot: 0, address: "127.0.0.1", port: 7100)])
        return try Filesystem(store: store)
    }
}

extension FSCore {
    /// Items visible in `[start, end]`, read past the locks (tests only: no operation may).
    func countItems(_ start: Key, _ end: Key) throws -> Int {
        var n = 0
        try items.forEach(from: start, through: end) { _ in
            n += 1
            return true
        }
        return n
    }
}
