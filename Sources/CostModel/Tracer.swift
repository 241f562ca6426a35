import Collectives
import Partitioning
import Transformer

/// A tensor the tracer knows only by its per-device shape.
public struct SymbolicTensor: Sendable, Equatable {
    public var rows: Int
    public var columns: Int
}

/// One collective a traced device would run.
public struct TracedCollective: Sendable, Equatable {
    public var kind: CollectiveKind
    public var axes: AxisSet
    public var label: String
    /// Elements this device passes in.
    public var count: Int
    public var groupSize: Int
    /// Bytes this device sends (direct exchange, (K−1)/K factors, see `Communicator`).
    public func bytesSent(elementBytes: Double) -> Double {
        Double(collectiveBytes(kind, count: count, groupSize: groupSize)) / 4 * elementBytes
    }
}

/// What one device does in one forward pass, per the traced program.
public struct Trace: Sendable, Equatable {
    public var matmulFLOPs = 0.0
    public var attentionFLOPs = 0.0
    /// Weight elements read from memory (multiply by bytes per weight).
    public var weightElements = 0.0
    /// KV-cache elements read (multiply by bytes per cache element).
    public var kvElements = 0.0
    public var collectives: [TracedCollective] = []

    public static func + (a: Trace, b: Trace) -> Trace {
        Trace(matmulFLOPs: a.matmulFLOPs + b.matmulFLOPs, attentionFLOPs: a.attentionFLOPs + b.attentionFLOPs,
              weightElements: a.weightElements + b.weightElements, kvElements: a.kvElements + b.kvElements,
              collectives: a.collectives + b.collectives)
    }
}

/// The batch a forward pass runs: B sequences of L new tokens, attending to C positions.
public struct TracedBatch: Sendable, Equatable {
    public var sequences: Int
    public var newTokens: Int
    public var context: Int
    public init(sequences: Int, newTokens: Int, context: Int) {
        self.sequences = sequences
        self.newTokens = newTokens
        self.context = context
    }
}

/// The tracing interpreter: runs the sharded layer program (`shardedLayer`) on symbolic
/// tensors for one device and records FLOPs, memory reads and every collective, mirroring
/// what the executing interpreter does with the same layout (DESIGN.md).
public final class Tracer: ShardedLayerInterpreter {
    public typealias Value = SymbolicTensor
    let config: ModelConfig
    let mesh: Mesh
    let rank: Int
    let layout: PhaseLayout
    let blocks: HiddenBlocks
    let batch: TracedBatch
    /// Output channels per panel of the stored weight format: a shard is stored (and, in
    /// weight-gathered layouts, all-gathered) with its rows padded to whole panels (16 for this
    /// runtime's packed f32 and int8; 1 for file blocks and the paper's formats).
    let panelRows: Int
    public private(set) var trace = Trace()

    var ffn: FeedForwardLayout { layout.feedForward }
    var n: Int { mesh.deviceCount }

