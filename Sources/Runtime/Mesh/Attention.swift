import CKernels
import Foundation
import Tensors
import Transformer

/// Attention for rows laid out q (H heads) | k (K) | v (K), each Q wide: RoPE on q and k,
/// append k and v at each row's position in its cache, then causal softmax attention over
/// positions 0...position (grouped-query: query head h reads KV head h / (H/K)). Returns (rows, H·Q).
func causalAttention(_ qkv: Matrix, heads H: Int, kvHeads K: Int, headDimension Q: Int, rope: RopeTable,
                     caches: [KVCache], positions: [Int], layer: Int, threads: WorkSplitter) -> Matrix {
    let out = Matrix(rows: qkv.rows, columns: H * Q)
    KVCache.reserve(caches, positions)
    for r in 0..<qkv.rows {
        let row = qkv.row(r)
        for h in 0..<(H + K) { rope.apply(row + h * Q, row: r) }
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
