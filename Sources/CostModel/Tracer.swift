import Collectives
import Partitioning
import Transformer

/// A tensor the tracer knows only by its per-device shape.
public struct SymbolicTensor: Sendable, Equatable {
    public var rows: Int
    public var columns: Int
}

/// One collective a traced device would run.
public struct TracedCollective: Sendable, Equatable, CustomStringConvertible {
    public var kind: CollectiveKind
    public var axes: AxisSet
    public var site: CollectiveSite
    /// Elements this device passes in.
    public var count: Int
    public var groupSize: Int
    /// Bytes this device sends (direct exchange, (K−1)/K factors, see `Communicator`).
    public func bytesSent(elementBytes: Double) -> Double {
        Double(collectiveBytes(kind, count: count, groupSize: groupSize)) / 4 * elementBytes
    }
    public var description: String { "\(kind.rawValue)(\(axes)) \(site) \(count) elements" }
}

/// What one device does in one forward pass, per the traced program.
public struct Trace: Sendable, Equatable {
    public var matmulFLOPs = 0.0
    public var attentionFLOPs = 0.0
    /// Weight elements read from memory (multiply by bytes per weight).
    public var weightElements = 0.0
    /// KV-cache elements read (multiply by bytes per cache element).
    public var kvElements = 0.0
    /// In program order.
    public var collectives: [TracedCollective] = []

    public static func + (a: Trace, b: Trace) -> Trace {
        Trace(matmulFLOPs: a.matmulFLOPs + b.matmulFLOPs, attentionFLOPs: a.attentionFLOPs + b.attentionFLOPs,
              weightElements: a.weightElements + b.weightElements, kvElements: a.kvElements + b.kvElements,
              collectives: a.collectives + b.collectives)
    }
}

/// The batch a forward pass runs: B sequences of L new tokens each, attending (causally) to
/// C = (cached positions + L) positions.
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

/// The tracing interpreter: runs the layer program (`layerProgram`) on symbolic tensors for one
/// device and records FLOPs, memory reads and every collective the program names (DESIGN.md).
/// It decides nothing about the layout: shapes follow from the primitives and the stored
/// shards. Matmuls count the shapes the kernels run over: a shard's rows padded to whole
/// panels of its format (`panelRows`).
public final class Tracer: LayerInterpreter {
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
    /// Inputs per unit of the stored format (32 for 8- and 4-bit blocks, 1 for f32): a shard's
    /// columns are stored as the whole units that cover them.
    let unitInputs: Int
    public private(set) var trace = Trace()

    var ffn: FeedForwardLayout { layout.feedForward }

