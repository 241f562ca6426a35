import Transformer

/// One device's slice of one sequence's key/value cache: per layer, positions of this device's
/// K·Q columns of keys and values (layout (L, K·Q) per layer, f32). Written by position; how many
/// positions the sequence holds is its `MeshSequence`'s count, not the cache's. Grows by a
/// quarter up to the context limit.
final class KVCache: @unchecked Sendable {
    let layers: Int
    let kvDimension: Int   // K·Q on this device
    let limit: Int         // context length
    private(set) var capacity = 0
    private(set) var keys: [UnsafeMutablePointer<Float>]    // per layer (capacity, K·Q)
    private(set) var values: [UnsafeMutablePointer<Float>]  // per layer (capacity, K·Q)

    convenience init(config: ModelConfig, kvDimension: Int, limit: Int) {
        self.init(layers: config.layers, kvDimension: kvDimension, limit: limit)
    }

    private init(layers: Int, kvDimension: Int, limit: Int) {
        self.layers = layers
        self.kvDimension = kvDimension
        self.limit = limit
        keys = []
        values = []
    }

    /// A new cache holding this one's first `positions` positions (for a sequence of `limit`).
    func copy(prefix positions: Int, limit: Int) -> KVCache {
        let c = KVCache(layers: layers, kvDimension: kvDimension, limit: limit)
        guard positions > 0 else { return c }
        c.reserve(min(max(limit, positions), positions + max(16, positions / 4)))   // room to go on, as it grows
        for l in 0..<layers {
            c.keys[l].update(from: keys[l], count: positions * kvDimension)
            c.values[l].update(from: values[l], count: positions * kvDimension)
        }
        return c
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Makes room for `positions` in total.
    func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        // A quarter more than now (at least 16 positions): finished sequences are kept for
        // their prefixes, so what a cache holds beyond its positions is memory the KV budget
        // does not see; copying on growth costs little beside a step.
        let newCapacity = min(max(positions, capacity + max(16, capacity / 4)), max(limit, positions))
        func grow(_ old: [UnsafeMutablePointer<Float>]) -> [UnsafeMutablePointer<Float>] {
            (0..<layers).map { l in
                let p = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * kvDimension)
                if l < old.count {
                    // Everything written so far (positions are written, never counted, here).
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

    /// Grows each cache once to the last of the positions the rows write into it (rows of one
    /// pass), before any row is written.
    static func reserve(_ caches: [KVCache], _ positions: [Int]) {
        var last: [ObjectIdentifier: (KVCache, Int)] = [:]
        for (c, p) in zip(caches, positions) { last[ObjectIdentifier(c)] = (c, max(last[ObjectIdentifier(c)]?.1 ?? 0, p)) }
        for (c, p) in last.values { c.reserve(p + 1) }
    }

    var byteCount: Int { 2 * layers * capacity * kvDimension * 4 }

    func key(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { keys[layer] + position * kvDimension }
    func value(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { values[layer] + position * kvDimension }
}
