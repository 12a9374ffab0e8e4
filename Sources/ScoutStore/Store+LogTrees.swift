public import ScoutFormat

extension LogTreeRecord {
    /// The record a log-trees item holds; a damaged one is a corrupt store.
    public init(item: Item) throws(StoreError) {
        do {
            self = try LogTreeRecord(decoding: item.value)
        } catch {
            throw StoreError(.corrupt, "log-trees item of client \(String(item.key.first, radix: 16)): \(error); run `scoutfs check`")
        }
    }
}

extension LogTreeRecord {
    /// Every client's record in the log-trees tree `tree`, by client id in key order.
    static func all(in tree: BTree, from source: some NodeSource) throws -> [(rid: UInt64, record: LogTreeRecord)] {
        var out: [(rid: UInt64, record: LogTreeRecord)] = []
        try tree.forEach(in: source) { it in
            guard it.key.zone == Zone.logTrees, !it.isDeletion else { return true }
            out.append((it.key.first, try LogTreeRecord(item: it)))
            return true
        }
        return out
    }
}

extension Store {
    /// Every client's recorded log tree (and pool), by client id in key order.
    public func logTreeRecords() throws -> [(rid: UInt64, record: LogTreeRecord)] {
        try LogTreeRecord.all(in: tree(.logTrees), from: self)
    }
}
