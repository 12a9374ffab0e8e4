import ScoutFormat
public import ScoutStore

/// Verifies offline what the block-level `Checker` cannot know, the filesystem's own rules:
///
/// - **Index items** agree with the inodes and xattrs they describe: one meta_seq and one
///   data_seq item per inode at the inode's seqs and no others; a search item for every
///   `.srch.` xattr and none left for xattrs that are gone; `.totl.` totals equal to the sums
///   of the xattrs; `.indx.` entries counting exactly the xattrs at their positions. This is
///   the drift the original shipped fixes for.
/// - **The namespace** (`FilesystemCheck+Namespace.swift`): every entry's three items agree
///   and name an inode that exists; link counts equal the links found; every inode is
///   reachable from the root or an orphan; modes and sizes are possible.
/// - **The superblock's counters** are above what the trees hold: the next inode number above
///   every inode, the commit seq above every item's seq.
///
/// It reads the forest the mount would read: the fs tree under every unmerged log tree.
/// Memory stays small for any number of inodes: items are streamed in key order and each
/// expected index item is looked up; the index zones are only walked a second time, to name
/// the strays, when their counts show there are some.
public enum FilesystemCheck {
    public struct Report: Sendable {
        public var problems: [String] = []
        public var inodes: UInt64 = 0
        public var searchItems: UInt64 = 0
        public var totals: Int = 0

        public init() {}
    }

    /// At most this many problems of one kind are listed; the rest are counted.
    static let listLimit = 100

    public static func check(_ store: Store) -> Report {
        var r = Report()
        do {
            var trees: [BTree] = []
            try store.tree(.logTrees).forEach(in: store) { it in
                if it.key.zone == Zone.logTrees, let rec = try? LogTreeRecord(decoding: it.value), !rec.root.isEmpty {
                    trees.append(BTree(root: rec.root, name: "log tree \(it.key.first)"))
                }
                return true
            }
            trees.append(store.tree(.fs))
            var walk = Walk(store: store, forest: Forest(trees: trees, mergedIndex: trees.count - 1), superblock: store.superblock)
            try walk.run()
            r.problems = walk.problems
            r.inodes = walk.inodes
            r.searchItems = walk.srchFound
            r.totals = walk.totl.count
        } catch {
            r.problems.append("filesystem check stopped: \(error)")
        }
        return r
    }

    struct Walk {
        let store: Store
        let forest: Forest
        let superblock: SuperBlock
        var problems: [String] = []
        /// The inode whose items are being streamed (keys of one inode are contiguous).
        var current = InodeTally(ino: 0)
        /// Each directory's parent, from its link backref: the root must be reachable.
        var parents: [UInt64: UInt64] = [:]
        var maxIno: UInt64 = 0
        var maxSeq: (seq: UInt64, key: Key)?
        var counts: [String: Int] = [:]
        var inodes: UInt64 = 0
        var seqFound: [UInt8: UInt64] = [:]
        var srchFound: UInt64 = 0
        var totl: [XattrTotalName: (total: Int64, count: Int64)] = [:]
        /// `.indx.` xattrs found per index item key.
        var indx: [Key: Int64] = [:]

        mutating func problem(_ kind: String, _ s: @autoclosure () -> String) {
            counts[kind, default: 0] += 1
            if counts[kind]! <= FilesystemCheck.listLimit { problems.append(s()) }
        }

        func exists(_ key: Key) throws -> Bool { try forest.lookup(key, in: store) != nil }

        /// Visible items in `[first, last]`: compared with the matches found, it tells whether
        /// a zone holds strays worth a second walk to name.
        func count(from first: Key, through last: Key) throws -> UInt64 {
            var n: UInt64 = 0
            try forest.forEach(from: first, through: last, in: store) { _ in n += 1; return true }
            return n
        }

        mutating func run() throws {
            try forest.forEach(from: Key(zone: Zone.fs), through: .last(in: Zone.fs), in: store) { it in
                if it.key.first != current.ino {
                    try finishInode()
                    current = InodeTally(ino: it.key.first)
                }
                maxIno = max(maxIno, it.key.first)
                if it.seq > (maxSeq?.seq ?? 0) { maxSeq = (it.seq, it.key) }
                switch it.key.type {
                case ItemType.inode: try inode(it)
                case ItemType.xattr where it.key.fourth == 0: try xattr(it)
                case ItemType.dirent: try dirent(it)
                case ItemType.readdir: try readdirItem(it)
                case ItemType.linkBackref: try backref(it)
                default: break
                }
                return true
            }
            try finishInode()
            reachability()
            let sb = superblock
            if maxIno >= sb.nextIno && maxIno > 0 {
                let text = "superblock: next inode number \(sb.nextIno) is not above inode \(maxIno), which the trees hold; new files would overwrite it"
                problem("superblock", text)
            }
            if let m = maxSeq, m.seq > sb.seq {
                problem("superblock", "item \(m.key) has seq \(m.seq), above the superblock's commit seq \(sb.seq); newer changes would lose to it")
            }
            for index in SeqIndex.allCases { try strays(index) }
            try searchStrays()
            try totals()
            try indexEntries()
            for (kind, n) in counts.sorted(by: { $0.key < $1.key }) where n > FilesystemCheck.listLimit {
                problems.append("\(n - FilesystemCheck.listLimit) more problems of this kind: \(kind)")
            }
        }

