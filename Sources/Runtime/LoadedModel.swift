import Foundation
import GGUF
import Partitioning
import Tensors
import Tokenization
import Transformer

extension Vocabulary {
    /// The tokenizer description stored in a GGUF file's `tokenizer.ggml.*` keys.
    public init(gguf file: GGUFFile) throws {
        let m = file.metadata
        self.init(
            tokens: try file.stringArray("tokenizer.ggml.tokens"),
            tokenTypes: m["tokenizer.ggml.token_type"] == nil ? [] : try file.integerArray("tokenizer.ggml.token_type"),
            merges: m["tokenizer.ggml.merges"] == nil ? [] : try file.stringArray("tokenizer.ggml.merges"),
            scores: m["tokenizer.ggml.scores"] == nil ? [] : try file.floatArray("tokenizer.ggml.scores").map { Float($0) },
            bosTokenID: m["tokenizer.ggml.bos_token_id"]?.intValue,
            eosTokenID: m["tokenizer.ggml.eos_token_id"]?.intValue,
            eotTokenID: m["tokenizer.ggml.eot_token_id"]?.intValue,
            unknownTokenID: m["tokenizer.ggml.unknown_token_id"]?.intValue,
            paddingTokenID: m["tokenizer.ggml.padding_token_id"]?.intValue,
            addBOS: m["tokenizer.ggml.add_bos_token"]?.boolValue ?? false,
            addEOS: m["tokenizer.ggml.add_eos_token"]?.boolValue ?? false,
            addSpacePrefix: m["tokenizer.ggml.add_space_prefix"]?.boolValue,
            model: try file.string("tokenizer.ggml.model"),
            preTokenizer: m["tokenizer.ggml.pre"]?.stringValue ?? "default",
            chatTemplate: m["tokenizer.chat_template"]?.stringValue)
    }
}

/// A model file opened for inference on one device: its tokenizer and the engine — a mesh of
/// one, running the same layer program as every mesh (the calling thread runs it; `threads`
/// split each kernel).
public final class LoadedModel: @unchecked Sendable {
    public let file: GGUFFile
    public let config: ModelConfig
    public let tokenizer: Tokenizer
    public let engine: MeshEngine
    public let generator: Generator<MeshSequence>
    public let loadSeconds: Double

    /// The layouts of a mesh of one: every collective is an identity, so all are the same
    /// program; 1D weight-stationary with attention over heads has the least bookkeeping.
    public static let singleDeviceLayout = PhaseLayout(.weightStationary1D, .shardedOverHeads)

    public init(path: String, format: WeightFormat, threads: Int, kvCache: KVCacheType = .f16) throws {
        let start = Date()
        file = try GGUFFile(path: path)
        tokenizer = try Tokenizer(Vocabulary(gguf: file))
        do { config = try ModelConfig(gguf: file) } catch { throw ModelLoadError.config(error) }
        engine = try MeshEngine(source: file, config: config, mesh: .single, prefill: Self.singleDeviceLayout,
                                decode: Self.singleDeviceLayout, format: format, threads: threads, kvCache: kvCache)
        generator = Generator(engine: engine, tokenizer: tokenizer)
        loadSeconds = Date().timeIntervalSince(start)
    }
}
