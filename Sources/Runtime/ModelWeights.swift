import GGUF
import Tensors
import Transformer

/// Per-layer weights of one device. Matrices are `LinearWeight`s; norms are f32 vectors.
public final class LayerWeights: @unchecked Sendable {
    public let attentionNorm: [Float]     // (E)
    public let feedForwardNorm: [Float]?  // (E); nil for the parallel block
    public let qkv: LinearWeight          // (E → (H + 2K)·Q)
    public let attentionOutput: LinearWeight  // (H·Q → E)
    public let gateUp: LinearWeight       // (E → 2F)
    public let down: LinearWeight         // (F → E)

    public init(attentionNorm: [Float], feedForwardNorm: [Float]?, qkv: LinearWeight,
                attentionOutput: LinearWeight, gateUp: LinearWeight, down: LinearWeight) {
        self.attentionNorm = attentionNorm
        self.feedForwardNorm = feedForwardNorm
        self.qkv = qkv
        self.attentionOutput = attentionOutput
        self.gateUp = gateUp
        self.down = down
    }
}

/// Token embedding lookup: rows of the file's tensor dequantized on demand, or f32 values.
public enum Embedding: @unchecked Sendable {
    case file(GGUFFile, GGUFTensorInfo)
    case values([Float], dimension: Int)

    public func row(_ token: Int, into out: UnsafeMutablePointer<Float>) throws {
        switch self {
        case let .file(f, t): try f.dequantizeRows(t, rows: token..<(token + 1), into: out)
        case let .values(v, E):
            v.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + token * E, count: E) }
        }
    }
}

public enum ModelLoadError: Error, CustomStringConvertible {
    case missingTensor(String)
    case badShape(tensor: String, expected: [Int], found: [Int])
    case config(ModelConfigError)
    case file(GGUFError)
    case weight(String)

    public var description: String {
        switch self {
        case let .missingTensor(n): "model file has no tensor '\(n)'"
        case let .badShape(n, e, f): "tensor '\(n)' has shape \(f), expected \(e)"
        case let .config(e): "\(e)"
        case let .file(e): "\(e)"
        case let .weight(s): s
        }
    }
}

/// All weights of a model on one device.
public final class ModelWeights: @unchecked Sendable {
    public let config: ModelConfig
    public let format: WeightFormat
    public let embedding: Embedding
    public let layers: [LayerWeights]
    public let outputNorm: [Float]
    public let output: LinearWeight  // (E → V)

    public init(config: ModelConfig, format: WeightFormat, embedding: Embedding, layers: [LayerWeights],
                outputNorm: [Float], output: LinearWeight) {
        self.config = config
        self.format = format
        self.embedding = embedding
        self.layers = layers
        self.outputNorm = outputNorm
        self.output = output
    }

    /// Bytes of weights read by one decode step (every matrix once).
    public var matrixBytes: Int {
        layers.reduce(output.byteCount) { $0 + $1.qkv.byteCount + $1.attentionOutput.byteCount + $1.gateUp.byteCount + $1.down.byteCount }
    }

