import Foundation
import Transformer

/// The oracle every layout is compared with: a forward pass written for reading, one token at a
/// time, in plain loops and Double arithmetic (after llama2.c's `run.c`). It shares nothing with
/// the runtime but the model configuration: no kernels, no packed weights, no collectives.
///
/// Llama (serial block) and PaLM (parallel block, Pope et al. §2.2) with grouped-, multi-query or
/// multi-head attention: RMSNorm, RoPE on pairs (2i, 2i+1) of the first `ropeDimensions` of each
/// head (GGML "normal" mode), causal softmax attention, SwiGLU, tied or separate unembedding.
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
        }
        for n in names { t[n] = try weight(n) }
        if !config.tiedEmbeddings { t["output.weight"] = try weight("output.weight") }
        tensor = t
    }

    /// One sequence's state: the keys and values of every position so far.
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

        var x = row("token_embd.weight", token, width: E)                        // (E)
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            let h = rmsnorm(x, p + "attn_norm.weight")                              // (E)
            var q = matvec(p + "attn_q.weight", h, rows: H * Q)                     // (H·Q)
            var k = matvec(p + "attn_k.weight", h, rows: K * Q)                     // (K·Q)
            let v = matvec(p + "attn_v.weight", h, rows: K * Q)                     // (K·Q)
            for head in 0..<H { rope(&q, offset: head * Q, position: position) }
            for head in 0..<K { rope(&k, offset: head * Q, position: position) }
            s.keys[l].append(k)
            s.values[l].append(v)

            // Causal attention: query head `head` reads KV head head / (H/K).
            var attended = [Double](repeating: 0, count: H * Q)                     // (H·Q)
            for head in 0..<H {
                let g = head / (H / K)
                var scores = [Double](repeating: 0, count: position + 1)           // (positions)
                for t in 0...position {
                    var dot = 0.0
                    for i in 0..<Q { dot += q[head * Q + i] * s.keys[l][t][g * Q + i] }
                    scores[t] = dot / Double(Q).squareRoot()
                }
                let weights = softmax(scores)
                for t in 0...position {
                    for i in 0..<Q { attended[head * Q + i] += weights[t] * s.values[l][t][g * Q + i] }
                }
            }
            let attention = matvec(p + "attn_output.weight", attended, rows: E)     // (E)

            switch c.block {
            case .serial:
                for i in 0..<E { x[i] += attention[i] }
                x = add(x, feedForward(rmsnorm(x, p + "ffn_norm.weight"), layer: l))
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
        let hidden = (0..<F).map { gate[$0] / (1 + exp(-gate[$0])) * up[$0] }      // (F)
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

    /// Rotates pairs (2i, 2i+1) of the head at `offset` by position · base^(−2i/d).
    func rope(_ v: inout [Double], offset: Int, position: Int) {
        let d = config.ropeDimensions
        for i in 0..<(d / 2) {
            let theta = Double(position) * pow(config.ropeBase, -2 * Double(i) / Double(d))
            let (a, b) = (v[offset + 2 * i], v[offset + 2 * i + 1])
            v[offset + 2 * i] = a * cos(theta) - b * sin(theta)
            v[offset + 2 * i + 1] = a * sin(theta) + b * cos(theta)
        }
    }

    func softmax(_ x: [Double]) -> [Double] {
        let m = x.max()!
        let e = x.map { exp($0 - m) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    func add(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $0 + $1 } }
}
