import Partitioning
import Transformer

/// An activation as the paper writes it (§3.1): which axes the batch and the feature dimension
/// are split over, and over which axes it is still a partial sum — `BLE_xyz`, `B_xLE_yz`,
/// `BLF_yz (partialsum-x)`, `BLH_xyzQ`.
public struct ShardedActivation: Equatable, Sendable, CustomStringConvertible {
    /// The feature dimension: E (model), F (feed-forward hidden) or H (heads, each Q wide).
    public enum Feature: String, Sendable { case E, F, H }
    public var batchAxes: AxisSet
    public var feature: Feature
    public var featureAxes: AxisSet
    public var partialSum: AxisSet = .none

    public var description: String {
        func sub(_ a: AxisSet) -> String { a == .none ? "" : "_\(a)" }
        let head = "B\(sub(batchAxes))L\(feature.rawValue)\(sub(featureAxes))\(feature == .H ? "Q" : "")"
        return partialSum == .none ? head : "\(head) (partialsum-\(partialSum))"
    }
}

/// The printing interpreter: runs the layer program on sharding values and writes one line per
/// primitive in the paper's notation (what `meshinfer layouts` shows). Nothing here is looked up
/// in a table: each line follows from the primitive and the sharding it is applied to.
/// Collectives whose group has one device on this mesh do not run and are not printed.
public final class Printer: LayerInterpreter {
    public typealias Value = ShardedActivation
    let mesh: Mesh
    let config: ModelConfig
    public private(set) var lines: [String] = []

    public init(mesh: Mesh, config: ModelConfig) {
        self.mesh = mesh
        self.config = config
    }

    /// The lines of one layer of the model under `layout`, from the residual stream `BLE_…`.
    public static func layer(config: ModelConfig, mesh: Mesh, layout: PhaseLayout) throws -> [String] {
        let p = Printer(mesh: mesh, config: config)
        let f = layout.feedForward
        let x = ShardedActivation(batchAxes: f.batchAxes, feature: .E, featureAxes: f.residualAxes)
        let out = try layerProgram(p, layout, block: config.block, postNorms: config.postNorms, layer: 0, x)
        precondition(out == x, "the layer program must return the residual stream's sharding")
        return p.lines
    }

    func runs(_ axes: AxisSet) -> Bool { mesh.size(axes) > 1 }

    static func weightName(_ m: LayerMatrix) -> String {
        switch m {
        case .qkv: "W_qkv"
        case .attentionOutput: "W_o"
        case .gateUp: "W_gate|W_up"
        case .down: "W_down"
        }
    }

    /// A weight's sharding, input dimension first: `E_x F_yz`, `F_yz E_x`, `E H_xyzQ`.
    static func weightSharding(_ w: WeightUse, contracting: AxisSet, output: AxisSet) -> String {
        func sub(_ a: AxisSet) -> String { a == .none ? "" : "_\(a)" }
        let hidden: ShardedActivation.Feature = (w.matrix == .qkv || w.matrix == .attentionOutput) ? .H : .F
        let h = { (a: AxisSet) in "\(hidden.rawValue)\(sub(a))\(hidden == .H ? "Q" : "")" }
        return w.matrix.isInput ? "E\(sub(contracting)) \(h(output))" : "\(h(contracting)) E\(sub(output))"
    }

    public func allGather(_ values: [ShardedActivation], over axes: AxisSet, at site: CollectiveSite) throws -> [ShardedActivation] {
        let out = values.map { v in var v = v; v.featureAxes = v.featureAxes.subtracting(axes); return v }
        if runs(axes) {
            lines.append("all-gather(\(axes)) \(site.tensor.rawValue): \(values.map(\.description).joined(separator: ", ")) -> \(out.map(\.description).joined(separator: ", "))")
        }
        return out
    }

    public func reduceScatter(_ values: [ShardedActivation], over axes: AxisSet, at site: CollectiveSite) throws -> [ShardedActivation] {
        let out = values.map { v in
            var v = v
            v.partialSum = v.partialSum.subtracting(axes)
            v.featureAxes = v.featureAxes.union(axes)
            return v
        }
        if runs(axes) {
            lines.append("reduce-scatter(\(axes)) \(site.tensor.rawValue): \(values.map(\.description).joined(separator: ", ")) -> \(out.map(\.description).joined(separator: ", "))")
        }
        return out
    }

    public func allToAll(_ value: ShardedActivation, over axes: AxisSet, _ exchange: AttentionExchange,
                         at site: CollectiveSite) throws -> ShardedActivation {
        var out = value
        switch exchange {
        case .toBatch:   // heads split over `axes` → sequences split over them too
            out.featureAxes = value.featureAxes.subtracting(axes)
            out.batchAxes = value.batchAxes.union(axes)
        case .fromBatch:
            out.featureAxes = value.featureAxes.union(axes)
            out.batchAxes = value.batchAxes.subtracting(axes)
        }
        if runs(axes) { lines.append("all-to-all(\(axes)) \(site.tensor.rawValue): \(value) -> \(out)") }
        return out
    }

