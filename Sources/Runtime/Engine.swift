import Foundation
import Tensors
@_exported import Transformer

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

/// A sequence's cached state: how many positions its KV cache holds.
public protocol SequenceState: AnyObject, Sendable {
    var count: Int { get }
    var limit: Int { get }
    /// Forgets positions from `position` on.
    func truncate(to position: Int)
}

/// Something that runs the model over a batch of sequences: one device, or a mesh.
public protocol ForwardEngine: AnyObject, Sendable {
    var config: ModelConfig { get }
    func makeCache(limit: Int?) -> any SequenceState
    /// Appends each input's tokens to its cache; returns its logits (rows per `logitsFrom`).
    func forward(_ batch: [SequenceInput]) throws -> [Matrix]
}

extension ForwardEngine {
    public func makeCache() -> any SequenceState { makeCache(limit: nil) }
}

/// One sequence's part of a batch: new tokens appended at the end of its cache.
public struct SequenceInput {
    public var cache: any SequenceState
    public var tokens: [Int]
    /// Logits for the new tokens from this index on (perplexity), or nil for only the last
    /// one (generation).
    public var logitsFrom: Int?
    public init(cache: any SequenceState, tokens: [Int], logitsFrom: Int? = nil) {
        self.cache = cache
        self.tokens = tokens
        self.logitsFrom = logitsFrom
    }
}

/// Runs the model on one device: prefill and decode over a batch of sequences of any lengths.
/// Prefill is one matrix-matrix pass over all new tokens of all sequences; decode is the same
/// call with one token per sequence.
public final class Engine: ForwardEngine, @unchecked Sendable {
    public let weights: ModelWeights
    public var config: ModelConfig { weights.config }
    public let threads: WorkSplitter

    public init(weights: ModelWeights, threads: Int = 1) {
        self.weights = weights
        self.threads = WorkSplitter(threads: threads)
    }

    public func makeCache(limit: Int?) -> any SequenceState {
        KVCache(config: config, limit: limit ?? config.contextLength)
    }

    /// A cache of this engine's own type, for callers that hold it directly.
    public func makeKVCache(limit: Int? = nil) -> KVCache {
        KVCache(config: config, limit: limit ?? config.contextLength)
    }

    /// Appends each input's tokens to its cache and returns its logits:
    /// (tokens.count − logitsFrom or 1, V) per input, in input order.
    public func forward(_ batch: [SequenceInput]) throws -> [Matrix] {
        guard batch.contains(where: { !$0.tokens.isEmpty }) else { throw EngineError.emptyInput }
        if Set(batch.map { ObjectIdentifier($0.cache) }).count != batch.count { throw EngineError.duplicateSequence }
        let caches = batch.map { input -> KVCache in
            guard let c = input.cache as? KVCache else { preconditionFailure("Engine needs caches it made") }
            return c
        }
        let V = config.vocabularySize, E = config.modelDimension
        var placements: [RowPlacement] = []
        var tokens: [Int] = []
        var logitRows: [[Int]] = []
        for (input, cache) in zip(batch, caches) {
            let start = cache.count
            let end = start + input.tokens.count
            if end > cache.limit { throw EngineError.contextOverflow(requested: end, limit: cache.limit) }
            for t in input.tokens where t < 0 || t >= V { throw EngineError.invalidToken(id: t, vocabularySize: V) }
            let first = placements.count
            for (i, t) in input.tokens.enumerated() {
                placements.append(RowPlacement(cache: cache, position: start + i))
                tokens.append(t)
            }
            let n = input.tokens.count
            logitRows.append(n == 0 ? [] : input.logitsFrom.map { Array((first + min($0, n - 1))..<(first + n)) } ?? [first + n - 1])
        }
        for (input, cache) in zip(batch, caches) { cache.reserve(cache.count + input.tokens.count) }

        let x = Matrix(rows: tokens.count, columns: E)
        for (r, t) in tokens.enumerated() {
            try weights.embedding.row(t, into: x.row(r))
        }
        let executor = Executor(weights: weights, rows: placements, threads: threads)
        let hidden = transformerLayers(executor, config, embedded: x)
        let logits = unembed(executor, hidden.selectingRows(logitRows.flatMap { $0 }))
        for (input, cache) in zip(batch, caches) { cache.count += input.tokens.count }

        var out: [Matrix] = []
        var at = 0
        for rows in logitRows {
            out.append(logits.selectingRows(Array(at..<(at + rows.count))))
            at += rows.count
        }
        return out
    }
}
