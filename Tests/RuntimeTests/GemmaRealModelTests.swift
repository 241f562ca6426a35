import Foundation
import Partitioning
import Testing
@testable import Runtime
import Tensors

/// Gemma 3 270M (`meshinfer pull gemma3-270m`; ../shared/research/gemma3-270m.md) against
/// llama.cpp's outputs for the same file (../shared/reference/gemma3-270m-reference.json).
let gemmaModelPath: String? = {
    let env = ProcessInfo.processInfo.environment
    let path = env["MESHINFER_GEMMA_MODEL"] ?? ModelStore().directory + "/" + ModelStore.gemma3.fileName
    return FileManager.default.fileExists(atPath: path) ? path : nil
}()

nonisolated(unsafe) let gemmaReference: [String: Any]? = {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let url = root.deletingLastPathComponent().appendingPathComponent("shared/reference/gemma3-270m-reference.json")
    guard let data = try? Data(contentsOf: url) else { return nil }
    return try? JSONSerialization.jsonObject(with: data) as? [String: Any]
}()

@Suite(.enabled(if: gemmaModelPath != nil && gemmaReference != nil,
                "Gemma 3 270M or its reference absent (scripts/test.sh runs `meshinfer pull gemma3-270m`)"), .serialized)
struct GemmaRealModelTests {
    static let model: LoadedModel = try! LoadedModel(path: gemmaModelPath!, format: .f32, threads: ProcessInfo.processInfo.activeProcessorCount)
    static var prompts: [[String: Any]] { gemmaReference!["prompts"] as! [[String: Any]] }

    /// With f32 weights (the file's blocks dequantized exactly, as llama.cpp's exact-f32 copy):
    /// the prompt tokenizes to llama.cpp's ids, the first position's top-5 logits are within
    /// 0.02 of llama.cpp's exact-f32 run, and greedy decoding gives its tokens — every prompt,
    /// the 688-token one beyond the 512-position sliding window included.
    @Test(arguments: ["english", "numbers", "code", "short", "chat_capital", "long_gpl3_688"])
    func f32MatchesLlamaCppExactF32(_ id: String) throws {
        let p = Self.prompts.first { $0["id"] as? String == id }!
        let reference = (p["references"] as! [String: Any])["F32_exact"] as! [String: Any]
        let promptIDs = p["prompt_token_ids"] as! [Int]
        #expect(Self.model.tokenizer.encode(p["text"] as! String) == promptIDs)
        let expected = reference["generated_ids"] as! [Int]
        let engine = Self.model.engine
        let cache = engine.makeCache()
        var logits = try engine.forward([SequenceInput(cache: cache, tokens: promptIDs)])[0].rowArray(0)
        for top in reference["top5_first_position"] as! [[String: Any]] {
            let d = abs(Double(logits[top["id"] as! Int]) - (top["logit"] as! Double))
            #expect(d < 0.02, "\(id): token \(top["id"]!) logit off by \(d)")
        }
        var generated: [Int] = []
        for _ in expected.indices {
            let next = Sampler.argmax(logits)
            generated.append(next)
            logits = try engine.forward([SequenceInput(cache: cache, tokens: [next])])[0].rowArray(0)
        }
        #expect(generated == expected, "\(id): greedy tokens differ from llama.cpp's exact-f32 run")
    }

    /// Perplexity on GPL-3 at context 512, by llama-perplexity's method (BOS in place of each
    /// chunk's first token): within 0.1 of llama.cpp's exact-f32 run (13.83).
    @Test func f32PerplexityOnGPL3MatchesLlamaCpp() throws {
        let path = "/usr/share/common-licenses/GPL-3"
        try #require(FileManager.default.fileExists(atPath: path))
        let (tokens, chunkStart) = perplexityTokens(try String(contentsOfFile: path, encoding: .utf8), tokenizer: Self.model.tokenizer)
        #expect(tokens.count == 7562 && chunkStart == 2)
        let result = try perplexity(engine: Self.model.engine, tokens: tokens, context: 512, chunkStart: chunkStart)
        let results = (gemmaReference!["perplexity"] as! [String: Any])["results"] as! [String: Any]
        let expected = (results["F32_exact"] as! [String: Any])["ppl"] as! Double
        #expect(result.chunks == 14 && result.scoredTokens == 14 * 255)
        #expect(abs(result.perplexity - expected) <= 0.1, "PPL \(result.perplexity), llama.cpp \(expected)")
    }

    /// The real model on meshes 2 and 4 — 4 query heads and 1 KV head, over heads (the KV head
    /// replicated) and over the batch (the cache batch-sharded) — gives the single device's
    /// greedy tokens (f32).
    @Test(arguments: [("2", PhaseLayout(.weightStationary1D, .shardedOverHeads)), ("4", PhaseLayout(.weightStationary2D, .shardedOverBatch))])
    func meshEqualsOneDevice(_ meshName: String, _ layout: PhaseLayout) throws {
        let p = Self.prompts.first { $0["id"] as? String == "english" }!
        let prompt = p["prompt_token_ids"] as! [Int]
        func greedy(_ engine: MeshEngine) throws -> [Int] {
            let cache = engine.makeCache()
            var logits = try engine.forward([SequenceInput(cache: cache, tokens: prompt)])[0].rowArray(0)
            var out: [Int] = []
            for _ in 0..<12 {
                out.append(Sampler.argmax(logits))
                logits = try engine.forward([SequenceInput(cache: cache, tokens: [out.last!])])[0].rowArray(0)
            }
            return out
        }
        let mesh = try MeshEngine(source: Self.model.file, config: Self.model.config, mesh: try Mesh(parsing: meshName),
                                  prefill: layout, decode: layout, format: .f32, threads: 2)
        #expect(try greedy(mesh) == greedy(Self.model.engine), "mesh \(meshName) \(layout)")
    }
}
