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

extension Store {
    /// Every node the mounted-clients tree records, by client id. A damaged record is a
    /// corrupt store.
    public func mountedClients() throws -> [MountedClient] {
        var out: [MountedClient] = []
        try tree(.mountedClients).forEach(in: self) { it in
            guard it.key.zone == Zone.mountedClient, !it.isDeletion else { return true }
            do {
                out.append(try MountedClient(item: it))
            } catch {
                throw StoreError(.corrupt, "mounted-clients item of client \(String(it.key.first, radix: 16)): \(error); run `scoutfs check`")
            }
            return true
        }
        return out
    }
}
