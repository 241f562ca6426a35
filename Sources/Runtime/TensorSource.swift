import GGUF
import Tensors
import Transformer

/// Where weights come from, by GGUF tensor name: a model file or seeded random values. Matrices
/// are (rows = outputs, columns = inputs), read a range of rows at a time, as f32.
public protocol TensorSource: Sendable {
    /// (rows, columns); vectors are (1, n).
    func shape(_ name: String) throws -> (rows: Int, columns: Int)
    func readRows(_ name: String, _ rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws
}

extension TensorSource {
    /// Rows `rows` restricted to columns `columns`, row-major.
    public func matrix(_ name: String, rows: Range<Int>, columns: Range<Int>) throws -> [Float] {
        let full = try shape(name).columns
        var buffer = [Float](repeating: 0, count: rows.count * full)
        try buffer.withUnsafeMutableBufferPointer { try readRows(name, rows, into: $0.baseAddress!) }
        if columns == 0..<full { return buffer }
        var out = [Float]()
        out.reserveCapacity(rows.count * columns.count)
        for r in 0..<rows.count { out += buffer[(r * full + columns.lowerBound)..<(r * full + columns.upperBound)] }
        return out
    }

    public func vector(_ name: String) throws -> [Float] {
        let s = try shape(name)
        return try matrix(name, rows: 0..<s.rows, columns: 0..<s.columns)
    }
}

extension GGUFFile: TensorSource {
    public func shape(_ name: String) throws -> (rows: Int, columns: Int) {
        guard hasTensor(name) else { throw ModelLoadError.missingTensor(name) }
        let t = try tensor(name)
        return (t.rowCount, t.rowLength)
    }

    public func readRows(_ name: String, _ rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws {
        try dequantizeRows(try tensor(name), rows: rows, into: into)
    }
}

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
        func norm(_ name: String) { tensors[name] = (1, E, (0..<E).map { _ in 1 + 0.1 * rng.nextSignedUnit() }) }
        tensors["token_embd.weight"] = (config.vocabularySize, E, (0..<(config.vocabularySize * E)).map { _ in rng.nextSignedUnit() })
        for l in 0..<config.layers {
            let p = "blk.\(l)."
            norm(p + "attn_norm.weight")
            if config.block == .serial { norm(p + "ffn_norm.weight") }
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
