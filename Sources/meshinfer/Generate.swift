import ArgumentParser
import CostModel
import Foundation
import Runtime
import Tokenization
import GGUF

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate a completion for a prompt.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var meshOptions: MeshOptions

    @Option(help: "Prompt text. Repeat to run several prompts as one batch.") var prompt: [String] = []
    @Option(help: "Read the prompt from a file.") var promptFile: String?
    @Flag(help: "Wrap the prompt as a user message in the model's chat template.") var chat = false
    @Option(help: "Maximum tokens to generate.") var maxTokens: Int = 128
    @Option(help: "Stop when this text is generated (repeatable).") var stop: [String] = []
    @Flag(help: "Keep generating after end-of-generation tokens.") var ignoreEos = false
    @Option(help: "Record the K highest logits at every generated position (JSON output).") var topLogits: Int = 0
    @Flag(help: "Print one JSON object per prompt instead of streaming text.") var json = false

    func run() throws { try runAcrossRanks(model: modelOptions, mesh: meshOptions) { try lead() } }

    func lead() throws {
        var prompts = prompt
        if let f = promptFile {
            guard let text = try? String(contentsOfFile: f, encoding: .utf8) else {
                throw ValidationError("cannot read --prompt-file \(f)")
            }
            prompts.append(text)
        }
        guard !prompts.isEmpty else { throw ValidationError("give --prompt TEXT or --prompt-file FILE") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
        guard topLogits >= 0 else { throw ValidationError("--top-logits must be >= 0") }
        let parameters = try sampling.parameters()
        let chat = self.chat, maxTokens = self.maxTokens
        func encode(_ text: String, _ tokenizer: Tokenizer) -> [Int] {
            tokenizer.encode(chat ? tokenizer.chatTemplate.render([ChatMessage(role: "user", content: text)], addGenerationPrompt: true) : text)
        }
        let model = try Session(model: modelOptions, mesh: meshOptions) { tokenizer in
            let lengths = prompts.map { encode($0, tokenizer).count }
            return Workload(batch: prompts.count, promptTokens: (lengths.reduce(0, +) + prompts.count - 1) / prompts.count,
                            generateTokens: maxTokens)
        }
        let tokenizer = model.tokenizer

        let requests = prompts.map { text -> GenerationRequest in
            var r = GenerationRequest(promptTokens: encode(text, tokenizer))
            r.maxTokens = maxTokens
            r.sampling = parameters
            r.stopStrings = stop
            r.ignoreEOS = ignoreEos
            r.topLogits = topLogits
            return r
        }
        let streaming = !json && prompts.count == 1
        if streaming { writeOut(prompts[0]) }
        let results = try model.generator.generate(requests) { _, chunk in
            if streaming { writeOut(chunk) }
        }
        for (i, r) in results.enumerated() {
            let prefillRate = r.prefillSeconds > 0 ? Double(r.promptTokenIDs.count) / r.prefillSeconds : 0
            let decoded = max(0, r.tokenIDs.count - 1)   // the first token comes from the prefill
            let decodeRate = r.decodeSeconds > 0 ? Double(decoded) / r.decodeSeconds : 0
            if json {
                writeJSON(model.meshJSON.merging([
                    "prompt_token_ids": r.promptTokenIDs,
                    "token_ids": r.tokenIDs,
                    "text": r.text,
                    "finish_reason": r.finishReason,
                    "top_logits": r.topLogits.map { $0.map { ["id": $0.id, "logit": Double($0.logit)] } },
                    "seed": parameters.seed,
                    "weights": modelOptions.weights.rawValue,
                    "timings": [
                        "prefill_s": rounded(r.prefillSeconds, 6), "decode_s": rounded(r.decodeSeconds, 6),
                        "prefill_tokens_per_s": rounded(prefillRate, 2), "decode_tokens_per_s": rounded(decodeRate, 2),
                        "load_s": rounded(model.loadSeconds, 3),
                    ],
                ]) { $1 })
            } else {
                writeOut(streaming ? "\n" : "--- prompt \(i)\n\(prompts[i])\(r.text)\n")
                printError(String(format: "\nprompt %d tokens in %.3f s (%.1f tok/s), generated %d tokens, decode %.1f tok/s, seed %llu, weights %@, load %.2f s",
                                  r.promptTokenIDs.count, r.prefillSeconds, prefillRate, r.tokenIDs.count, decodeRate,
                                  parameters.seed, modelOptions.weights.rawValue, model.loadSeconds))
            }
        }
    }
}

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Interactive chat. The conversation's KV cache is kept between turns: only the new turn is prefilled.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var meshOptions: MeshOptions
    @Option(help: "System message (default: the template's own).") var system: String?
    @Option(help: "Maximum tokens per reply.") var maxTokens: Int = 512

    func run() throws { try runAcrossRanks(model: modelOptions, mesh: meshOptions) { try lead() } }

    func lead() throws {
        let parameters = try sampling.parameters()
        var cached: [Int] = []          // tokens whose keys/values are in the cache
        var messages: [ChatMessage] = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        let interactive = isatty(0) != 0
        if interactive { printError("chat; /exit or Ctrl-D to quit") }
        // Loaded at the first turn, whose length picks the layouts (kept for the whole chat).
        var loaded: (model: Session, cache: MeshSequence)?
        while true {
            if interactive { writeOut("> ") }
            guard let line = readLine() else { break }
            if line == "/exit" || line == "/quit" { break }
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            messages.append(ChatMessage(role: "user", content: line))
            if loaded == nil {
                let (first, maxTokens) = (messages, self.maxTokens)
                let session = try Session(model: modelOptions, mesh: meshOptions) { tokenizer in
                    Workload(batch: 1, promptTokens: tokenizer.encode(tokenizer.chatTemplate.render(first, addGenerationPrompt: true)).count,
                             generateTokens: maxTokens)
                }
                loaded = (session, session.engine.makeCache())
            }
            let (model, cache) = loaded!
            let tokenizer = model.tokenizer
            let tokens = tokenizer.encode(tokenizer.chatTemplate.render(messages, addGenerationPrompt: true))
            // Reuse the longest cached prefix; prefill only what is new.
            var common = 0
            while common < min(cached.count, tokens.count) && cached[common] == tokens[common] { common += 1 }
            if common == tokens.count { common -= 1 }   // at least one token must be fed for logits
            cache.truncate(to: common)
            var request = GenerationRequest(promptTokens: Array(tokens[common...]))
            request.maxTokens = maxTokens
            request.sampling = parameters
            request.sampling.seed = parameters.seed &+ UInt64(messages.count)
            let result = try model.generator.generate([request], caches: [cache]) { _, chunk in
                writeOut(chunk)
            }[0]
            writeOut("\n")
            cached = Array(tokens[..<common]) + request.promptTokens + result.tokenIDs.dropLast()
            messages.append(ChatMessage(role: "assistant", content: result.text))
            if interactive {
                printError(String(format: "[prefilled %d new tokens (%d reused) in %.3f s, %d tokens at %.1f tok/s]",
                                  request.promptTokens.count, common, result.prefillSeconds, result.tokenIDs.count,
                                  result.decodeSeconds > 0 ? Double(max(0, result.tokenIDs.count - 1)) / result.decodeSeconds : 0))
            }
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tokenize text (special tokens parsed, BOS per the model file).")

    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Flag(help: "Print {\"token_ids\": [...]}.") var json = false
    @Argument(help: "Text to tokenize.") var text: String

    func run() throws {
        let path = try ModelStore().resolve(model)
        let tokenizer = try Tokenizer(Vocabulary(gguf: GGUFFile(path: path)))
        let ids = tokenizer.encode(text)
        if json {
            writeJSON(["token_ids": ids])
        } else {
            for id in ids {
                let piece = String(decoding: (try? tokenizer.pieceBytes(id)) ?? [], as: UTF8.self)
                print(String(format: "%6d -> '%@'", id, piece))
            }
        }
    }
}