    public func matmul(_ x: ShardedActivation, _ w: WeightUse, at site: CollectiveSite) throws -> ShardedActivation {
        let name = Self.weightName(w.matrix)
        if runs(w.gatheredOver) {
            let stored = Self.weightSharding(w, contracting: w.matrix.isInput ? w.storage.modelAxes : w.storage.hiddenAxes,
                                             output: w.matrix.isInput ? w.storage.hiddenAxes : w.storage.modelAxes)
            lines.append("all-gather(\(w.gatheredOver)) \(site.tensor.rawValue): \(name)[\(stored)] -> \(name)[\(Self.weightSharding(w, contracting: w.contractingAxes, output: w.outputAxes))]")
        }
        precondition(x.featureAxes == w.contractingAxes, "\(name): input \(x) is not split like the weight's contracting dimension")
        let feature: ShardedActivation.Feature = w.matrix.isInput ? (w.matrix == .qkv ? .H : .F) : .E
        let out = ShardedActivation(batchAxes: x.batchAxes, feature: feature, featureAxes: w.outputAxes,
                                    partialSum: x.partialSum.union(w.contractingAxes))
        lines.append("\(name)[\(Self.weightSharding(w, contracting: w.contractingAxes, output: w.outputAxes))]: \(x) -> \(out)")
        return out
    }

    public func norm(_ x: ShardedActivation, _ weight: NormWeight, sumsOver axes: AxisSet, at site: CollectiveSite) throws -> ShardedActivation {
        lines.append(runs(axes) ? "RMSNorm: \(x), all-reduce(\(axes)) of its B·L sums of squares" : "RMSNorm: \(x)")
        return x
    }

    public func attention(_ qkv: ShardedActivation, layer: Int, _ attention: AttentionLayout, headsOver: AxisSet) throws -> ShardedActivation {
        func sub(_ a: AxisSet) -> String { a == .none ? "" : "_\(a)" }
        // KV heads (padded, for attention over heads) split with the query heads, or replicated
        // when there are fewer than devices; heads that do not divide are padded (§3.3), as the
        // runtime pads them.
        let padded = attention == .shardedOverHeads
            ? HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount, attention: attention).paddedHeads : nil
        let split = (padded?.kv ?? config.kvHeads) % mesh.size(qkv.featureAxes) == 0
        var line = "attention: \(qkv), KV cache B\(sub(qkv.batchAxes))LK\(split ? sub(qkv.featureAxes) : "")Q\(split ? "" : " (replicated)")"
        if let padded, padded != (config.heads, config.kvHeads) {
            line += "; heads padded \(config.heads) → \(padded.queries), KV heads \(config.kvHeads) → \(padded.kv)"
        }
        lines.append(line)
        return qkv
    }

    public func activation(_ gateUp: ShardedActivation) throws -> ShardedActivation {
        lines.append("swiglu: \(gateUp)")
        return gateUp
    }

    public func add(_ a: ShardedActivation, _ b: ShardedActivation) throws -> ShardedActivation {
        precondition(a.batchAxes == b.batchAxes && a.featureAxes == b.featureAxes, "adding \(a) and \(b)")
        var out = a
        out.partialSum = a.partialSum.union(b.partialSum)
        return out
    }
}

/// What `meshinfer layouts` prints: for every feed-forward and attention layout on `mesh`, how
/// the weights are stored and one layer's dataflow, derived from the layer program.
public func layoutsReport(config: ModelConfig, mesh: Mesh) -> String {
    let E = config.modelDimension, F = config.feedForwardDimension, n = mesh.deviceCount
    var out = "model \(config.name): E=\(E) F=\(F) H=\(config.heads) K=\(config.kvHeads) Q=\(config.headDimension) layers=\(config.layers) block=\(config.block)\n"
    out += "mesh \(mesh) (\(n) devices)\n"
    for ffn in FeedForwardLayout.allCases {
        out += "\n== \(ffn): weights stored \(ffn.storage.rawValue)"
        out += ffn.weightGatherAxes == .none ? "\n" : ", all-gathered over \(ffn.weightGatherAxes) before each matmul\n"
        for attention in AttentionLayout.allCases {
            let layout = PhaseLayout(ffn, attention)
            out += "-- \(layout) (attention over \(attention == .shardedOverHeads ? "heads" : "the batch"))\n"
            do {
                try layout.validate(for: config, on: mesh)
                for line in try Printer.layer(config: config, mesh: mesh, layout: layout) { out += "   \(line)\n" }
            } catch {
                out += "   invalid: \(error)\n"
            }
        }
    }
    return out
}
