import Partitioning
import Tensors
import Transformer

/// One layer's shards on one device, in one stored layout, each in its execution format.
struct DeviceLayer: @unchecked Sendable {
    let attentionNorm: [Float]        // (E)
    let feedForwardNorm: [Float]?     // (E); nil for the parallel block
    let attentionOutputNorm: [Float]?     // (E); with `postNorms`
    let feedForwardOutputNorm: [Float]?   // (E); with `postNorms`
    let queryNorm: [Float]?           // (Q); with `qkNorm`
    let keyNorm: [Float]?             // (Q); with `qkNorm`
    let qkv: LinearWeight             // (stored q|k|v blocks · Q, E_x or E)
    let attentionOutput: LinearWeight // (E_x or E, stored W_o input blocks · Q)
    let gateUp: LinearWeight          // (stored gate|up blocks, E_x or E)
    let down: LinearWeight            // (E_x or E, stored F blocks)

    var matrices: [LinearWeight] { [qkv, attentionOutput, gateUp, down] }
}

/// The weights of one device of a mesh, loaded already sharded: each device reads only its
/// own rows (and columns) of every matrix, and stores each shard once, in the format it runs
/// (DESIGN.md: shard on load). A single device is a mesh of one and loads the same way.
final class DeviceWeights: @unchecked Sendable {
    let rank: Int
    /// Layers in the 2D-family storage `E_x F_yz` (ws2d and all weight-gathered layouts)
    /// and/or the 1D storage `E F_xyz`; only those some phase uses are loaded.
    let twoD: [DeviceLayer]?
    let oneD: [DeviceLayer]?
    let outputNorm: [Float]           // (E)
    /// Vocabulary rows [rank·⌈V/n⌉, …) of the unembedding (zero rows pad V to a multiple of n).
    let output: LinearWeight          // (⌈V/n⌉, E)
    let embedding: TensorSource
    /// Where each weight-gather group member's logical input columns sit in its stored 2D
    /// shards of every layer, by rank, for joining gathered shards (empty without gathering).
    let inputSegments: [Int: [LayerMatrix: [Segment]]]

    /// Bytes of weight matrices this device holds.
    var weightBytes: Int {
        ([twoD, oneD].compactMap { $0 }.joined().flatMap(\.matrices) + [output]).reduce(0) { $0 + $1.byteCount }
    }

    /// The formats this device's matrices run in (one, unless native falls back for some tensors).
    var formats: [WeightFormat] {
        let all = [twoD, oneD].compactMap { $0 }.joined().flatMap(\.matrices) + [output]
        return WeightFormat.allCases.filter { f in all.contains { $0.format == f } }
    }

    /// Loads device `rank`'s shards; `threads` load layers side by side.
    init(source: TensorSource, config: ModelConfig, mesh: Mesh, rank: Int, prefill: PhaseLayout, decode: PhaseLayout,
         format: WeightFormat, threads: Int = 1) throws {
        try Self.validateShapes(source, config)
        let blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount, attention: prefill.attention)
        let storages = Set([prefill.feedForward.storesOneDimensional, decode.feedForward.storesOneDimensional])
        self.rank = rank
        embedding = source
        let arena = WeightArena()
        func load(oneD: Bool) throws -> [DeviceLayer] {
            let loaded = UnsafeMutableBufferPointer<Result<DeviceLayer, Error>?>.allocate(capacity: config.layers)
            loaded.initialize(repeating: nil)
            defer {
                _ = loaded.deinitialize()   // releases the buffer's references to the layers' weights
                loaded.deallocate()
            }
            WorkSplitter(threads: threads).parallelFor(config.layers) { range in
                for l in range {
                    loaded[l] = Result {
                        let specs = Self.specs(config, mesh, rank, blocks, l, oneD: oneD)
                        let p = "blk.\(l)."
                        return DeviceLayer(
                            attentionNorm: try source.vector(p + "attn_norm.weight"),
                            feedForwardNorm: config.block == .serial ? try source.vector(p + "ffn_norm.weight") : nil,
                            attentionOutputNorm: config.postNorms ? try source.vector(p + "post_attention_norm.weight") : nil,
                            feedForwardOutputNorm: config.postNorms ? try source.vector(p + "post_ffw_norm.weight") : nil,
                            queryNorm: config.qkNorm ? try source.vector(p + "attn_q_norm.weight") : nil,
                            keyNorm: config.qkNorm ? try source.vector(p + "attn_k_norm.weight") : nil,
                            qkv: try LinearWeight(source: source, spec: specs[0], format: format, arena: arena),
                            attentionOutput: try LinearWeight(source: source, spec: specs[1], format: format, arena: arena),
                            gateUp: try LinearWeight(source: source, spec: specs[2], format: format, arena: arena),
                            down: try LinearWeight(source: source, spec: specs[3], format: format, arena: arena))
                    }
                }
            }
            return try loaded.map { try $0!.get() }
        }
        twoD = storages.contains(false) ? try load(oneD: false) : nil
        oneD = storages.contains(true) ? try load(oneD: true) : nil
        outputNorm = try source.vector("output_norm.weight")
        let n = mesh.deviceCount, V = config.vocabularySize, E = config.modelDimension
        let per = (V + n - 1) / n
        let lo = min(V, rank * per), hi = min(V, (rank + 1) * per)
        let outputName = (try? source.shape("output.weight")) != nil ? "output.weight" : "token_embd.weight"
        output = try LinearWeight(source: source, spec: ShardSpec(rows: [.tensor(outputName, lo..<hi), .zeros(per - (hi - lo))],
                                                                  columns: [.source(0..<E)]), format: format, arena: arena)

