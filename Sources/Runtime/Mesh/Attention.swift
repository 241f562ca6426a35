import CKernels
import Foundation
import Tensors
import Transformer

/// What happens to a query or key head before attention: RMSNorm per head with the layer's
/// Q-wide weight (`qkNorm`, Gemma), then RoPE at the layer's base.
struct HeadPrep {
    let rope: RopeTable
    let layer: Int
    let queryNorm: [Float]?   // (Q)
    let keyNorm: [Float]?     // (Q)
    let epsilon: Float

    func query(_ x: UnsafeMutablePointer<Float>, row: Int) { prepare(x, queryNorm, row) }
    func key(_ x: UnsafeMutablePointer<Float>, row: Int) { prepare(x, keyNorm, row) }

    private func prepare(_ x: UnsafeMutablePointer<Float>, _ norm: [Float]?, _ row: Int) {
        if let norm {
            let q = norm.count
            withUnsafeTemporaryAllocation(of: Float.self, capacity: q) { tmp in
                tmp.baseAddress!.update(from: x, count: q)
                norm.withUnsafeBufferPointer { mi_rmsnorm(tmp.baseAddress!, $0.baseAddress!, Int32(q), epsilon, x) }
            }
        }
        rope.apply(x, row: row, layer: layer)
    }
}

extension ModelConfig {
    /// The first cached position a query at `position` attends to in `layer` (0 unless the
    /// layer is local: then the sliding window, the query included).
    public func firstAttended(layer: Int, position: Int) -> Int {
        isLocal(layer: layer) ? max(0, position + 1 - slidingWindow!) : 0
    }
}

/// Attention for rows laid out q (H heads) | k (K) | v (K), each Q wide: per-head prep (QK norm,
/// RoPE) of q and k, append k and v at each row's position in its cache, then causal softmax
/// attention over positions first...position (the sliding window on local layers; grouped-query:
/// query head h reads KV head h / (H/K)). Returns (rows, H·Q).
func causalAttention(_ qkv: Matrix, heads H: Int, kvHeads K: Int, headDimension Q: Int, prep: HeadPrep, config: ModelConfig,
                     caches: [KVCache], positions: [Int], layer: Int, threads: WorkSplitter) -> Matrix {
    let out = Matrix(rows: qkv.rows, columns: H * Q)
    KVCache.reserve(caches, positions)
    // Rows write disjoint positions of their caches (grown above).
    threads.parallelRows(qkv.rows, columns: qkv.columns) { rows in
        for r in rows {
            let row = qkv.row(r)
            for h in 0..<H { prep.query(row + h * Q, row: r) }
            for h in H..<(H + K) { prep.key(row + h * Q, row: r) }
            caches[r].write(layer: layer, position: positions[r], count: K, keys: row + H * Q, values: row + (H + K) * Q)
        }
    }
    let scale = 1 / Float(Q).squareRoot()
    // A decode step (one row per sequence) reads each cache once, from memory.
    let cold: Int32 = Set(caches.map(ObjectIdentifier.init)).count == caches.count ? 1 : 0
    threads.parallelFor(qkv.rows, cost: { positions[$0] + 1 - config.firstAttended(layer: layer, position: positions[$0]) }) { range in
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, (range.map { positions[$0] }.max() ?? 0) + 1) * (H / K))
        defer { scratch.deallocate() }
        for r in range {
            let first = config.firstAttended(layer: layer, position: positions[r])
            let cache = caches[r]
            cache.attend(qkv.row(r), heads: H, kvHeads: K, layer: layer, firstHead: 0, first: first, count: positions[r] + 1 - first,
                         scale: scale, scratch: scratch, out: out.row(r), cold: cold)
        }
    }
    return out
}

/// cos/sin of RoPE for the rows of a batch, θ = position · base^(−2i/d) over the first d
/// dimensions of each head (Su et al. 2021). GGML "normal" mode rotates pairs (2i, 2i+1), NeoX
/// mode pairs (i, i + d/2). Local layers (sliding window) may use another base: one table each.
struct RopeTable {
    let half: Int
    let neox: Bool
    let table: [Float]        // (rows, d/2, 2): cos, sin at the global base
    let localTable: [Float]?  // the same at the local layers' base, when it differs
    let config: ModelConfig

    init(config: ModelConfig, positions: [Int]) {
        half = config.ropeDimensions / 2
        neox = config.ropeStyle == .neox
        self.config = config
        table = Self.angles(config, positions, base: config.ropeBase)
        localTable = config.localRopeBase.flatMap {
            $0 != config.ropeBase && config.slidingWindow != nil ? Self.angles(config, positions, base: $0) : nil
        }
    }

    private static func angles(_ config: ModelConfig, _ positions: [Int], base: Double) -> [Float] {
        let half = config.ropeDimensions / 2, d = Double(config.ropeDimensions)
        let inverse = (0..<half).map { pow(base, -2 * Double($0) / d) }
        var t = [Float](repeating: 0, count: positions.count * half * 2)
        for (r, p) in positions.enumerated() {
            for i in 0..<half {
                let theta = Double(p) * inverse[i]
                t[(r * half + i) * 2] = Float(cos(theta))
                t[(r * half + i) * 2 + 1] = Float(sin(theta))
            }
        }
        return t
    }

    func apply(_ x: UnsafeMutablePointer<Float>, row: Int, layer: Int) {
        let angles = config.isLocal(layer: layer) ? localTable ?? table : table
        angles.withUnsafeBufferPointer { mi_rope(x, $0.baseAddress! + row * half * 2, Int32(half), neox ? 1 : 0) }
    }
}