    public init(config: ModelConfig, mesh: Mesh, rank: Int, layout: PhaseLayout, batch: TracedBatch, panelRows: Int = 1) {
        self.panelRows = panelRows
        self.config = config
        self.mesh = mesh
        self.rank = rank
        self.layout = layout
        self.batch = batch
        blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount)
    }

    /// Traces all layers of one forward pass on this device.
    public static func forward(config: ModelConfig, mesh: Mesh, rank: Int, layout: PhaseLayout, batch: TracedBatch,
                               panelRows: Int = 1) throws -> Trace {
        let t = Tracer(config: config, mesh: mesh, rank: rank, layout: layout, batch: batch, panelRows: panelRows)
        let x = SymbolicTensor(rows: t.paddedRows, columns: config.modelDimension / mesh.size(layout.feedForward.residualAxes))
        _ = try shardedLayer(t, block: config.block, layer: 0, x)
        let one = t.trace
        var all = Trace()
        for _ in 0..<config.layers { all = all + one }
        // The unembedding (E → V; the paper's 2N FLOPs per token count it): one logit row per
        // sequence, on every device, against its vocabulary shard of ⌈V/n⌉ rows, as the runtime
        // does (DeviceWeights.output). The gathers around it (logit rows in, logits out to every
        // device for sampling) are this runtime's, not the layouts', and are not traced (the paper
        // samples from sharded logits on device, §3.6).
        let vocabularyShard = (config.vocabularySize + mesh.deviceCount - 1) / mesh.deviceCount
        all.matmulFLOPs += 2 * Double(batch.sequences) * Double(config.modelDimension) * Double(vocabularyShard)
        all.weightElements += Double(config.modelDimension) * Double(vocabularyShard)
        return all
    }

    var placement: BatchPlacement { BatchPlacement(mesh: mesh, layout: ffn) }
    func home(_ s: Int) -> Int { placement.home(s) }
    var tokens: [(sequence: Int, count: Int)] { (0..<batch.sequences).map { ($0, batch.newTokens) } }

    /// Rows on a device, padded as the runtime pads.
    var paddedRows: Int { placement.paddedRows(tokens) }

    func record(_ kind: CollectiveKind, _ axes: AxisSet, _ label: String, _ count: Int) {
        let k = mesh.size(axes)
        guard k > 1 else { return }
        trace.collectives.append(TracedCollective(kind: kind, axes: axes, label: label, count: count, groupSize: k))
    }

    /// (rows, columns) of this device's stored shard of a matrix.
    func shard(_ m: LayerMatrix) -> (rows: Int, columns: Int) {
        let E = config.modelDimension, Q = config.headDimension
        let stored = ffn.storedBlocks(rank: rank, mesh: mesh).count
        let e = ffn.storesOneDimensional ? E : E / mesh.x
        switch m {
        case .qkv: return (stored * blocks.qkv[0].count * Q, e)
        case .gateUp: return (stored * 2 * config.feedForwardDimension / n, e)
        case .attentionOutput: return (e, stored * blocks.attentionOutput[0].count * Q)
        case .down: return (e, stored * config.feedForwardDimension / n)
        }
    }

    /// The matrix multiplied, after any weight all-gather: (outputs, inputs).
    func weight(_ m: LayerMatrix, input: Bool, _ label: String) -> (rows: Int, columns: Int) {
        let s = shard(m)
        let axes = ffn.weightGatherAxes
        guard mesh.size(axes) > 1 else { return s }
        record(.allGather, axes, label + ".weights", (s.rows + panelRows - 1) / panelRows * panelRows * s.columns)
        let grid = ffn.weightGatherGrid(rank: rank, mesh: mesh)
        let (xs, yzs) = (grid.xs.count, grid.yzs.count)
        return input ? (s.rows * yzs, s.columns * xs) : (s.rows * xs, s.columns * yzs)
    }

    func multiply(_ x: SymbolicTensor, _ w: (rows: Int, columns: Int)) -> SymbolicTensor {
        precondition(x.columns == w.columns, "traced shapes disagree: \(x.columns) vs \(w.columns)")
        trace.matmulFLOPs += 2 * Double(x.rows) * Double(w.rows) * Double(w.columns)
        trace.weightElements += Double(w.rows) * Double(w.columns)
        return SymbolicTensor(rows: x.rows, columns: w.rows)
    }

    public func norm(_ x: SymbolicTensor, feedForward: Bool, layer: Int) throws -> SymbolicTensor {
        record(.allReduce, ffn.residualAxes, "norm", x.rows)
        return x
    }

    public func gatherThenMultiply(_ h: SymbolicTensor, _ matrices: [LayerMatrix], layer: Int, label: String) throws -> [SymbolicTensor] {
        let ws = matrices.map { weight($0, input: true, label) }
        record(.allGather, ffn.inputGatherAxes, label, h.rows * h.columns)
        let hg = SymbolicTensor(rows: h.rows, columns: h.columns * mesh.size(ffn.inputGatherAxes))
        return ws.map { multiply(hg, $0) }
    }

    public func scatterHidden(_ values: [SymbolicTensor], label: String) throws -> [SymbolicTensor] {
        guard ffn == .weightStationary2D else { return values }
        record(.reduceScatter, .x, label, values.reduce(0) { $0 + $1.rows * $1.columns })
        return values.map { SymbolicTensor(rows: $0.rows, columns: $0.columns / mesh.x) }
    }

    public func gatherHidden(_ values: [SymbolicTensor], label: String) throws -> [SymbolicTensor] {
        guard ffn == .weightStationary2D else { return values }
        record(.allGather, .x, label, values.reduce(0) { $0 + $1.rows * $1.columns })
        return values.map { SymbolicTensor(rows: $0.rows, columns: $0.columns * mesh.x) }
    }

    public func attentionCore(_ qkv: SymbolicTensor, layer: Int) throws -> SymbolicTensor {
        let x = qkv
        let Q = config.headDimension
        let owned = ffn.ownedBlocks(rank: rank, mesh: mesh)
        let outWidth = owned.count * blocks.attentionOutput[0].count * Q
        // Sequences whose attention runs here, and the heads it covers.
        let mine: Int, queryHeads: Int, kvHeads: Int
        switch layout.attention {
        case .shardedOverHeads:
            mine = (0..<batch.sequences).filter {
                mesh.index(of: home($0), within: ffn.batchAxes) == mesh.index(of: rank, within: ffn.batchAxes)
            }.count
            queryHeads = owned.count * config.heads / n
            kvHeads = owned.reduce(0) { acc, f in acc + blocks.qkv[f].filter { if case .key = $0 { true } else { false } }.count }
        case .shardedOverBatch:
            let axes = ffn.hiddenAxes
            let chunkRows = placement.chunkRows(tokens)
            let k = mesh.size(axes)
            record(.allToAll, axes, "attention.all_to_all", k * chunkRows * x.columns)
            record(.allToAll, axes, "attention.all_to_all", k * chunkRows * outWidth)
            mine = (0..<batch.sequences).filter { home($0) == rank }.count
            queryHeads = config.heads
            kvHeads = config.kvHeads
        }
        // Q·Kᵀ and P·V over the context, and one read of the cache per pass.
        trace.attentionFLOPs += 4 * Double(mine * batch.newTokens) * Double(batch.context) * Double(queryHeads * Q)
        trace.kvElements += 2 * Double(mine) * Double(batch.context) * Double(kvHeads * Q)
        return SymbolicTensor(rows: x.rows, columns: outWidth)
    }

    public func feedForwardCore(_ gateUp: SymbolicTensor) throws -> SymbolicTensor {
        SymbolicTensor(rows: gateUp.rows, columns: gateUp.columns / 2)
    }

    public func multiplyThenReduce(_ pairs: [(SymbolicTensor, LayerMatrix)], layer: Int, label: String) throws -> SymbolicTensor {
        let ws = pairs.map { weight($0.1, input: false, label) }
        let outs = zip(pairs, ws).map { multiply($0.0, $1) }
        let y = outs[0]
        record(.reduceScatter, ffn.outputReduceAxes, label, y.rows * y.columns)
        return SymbolicTensor(rows: y.rows, columns: y.columns / mesh.size(ffn.outputReduceAxes))
    }

    public func add(_ a: SymbolicTensor, _ b: SymbolicTensor) -> SymbolicTensor { a }
}