    public init(config: ModelConfig, mesh: Mesh, rank: Int, layout: PhaseLayout, batch: TracedBatch, panelRows: Int = 1,
                unitInputs: Int = 1) {
        self.panelRows = panelRows
        self.unitInputs = unitInputs
        self.config = config
        self.mesh = mesh
        self.rank = rank
        self.layout = layout
        self.batch = batch
        blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount, attention: layout.attention)
    }

    /// Traces one forward pass on this device: every layer, then the unembedding (`layers`
    /// nil), or the given number of layers alone.
    public static func forward(config: ModelConfig, mesh: Mesh, rank: Int, layout: PhaseLayout, batch: TracedBatch,
                               panelRows: Int = 1, unitInputs: Int = 1) throws -> Trace {
        let t = Tracer(config: config, mesh: mesh, rank: rank, layout: layout, batch: batch, panelRows: panelRows,
                       unitInputs: unitInputs)
        let x = SymbolicTensor(rows: t.paddedRows, columns: config.modelDimension / mesh.size(layout.feedForward.residualAxes))
        // Layers differ only in how much context they attend to (local or global): each kind
        // is traced once.
        var kinds: [Bool: Trace] = [:], all = Trace()
        for l in 0..<config.layers {
            let local = config.isLocal(layer: l)
            if kinds[local] == nil {
                let layer = Tracer(config: config, mesh: mesh, rank: rank, layout: layout, batch: batch, panelRows: panelRows,
                                   unitInputs: unitInputs)
                _ = try layerProgram(layer, layout, block: config.block, postNorms: config.postNorms, layer: l, x)
                kinds[local] = layer.trace
            }
            all = all + kinds[local]!
        }
        t.trace = all
        t.unembed()
        return t.trace
    }

    /// Whether the members of every weight-gather group store their shards alike: the runtime
    /// all-gathers shards as stored and refuses a layout whose members' stored widths differ
    /// (`LayoutError.shardInsideBlock`), so such a layout is no candidate.
    public static func gatheredShardsAgree(config: ModelConfig, mesh: Mesh, layout: PhaseLayout, unitInputs: Int) -> Bool {
        let axes = layout.feedForward.weightGatherAxes
        guard mesh.size(axes) > 1 else { return true }
        let widths = (0..<mesh.deviceCount).map { rank in
            let t = Tracer(config: config, mesh: mesh, rank: rank, layout: layout, batch: TracedBatch(sequences: 1, newTokens: 1, context: 1),
                           unitInputs: unitInputs)
            return LayerMatrix.allCases.map {
                t.shard(WeightUse(matrix: $0, layer: 0, storage: .twoDimensional, gatheredOver: .none)).storedColumns
            }
        }
        return (0..<mesh.deviceCount).allSatisfy { r in mesh.group(of: r, over: axes).allSatisfy { widths[$0] == widths[r] } }
    }

    var placement: BatchPlacement { BatchPlacement(mesh: mesh, layout: ffn) }
    var tokens: [(sequence: Int, count: Int)] { (0..<batch.sequences).map { ($0, batch.newTokens) } }
    /// Rows on a device, padded as the runtime pads.
    var paddedRows: Int { placement.paddedRows(tokens) }
    /// Sequences whose rows this device holds (its batch-axes group), and those homed on it.
    var localSequences: Int { (0..<batch.sequences).filter { placement.group(ofSequence: $0) == mesh.index(of: rank, within: ffn.batchAxes) }.count }
    var homeSequences: Int { (0..<batch.sequences).filter { placement.home($0) == rank }.count }

    func padded(_ rows: Int) -> Int { (rows + panelRows - 1) / panelRows * panelRows }

    func record(_ kind: CollectiveKind, _ axes: AxisSet, _ site: CollectiveSite, _ count: Int) {
        let k = mesh.size(axes)
        guard k > 1 else { return }
        trace.collectives.append(TracedCollective(kind: kind, axes: axes, site: site, count: count, groupSize: k))
    }

    /// This device's stored shard of a matrix (DeviceWeights.specs): its rows, its logical
    /// columns, and the columns stored — each run of source columns widened to the whole units
    /// covering it, each run of zero columns (padding head slots) rounded up to whole units.
    func shard(_ w: WeightUse) -> (rows: Int, columns: Int, storedColumns: Int) {
        let E = config.modelDimension, Q = config.headDimension, F = config.feedForwardDimension, n = mesh.deviceCount
        let layout: FeedForwardLayout = w.storage == .oneDimensional ? .weightStationary1D : .weightStationary2D
        let stored = layout.storedBlocks(rank: rank, mesh: mesh)
        let e = E / mesh.size(w.storage.modelAxes)
        let lo = w.storage == .oneDimensional ? 0 : mesh.coordinates(of: rank)[0] * e
        // Column runs: nil is zero columns; adjacent source runs are one.
        var runs: [(Range<Int>?, Int)] = []
        func append(_ r: Range<Int>?, _ count: Int) {
            if let r, let last = runs.last, let l = last.0, l.upperBound == r.lowerBound {
                runs[runs.count - 1] = (l.lowerBound..<r.upperBound, last.1 + count)
            } else {
                runs.append((r, count))
            }
        }
        let u = unitInputs
        switch w.matrix {
        case .qkv, .gateUp: append(lo..<(lo + e), e)
        case .attentionOutput:
            for f in stored {
                for slot in blocks.attentionOutput[f] {
                    if case let .query(h) = slot { append((h * Q)..<((h + 1) * Q), Q) } else { append(nil, Q) }
                }
            }
        case .down: for f in stored { append((f * F / n)..<((f + 1) * F / n), F / n) }
        }
        let columns = runs.reduce(0) { $0 + $1.1 }
        let storedColumns = runs.reduce(0) { sum, run in
            guard let r = run.0 else { return sum + (run.1 + u - 1) / u * u }
            return sum + (r.upperBound + u - 1) / u * u - r.lowerBound / u * u
        }
        switch w.matrix {
        case .qkv: return (stored.count * blocks.qkv[0].count * Q, columns, storedColumns)
        case .gateUp: return (stored.count * 2 * F / n, columns, storedColumns)
        case .attentionOutput, .down: return (e, columns, storedColumns)
        }
    }

    func multiply(_ rows: Int, stored: (rows: Int, columns: Int), outputs: Int) -> SymbolicTensor {
        trace.matmulFLOPs += 2 * Double(rows) * Double(stored.rows) * Double(stored.columns)
        trace.weightElements += Double(stored.rows) * Double(stored.columns)
        return SymbolicTensor(rows: rows, columns: outputs)
    }

    // MARK: primitives

    public func allGather(_ values: [SymbolicTensor], over axes: AxisSet, at site: CollectiveSite) throws -> [SymbolicTensor] {
        record(.allGather, axes, site, values.reduce(0) { $0 + $1.rows * $1.columns })
        return values.map { SymbolicTensor(rows: $0.rows, columns: $0.columns * mesh.size(axes)) }
    }

    public func reduceScatter(_ values: [SymbolicTensor], over axes: AxisSet, at site: CollectiveSite) throws -> [SymbolicTensor] {
        record(.reduceScatter, axes, site, values.reduce(0) { $0 + $1.rows * $1.columns })
        return values.map { SymbolicTensor(rows: $0.rows, columns: $0.columns / mesh.size(axes)) }
    }

    public func allToAll(_ value: SymbolicTensor, over axes: AxisSet, _ exchange: AttentionExchange,
                         at site: CollectiveSite) throws -> SymbolicTensor {
        // Every member's rows for every other, padded to the largest home's: q|k|v of the owned
        // head blocks out, and back the attention output for each member's W_o columns.
        let k = mesh.size(axes), chunkRows = placement.chunkRows(tokens)
        let Q = config.headDimension
        let outWidth = ffn.ownedBlocks(rank: rank, mesh: mesh).count * blocks.attentionOutput[0].count * Q
        switch exchange {
        case .toBatch:
            record(.allToAll, axes, site, k * chunkRows * value.columns)
            return SymbolicTensor(rows: homeSequences * batch.newTokens, columns: (config.heads + 2 * config.kvHeads) * Q)
        case .fromBatch:
            record(.allToAll, axes, site, k * chunkRows * outWidth)
            return SymbolicTensor(rows: paddedRows, columns: outWidth)
        }
    }

    public func matmul(_ x: SymbolicTensor, _ w: WeightUse, at site: CollectiveSite) throws -> SymbolicTensor {
        let s = shard(w)
        let rows = padded(s.rows)
        let k = mesh.size(w.gatheredOver)
        guard k > 1 else {
            precondition(x.columns == s.columns, "traced shapes disagree: \(x.columns) vs \(s.columns)")
            return multiply(x.rows, stored: (rows, s.storedColumns), outputs: s.rows)
        }
        // All-gather the stored shards, then join them: W_in-role tiles stack rows by i_yz and
        // columns by i_x; W_out-role the other way round.
        record(.allGather, w.gatheredOver, site, rows * s.storedColumns)
        let grid = ffn.weightGatherGrid(rank: rank, mesh: mesh)
        let (rowTiles, columnTiles) = w.matrix.isInput ? (grid.yzs.count, grid.xs.count) : (grid.xs.count, grid.yzs.count)
        precondition(x.columns == s.columns * columnTiles, "traced shapes disagree: \(x.columns) vs \(s.columns * columnTiles)")
        return multiply(x.rows, stored: (rows * rowTiles, s.storedColumns * columnTiles), outputs: s.rows * rowTiles)
    }

    public func norm(_ x: SymbolicTensor, _ weight: NormWeight, sumsOver axes: AxisSet, at site: CollectiveSite) throws -> SymbolicTensor {
        record(.allReduce, axes, site, x.rows)
        return x
    }

    /// Q·Kᵀ and P·V for each new token over its causal positions (within the sliding window on
    /// local layers), and one read of each attended sequence's cached keys and values — of the
    /// positions some new token attends to — for the heads held here.
    public func attention(_ qkv: SymbolicTensor, layer: Int, _ attention: AttentionLayout, headsOver: AxisSet) throws -> SymbolicTensor {
        let Q = config.headDimension
        let sequences: Int, queryHeads: Int, kvHeads: Int
        switch attention {
        case .shardedOverHeads:
            // Padded head slots run like real ones (HiddenBlocks: whole heads, padded).
            let owned = ffn.ownedBlocks(rank: rank, mesh: mesh).count
            sequences = localSequences
            queryHeads = owned * blocks.wholeHeads!.queries
            kvHeads = owned * blocks.wholeHeads!.kv
        case .shardedOverBatch:
            sequences = homeSequences
            queryHeads = config.heads
            kvHeads = config.kvHeads
        }
        let L = batch.newTokens, C = batch.context
        // Σ over new tokens of their span: the token at position p attends min(p + 1, window).
        let window = config.attendedPositions(layer: layer, context: C)
        func spans(_ a: Int, _ b: Int) -> Int { b < a ? 0 : (a + b) * (b - a + 1) / 2 }   // a + … + b
        let first = C - L + 1
        let positions = Double(spans(first, min(C, window)) + max(0, C - max(first, window + 1) + 1) * window)
        trace.attentionFLOPs += 4 * Double(sequences) * positions * Double(queryHeads * Q)
        trace.kvElements += 2 * Double(sequences) * Double(min(C, window + L - 1)) * Double(kvHeads * Q)
        return SymbolicTensor(rows: qkv.rows, columns: queryHeads * Q)
    }

    public func activation(_ gateUp: SymbolicTensor) throws -> SymbolicTensor {
        SymbolicTensor(rows: gateUp.rows, columns: gateUp.columns / 2)
    }

    public func add(_ a: SymbolicTensor, _ b: SymbolicTensor) throws -> SymbolicTensor { a }

    /// The runtime's unembedding: each device gathers the rows whose logits are wanted (one per
    /// sequence; its batch-axes group padded to the largest), multiplies them by its
    /// vocabulary shard of ⌈V/n⌉ rows, and all-gathers the logits so every device can sample.
    func unembed() {
        let n = mesh.deviceCount, E = config.modelDimension
        var perGroup = [Int](repeating: 0, count: mesh.size(ffn.batchAxes))
        for s in 0..<batch.sequences { perGroup[placement.group(ofSequence: s)] += 1 }
        let wanted = perGroup.max() ?? 0
        let local = E / mesh.size(ffn.residualAxes)
        record(.allGather, ffn.residualAxes, CollectiveSite(.unembedding, .logitRows), wanted * local)
        record(.allGather, ffn.batchAxes, CollectiveSite(.unembedding, .logitRows), wanted * E)
        let rows = wanted * perGroup.count
        let vocabularyShard = (config.vocabularySize + n - 1) / n
        _ = multiply(rows, stored: (padded(vocabularyShard), E), outputs: vocabularyShard)
        record(.allGather, .xyz, CollectiveSite(.unembedding, .logits), rows * vocabularyShard)
    }
}
