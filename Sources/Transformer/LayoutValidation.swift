import Partitioning

extension PhaseLayout {
    /// Checks this layout against a model and mesh before anything is allocated: E and F
    /// split into n shards, and whole heads per device for attention over heads.
    public func validate(for config: ModelConfig, on mesh: Mesh) throws(LayoutError) {
        let n = mesh.deviceCount
        if config.modelDimension % n != 0 { throw .indivisible(what: "model dimension E", size: config.modelDimension, parts: n) }
        if config.feedForwardDimension % n != 0 {
            throw .indivisible(what: "feed-forward dimension F", size: config.feedForwardDimension, parts: n)
        }
        if attention == .shardedOverHeads && n > 1
            && !HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: n).headAligned {
            throw .headsDoNotDivide(heads: config.heads, kvHeads: config.kvHeads, devices: n)
        }
    }
}
