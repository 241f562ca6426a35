@_exported import Tensors
@_exported import Transformer

public enum EngineError: Error, Equatable, CustomStringConvertible {
    case contextOverflow(requested: Int, limit: Int)
    case invalidToken(id: Int, vocabularySize: Int)
    case emptyInput
    case duplicateSequence
    /// A sequence made by another engine (its caches live on that engine's devices).
    case foreignSequence
    /// A prefix copy that is not into a fresh sequence homed as its source, or longer than it.
    case invalidCopy(positions: Int, from: Int, to: Int)
    /// A q8 KV cache scales runs of 32 elements: heads must be a multiple of 32 wide.
    case unsupportedKVCache(KVCacheType, headDimension: Int)

    /// Checks that a model's heads can be cached as `type`.
    static func check(_ type: KVCacheType, _ config: ModelConfig) throws(EngineError) {
        guard type.holds(headDimension: config.headDimension) else { throw .unsupportedKVCache(type, headDimension: config.headDimension) }
    }

    public var description: String {
        switch self {
        case let .contextOverflow(r, l): "context overflow: \(r) positions requested, the limit is \(l)"
        case let .invalidToken(id, v): "token id \(id) is outside the vocabulary (0..<\(v))"
        case .emptyInput: "no tokens to process"
        case .duplicateSequence: "the same sequence appears twice in one batch"
        case let .invalidCopy(p, f, t): "a prefix of \(p) positions cannot be copied from a sequence of \(f) into one of \(t) (it must be fresh and homed alike)"
        case let .unsupportedKVCache(t, q): "a \(t.rawValue) KV cache needs heads a multiple of 32 wide; this model's are \(q)"
        case .foreignSequence: "a sequence made by another engine was passed to this one; make sequences with this engine's makeCache()"
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

/// Something that runs the model over a batch of sequences: one device, or a mesh. Its
/// sequences are its own type: their caches live where the engine put them.
public protocol ForwardEngine<Sequence>: AnyObject, Sendable {
    associatedtype Sequence: SequenceState
    var config: ModelConfig { get }
    func makeCache(limit: Int?) -> Sequence
    /// Appends each input's tokens to its cache; returns its logits (rows per `logitsFrom`).
    func forward(_ batch: [SequenceInput<Sequence>]) throws -> [Matrix]
}

extension ForwardEngine {
    public func makeCache() -> Sequence { makeCache(limit: nil) }
}

/// One sequence's part of a batch: new tokens appended at the end of its cache.
public struct SequenceInput<Sequence: SequenceState> {
    public var cache: Sequence
    public var tokens: [Int]
    /// Logits for the new tokens from this index on (perplexity), or nil for only the last
    /// one (generation).
    public var logitsFrom: Int?
    public init(cache: Sequence, tokens: [Int], logitsFrom: Int? = nil) {
        self.cache = cache
        self.tokens = tokens
        self.logitsFrom = logitsFrom
    }
}
