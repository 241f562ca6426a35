import Foundation
import Tensors
import Transformer

public enum EngineError: Error, Equatable, CustomStringConvertible {
    case contextOverflow(requested: Int, limit: Int)
    case invalidToken(id: Int, vocabularySize: Int)
    case emptyInput
    case duplicateSequence

    public var description: String {
        switch self {
        case let .contextOverflow(r, l): "context overflow: \(r) positions requested, the limit is \(l)"
        case let .invalidToken(id, v): "token id \(id) is outside the vocabulary (0..<\(v))"
        case .emptyInput: "no tokens to process"
        case .duplicateSequence: "the same sequence appears twice in one batch"
        }
    }
}

/// One sequence's part of a batch: new tokens appended at the end of its cache.
public struct SequenceInput {
    public var cache: KVCache
    public var tokens: [Int]
    /// Logits for the new tokens from this index on (perplexity), or nil for only the last
    /// one (generation).
    public var logitsFrom: Int?
    public init(cache: KVCache, tokens: [Int], logitsFrom: Int? = nil) {
        self.cache = cache
        self.tokens = tokens
        self.logitsFrom = logitsFrom
    }
}

/// Runs the model on one device: prefill and decode over a batch of sequences of any lengths.
/// Prefill is one matrix-matrix pass over all new tokens of all sequences; decode is the same
/// call with one token per sequence.
public final class Engine: @unchecked Sendable {
    public let weights: ModelWeights
    public var config: ModelConfig { weights.config }
    public let threads: WorkSplitter

    public init(weights: ModelWeights, threads: Int = 1) {
        self.weights = weights
        self.threads = WorkSplitter(threads: threads)
    }

    public func makeCache(limit: Int? = nil) -> KVCache {
        KVCache(config: config, limit: limit ?? config.contextLength)
    }

    /// Appends each input's tokens to its cache and returns its logits:
    /// (tokens.count − logitsFrom or 1, V) per input, in input order.
    public func forward(_ batch: [SequenceInput]) throws(EngineError) -> [Matrix] {
        guard batch.contains(where: { !$0.tokens.isEmpty }) else { throw .emptyInput }
        if Set(batch.map { ObjectIdentifier($0.cache) }).count != batch.count { throw .duplicateSequence }
        let V = config.vocabularySize, E = config.modelDimension
        var placements: [RowPlacement] = []
        var tokens: [Int] = []
        var logitRows: [[Int]] = []
        for input in batch {
            let start = input.cache.count
            let end = start + input.tokens.count
            if end > input.cache.limit { throw .contextOverflow(requested: end, limit: input.cache.limit) }
            for t in input.tokens where t < 0 || t >= V { throw .invalidToken(id: t, vocabularySize: V) }
            let first = placements.count
            for (i, t) in input.tokens.enumerated() {
                placements.append(RowPlacement(cache: input.cache, position: start + i))
                tokens.append(t)
            }
            let n = input.tokens.count
            logitRows.append(n == 0 ? [] : input.logitsFrom.map { Array((first + min($0, n - 1))..<(first + n)) } ?? [first + n - 1])
        }
        for input in batch { input.cache.reserve(input.cache.count + input.tokens.count) }

        let x = Matrix(rows: tokens.count, columns: E)
        for (r, t) in tokens.enumerated() {
            // Embedding rows were validated when the model was loaded; token ids just above.
            try! weights.embedding.row(t, into: x.row(r))
        }
        let executor = Executor(weights: weights, rows: placements, threads: threads)
        let hidden = transformerLayers(executor, config, embedded: x)
        let logits = unembed(executor, hidden.selectingRows(logitRows.flatMap { $0 }))
        for input in batch { input.cache.count += input.tokens.count }

        var out: [Matrix] = []
        var at = 0
        for rows in logitRows {
            out.append(logits.selectingRows(Array(at..<(at + rows.count))))
            at += rows.count
        }
        return out
    }
}