        mutating func inode(_ it: Item) throws {
            let ino = it.key.first
            inodes += 1
            let rec: InodeRecord
            do {
                rec = try InodeRecord(decoding: it.value)
            } catch {
                problem("bad inode", "inode \(ino): cannot decode: \(error)")
                current.undecodable = true
                return
            }
            current.record = rec
            if let why = rec.impossibility { problem("impossible inode", "inode \(ino): \(why)") }
            for index in SeqIndex.allCases where index == .metaSeq || rec.isRegular {
                let seq = index == .metaSeq ? rec.metaSeq : rec.dataSeq
                if try exists(Keys.seqIndex(index.itemType, seq, ino)) {
                    seqFound[index.itemType, default: 0] += 1
                } else {
                    problem("missing \(index.rawValue) item", "inode \(ino): \(index.rawValue) \(seq) has no \(index.rawValue) index item")
                }
            }
        }

        mutating func xattr(_ it: Item) throws {
            let head = try XattrHead(decoding: it.value)
            let n = head.name, value = head.valueStart
            guard n.starts(with: XattrTags.prefix) else { return }
            let ino = it.key.first
            guard let tags = try? XattrTags.parse(n) else {
                problem("bad tag", "inode \(ino): xattr \(String(decoding: n, as: UTF8.self)) has a scoutfs. name the filesystem would refuse")
                return
            }
            if tags.srch {
                if try exists(Keys.srch(nameHash(n), ino, it.key.third)) {
                    srchFound += 1
                } else {
                    problem("missing search item", "inode \(ino): .srch. xattr \(String(decoding: n, as: UTF8.self)) has no search item")
                }
            }
            if let p = tags.indexPosition { indx[Keys.indx(p, ino), default: 0] += 1 }
            if let t = tags.totlName {
                guard let v = XattrTags.parseNumber(value[...]) else {
                    problem("bad total", "inode \(ino): .totl. xattr \(String(decoding: n, as: UTF8.self)) holds a value that is not a number")
                    return
                }
                var sum = totl[t] ?? (0, 0)
                sum.total &+= Int64(bitPattern: v)
                sum.count += 1
                totl[t] = sum
            }
        }

        /// Index items without a matching inode; walked only when there are more items than
        /// inodes found theirs.
        mutating func strays(_ index: SeqIndex) throws {
            let type = index.itemType
            let first = Keys.seqIndex(type, 0, 0), last = Keys.seqIndex(type, .max, .max)
            guard try count(from: first, through: last) != seqFound[type, default: 0] else { return }
            try forest.forEach(from: first, through: last, in: store) { it in
                let seq = it.key.second, ino = it.key.third
                let rec = try forest.lookup(Keys.inode(ino), in: store).flatMap { try? InodeRecord(decoding: $0.value) }
                let have = index == .metaSeq ? rec?.metaSeq : rec?.dataSeq
                if have != seq {
                    problem("stray \(index.rawValue) item",
                            "\(index.rawValue) index item (seq \(seq), inode \(ino)): " + (rec == nil ? "no such inode" : "the inode's \(index.rawValue) is \(have!)"))
                } else if index == .dataSeq, let rec, !rec.isRegular {
                    problem("stray \(index.rawValue) item", "\(index.rawValue) index item (seq \(seq), inode \(ino)): only regular files are in the data_seq index")
                }
                return true
            }
        }

        /// Search items whose xattr is gone (the filesystem removes them with the xattr).
        mutating func searchStrays() throws {
            let first = Key(zone: Zone.srch), last = Key.last(in: Zone.srch)
            guard try count(from: first, through: last) != srchFound else { return }
            try forest.forEach(from: first, through: last, in: store) { it in
                let hash = it.key.first, ino = it.key.second, id = it.key.third
                // An xattr's key holds the hash of its name, so the search item names its key.
                var found = false
                if let x = try forest.lookup(Keys.xattr(ino, hash, id, 0), in: store) {
                    found = (try? XattrTags.parse(try XattrHead(decoding: x.value).name))??.srch == true
                }
                if !found { problem("stray search item", "search item (hash \(String(hash, radix: 16)), inode \(ino), xattr id \(id)): no such .srch. xattr") }
                return true
            }
        }

        mutating func totals() throws {
            var seen = Set<XattrTotalName>()
            try forest.forEach(from: Key(zone: Zone.xattrTotl), through: .last(in: Zone.xattrTotl), in: store) { it in
                let have = try XattrTotal(item: it)
                let name = have.name
                let want = totl[name] ?? (0, 0)
                seen.insert(name)
                if want.total != have.total || want.count != have.count {
                    problem("wrong total", ".totl. \(name): the item holds total \(have.total) count \(have.count); the xattrs add up to total \(want.total) count \(want.count)")
                }
                return true
            }
            for (name, want) in totl where !seen.contains(name) {
                problem("missing total", ".totl. \(name): no total item; the xattrs add up to total \(want.total) count \(want.count)")
            }
        }

        mutating func indexEntries() throws {
            var seen = Set<Key>()
            try forest.forEach(from: Key(zone: Zone.xattrIndx), through: .last(in: Zone.xattrIndx), in: store) { it in
                var r = ByteReader(it.value, what: ".indx. count")
                let have = try r.i64()
                let want = indx[it.key] ?? 0
                seen.insert(it.key)
                if have != want {
                    problem("wrong index entry", ".indx. entry \(it.key.first).\(it.key.second) of inode \(it.key.third): counts \(have) xattrs; \(want) are there")
                }
                return true
            }
            for (key, want) in indx where !seen.contains(key) {
                problem("missing index entry", ".indx. entry \(key.first).\(key.second) of inode \(key.third): no item for its \(want) xattrs")
            }
        }
    }
}
