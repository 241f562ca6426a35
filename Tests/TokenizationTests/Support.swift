import Foundation
import Testing
import GGUF
import Runtime
import Tokenization

/// Paths and shared fixtures for the tokenizer tests.
enum Fixtures {
    /// Package root, from this file's location (Tests/TokenizationTests/Support.swift).
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let referencePath: String = packageRoot
        .appendingPathComponent("../shared/reference/smollm2-135m-reference.json").standardizedFileURL.path

    static let modelFileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// env MESHINFER_MODEL, else $MESHINFER_CACHE/<file>, else ~/.cache/meshinfer/<file>.
    static var modelPath: String? {
        let env = ProcessInfo.processInfo.environment
        var candidates: [String] = []
        if let p = env["MESHINFER_MODEL"], !p.isEmpty { candidates.append(p) }
        if let c = env["MESHINFER_CACHE"], !c.isEmpty { candidates.append(c + "/" + modelFileName) }
        candidates.append(NSHomeDirectory() + "/.cache/meshinfer/" + modelFileName)
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    /// The real SmolLM2 vocabulary read through the GGUF module (nil when the model is absent).
    static let realVocabulary: Vocabulary? = modelPath.flatMap(readVocabulary)

    static let realTokenizer: Tokenizer? = realVocabulary.flatMap { try? Tokenizer($0) }

    /// The llama.cpp reference JSON (nil when absent); parsed on each access.
    static func loadReference() -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: referencePath),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return obj
    }

    struct ReferencePrompt: Sendable, CustomStringConvertible {
        var id: String
        var text: String
        var ids: [Int]
        var description: String { id }
    }

    static let referencePrompts: [ReferencePrompt] = {
        guard let prompts = loadReference()?["prompts"] as? [[String: Any]] else { return [] }
        return prompts.compactMap { p in
            guard let id = p["id"] as? String, let text = p["text"] as? String,
                  let ids = p["prompt_token_ids"] as? [Int] else { return nil }
            return ReferencePrompt(id: id, text: text, ids: ids)
        }
    }()

    /// `perplexity.n_tokens`: llama.cpp's token count for GPL-3.
    static let gpl3TokenCount: Int? = (loadReference()?["perplexity"] as? [String: Any])?["n_tokens"] as? Int
}

/// The `tokenizer.ggml.*` keys of a GGUF file as a `Vocabulary` (nil, with a message, when unreadable).
func readVocabulary(path: String) -> Vocabulary? {
    do {
        // The same reading of the `tokenizer.ggml.*` keys as every command's (Runtime).
        return try Vocabulary(gguf: GGUFFile(path: path))
    } catch {
        print("TokenizationTests: cannot read \(path): \(error)")
        return nil
    }
}

/// Runs `body` and returns the TokenizerError it throws (nil if none).
func tokenizerError<T>(_ body: () throws -> T) -> TokenizerError? {
    do {
        _ = try body()
        return nil
    } catch let error as TokenizerError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// A small byte-level vocabulary: all 256 byte tokens (ids 0...255, in byte order) followed by
/// `extra` tokens (texts in vocabulary form), with the given merges.
func byteVocabulary(extra: [String] = [], extraTypes: [Int]? = nil, merges: [String] = [],
                    preTokenizer: String = "gpt2", addBOS: Bool = false, addEOS: Bool = false,
                    bos: Int? = nil, eos: Int? = nil) -> Vocabulary {
    var tokens: [String] = []
    var seen = Set<String>()
    for b in 0..<256 {
        let t = byteText(UInt8(b))
        tokens.append(t); seen.insert(t)
    }
    tokens += extra
    let types = [Int](repeating: 1, count: 256) + (extraTypes ?? [Int](repeating: 1, count: extra.count))
    return Vocabulary(tokens: tokens, tokenTypes: types, merges: merges, bosTokenID: bos, eosTokenID: eos,
                      addBOS: addBOS, addEOS: addEOS, model: "gpt2", preTokenizer: preTokenizer)
}

/// GPT-2 byte-to-unicode text of one byte (written independently of the module under test).
func byteText(_ b: UInt8) -> String {
    let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
    if printable { return String(UnicodeScalar(b)) }
    var n: UInt32 = 0
    for x in 0..<Int(b) {
        let p = (33...126).contains(x) || (161...172).contains(x) || (174...255).contains(x)
        if !p { n += 1 }
    }
    return String(UnicodeScalar(256 + n)!)
}

/// Vocabulary form of a UTF-8 string.
func encoded(_ s: String) -> String { s.utf8.map(byteText).joined() }
