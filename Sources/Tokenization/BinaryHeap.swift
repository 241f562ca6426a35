/// Elements that know which of two comes out of a `BinaryHeap` first.
protocol HeapOrdered {
    static func before(_ x: Self, _ y: Self) -> Bool
}

/// A binary heap: `pop` returns the element that comes `before` all others.
struct BinaryHeap<Element: HeapOrdered> {
    private var a: [Element] = []

    mutating func push(_ e: Element) {
        a.append(e)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if !Element.before(a[i], a[p]) { break }
            a.swapAt(p, i); i = p
        }
    }

    mutating func pop() -> Element? {
        guard let top = a.first else { return nil }
        let last = a.removeLast()
        if a.isEmpty { return top }
        a[0] = last
        var i = 0
        let n = a.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && Element.before(a[l], a[m]) { m = l }
            if r < n && Element.before(a[r], a[m]) { m = r }
            if m == i { break }
            a.swapAt(i, m); i = m
        }
        return top
    }
}
