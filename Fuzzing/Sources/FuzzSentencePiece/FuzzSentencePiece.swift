import FuzzSupport
import Tokenization

/// SentencePiece (`tokenizer.ggml.model` "llama") with Gemma 3 270M's real vocabulary: every
/// input, read as UTF-8 text, must satisfy `TokenizerProperties` (round trip, streaming).
nonisolated(unsafe) var properties: TokenizerProperties!

@main
enum FuzzSentencePiece {
    static func main() {
        fuzzMain(
            seeds: { TokenizerProperties.textSeeds(specials: ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<unused0>"]) },
            setUp: {
                let path = modelPath(variable: "MESHINFER_GEMMA_MODEL", fileName: "gemma-3-270m-q4_k_m.gguf",
                                     pullCommand: "meshinfer pull gemma3-270m")
                properties = TokenizerProperties(tokenizer: loadTokenizer(path: path, model: .sentencePiece))
            },
            body: fuzzOneInput)
    }
}

/// libFuzzer's entry point (also referenced by libFuzzer's own `main`, which is linked but unused).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    properties.check(inputBytes(data, size))
    return 0
}
