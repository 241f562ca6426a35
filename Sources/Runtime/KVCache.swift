import Transformer

/// The key/value cache of one sequence: per layer, `count` positions of K·Q keys and values
/// (layout (L, K·Q) per layer, f32). Grows by doubling up to the context limit.
public final class KVCache: SequenceState, @unchecked Sendable {
    public let layers: Int
    public let kvDimension: Int   // K·Q
    public let limit: Int         // context length
    /// Positions filled so far; the next token goes to position `count`.
    public internal(set) var count = 0
    private(set) var capacity = 0
    private(set) var keys: [UnsafeMutablePointer<Float>]    // per layer (capacity, K·Q)
    private(set) var values: [UnsafeMutablePointer<Float>]  // per layer (capacity, K·Q)

    public init(config: ModelConfig, kvDimension: Int? = nil, limit: Int? = nil) {
        layers = config.layers
        self.kvDimension = kvDimension ?? config.kvDimension
        self.limit = limit ?? config.contextLength
        keys = []
        values = []
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Forgets positions from `position` on (a new conversation turn may rewrite them).
    public func truncate(to position: Int) {
        precondition(position >= 0 && position <= count)
        count = position
    }

    /// Makes room for `positions` in total.
    func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        let newCapacity = min(max(positions, capacity * 2, 64), max(limit, positions))
        func grow(_ old: [UnsafeMutablePointer<Float>]) -> [UnsafeMutablePointer<Float>] {
            (0..<layers).map { l in
                let p = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * kvDimension)
                if l < old.count {
                    // Everything written so far, which may lie beyond `count`: a mesh device's
                    // cache slices are written by position and never advance `count`.
                    p.update(from: old[l], count: capacity * kvDimension)
                    old[l].deallocate()
                }
                return p
            }
        }
        keys = grow(keys)
        values = grow(values)
        capacity = newCapacity
    }

    public var byteCount: Int { 2 * layers * capacity * kvDimension * 4 }

    func key(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { keys[layer] + position * kvDimension }
    func value(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { values[layer] + position * kvDimension }
}
