import Partitioning

extension PhaseLayout {
    /// Checks this layout against a model and mesh before anything is allocated: E and F
    /// split into n shards. (Heads and batches need not divide: they are padded.)
    public func validate(for config: ModelConfig, on mesh: Mesh) throws(LayoutError) {
        let n = mesh.deviceCount, E = config.modelDimension, F = config.feedForwardDimension
        let sizes = (1...64).filter { E % $0 == 0 && F % $0 == 0 }
        if E % n != 0 { throw .indivisible(what: "model dimension E", size: E, parts: n, meshSizes: sizes) }
        if F % n != 0 { throw .indivisible(what: "feed-forward dimension F", size: F, parts: n, meshSizes: sizes) }
    }
}

extension PhaseLayout {
    /// Checks a (prefill, decode) pair: each phase's layout, and one KV-cache placement for both
    /// (the cache stays where prefill put it): the same attention layout, and for attention over
    /// heads the same head blocks and batch split on every device.
    public static func validatePhases(prefill: PhaseLayout, decode: PhaseLayout, config: ModelConfig, mesh: Mesh) throws(LayoutError) {
        try prefill.validate(for: config, on: mesh)
        try decode.validate(for: config, on: mesh)
        if prefill.attention != decode.attention {
            throw .incompatibleKVPlacement(prefill: "\(prefill)", decode: "\(decode)")
        }
        if prefill.attention == .shardedOverHeads && prefill.feedForward != decode.feedForward {
            let same = (0..<mesh.deviceCount).allSatisfy {
                prefill.feedForward.ownedBlocks(rank: $0, mesh: mesh) == decode.feedForward.ownedBlocks(rank: $0, mesh: mesh)
            } && prefill.feedForward.batchAxes == decode.feedForward.batchAxes
            if !same { throw .incompatibleKVPlacement(prefill: "\(prefill)", decode: "\(decode)") }
        }
    }
}
