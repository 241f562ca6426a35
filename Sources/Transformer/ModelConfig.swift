import GGUF

/// How attention and the feed-forward layer are composed in one layer.
public enum BlockKind: String, Sendable, Codable, CaseIterable {
    /// Llama: x + attn(norm(x)), then + ffn(norm(·)).
    case serial
    /// PaLM: x + attn(norm(x)) + ffn(norm(x)) — one norm, one input, one sum (Pope et al. §2.2).
    case parallel
}

/// The gated feed-forward's nonlinearity: SwiGLU (Llama, PaLM) or GeGLU with the tanh
/// approximation of GELU (Gemma).
public enum Activation: String, Sendable, Codable {
    case silu, geluTanh = "gelu_tanh"
}

/// Which dimensions RoPE pairs: GGML "normal" mode rotates (2i, 2i+1) (Llama files, whose q/k
/// rows the converter permuted), NeoX mode rotates (i, i + d/2) (Gemma).
public enum RopeStyle: String, Sendable, Codable {
    case interleaved, neox
}

/// The hyperparameters of a decoder-only transformer, in the paper's letters (SPEC §1).
public struct ModelConfig: Sendable, Codable, Equatable {
    public var name: String
    public var layers: Int
    /// E
    public var modelDimension: Int
    /// F
    public var feedForwardDimension: Int
    /// H: query heads
    public var heads: Int
    /// K: key/value heads (H = multihead, 1 = multiquery, between = grouped-query)
    public var kvHeads: Int
    /// Q: head dimension
    public var headDimension: Int
    /// V
    public var vocabularySize: Int
    public var contextLength: Int
    public var ropeBase: Double
    /// Leading dimensions of each head that RoPE rotates (pairs (2i, 2i+1), GGML "normal" mode).
    public var ropeDimensions: Int
    public var normEpsilon: Float
    public var block: BlockKind
    /// The output projection is the token embedding (PaLM "shared input-output embeddings").
    public var tiedEmbeddings: Bool

    // How a Gemma 3 block differs from a Llama block, as values (defaults: Llama's).
    /// The embedding rows are multiplied by this (Gemma: √E).
    public var embeddingScale: Float = 1
    /// RMSNorm of the attention and feed-forward outputs before each is added to the residual
    /// (Gemma's "post" norms).
    public var postNorms = false
    /// RMSNorm of each query and key head (one Q-wide weight each) before RoPE.
    public var qkNorm = false
    public var activation: Activation = .silu
    public var ropeStyle: RopeStyle = .interleaved
    /// Local layers attend to at most this many positions (the current one included); nil: every
    /// layer attends to the whole context.
    public var slidingWindow: Int?
    /// With a sliding window, every `globalLayerPeriod`-th layer (period − 1, 2·period − 1, …)
    /// attends to the whole context; the others are local.
    public var globalLayerPeriod = 1
    /// RoPE base of local layers (nil: `ropeBase`).
    public var localRopeBase: Double?

    /// Whether `layer` attends only within the sliding window.
    public func isLocal(layer: Int) -> Bool { slidingWindow != nil && layer % globalLayerPeriod != globalLayerPeriod - 1 }
    /// Positions a query at `context` positions (itself included) attends to in `layer`.
    public func attendedPositions(layer: Int, context: Int) -> Int {
        isLocal(layer: layer) ? min(context, slidingWindow!) : context
    }

    public init(name: String, layers: Int, modelDimension: Int, feedForwardDimension: Int, heads: Int,
                kvHeads: Int, headDimension: Int, vocabularySize: Int, contextLength: Int = 2048,
                ropeBase: Double = 10000, ropeDimensions: Int? = nil, normEpsilon: Float = 1e-5,
                block: BlockKind = .serial, tiedEmbeddings: Bool = true) {
        self.name = name
        self.layers = layers
        self.modelDimension = modelDimension
        self.feedForwardDimension = feedForwardDimension
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.vocabularySize = vocabularySize
        self.contextLength = contextLength
        self.ropeBase = ropeBase
        self.ropeDimensions = ropeDimensions ?? headDimension
        self.normEpsilon = normEpsilon
        self.block = block
        self.tiedEmbeddings = tiedEmbeddings
    }

    /// Width of the concatenated Q, K, V projection: (H + 2K)·Q.
    public var qkvDimension: Int { (heads + 2 * kvHeads) * headDimension }
    /// Width of one position's K (or V) in the cache: K·Q.
    public var kvDimension: Int { kvHeads * headDimension }

    /// Parameters in the matrices (embedding counted once when tied).
    public var parameterCount: Int {
        let E = modelDimension, F = feedForwardDimension, Q = headDimension
        let perLayer = E * (heads * Q) * 2 + E * kvHeads * Q * 2 + 3 * E * F
        return layers * perLayer + vocabularySize * E * (tiedEmbeddings ? 1 : 2)
    }

    public func validate() throws(ModelConfigError) {
        for (name, v) in [("layers", layers), ("modelDimension", modelDimension), ("feedForwardDimension", feedForwardDimension),
                          ("heads", heads), ("kvHeads", kvHeads), ("headDimension", headDimension), ("vocabularySize", vocabularySize)]
        where v <= 0 {
            throw .invalid("\(name) must be positive, got \(v)")
        }
        if heads % kvHeads != 0 { throw .invalid("heads (\(heads)) must be a multiple of kvHeads (\(kvHeads))") }
        if ropeDimensions % 2 != 0 || ropeDimensions > headDimension {
            throw .invalid("rope dimensions \(ropeDimensions) must be even and at most the head dimension \(headDimension)")
        }
        if let w = slidingWindow, w < 1 { throw .invalid("sliding window must be positive, got \(w)") }
        if globalLayerPeriod < 1 { throw .invalid("the global layer period must be positive, got \(globalLayerPeriod)") }
        if postNorms && block == .parallel { throw .invalid("post norms are for the serial block") }
    }
}

