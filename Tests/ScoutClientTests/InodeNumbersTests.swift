import ScoutClient
import ScoutFormat
import Testing

@Suite struct InodeNumbersTests {
    /// A stand-in for the server: batches of `size` numbers rounded up to group boundaries.
    final class Server {
        var next: UInt64 = 2
        var calls = 0
        func allocate(_ size: UInt64) -> Range<UInt64> {
            calls += 1
            let mask = LockRange.groupSize - 1
            let first = next
            next = (first + size + mask) & ~mask
            return first..<next
        }
    }

    func group(_ ino: UInt64) -> UInt64 { ino / LockRange.groupSize }

    @Test func directoriesStartGroupsAndTheirFilesShareThem() {
        let server = Server()
        var numbers = InodeNumbers()
        let take = { (numbers: inout InodeNumbers, parent: UInt64, dir: Bool) in
            numbers.take(parent: parent, directory: dir) { server.allocate(InodeNumbers.batch) }
        }
        let d0 = take(&numbers, 1, true)
        let d1 = take(&numbers, 1, true)
        #expect(d0 == 2, "the first batch starts after the root")
        #expect(d1 == 1024, "a second directory starts the next group")
        let inD0 = (0..<10).map { _ in take(&numbers, d0, false) }
        let inD1 = (0..<10).map { _ in take(&numbers, d1, false) }
        #expect(inD0 == Array(3..<13))
        #expect(inD1 == Array(1025..<1035))
        let inRoot = take(&numbers, 1, false)
        #expect(Set([group(d0), group(d1)]).isDisjoint(with: [group(inRoot)]), "the root's files get a group of their own")
        #expect(server.calls == 1, "one batch holds 16 groups")
        let all = [d0, d1, inRoot] + inD0 + inD1
        #expect(Set(all).count == all.count)
    }

    @Test func aFullGroupGivesWayToAFreshOneAndNumbersNeverRepeat() {
        let server = Server()
        var numbers = InodeNumbers()
        var seen = Set<UInt64>()
        let d = numbers.take(parent: 1, directory: true) { server.allocate(InodeNumbers.batch) }
        seen.insert(d)
        var groups: [UInt64] = []
        for _ in 0..<3000 {
            let ino = numbers.take(parent: d, directory: false) { server.allocate(InodeNumbers.batch) }
            #expect(seen.insert(ino).inserted, "inode \(ino) handed out twice")
            if groups.last != group(ino) { groups.append(group(ino)) }
        }
        // 1021 more numbers fit in d's group (2..<1024 less d itself), then whole groups.
        #expect(groups == [0, 1, 2])
        let used: UInt64 = 3000 - 1021 - 1024
        let groupTwo: UInt64 = 2 * LockRange.groupSize
        #expect(numbers.left(in: d) == (groupTwo + used)..<(groupTwo + LockRange.groupSize))
        // Past 16 groups the server is asked again.
        for _ in 0..<20 { _ = numbers.take(parent: 1, directory: true) { server.allocate(InodeNumbers.batch) } }
        #expect(server.calls == 2)
    }

    @Test func forgottenDirectoriesTakeAFreshGroupNextTime() {
        let server = Server()
        var numbers = InodeNumbers(parentLimit: 8)
        let dirs = (0..<8).map { _ in numbers.take(parent: 1, directory: true) { server.allocate(InodeNumbers.batch) } }
        // The root took no group: 8 directories fill the table; using dirs[1...] keeps them fresh.
        for d in dirs.dropFirst() { _ = numbers.take(parent: d, directory: false) { server.allocate(InodeNumbers.batch) } }
        _ = numbers.take(parent: 1, directory: false) { server.allocate(InodeNumbers.batch) }
        #expect(numbers.left(in: dirs[0]) == nil, "the least recently used directory gave its group up")
        #expect(numbers.left(in: dirs[7]) != nil)
        let again = numbers.take(parent: dirs[0], directory: false) { server.allocate(InodeNumbers.batch) }
        #expect(group(again) != group(dirs[0]))
        #expect(again % LockRange.groupSize == 0, "a fresh group starts at its first number")
    }
}
