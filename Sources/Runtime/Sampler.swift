import Foundation

/// Sampling settings, with llama.cpp's defaults. temperature 0 means greedy (argmax, ties to
/// the lowest id).
public struct SamplingParameters: Sendable, Codable, Equatable {
    public var temperature: Float = 0.8
    public var topK: Int = 40            // 0 = off
    public var topP: Float = 0.95        // 1 = off
    public var minP: Float = 0.05        // 0 = off
    public var repetitionPenalty: Float = 1.0   // 1 = off
    public var repetitionWindow: Int = 64       // last N tokens penalised
    /// OpenAI's penalties over the same window: minus `presencePenalty` for a token that
    /// appears, minus `frequencyPenalty` × its count (0 = off).
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// Added to a token's logit before anything else (OpenAI `logit_bias`).
    public var logitBias: [Int: Float] = [:]
    public var seed: UInt64 = 0xC0FFEE

    public init() {}
    public static var greedy: SamplingParameters { var p = SamplingParameters(); p.temperature = 0; return p }
}

/// Turns logits into the next token. Order as in llama.cpp's default chain: logit bias →
/// repetition, presence and frequency penalties → top-k → top-p → min-p → temperature → draw.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: SplitMix64

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = SplitMix64(seed: parameters.seed)
    }

    public mutating func sample(_ logits: UnsafeBufferPointer<Float>, history: [Int]) -> Int {
        let p = parameters
        // Plain greedy (what a batch of temperature-0 requests asks every step) reads the
        // logits where they are: nothing below changes them.
        if p.temperature <= 0, p.logitBias.isEmpty, p.presencePenalty == 0, p.frequencyPenalty == 0, p.repetitionPenalty == 1 {
            return Sampler.argmax(logits)
        }
        var l = Array(logits)
        for (t, b) in p.logitBias where t >= 0 && t < l.count { l[t] += b }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            var counts: [Int: Int] = [:]
            for t in history.suffix(p.repetitionWindow) where t >= 0 && t < l.count { counts[t, default: 0] += 1 }
            for (t, c) in counts { l[t] -= p.presencePenalty + p.frequencyPenalty * Float(c) }
        }
        if p.repetitionPenalty != 1 {
            // CTRL-style penalty (Keskar et al. 2019): divide positive logits, multiply negative.
            for t in Set(history.suffix(p.repetitionWindow)) where t >= 0 && t < l.count {
                l[t] = l[t] > 0 ? l[t] / p.repetitionPenalty : l[t] * p.repetitionPenalty
            }
        }
        if p.temperature <= 0 { return Sampler.argmax(l) }

        // Candidates sorted by logit, descending (ties: lower id first). Top-k selects the k
        // best with a min-heap (O(V log k)) before sorting only those.
        let k = p.topK > 0 ? min(p.topK, l.count) : l.count
        func better(_ a: Int, _ b: Int) -> Bool { l[a] > l[b] || (l[a] == l[b] && a < b) }
        var ids: [Int]
        if k < l.count {
            ids = Sampler.best(k, of: l.count, by: better)
        } else {
            ids = Array(0..<l.count)
        }
        ids.sort(by: better)
        // Probabilities at temperature 1 for the top-p / min-p filters.
        var probs = Sampler.softmax(ids.map { l[$0] })
        if p.topP < 1 {
            var cumulative: Float = 0
            var keep = ids.count
            for (i, q) in probs.enumerated() {
                cumulative += q
                if cumulative >= p.topP { keep = i + 1; break }
            }
            ids = Array(ids.prefix(keep))
            probs = Array(probs.prefix(keep))
        }
        if p.minP > 0, let top = probs.first {
            let keep = probs.prefix { $0 >= p.minP * top }.count
            ids = Array(ids.prefix(max(1, keep)))
        }
        let final = Sampler.softmax(ids.map { l[$0] / p.temperature })
        let r = rng.nextUnit()
        var cumulative: Float = 0
        for (i, q) in final.enumerated() {
            cumulative += q
            if r < cumulative { return ids[i] }
        }
        return ids[ids.count - 1]
    }

    /// The k best of 0..<n under `better` (a strict total order), unordered: a min-heap of the
    /// k best so far, its root the worst of them.
    static func best(_ k: Int, of n: Int, by better: (Int, Int) -> Bool) -> [Int] {
        var heap = [Int]()
        heap.reserveCapacity(k)
        func down(_ i: Int) {
            var i = i
            while true {
                let a = 2 * i + 1, b = a + 1
                var worst = i
                if a < heap.count && better(heap[worst], heap[a]) { worst = a }
                if b < heap.count && better(heap[worst], heap[b]) { worst = b }
                if worst == i { return }
                heap.swapAt(i, worst)
                i = worst
            }
        }
        for id in 0..<n {
            if heap.count < k {
                heap.append(id)
                var i = heap.count - 1
                while i > 0 && better(heap[(i - 1) / 2], heap[i]) {
                    heap.swapAt(i, (i - 1) / 2)
                    i = (i - 1) / 2
                }
            } else if better(id, heap[0]) {
                heap[0] = id
                down(0)
            }
        }
        return heap
    }

    /// The first index of the largest value (NaN is never larger).
    public static func argmax<C: RandomAccessCollection>(_ l: C) -> Int where C.Element == Float, C.Index == Int {
        var best = l.startIndex
        for i in l.indices.dropFirst() where l[i] > l[best] { best = i }
        return best - l.startIndex
    }

    static func softmax(_ x: [Float]) -> [Float] {
        guard let m = x.max() else { return [] }
        let e = x.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}

/// The k highest logits of a row, descending (ties: lower id first).
public func topLogits(_ row: UnsafeBufferPointer<Float>, k: Int) -> [(id: Int, logit: Float)] {
    var best: [(id: Int, logit: Float)] = []
    for (i, v) in row.enumerated() {
        if best.count < k || v > best[best.count - 1].logit {
            let at = best.firstIndex { v > $0.logit } ?? best.count
            best.insert((i, v), at: at)
            if best.count > k { best.removeLast() }
        }
    }
    return best
}
