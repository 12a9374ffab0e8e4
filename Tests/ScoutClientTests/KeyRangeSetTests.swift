import ScoutClient
import ScoutFormat
import ScoutTestSupport
import Testing

@Suite struct KeyRangeSetTests {
    static let width = 20_000

    /// Key number `n` of a contiguous run: consecutive numbers are successors.
    static func key(_ n: Int) -> Key {
        Key(zone: Zone.fs, first: 9, type: 1, second: 0, third: UInt64(n / 256), fourth: UInt8(n % 256))
    }

    static func spans(of covered: [Bool]) -> [KeyRangeSet.Span] {
        var out: [KeyRangeSet.Span] = []
        var n = 0
        while n < covered.count {
            guard covered[n] else { n += 1; continue }
            var m = n
            while m + 1 < covered.count, covered[m + 1] { m += 1 }
            out.append(KeyRangeSet.Span(start: key(n), end: key(m)))
            n = m + 1
        }
        return out
    }

    /// Against a bitmap of covered keys, through enough small inserts to split chunks, long
    /// ones that merge across chunk boundaries, and removals that cut spans apart.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func agreesWithABitmap(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var set = KeyRangeSet()
        var covered = [Bool](repeating: false, count: Self.width)
        var most = 0
        for step in 0..<6000 {
            let a = Int(rng.next() % UInt64(Self.width))
            let long = rng.next() % 50 == 0
            let b = min(Self.width - 1, a + Int(rng.next() % (long ? 600 : 3)))
            // Mostly inserts of single keys (negative lookups), some long ones and removals.
            if rng.next() % 5 == 0 {
                set.remove(Self.key(a), Self.key(b))
                for n in a...b { covered[n] = false }
            } else {
                set.insert(Self.key(a), Self.key(b))
                for n in a...b { covered[n] = true }
            }
            if step % 97 == 0 || step == 5999 {
                #expect(set.spans == Self.spans(of: covered), "seed \(seed) step \(step)")
                most = max(most, set.spans.count)
                for _ in 0..<50 {
                    let n = Int(rng.next() % UInt64(Self.width))
                    #expect(set.contains(Self.key(n)) == covered[n], "seed \(seed) step \(step) key \(n)")
                    let next = (n + 1..<Self.width).first { covered[$0] && !covered[$0 - 1] }
                    #expect(set.nextStart(after: Self.key(n)) == next.map(Self.key), "seed \(seed) step \(step) after \(n)")
                }
            }
        }
        #expect(most > 2 * 256, "too few spans to have split chunks: \(most)")
        set.remove(Self.key(0), Self.key(Self.width - 1))
        #expect(set.isEmpty)
    }
}