public enum ModelConfigError: Error, Equatable, CustomStringConvertible {
    case unsupportedArchitecture(String)
    case invalid(String)
    case metadata(GGUFError)

    public var description: String {
        switch self {
        case let .unsupportedArchitecture(a): "unsupported architecture '\(a)' (supported: llama, gemma3)"
        case let .invalid(s): "invalid model configuration: \(s)"
        case let .metadata(e): "model metadata: \(e)"
        }
    }
}

extension ModelConfig {
    /// Reads a Llama-family configuration from GGUF metadata.
    public init(gguf file: GGUFFile) throws(ModelConfigError) {
        do {
            let arch = try file.string("general.architecture")
            guard arch == "llama" || arch == "gemma3" else { throw ModelConfigError.unsupportedArchitecture(arch) }
            func key(_ k: String) -> String { "\(arch).\(k)" }
            let E = try file.integer(key("embedding_length"))
            let H = try file.integer(key("attention.head_count"))
            let kv = file.metadata[key("attention.head_count_kv")]?.intValue ?? H
            let Q = file.metadata[key("attention.key_length")]?.intValue ?? (H > 0 ? E / H : 0)
            let vocab = file.metadata[key("vocab_size")]?.intValue
                ?? (try? file.stringArray("tokenizer.ggml.tokens").count) ?? 0
            self.init(
                name: file.metadata["general.name"]?.stringValue ?? arch,
                layers: try file.integer(key("block_count")),
                modelDimension: E,
                feedForwardDimension: try file.integer(key("feed_forward_length")),
                heads: H, kvHeads: kv, headDimension: Q, vocabularySize: vocab,
                contextLength: file.metadata[key("context_length")]?.intValue ?? 2048,
                ropeBase: file.metadata[key("rope.freq_base")]?.doubleValue ?? 10000,
                ropeDimensions: file.metadata[key("rope.dimension_count")]?.intValue ?? Q,
                normEpsilon: Float(file.metadata[key("attention.layer_norm_rms_epsilon")]?.doubleValue ?? 1e-5),
                block: .serial,
                tiedEmbeddings: !file.hasTensor("output.weight"))
            if arch == "gemma3" {
                // What llama.cpp computes for gemma3 (../shared/research/gemma3-270m.md §2), with its
                // defaults where the file is silent: every 6th layer global, local RoPE base 10,000.
                embeddingScale = Float(E).squareRoot()
                postNorms = true
                qkNorm = true
                activation = .geluTanh
                ropeStyle = .neox
                slidingWindow = file.metadata[key("attention.sliding_window")]?.intValue
                globalLayerPeriod = file.metadata[key("attention.sliding_window_pattern")]?.intValue ?? 6
                localRopeBase = file.metadata[key("rope.freq_base_swa")]?.doubleValue ?? 10000
                normEpsilon = Float(file.metadata[key("attention.layer_norm_rms_epsilon")]?.doubleValue ?? 1e-6)
            }
        } catch let e as ModelConfigError {
            throw e
        } catch let e as GGUFError {
            throw .metadata(e)
        } catch {
            throw .invalid("\(error)")
        }
        try validate()
    }

    /// A PaLM-style configuration (parallel block, multiquery, SwiGLU, shared embeddings,
    /// F = 4·E), small enough to run with random weights (SPEC §1).
    public static func palmTiny(layers: Int = 2, modelDimension E: Int = 128, heads: Int = 8,
                                vocabularySize: Int = 512) -> ModelConfig {
        ModelConfig(name: "palm-tiny", layers: layers, modelDimension: E, feedForwardDimension: 4 * E,
                    heads: heads, kvHeads: 1, headDimension: E / heads, vocabularySize: vocabularySize,
                    contextLength: 1024, ropeBase: 10000, block: .parallel, tiedEmbeddings: true)
    }

    /// A tiny Gemma 3 (multiquery, post norms, QK norm, GeGLU, NeoX RoPE, a sliding window of
    /// 5 positions on every layer but each 3rd), for random-weight tests with sequences longer
    /// than the window.
    public static func gemmaTiny(layers: Int = 3, modelDimension E: Int = 128, heads: Int = 4, headDimension: Int = 64,
                                 vocabularySize: Int = 512) -> ModelConfig {
        var c = ModelConfig(name: "gemma-tiny", layers: layers, modelDimension: E, feedForwardDimension: 4 * E,
                            heads: heads, kvHeads: 1, headDimension: headDimension, vocabularySize: vocabularySize,
                            contextLength: 1024, ropeBase: 1_000_000, normEpsilon: 1e-6, block: .serial, tiedEmbeddings: true)
        c.embeddingScale = Float(E).squareRoot()
        c.postNorms = true
        c.qkNorm = true
        c.activation = .geluTanh
        c.ropeStyle = .neox
        c.slidingWindow = 5
        c.globalLayerPeriod = 3
        c.localRopeBase = 10000
        return c
    }

    /// A tiny Llama with grouped-query attention, for random-weight tests.
    public static func llamaTiny(layers: Int = 2, modelDimension E: Int = 128, heads: Int = 4, kvHeads: Int = 2,
                                 vocabularySize: Int = 512) -> ModelConfig {
        ModelConfig(name: "llama-tiny", layers: layers, modelDimension: E, feedForwardDimension: 3 * E,
                    heads: heads, kvHeads: kvHeads, headDimension: E / heads, vocabularySize: vocabularySize,
                    contextLength: 1024, ropeBase: 10000, block: .serial, tiedEmbeddings: true)
    }
}
