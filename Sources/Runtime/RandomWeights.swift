import Tensors
import Transformer

/// Seeded random weights under GGUF tensor names, for PaLM-style and tiny test models.
public final class RandomWeights: TensorSource, @unchecked Sendable {
    public let config: ModelConfig
    private var tensors: [String: (rows: Int, columns: Int, values: [Float])] = [:]

    public init(config: ModelConfig, seed: UInt64) {
        self.config = config
        var rng = SplitMix64(seed: seed)
        let E = config.modelDimension, F = config.feedForwardDimension, Q = config.headDimension
        func matrix(_ name: String, _ n: Int, _ k: Int) {
            let s = 1.7 / Float(k).squareRoot()
            tensors[name] = (n, k, (0..<(n * k)).map { _ in rng.nextSignedUnit() * s })
        }
        func norm(_ name: String, width: Int = E) { tensors[name] = (1, width, (0..<width).map { _ in 1 + 0.1 * rng.nextSignedUnit() }) }
        tensors["token_embd.weight"] = (config.vocabularySize, E, (0..<(config.vocabularySize * E)).map { _ in rng.nextSignedUnit() })
        for l in 0..<config.layers {
            let p = "blk.\(l)."
            norm(p + "attn_norm.weight")
            if config.block == .serial { norm(p + "ffn_norm.weight") }
            if config.postNorms { norm(p + "post_attention_norm.weight"); norm(p + "post_ffw_norm.weight") }
            if config.qkNorm { norm(p + "attn_q_norm.weight", width: Q); norm(p + "attn_k_norm.weight", width: Q) }
            matrix(p + "attn_q.weight", config.heads * Q, E)
            matrix(p + "attn_k.weight", config.kvDimension, E)
            matrix(p + "attn_v.weight", config.kvDimension, E)
            matrix(p + "attn_output.weight", E, config.heads * Q)
            matrix(p + "ffn_gate.weight", F, E)
            matrix(p + "ffn_up.weight", F, E)
            matrix(p + "ffn_down.weight", E, F)
        }
        norm("output_norm.weight")
    }

    public func shape(_ name: String) throws -> (rows: Int, columns: Int) {
        guard let t = tensors[name] else { throw ModelLoadError.missingTensor(name) }
        return (t.rows, t.columns)
    }

    public func readRows(_ name: String, _ rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws {
        guard let t = tensors[name] else { throw ModelLoadError.missingTensor(name) }
        t.values.withUnsafeBufferPointer { into.update(from: $0.baseAddress! + rows.lowerBound * t.columns, count: rows.count * t.columns) }
    }
}
