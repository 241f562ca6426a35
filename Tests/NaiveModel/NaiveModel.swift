import Foundation
import Transformer

/// The oracle every layout is compared with: a forward pass written for reading, one token at a
/// time, in plain loops and Double arithmetic (after llama2.c's `run.c`). It shares nothing with
/// the runtime but the model configuration: no kernels, no packed weights, no collectives.
///
/// Llama (serial block) and PaLM (parallel block, Pope et al. §2.2) with grouped-, multi-query or
/// multi-head attention: RMSNorm, RoPE on pairs (2i, 2i+1) of the first `ropeDimensions` of each
/// head (GGML "normal" mode), causal softmax attention, SwiGLU, tied or separate unembedding.
/// And the Gemma 3 block: the embedding scaled, RMSNorm of each query and key head, RoPE on
/// pairs (i, i + d/2) (NeoX) at a per-layer base, a sliding window on local layers, GeGLU
/// (tanh GELU), and the attention and feed-forward outputs normed before the residual adds.
public final class NaiveModel {
    public let config: ModelConfig
    /// Row-major f32 tensors by GGUF name: (rows = outputs, columns = inputs).
    let tensor: [String: [Float]]

    /// `weight(name)` returns a tensor's values, row-major (rows = outputs, columns = inputs).
    public init(config: ModelConfig, weight: (String) throws -> [Float]) rethrows {
        self.config = config
        var t: [String: [Float]] = [:]
        var names = ["token_embd.weight", "output_norm.weight"]
        for l in 0..<config.layers {
            let p = "blk.\(l)."
            names += ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].map { p + $0 + ".weight" }
            if config.block == .serial { names.append(p + "ffn_norm.weight") }
            if config.postNorms { names += [p + "post_attention_norm.weight", p + "post_ffw_norm.weight"] }
            if config.qkNorm { names += [p + "attn_q_norm.weight", p + "attn_k_norm.weight"] }
        }
        for n in names { t[n] = try weight(n) }
        if !config.tiedEmbeddings { t["output.weight"] = try weight("output.weight") }
        tensor = t
    }

    /// One sequence's state: the keys and values of every position so far, rounded to f16 as
    /// the runtime's cache (and llama.cpp's default one) stores them.
    public final class Sequence {
        var keys: [[[Double]]]     // [layer][position] (K·Q)
        var values: [[[Double]]]   // [layer][position] (K·Q)
        public var count: Int { keys[0].count }
        /// Forgets positions from `position` on.
        public func truncate(to position: Int) {
            for l in keys.indices {
                keys[l].removeLast(keys[l].count - position)
                values[l].removeLast(values[l].count - position)
            }
        }
        init(layers: Int) {
            keys = Array(repeating: [], count: layers)
            values = Array(repeating: [], count: layers)
        }
    }

    public func makeSequence() -> Sequence { Sequence(layers: config.layers) }

    /// Feeds `token` at the sequence's next position; returns the logits (V).
    public func step(_ s: Sequence, _ token: Int) -> [Float] {
        let c = config
        let E = c.modelDimension, H = c.heads, K = c.kvHeads, Q = c.headDimension
        let position = s.count

        var x = row("token_embd.weight", token, width: E).map { $0 * Double(c.embeddingScale) }   // (E)
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            let h = rmsnorm(x, p + "attn_norm.weight")                              // (E)
            var q = matvec(p + "attn_q.weight", h, rows: H * Q)                     // (H·Q)
            var k = matvec(p + "attn_k.weight", h, rows: K * Q)                     // (K·Q)
            let v = matvec(p + "attn_v.weight", h, rows: K * Q)                     // (K·Q)
            if c.qkNorm {
                for head in 0..<H { normHead(&q, offset: head * Q, p + "attn_q_norm.weight") }
                for head in 0..<K { normHead(&k, offset: head * Q, p + "attn_k_norm.weight") }
            }
            for head in 0..<H { rope(&q, offset: head * Q, position: position, layer: l) }
            for head in 0..<K { rope(&k, offset: head * Q, position: position, layer: l) }
            s.keys[l].append(k.map { Double(Float16(Float($0))) })
            s.values[l].append(v.map { Double(Float16(Float($0))) })

            // Causal attention (within the window on local layers): query head `head` reads KV
            // head head / (H/K).
            let first = c.slidingWindow != nil && l % c.globalLayerPeriod != c.globalLayerPeriod - 1 ? max(0, position + 1 - c.slidingWindow!) : 0
            var attended = [Double](repeating: 0, count: H * Q)                     // (H·Q)
            for head in 0..<H {
                let g = head / (H / K)
                var scores: [Double] = []                                          // (attended positions)
                for t in first...position {
                    var dot = 0.0
                    for i in 0..<Q { dot += q[head * Q + i] * s.keys[l][t][g * Q + i] }
                    scores.append(dot / Double(Q).squareRoot())
                }
                let weights = softmax(scores)
                for (j, t) in (first...position).enumerated() {
                    for i in 0..<Q { attended[head * Q + i] += weights[j] * s.values[l][t][g * Q + i] }
                }
            }
            var attention = matvec(p + "attn_output.weight", attended, rows: E)     // (E)

            switch c.block {
            case .serial:
                if c.postNorms { attention = rmsnorm(attention, p + "post_attention_norm.weight") }
                for i in 0..<E { x[i] += attention[i] }
                var f = feedForward(rmsnorm(x, p + "ffn_norm.weight"), layer: l)
                if c.postNorms { f = rmsnorm(f, p + "post_ffw_norm.weight") }
                x = add(x, f)
            case .parallel:
                let f = feedForward(h, layer: l)
                for i in 0..<E { x[i] += attention[i] + f[i] }
            }
        }
        let final = rmsnorm(x, "output_norm.weight")                                // (E)
        let unembedding = c.tiedEmbeddings ? "token_embd.weight" : "output.weight"
        return matvec(unembedding, final, rows: c.vocabularySize).map { Float($0) } // (V)
    }

    // MARK: pieces

    /// down(silu(gate · h) ⊙ (up · h))
    func feedForward(_ h: [Double], layer l: Int) -> [Double] {
        let p = "blk.\(l).", F = config.feedForwardDimension
        let gate = matvec(p + "ffn_gate.weight", h, rows: F)                       // (F)
        let up = matvec(p + "ffn_up.weight", h, rows: F)                           // (F)
        let hidden = (0..<F).map { i -> Double in                                  // (F)
            let g = gate[i]
            switch config.activation {
            case .silu: return g / (1 + exp(-g)) * up[i]
            case .geluTanh: return 0.5 * g * (1 + tanh((2 / Double.pi).squareRoot() * (g + 0.044715 * g * g * g))) * up[i]
            }
        }
        return matvec(p + "ffn_down.weight", hidden, rows: config.modelDimension)   // (E)
    }

    /// W · x for W of `rows` rows and x.count columns.
    func matvec(_ name: String, _ x: [Double], rows: Int) -> [Double] {
        let w = tensor[name]!
        precondition(w.count == rows * x.count, "\(name): \(w.count) values, expected \(rows) x \(x.count)")
        return (0..<rows).map { r in
            var sum = 0.0
            for c in 0..<x.count { sum += Double(w[r * x.count + c]) * x[c] }
            return sum
        }
    }

    func row(_ name: String, _ r: Int, width: Int) -> [Double] {
        tensor[name]![(r * width)..<((r + 1) * width)].map { Double($0) }
    }

    func rmsnorm(_ x: [Double], _ name: String) -> [Double] {
        let w = tensor[name]!
        let meanSquare = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
        let scale = 1 / (meanSquare + Double(config.normEpsilon)).squareRoot()
        return x.indices.map { x[$0] * scale * Double(w[$0]) }
    }

    /// Rotates pairs (2i, 2i+1) — NeoX: (i, i + d/2) — of the head at `offset` by
    /// position · base^(−2i/d), at the layer's base (local layers may have their own).
    func rope(_ v: inout [Double], offset: Int, position: Int, layer: Int) {
        let c = config, d = c.ropeDimensions
        let local = c.slidingWindow != nil && layer % c.globalLayerPeriod != c.globalLayerPeriod - 1
        let base = local ? c.localRopeBase ?? c.ropeBase : c.ropeBase
        for i in 0..<(d / 2) {
            let theta = Double(position) * pow(base, -2 * Double(i) / Double(d))
            let (j, k) = c.ropeStyle == .neox ? (offset + i, offset + i + d / 2) : (offset + 2 * i, offset + 2 * i + 1)
            let (a, b) = (v[j], v[k])
            v[j] = a * cos(theta) - b * sin(theta)
            v[k] = a * sin(theta) + b * cos(theta)
        }
    }

    /// RMSNorm of one head (Q values at `offset`) with a Q-wide weight.
    func normHead(_ v: inout [Double], offset: Int, _ name: String) {
        let Q = config.headDimension
        let normed = rmsnorm(Array(v[offset..<(offset + Q)]), name)
        for i in 0..<Q { v[offset + i] = normed[i] }
    }

    func softmax(_ x: [Double]) -> [Double] {
        let m = x.max()!
        let e = x.map { exp($0 - m) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    func add(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $0 + $1 } }
}
