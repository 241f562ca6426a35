import FuzzSupport
import Tokenization

/// Byte-level BPE (`tokenizer.ggml.model` "gpt2") with SmolLM2's real vocabulary: every input,
/// read as UTF-8 text, must satisfy `TokenizerProperties` (round trip, streaming, both merge
/// loops) with the file's pre-tokenizer (smollm), and again with one of the other
/// pre-tokenizers over the same vocabulary, chosen by the input's first byte.
nonisolated(unsafe) var properties: [TokenizerProperties] = []

@main
enum FuzzBPE {
    static func main() {
        fuzzMain(
            seeds: { TokenizerProperties.textSeeds(specials: ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) },
            setUp: {
                let path = modelPath(variable: "MESHINFER_MODEL", fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
                                     pullCommand: "meshinfer pull")
                let real = loadTokenizer(path: path, model: .bytePairEncoding)
                properties = [TokenizerProperties(tokenizer: real)]
                for pre in ["gpt2", "llama3", "qwen2", "default"] {
                    var v = real.vocabulary
                    v.preTokenizer = pre
                    do { properties.append(TokenizerProperties(tokenizer: try Tokenizer(v))) } catch {
                        fail("the SmolLM2 vocabulary with pre-tokenizer \(pre): \(error)")
                    }
                }
            },
            body: fuzzOneInput)
    }
}

/// libFuzzer's entry point (also referenced by libFuzzer's own `main`, which is linked but unused).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = inputBytes(data, size)
    properties[0].check(input)
    if let first = input.first { properties[1 + Int(first) % (properties.count - 1)].check(input) }
    return 0
}