        // Weight-gathered layouts all-gather their group's shards as stored: every member's
        // shard must have the same stored shape, which fails only where a shard's columns begin
        // or end inside a block of the format (E/x not a multiple of 32 for 8- and 4-bit weights).
        var segments: [Int: [LayerMatrix: [Segment]]] = [:]
        let gathering = [prefill, decode].map(\.feedForward).filter { mesh.size($0.weightGatherAxes) > 1 }
        if !gathering.isEmpty {
            let layer = twoD![0].matrices
            let matrices: [LayerMatrix] = [.qkv, .attentionOutput, .gateUp, .down]
            for layout in gathering {
                for member in mesh.group(of: rank, over: layout.weightGatherAxes) where segments[member] == nil {
                    let specs = Self.specs(config, mesh, member, blocks, 0, oneD: false)
                    var bySpec: [LayerMatrix: [Segment]] = [:]
                    for (matrix, (m, spec)) in zip(matrices, zip(layer, specs)) {
                        let window = ShardSpec.window(spec.columns, unit: m.kind.unitInputs)
                        if window.width != m.storedShape.inputs {
                            throw LayoutError.shardInsideBlock(layout: "\(layout)", columns: spec.inputs, block: m.kind.unitInputs,
                                                               format: m.format.rawValue)
                        }
                        bySpec[matrix] = window.segments
                    }
                    segments[member] = bySpec
                }
            }
        }
        inputSegments = segments
    }

    func layers(oneDimensional: Bool) -> [DeviceLayer] { (oneDimensional ? oneD : twoD)! }

    /// What device `rank` stores of layer `l`'s W_qkv, W_o, W_gate|W_up and W_down: the W_in-role
    /// matrices' rows for its stored blocks with columns E_x (2D) or E (1D); the W_out-role
    /// matrices' rows E_x (or E) with its stored blocks' columns (Pope et al. §3.2, Fig. 2).
    static func specs(_ c: ModelConfig, _ mesh: Mesh, _ rank: Int, _ blocks: HiddenBlocks, _ l: Int, oneD: Bool) -> [ShardSpec] {
        let E = c.modelDimension, F = c.feedForwardDimension, Q = c.headDimension, n = mesh.deviceCount
        let layout: FeedForwardLayout = oneD ? .weightStationary1D : .weightStationary2D
        let stored = layout.storedBlocks(rank: rank, mesh: mesh)
        let ix = mesh.coordinates(of: rank)[0]
        let eRange = oneD ? 0..<E : (ix * E / mesh.x)..<((ix + 1) * E / mesh.x)
        let p = "blk.\(l)."
        let fb = F / n
        // W_qkv rows: the head slots of each stored block (natural q | k | v order on one device).
        let qkvRows: [ShardSpec.Rows] = stored.flatMap { f in
            blocks.qkv[f].map { slot -> ShardSpec.Rows in
                switch slot {
                case let .query(h): .tensor(p + "attn_q.weight", (h * Q)..<((h + 1) * Q))
                case let .key(g): .tensor(p + "attn_k.weight", (g * Q)..<((g + 1) * Q))
                case let .value(g): .tensor(p + "attn_v.weight", (g * Q)..<((g + 1) * Q))
                case .padding: .zeros(Q)
                }
            }
        }
        let oColumns: [ShardSpec.Columns] = stored.flatMap { f in
            blocks.attentionOutput[f].map { slot -> ShardSpec.Columns in
                if case let .query(h) = slot { .source((h * Q)..<((h + 1) * Q)) } else { .zeros(Q) }
            }
        }
        let blockRange = { (f: Int) in (f * fb)..<((f + 1) * fb) }
        var gateUpRows: [ShardSpec.Rows] = []
        for f in stored { gateUpRows += [.tensor(p + "ffn_gate.weight", blockRange(f)), .tensor(p + "ffn_up.weight", blockRange(f))] }
        let downColumns: [ShardSpec.Columns] = stored.map { .source(blockRange($0)) }
        let qkv = ShardSpec(rows: joined(qkvRows), columns: [.source(eRange)],
                            of: ["attn_q", "attn_k", "attn_v"].map { p + $0 + ".weight" })
        let o = ShardSpec(rows: [.tensor(p + "attn_output.weight", eRange)], columns: joined(oColumns))
        let gateUp = ShardSpec(rows: gateUpRows, columns: [.source(eRange)], of: [p + "ffn_gate.weight", p + "ffn_up.weight"])
        let down = ShardSpec(rows: [.tensor(p + "ffn_down.weight", eRange)], columns: joined(downColumns))
        return [qkv, o, gateUp, down]
    }

    /// Consecutive row ranges of one tensor as one range (whole matrices on a mesh of one).
    private static func joined(_ rows: [ShardSpec.Rows]) -> [ShardSpec.Rows] {
        var out: [ShardSpec.Rows] = []
        for r in rows {
            if case let .tensor(name, range) = r, case let .tensor(lastName, last)? = out.last, lastName == name, last.upperBound == range.lowerBound {
                out[out.count - 1] = .tensor(name, last.lowerBound..<range.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    private static func joined(_ columns: [ShardSpec.Columns]) -> [ShardSpec.Columns] {
        var out: [ShardSpec.Columns] = []
        for c in columns {
            if case let .source(range) = c, case let .source(last)? = out.last, last.upperBound == range.lowerBound {
                out[out.count - 1] = .source(last.lowerBound..<range.upperBound)
            } else {
                out.append(c)
            }
        }
        return out
    }

    /// Every tensor the model needs, with the shape its configuration implies.
    static func validateShapes(_ s: TensorSource, _ c: ModelConfig) throws {
        let E = c.modelDimension, F = c.feedForwardDimension, HQ = c.heads * c.headDimension, KQ = c.kvDimension
        func check(_ name: String, _ rows: Int, _ columns: Int) throws {
            let shape = try s.shape(name)
            // GGUF order: the row length first.
            if shape != (rows, columns) { throw ModelLoadError.badShape(tensor: name, expected: [columns, rows], found: [shape.columns, shape.rows]) }
        }
        try check("token_embd.weight", c.vocabularySize, E)
        if (try? s.shape("output.weight")) != nil { try check("output.weight", c.vocabularySize, E) }
        try check("output_norm.weight", 1, E)
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            try check(p + "attn_norm.weight", 1, E)
            if c.block == .serial { try check(p + "ffn_norm.weight", 1, E) }
            try check(p + "attn_q.weight", HQ, E)
            try check(p + "attn_k.weight", KQ, E)
            try check(p + "attn_v.weight", KQ, E)
            try check(p + "attn_output.weight", E, HQ)
            try check(p + "ffn_gate.weight", F, E)
            try check(p + "ffn_up.weight", F, E)
            try check(p + "ffn_down.weight", E, F)
        }
    }
}
