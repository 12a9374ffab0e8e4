import ScoutFormat

/// The data blocks one client allocates file data from: extents the server gave it (`avail`)
/// and blocks it freed since its last commit (`freed`), which go back to the server with that
/// commit. Only the server edits the free trees, so clients never contend on them, and a
/// client that dies loses nothing: its recorded pool goes back to the free tree.
///
/// Not thread-safe: `ClientItems` keeps it behind a mutex of its own.
struct DataPool {
    private(set) var avail: [Extent] = []
    private(set) var freed: [Extent] = []
    private(set) var availBlocks: UInt64 = 0
    private(set) var freedBlocks: UInt64 = 0

    mutating func add(_ extents: [Extent]) {
        for e in extents where e.length > 0 {
            avail.append(e)
            availBlocks += e.length
        }
    }

    /// Up to `count` contiguous blocks: from the smallest extent that holds them all, or the
    /// front of the largest when none does; nil when the pool is empty.
    mutating func take(_ count: UInt64) -> Extent? {
        guard count > 0, !avail.isEmpty else { return nil }
        var pick = 0
        for (i, e) in avail.enumerated() {
            let best = avail[pick]
            let fits = e.length >= count, bestFits = best.length >= count
            if fits && (!bestFits || e.length < best.length) || !fits && !bestFits && e.length > best.length { pick = i }
        }
        let e = avail[pick]
        let n = min(e.length, count)
        if n == e.length {
            avail.remove(at: pick)
        } else {
            avail[pick] = Extent(start: e.start + n, length: e.length - n)
        }
        availBlocks -= n
        return Extent(start: e.start, length: n)
    }

    /// Blocks no longer used; the next commit hands them back.
    mutating func free(_ e: Extent) {
        guard e.length > 0 else { return }
        freed.append(e)
        freedBlocks += e.length
    }

    /// The freed blocks, for a commit to hand back; the pool forgets them.
    mutating func takeFreed() -> [Extent] {
        defer {
            freed = []
            freedBlocks = 0
        }
        return freed
    }

    /// Gives the whole pool up (a client leaving): what it had left is freed with the rest.
    mutating func returnAvail() {
        freed += avail
        freedBlocks += availBlocks
        avail = []
        availBlocks = 0
    }
}
