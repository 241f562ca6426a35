import Foundation
import GGUF
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
            bosTokenID: m["tokenizer.ggml.bos_token_id"]?.intValue,
            eosTokenID: m["tokenizer.ggml.eos_token_id"]?.intValue,
            eotTokenID: m["tokenizer.ggml.eot_token_id"]?.intValue,
            unknownTokenID: m["tokenizer.ggml.unknown_token_id"]?.intValue,
            paddingTokenID: m["tokenizer.ggml.padding_token_id"]?.intValue,
            addBOS: m["tokenizer.ggml.add_bos_token"]?.boolValue ?? false,
            addEOS: m["tokenizer.ggml.add_eos_token"]?.boolValue ?? false,
            model: try file.string("tokenizer.ggml.model"),
            preTokenizer: m["tokenizer.ggml.pre"]?.stringValue ?? "default",
            chatTemplate: m["tokenizer.chat_template"]?.stringValue)
    }
}

/// A model file opened for inference: its weights in the chosen format, its tokenizer and an
/// engine over them.
public final class LoadedModel: @unchecked Sendable {
    public let file: GGUFFile
    public let weights: ModelWeights
    public let tokenizer: Tokenizer
    public let engine: Engine
    public let generator: Generator
    public let loadSeconds: Double

    public init(path: String, format: WeightFormat, threads: Int) throws {
        let start = Date()
        file = try GGUFFile(path: path)
        tokenizer = try Tokenizer(Vocabulary(gguf: file))
        weights = try ModelWeights.load(file: file, format: format, threads: threads)
        engine = Engine(weights: weights, threads: threads)
        generator = Generator(engine: engine, tokenizer: tokenizer)
        loadSeconds = Date().timeIntervalSince(start)
    }
}
