/// Merge table and the per-word merge loop of byte-level BPE.
///
/// Symbols are token ids: a word starts as one id per byte (the token whose text is that
/// byte's GPT-2 character) and adjacent pairs are merged lowest rank first, leftmost first on
/// equal ranks — the order llama.cpp's priority queue produces.
struct BPEMerges: Sendable {
    /// (left << 32 | right) -> (rank << 32 | merged id).
    private let table: [UInt64: UInt64]
    /// Token id of each byte's single-character token, or -1 when the vocabulary lacks it.
    let byteTokens: [Int32]

    init(table: [UInt64: UInt64], byteTokens: [Int32]) {
        self.table = table
        self.byteTokens = byteTokens
    }

    @inline(__always) static func key(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    /// (rank, merged) for a pair, rank = Int32.max when the pair does not merge.
    @inline(__always) func lookup(_ a: Int32, _ b: Int32) -> (rank: Int32, merged: Int32) {
        if a < 0 || b < 0 { return (.max, -1) }
        guard let v = table[BPEMerges.key(a, b)] else { return (.max, -1) }
        return (Int32(truncatingIfNeeded: v >> 32), Int32(truncatingIfNeeded: v & 0xFFFF_FFFF))
    }

    /// Appends the tokens of one pre-tokenized word. Bytes without a token are dropped
    /// (llama.cpp drops them too).
    func encodeWord(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int], heapThreshold: Int = 64) {
        let n = bytes.count
        if n == 0 { return }
        if n == 1 {
            let id = byteTokens[Int(bytes[0])]
            if id >= 0 { out.append(Int(id)) }
            return
        }
        if n > heapThreshold { return encodeLongWord(bytes, into: &out) }
        // Short words: rescan for the best pair after each merge (O(n^2), tiny constant).
        var symbols = [Int32](repeating: 0, count: n)
        for i in 0..<n { symbols[i] = byteTokens[Int(bytes[i])] }
        // ranks[i]/merged[i] describe the pair (symbols[i], symbols[i+1]).
        var ranks = [Int32](repeating: .max, count: n - 1)
        var merged = [Int32](repeating: -1, count: n - 1)
        for i in 0..<(n - 1) {
            let m = lookup(symbols[i], symbols[i + 1])
            ranks[i] = m.rank; merged[i] = m.merged
        }
        var count = n
        while count > 1 {
            var best = -1
            var bestRank = Int32.max
            for i in 0..<(count - 1) where ranks[i] < bestRank {
                bestRank = ranks[i]; best = i
            }
            if best < 0 { break }
            symbols[best] = merged[best]
            symbols.remove(at: best + 1)
            ranks.remove(at: best)
            merged.remove(at: best)
            count -= 1
            if best > 0 {
                let m = lookup(symbols[best - 1], symbols[best])
                ranks[best - 1] = m.rank; merged[best - 1] = m.merged
            }
            if best < count - 1 {
                let m = lookup(symbols[best], symbols[best + 1])
                ranks[best] = m.rank; merged[best] = m.merged
            }
        }
        for s in symbols.prefix(count) where s >= 0 { out.append(Int(s)) }
    }

    /// Long words: a min-heap of candidate pairs keyed by (rank, left position) over a linked
    /// list of symbols, O(n log n). Same merge order as the rescanning loop.
    func encodeLongWord(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int]) {
        let n = bytes.count
        var ids = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        var prev = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            ids[i] = byteTokens[Int(bytes[i])]
            next[i] = i + 1 < n ? Int32(i + 1) : -1
            prev[i] = Int32(i - 1)
        }
        var heap = BinaryHeap<PairCandidate>()
        func push(_ l: Int32, _ r: Int32) {
            guard l >= 0, r >= 0 else { return }
            let m = lookup(ids[Int(l)], ids[Int(r)])
            if m.rank == .max { return }
            heap.push(PairCandidate(key: UInt64(UInt32(m.rank)) << 32 | UInt64(UInt32(l)), right: r,
                                     leftID: ids[Int(l)], rightID: ids[Int(r)], merged: m.merged))
        }
        for i in 0..<(n - 1) { push(Int32(i), Int32(i + 1)) }
        while let e = heap.pop() {
            let l = Int(UInt32(truncatingIfNeeded: e.key)), r = Int(e.right)
            // Stale entries: a side was merged away or changed since the pair was queued.
            guard alive[l], alive[r], next[l] == e.right, ids[l] == e.leftID, ids[r] == e.rightID else { continue }
            ids[l] = e.merged
            alive[r] = false
            next[l] = next[r]
            if next[r] >= 0 { prev[Int(next[r])] = Int32(l) }
            push(prev[l], Int32(l))
            push(Int32(l), next[l])
        }
        var i: Int32 = 0
        while i >= 0 {
            if ids[Int(i)] >= 0 { out.append(Int(ids[Int(i)])) }
            i = next[Int(i)]
        }
    }
}

/// A merge candidate of byte-level BPE: lowest rank first, then the leftmost pair.
struct PairCandidate: HeapOrdered {
    var key: UInt64        // rank << 32 | left position
    var right: Int32
    var leftID: Int32
    var rightID: Int32
    var merged: Int32
    @inline(__always) static func before(_ x: Self, _ y: Self) -> Bool { x.key < y.key }
}
