/// Elements in the order they came, taken from the front: an array and the index of its
/// front, the taken front let go once it is half the array, so each element is moved once on
/// average (an array's `removeFirst` moves all the rest every time).
public struct FIFO<Element> {
    private var elements: [Element] = []
    private var head = 0

    public init() {}

    public var count: Int { elements.count - head }
    public var isEmpty: Bool { count == 0 }

    public mutating func append(_ e: Element) { elements.append(e) }

    public mutating func append(contentsOf es: some Sequence<Element>) { elements.append(contentsOf: es) }

    public mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        defer { taken(1) }
        return elements[head]
    }

    /// Up to `n` elements from the front, in order.
    public mutating func popFirst(upTo n: Int) -> ArraySlice<Element> {
        let out = elements[head...].prefix(n)
        taken(out.count)
        return out
    }

    private mutating func taken(_ n: Int) {
        head += n
        if head == elements.count {
            elements.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 1024, head * 2 > elements.count {
            elements.removeFirst(head)
            head = 0
        }
    }
}

extension FIFO: Sendable where Element: Sendable {}

extension FIFO where Element: Hashable {
    /// Keeps the elements `isKept` says, each once, where it last came in line.
    public mutating func keepLast(where isKept: (Element) -> Bool) {
        var seen = Set<Element>()
        var kept: [Element] = []
        for e in elements[head...].reversed() where seen.insert(e).inserted && isKept(e) { kept.append(e) }
        elements = kept.reversed()
        head = 0
    }
}
