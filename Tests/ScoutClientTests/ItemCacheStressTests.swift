import ScoutClient
import ScoutFormat
import ScoutStore
import ScoutTestSupport
import Synchronization
import Testing

/// Committed items behind a mutex, for threads that read while a committer applies commits.
final class SyncMapSource: ItemSource, Sendable {
    let items = Mutex(SortedKeyMap<Item>())

    func committedItem(_ key: Key) throws -> Item? { items.withLock { $0[key] } }

    func committedItems(from start: Key, through end: Key, _ body: (Item) throws -> Bool) throws {
        let batch: [Item] = items.withLock { m in
            var out: [Item] = []
            m.forEach(from: start, through: end) { _, it in out.append(it); return true }
            return out
        }
        for it in batch where try !body(it) { return }
    }

    func apply(_ snap: ItemCache.DirtySnapshot) {
        items.withLock { m in
            for it in snap.items {
                if it.isDeletion { m.remove(it.key) } else { m[it.key] = it }
            }
        }
    }
}

@Suite struct ItemCacheStressTests {
    /// Writers in their own lock ranges change, read and walk their items while one thread
    /// commits and another shrinks the cache: each writer always sees exactly its own model.
    @Test func writersCommitsAndShrinkingInParallel() throws {
        let src = SyncMapSource()
        let cache = ItemCache(source: src, cleanByteLimit: 16 * 1024)
        let stop = Atomic(false)
        let mismatches = Atomic(0)
        let seq = Atomic<UInt64>(1)
        var threads: [Thread] = []
        for w in 0..<3 {
            threads.append(Thread {
                var rng = SplitMix64(seed: UInt64(w) + 100)
                var model: [Key: [UInt8]] = [:]
                let base = UInt64(w) * 1024
                for step in 0..<20_000 {
                    let k = Key(zone: Zone.fs, first: base + UInt64.random(in: 0..<8, using: &rng), type: ItemType.dirent,
                                second: UInt64.random(in: 0..<16, using: &rng))
                    let s = seq.load(ordering: .relaxed)
                    switch Int.random(in: 0..<10, using: &rng) {
                    case 0..<4:
                        let v = Array("\(w).\(step)".utf8)
                        try! cache.insert(k, v, seq: s)
                        model[k] = v
                    case 4..<6:
                        try! cache.delete(k, seq: s)
                        model[k] = nil
                    case 6..<9:
                        if try! cache.lookup(k)?.value != model[k] { mismatches.add(1, ordering: .relaxed) }
                    default:
                        var got: [Key] = []
                        try! cache.forEach(from: Key(zone: Zone.fs, first: base), through: Key(zone: Zone.fs, first: base + 1023, type: .max)) {
                            got.append($0.key)
                            return true
                        }
                        if got != model.keys.sorted() { mismatches.add(1, ordering: .relaxed) }
                    }
                }
            })
        }
        let committer = Thread {
            while !stop.load(ordering: .relaxed) {
                let snap = cache.dirtySnapshot()
                src.apply(snap)
                cache.committed(snap)
                seq.add(1, ordering: .relaxed)
            }
        }
        let shrinker = Thread {
            while !stop.load(ordering: .relaxed) { cache.shrink(to: 4 * 1024) }
        }
        for t in threads { t.start() }
        committer.start()
        shrinker.start()
        for t in threads { t.join() }
        stop.store(true, ordering: .relaxed)
        committer.join()
        shrinker.join()
        #expect(mismatches.load(ordering: .relaxed) == 0)
    }
}
