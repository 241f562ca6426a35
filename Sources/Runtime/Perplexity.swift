import Foundation
import Tokenization

public struct PerplexityResult: Sendable, Codable {
    public var perplexity: Double
    public var standardError: Double
    public var chunks: Int
    public var scoredTokens: Int
    /// Perplexity over all chunks so far, after each chunk.
    public var runningPerplexity: [Double]
    public var seconds: Double
}

public enum PerplexityError: Error, CustomStringConvertible, Equatable {
    case tooFewTokens(have: Int, need: Int)
    case badContext(Int)
    public var description: String {
        switch self {
        case let .tooFewTokens(h, n): "the text has \(h) tokens; at least \(n) (one full context) are needed"
        case let .badContext(c): "context must be at least 4 tokens, got \(c)"
        }
    }
}

/// A text as llama-perplexity reads it (`-f`): one trailing newline dropped, tokenized with
/// special tokens added but not parsed; and the token each chunk starts with (BOS, when the
/// tokenizer adds one: llama-perplexity puts it in place of each chunk's first token).
public func perplexityTokens(_ text: String, tokenizer: Tokenizer) -> (tokens: [Int], chunkStart: Int?) {
    let trimmed = text.hasSuffix("\n") ? String(text.dropLast()) : text
    let tokens = tokenizer.encode(trimmed, addSpecial: true, parseSpecial: false)
    return (tokens, tokenizer.vocabulary.addBOS ? tokenizer.bosTokenID : nil)
}

/// llama.cpp's perplexity method (llama-perplexity defaults): the token stream is cut into
/// non-overlapping chunks of `context` tokens, each run from an empty cache (its first token
/// replaced by `chunkStart` when given: BOS); only the second half of each chunk is scored
/// (position j predicts token j+1 for j in [context/2, context−1)).
public func perplexity<S: SequenceState>(engine: any ForwardEngine<S>, tokens: [Int], context: Int, chunkStart: Int? = nil,
                       progress: (Int, Int, Double) -> Void = { _, _, _ in }) throws -> PerplexityResult {
    guard context >= 4 else { throw PerplexityError.badContext(context) }
    let chunks = tokens.count / context
    guard chunks > 0 else { throw PerplexityError.tooFewTokens(have: tokens.count, need: context) }
    let first = context / 2
    let start = Date()
    var nll = 0.0, nll2 = 0.0, count = 0
    var running: [Double] = []
    for c in 0..<chunks {
        var chunk = Array(tokens[(c * context)..<((c + 1) * context)])
        if let chunkStart { chunk[0] = chunkStart }
        let cache = engine.makeCache(limit: context)
        let logits = try engine.forward([SequenceInput(cache: cache, tokens: chunk, logitsFrom: first)])[0]
        for j in first..<(context - 1) {
            let row = logits.row(j - first)
            let V = logits.columns
            var m = -Float.infinity
            for v in 0..<V { m = max(m, row[v]) }
            var sum = 0.0
            for v in 0..<V { sum += Double(expf(row[v] - m)) }
            let logProb = Double(row[chunk[j + 1]] - m) - log(sum)
            nll -= logProb
            nll2 += logProb * logProb
            count += 1
        }
        running.append(exp(nll / Double(count)))
        progress(c + 1, chunks, running.last!)
    }
    let mean = nll / Double(count)
    let variance = nll2 / Double(count) - mean * mean
    let ppl = exp(mean)
    let stderr = variance > 0 ? (variance / Double(count - 1)).squareRoot() * ppl : 0
    return PerplexityResult(perplexity: ppl, standardError: stderr, chunks: chunks, scoredTokens: count,
                            runningPerplexity: running, seconds: Date().timeIntervalSince(start))
}
