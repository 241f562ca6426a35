import Foundation
import Tokenization

/// The Gemma 3 270M model file (SentencePiece vocabulary) and llama.cpp's reference outputs for it.
enum GemmaFixtures {
    static let modelFileName = "gemma-3-270m-q4_k_m.gguf"

    static let referencePath: String = Fixtures.packageRoot
        .appendingPathComponent("../shared/reference/gemma3-270m-reference.json").standardizedFileURL.path

    /// env MESHINFER_GEMMA_MODEL, else $MESHINFER_CACHE/<file>, else ~/.cache/meshinfer/<file>.
    static var modelPath: String? {
        let env = ProcessInfo.processInfo.environment
        var candidates: [String] = []
        if let p = env["MESHINFER_GEMMA_MODEL"], !p.isEmpty { candidates.append(p) }
        if let c = env["MESHINFER_CACHE"], !c.isEmpty { candidates.append(c + "/" + modelFileName) }
        candidates.append(NSHomeDirectory() + "/.cache/meshinfer/" + modelFileName)
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    static let vocabulary: Vocabulary? = modelPath.flatMap(readVocabulary)

    /// Built once; the time it took is in `buildSeconds`.
    static let (tokenizer, buildSeconds): (Tokenizer?, Double) = {
        guard let v = vocabulary else { return (nil, 0) }
        let start = Date()
        do {
            let t = try Tokenizer(v)
            return (t, Date().timeIntervalSince(start))
        } catch {
            print("TokenizationTests: the Gemma vocabulary is rejected: \(error)")
            return (nil, 0)
        }
    }()

    /// The llama.cpp reference JSON (nil when absent); parsed on each access.
    static func loadReference() -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: referencePath),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return obj
    }

    /// One of the reference's `tokenizer_cases`: llama.cpp's ids with add_special=true and
    /// parse_special=true (`ids`) and false (`idsSpecialFalse`), and its detokenizations.
    struct Case: Sendable, CustomStringConvertible {
        var id: String
        var text: String
        var ids: [Int]
        var idsSpecialFalse: [Int]
        var tokenTexts: [String]
        var tokenPieces: [String]
        /// llama_detokenize(remove_special: true, unparse_special: true): the leading BOS dropped.
        var detokenized: String
        var roundTripExact: Bool
        /// remove_special: false, unparse_special: true.
        var detokenizedWithBOS: String
        /// Of `idsSpecialFalse` with remove_special: true, unparse_special: false.
        var detokenizedSpecialFalse: String?
        /// unparse_special: false (control tokens vanish).
        var detokenizedWithoutSpecialPieces: String?
        var description: String { id }
    }

    static let cases: [Case] = {
        guard let list = loadReference()?["tokenizer_cases"] as? [[String: Any]] else { return [] }
        return list.compactMap { c in
            guard let id = c["id"] as? String, let text = c["text"] as? String,
                  let ids = c["token_ids"] as? [Int], let texts = c["token_texts"] as? [String],
                  let pieces = c["token_pieces"] as? [String], let detok = c["detokenized"] as? String,
                  let exact = c["detokenized_roundtrip_exact"] as? Bool,
                  let withBOS = c["detokenized_with_bos"] as? String else { return nil }
            return Case(id: id, text: text, ids: ids,
                        idsSpecialFalse: c["token_ids_special_false"] as? [Int] ?? ids,
                        tokenTexts: texts, tokenPieces: pieces, detokenized: detok, roundTripExact: exact,
                        detokenizedWithBOS: withBOS,
                        detokenizedSpecialFalse: c["detokenized_special_false"] as? String,
                        detokenizedWithoutSpecialPieces: c["detokenized_without_special_pieces"] as? String)
        }
    }()

    /// The reference `prompts` (tokenized with add_special=true, parse_special=true).
    static let prompts: [Fixtures.ReferencePrompt] = {
        guard let prompts = loadReference()?["prompts"] as? [[String: Any]] else { return [] }
        return prompts.compactMap { p in
            guard let id = p["id"] as? String, let text = p["text"] as? String,
                  let ids = p["prompt_token_ids"] as? [Int] else { return nil }
            return Fixtures.ReferencePrompt(id: id, text: text, ids: ids)
        }
    }()

    /// `perplexity.n_tokens`: llama.cpp's token count for GPL-3 (one trailing newline dropped,
    /// add_special=true, parse_special=false).
    static let gpl3TokenCount: Int? = (loadReference()?["perplexity"] as? [String: Any])?["n_tokens"] as? Int
}
