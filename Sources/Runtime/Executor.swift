import CKernels
import Foundation
import Tensors
import Transformer

/// Where each row of a batch belongs: its sequence's cache and its position in it.
struct RowPlacement {
    let cache: KVCache
    let position: Int
}

/// The executing interpreter on one device: runs block programs on real tensors.
/// With all weights on one device it is the unsharded reference every layout is compared with.
struct Executor: Interpreter {
    typealias Value = Matrix

    let weights: ModelWeights
    let rows: [RowPlacement]        // one per row of the batch (B·L flattened)
    let threads: WorkSplitter
    let rope: RopeTable

    init(weights: ModelWeights, rows: [RowPlacement], threads: WorkSplitter) {
        self.weights = weights
        self.rows = rows
        self.threads = threads
        rope = RopeTable(config: weights.config, positions: rows.map(\.position))
    }

    func norm(_ x: Matrix, _ which: NormWeight) -> Matrix {
        let w: [Float]
        switch which {
        case let .attention(l): w = weights.layers[l].attentionNorm
        case let .feedForward(l): w = weights.layers[l].feedForwardNorm!
        case .output: w = weights.outputNorm
        }
        let out = Matrix(rows: x.rows, columns: x.columns)
        let eps = weights.config.normEpsilon
        w.withUnsafeBufferPointer { w in
            for r in 0..<x.rows { mi_rmsnorm(x.row(r), w.baseAddress!, Int32(x.columns), eps, out.row(r)) }
        }
        return out
    }

    func linear(_ x: Matrix, _ which: LinearWeightID) -> Matrix {
        let w: LinearWeight
        switch which {
        case let .qkv(l): w = weights.layers[l].qkv
        case let .attentionOutput(l): w = weights.layers[l].attentionOutput
        case let .gateUp(l): w = weights.layers[l].gateUp
        case let .down(l): w = weights.layers[l].down
        case .output: w = weights.output
        }
        return w.apply(x, threads: threads)
    }

    func attention(_ qkv: Matrix, layer: Int) -> Matrix {
        let c = weights.config
        return causalAttention(qkv, heads: c.heads, kvHeads: c.kvHeads, headDimension: c.headDimension, rope: rope,
                               caches: rows.map(\.cache), positions: rows.map(\.position), layer: layer, threads: threads)
    }

    func swiglu(_ gateUp: Matrix) -> Matrix {
        let F = gateUp.columns / 2
        let out = Matrix(rows: gateUp.rows, columns: F)
        for r in 0..<gateUp.rows { mi_swiglu(gateUp.row(r), gateUp.row(r) + F, Int32(F), out.row(r)) }
        return out
    }

    func add(_ a: Matrix, _ b: Matrix) -> Matrix { a.adding(b) }
}

/// Attention for rows laid out q (H heads) | k (K) | v (K), each Q wide: RoPE on q and k,
/// append k and v at each row's position in its cache, then causal softmax attention over
/// positions 0...position (grouped-query: query head h reads KV head h / (H/K)). Returns (rows, H·Q).
func causalAttention(_ qkv: Matrix, heads H: Int, kvHeads K: Int, headDimension Q: Int, rope: RopeTable,
                     caches: [KVCache], positions: [Int], layer: Int, threads: WorkSplitter) -> Matrix {
    let out = Matrix(rows: qkv.rows, columns: H * Q)
    for r in 0..<qkv.rows {
        let row = qkv.row(r)
        for h in 0..<(H + K) { rope.apply(row + h * Q, row: r) }
        caches[r].reserve(positions[r] + 1)
        caches[r].key(layer: layer, position: positions[r]).update(from: row + H * Q, count: K * Q)
        caches[r].value(layer: layer, position: positions[r]).update(from: row + (H + K) * Q, count: K * Q)
    }
    let scale = 1 / Float(Q).squareRoot()
    threads.parallelFor(qkv.rows) { range in
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, (range.map { positions[$0] }.max() ?? 0) + 1))
        defer { scratch.deallocate() }
        for r in range {
            mi_attention_row(qkv.row(r), Int32(H), Int32(K), Int32(Q), caches[r].key(layer: layer, position: 0),
                             caches[r].value(layer: layer, position: 0), Int64(K * Q), Int32(positions[r] + 1), scale,
                             scratch, out.row(r))
        }
    }
    return out
}

/// cos/sin of RoPE for the rows of a batch. GGML "normal" mode: pairs (2i, 2i+1) rotate by
/// θ = position · base^(−2i/d) over the first d dimensions of each head (Su et al. 2021).
struct RopeTable {
    let half: Int
    let table: [Float]  // (rows, d/2, 2): cos, sin

    init(config: ModelConfig, positions: [Int]) {
        half = config.ropeDimensions / 2
        let d = Double(config.ropeDimensions)
        let inverse = (0..<half).map { pow(config.ropeBase, -2 * Double($0) / d) }
        var t = [Float](repeating: 0, count: positions.count * half * 2)
        for (r, p) in positions.enumerated() {
            for i in 0..<half {
                let theta = Double(p) * inverse[i]
                t[(r * half + i) * 2] = Float(cos(theta))
                t[(r * half + i) * 2 + 1] = Float(sin(theta))
            }
        }
        table = t
    }

    func apply(_ x: UnsafeMutablePointer<Float>, row: Int) {
        table.withUnsafeBufferPointer { t in
            let base = t.baseAddress! + row * half * 2
            for i in 0..<half {
                let c = base[2 * i], s = base[2 * i + 1]
                let a = x[2 * i], b = x[2 * i + 1]
                x[2 * i] = a * c - b * s
                x[2 * i + 1] = a * s + b * c
            }
        }
    }
}