    /// Loads a Llama-family GGUF model. Loading is parallel over layers.
    public static func load(file: GGUFFile, format: WeightFormat, threads: Int = 1) throws -> ModelWeights {
        let config: ModelConfig
        do { config = try ModelConfig(gguf: file) } catch { throw ModelLoadError.config(error) }
        let E = config.modelDimension, F = config.feedForwardDimension
        let Q = config.headDimension

        func tensor(_ name: String, _ shape: [Int]) throws -> GGUFTensorInfo {
            guard file.hasTensor(name) else { throw ModelLoadError.missingTensor(name) }
            let t: GGUFTensorInfo
            do { t = try file.tensor(name) } catch { throw ModelLoadError.file(error) }
            guard t.dimensions == shape else { throw ModelLoadError.badShape(tensor: name, expected: shape, found: t.dimensions) }
            return t
        }
        func vector(_ name: String) throws -> [Float] {
            let t = try tensor(name, [E])
            do { return try file.dequantized(t) } catch { throw ModelLoadError.file(error) }
        }

        let embeddingTensor = try tensor("token_embd.weight", [E, config.vocabularySize])
        let outputTensor = config.tiedEmbeddings ? embeddingTensor : try tensor("output.weight", [E, config.vocabularySize])

        var loaded = [Result<LayerWeights, Error>?](repeating: nil, count: config.layers)
        let box = UnsafeMutableBufferPointer<Result<LayerWeights, Error>?>.allocate(capacity: config.layers)
        box.initialize(repeating: nil)
        defer { box.deallocate() }
        WorkSplitter(threads: threads).parallelFor(config.layers) { range in
            for l in range {
                box[l] = Result {
                    let p = "blk.\(l)."
                    let q = try tensor(p + "attn_q.weight", [E, config.heads * Q])
                    let k = try tensor(p + "attn_k.weight", [E, config.kvDimension])
                    let v = try tensor(p + "attn_v.weight", [E, config.kvDimension])
                    let o = try tensor(p + "attn_output.weight", [config.heads * Q, E])
                    let gate = try tensor(p + "ffn_gate.weight", [E, F])
                    let up = try tensor(p + "ffn_up.weight", [E, F])
                    let down = try tensor(p + "ffn_down.weight", [F, E])
                    return LayerWeights(
                        attentionNorm: try vector(p + "attn_norm.weight"),
                        feedForwardNorm: try vector(p + "ffn_norm.weight"),
                        qkv: try LinearWeight(file: file, parts: [TensorRows(q), TensorRows(k), TensorRows(v)], format: format),
                        attentionOutput: try LinearWeight(file: file, parts: [TensorRows(o)], format: format),
                        gateUp: try LinearWeight(file: file, parts: [TensorRows(gate), TensorRows(up)], format: format),
                        down: try LinearWeight(file: file, parts: [TensorRows(down)], format: format))
                }
            }
        }
        for l in 0..<config.layers { loaded[l] = box[l] }
        let layers = try loaded.map { try $0!.get() }
        return ModelWeights(
            config: config, format: format, embedding: .file(file, embeddingTensor), layers: layers,
            outputNorm: try vector("output_norm.weight"),
            output: try LinearWeight(file: file, parts: [TensorRows(outputTensor)], format: format))
    }

    /// Random weights from a seed (PaLM-style or tiny Llama configurations for tests).
    public static func random(config: ModelConfig, seed: UInt64, format: WeightFormat = .f32) -> ModelWeights {
        let source = RandomWeights(config: config, seed: seed)
        let E = config.modelDimension, F = config.feedForwardDimension, HQ = config.heads * config.headDimension
        func m(_ name: String) -> [Float] { try! source.vector(name) }
        func linear(_ names: [String], _ n: Int, _ k: Int) -> LinearWeight {
            LinearWeight(values: names.flatMap(m), outputs: n, inputs: k, format: format)
        }
        let layers = (0..<config.layers).map { l in
            let p = "blk.\(l)."
            return LayerWeights(
                attentionNorm: m(p + "attn_norm.weight"),
                feedForwardNorm: config.block == .serial ? m(p + "ffn_norm.weight") : nil,
                qkv: linear([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], config.qkvDimension, E),
                attentionOutput: linear([p + "attn_output.weight"], E, HQ),
                gateUp: linear([p + "ffn_gate.weight", p + "ffn_up.weight"], 2 * F, E),
                down: linear([p + "ffn_down.weight"], E, F))
        }
        let embedding = m("token_embd.weight")
        return ModelWeights(
            config: config, format: format, embedding: .values(embedding, dimension: E), layers: layers,
            outputNorm: m("output_norm.weight"),
            output: LinearWeight(values: embedding, outputs: config.vocabularySize, inputs: E, format: format))
    }
}

/// A small, fast, seedable generator (Steele et al.'s SplitMix64): sampling and random weights.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }
    /// Uniform in [-1, 1).
    public mutating func nextSignedUnit() -> Float { 2 * nextUnit() - 1 }
}
