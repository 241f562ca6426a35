import Partitioning

/// A weight matrix of one layer, as the layer program names it.
public enum LayerMatrix: String, Hashable, Sendable, CaseIterable {
    /// W_q | W_k | W_v: (E → (H + 2K)·Q), the attention's W_in
    case qkv
    /// W_o: (H·Q → E), the attention's W_out
    case attentionOutput = "o"
    /// W_gate | W_up: (E → 2F), the feed-forward W_in
    case gateUp = "gate_up"
    /// W_down: (F → E), the feed-forward W_out
    case down

    /// W_in role (E → hidden): rows are hidden columns; W_out role (hidden → E) otherwise.
    public var isInput: Bool { self == .qkv || self == .gateUp }
}

/// How the weights of a layer are stored on the mesh (Pope et al. §3.2): 1D `E F_xyz`, or the
/// 2D family's `E_x F_yz` (which 2D weight-stationary runs in place and the weight-gathered
/// layouts all-gather).
public enum WeightStorage: String, Sendable, Hashable {
    case oneDimensional = "E F_xyz"
    case twoDimensional = "E_x F_yz"

    /// The axes E (the model dimension) and the hidden dimension (F, or heads) are split over.
    public var modelAxes: AxisSet { self == .oneDimensional ? .none : .x }
    public var hiddenAxes: AxisSet { self == .oneDimensional ? .xyz : .yz }
}

/// A matmul's weight as the program names it: which matrix of which layer, how it is stored,
/// and the axes its shards are all-gathered over first (weight-gathered layouts, §3.2.3).
public struct WeightUse: Hashable, Sendable {
    public var matrix: LayerMatrix
    public var layer: Int
    public var storage: WeightStorage
    public var gatheredOver: AxisSet

    public init(matrix: LayerMatrix, layer: Int, storage: WeightStorage, gatheredOver: AxisSet) {
        self.matrix = matrix
        self.layer = layer
        self.storage = storage
        self.gatheredOver = gatheredOver
    }

    /// The axes the matmul's contracting dimension is split over (its partial sums), and its
    /// output dimension, once gathered.
    public var contractingAxes: AxisSet { (matrix.isInput ? storage.modelAxes : storage.hiddenAxes).subtracting(gatheredOver) }
    public var outputAxes: AxisSet { (matrix.isInput ? storage.hiddenAxes : storage.modelAxes).subtracting(gatheredOver) }
}

public enum NormWeight: Hashable, Sendable {
    case attention(layer: Int)
    case feedForward(layer: Int)
    /// Of the attention's and the feed-forward's outputs, before the residual add (`postNorms`).
    case attentionOutput(layer: Int)
    case feedForwardOutput(layer: Int)
}

/// The direction of a batch-sharded attention's all-to-all (Fig. 5b).
public enum AttentionExchange: Sendable {
    /// q|k|v split over heads → every head of the sequences homed here.
    case toBatch
    /// The attention output back to the devices holding its heads.
    case fromBatch
}

/// The primitives one layer is written in (DESIGN.md): collectives over named mesh axes on named
/// tensors, matmuls against named weights, norms with partial sums over named axes, the
/// attention core and the activation. The program decides every collective and its axes; each
/// interpreter gives the primitives a meaning on one device — the runtime executes them, the
/// cost model's tracer records them, the printer renders them in the paper's notation. A
/// collective over axes whose group has one device is an identity (a mesh of one runs the same
/// program with every collective an identity).
public protocol LayerInterpreter {
    associatedtype Value
    /// All-gather along the hidden/feature columns over `axes`: one collective for all the given
    /// tensors (each comes back with its members' pieces side by side).
    func allGather(_ values: [Value], over axes: AxisSet, at site: CollectiveSite) throws -> [Value]
    /// Reduce-scatter of partial sums along the columns over `axes`: one collective for all the
    /// given tensors (member i keeps column chunk i of each).
    func reduceScatter(_ values: [Value], over axes: AxisSet, at site: CollectiveSite) throws -> [Value]
    /// The all-to-all of batch-sharded attention over `axes` (Fig. 5b).
    func allToAll(_ value: Value, over axes: AxisSet, _ exchange: AttentionExchange, at site: CollectiveSite) throws -> Value
    /// x · Wᵀ, all-gathering the weight's shards over `weight.gatheredOver` first (at `site`).
    func matmul(_ x: Value, _ weight: WeightUse, at site: CollectiveSite) throws -> Value
    /// RMSNorm of a residual whose E is split over `axes`: per-row sums of squares all-reduced
    /// over them (a B·L-element collective at `site`), then each device scales its columns.
    func norm(_ x: Value, _ weight: NormWeight, sumsOver axes: AxisSet, at site: CollectiveSite) throws -> Value
    /// RoPE, KV-cache append and causal attention: over the heads this device holds (q|k|v
    /// split over `headsOver`), or, after the all-to-all, over every head of its home sequences.
    func attention(_ qkv: Value, layer: Int, _ layout: AttentionLayout, headsOver: AxisSet) throws -> Value
    /// act(gate) ⊙ up (the model's activation), from W_gate | W_up's hidden blocks.
    func activation(_ gateUp: Value) throws -> Value
    func add(_ a: Value, _ b: Value) throws -> Value
}

/// One layer of the partitioned model, written once for every layout and interpreter (Pope et
/// al. §3, Fig. 2 and 5). Each matmul pair (W_qkv, W_o) and (W_in, W_out) runs the phase's
/// feed-forward layout: all-gather the normed input over the input axes; multiply by the stored
/// shard (gathered over the weight axes in weight-gathered layouts); in 2D weight-stationary,
/// reduce-scatter the partial sums over x, and all-gather them back before W_out; reduce-scatter
/// W_out's partial sums into the residual. Serial block (Llama): attention, then the feed-forward
/// on the updated residual; with `postNorms` (Gemma) each half's output is normed before it is
/// added — a norm of a residual-shaped tensor, its statistics summed over the residual axes like
/// the pre-norms'. Parallel block (PaLM, §3.4): one norm, one gathered input, one x
/// reduce-scatter and all-gather for both halves, one reduction of their sum.
public func layerProgram<I: LayerInterpreter>(_ i: I, _ phase: PhaseLayout, block: BlockKind, postNorms: Bool = false, layer l: Int,
                                              _ x: I.Value) throws -> I.Value {
    let f = phase.feedForward
    func weight(_ m: LayerMatrix) -> WeightUse {
        WeightUse(matrix: m, layer: l, storage: f.storage, gatheredOver: f.weightGatherAxes)
    }
    // BLE_{residual} → BLE_{W_in's contracting axes} → × W_in → (2D: RS over x) → BL hidden_{hiddenAxes}
    func project(_ h: I.Value, _ matrices: [LayerMatrix], _ part: CollectiveSite.Part) throws -> [I.Value] {
        let input = try i.allGather([h], over: f.inputGatherAxes, at: CollectiveSite(part, .input))[0]
        let partial = try matrices.map { try i.matmul(input, weight($0), at: CollectiveSite(part, .weights)) }
        return try i.reduceScatter(partial, over: f.hiddenReduceAxes, at: CollectiveSite(part, .partialSums))
    }
    // (2D: AG over x) → Σ hiddenᵢ × W_outᵢ → BLE (partial sums) → RS → BLE_{residual}
    func reduce(_ pairs: [(I.Value, LayerMatrix)], _ part: CollectiveSite.Part) throws -> I.Value {
        let hidden = try i.allGather(pairs.map(\.0), over: f.hiddenReduceAxes, at: CollectiveSite(part, .hidden))
        var sum = try i.matmul(hidden[0], weight(pairs[0].1), at: CollectiveSite(part, .weights))
        for (h, (_, m)) in zip(hidden, pairs).dropFirst() { sum = try i.add(sum, i.matmul(h, weight(m), at: CollectiveSite(part, .weights))) }
        return try i.reduceScatter([sum], over: f.outputReduceAxes, at: CollectiveSite(part, .output))[0]
    }
    // Attention over the heads held here, or over the batch between two all-to-alls (§3.3).
    func attend(_ qkv: I.Value, _ part: CollectiveSite.Part) throws -> I.Value {
        switch phase.attention {
        case .shardedOverHeads:
            return try i.attention(qkv, layer: l, .shardedOverHeads, headsOver: f.hiddenAxes)
        case .shardedOverBatch:
            let local = try i.allToAll(qkv, over: f.hiddenAxes, .toBatch, at: CollectiveSite(part, .toBatch))
            let attended = try i.attention(local, layer: l, .shardedOverBatch, headsOver: .none)
            return try i.allToAll(attended, over: f.hiddenAxes, .fromBatch, at: CollectiveSite(part, .fromBatch))
        }
    }

    switch block {
    case .serial:
        // BLE_{residual} → (post norm) → added to the residual
        func output(_ y: I.Value, _ weight: NormWeight, _ part: CollectiveSite.Part) throws -> I.Value {
            postNorms ? try i.norm(y, weight, sumsOver: f.residualAxes, at: CollectiveSite(part, .outputNormStatistics)) : y
        }
        let h = try i.norm(x, .attention(layer: l), sumsOver: f.residualAxes, at: CollectiveSite(.attention, .normStatistics))
        let qkv = try project(h, [.qkv], .attention)[0]
        let a = try reduce([(attend(qkv, .attention), .attentionOutput)], .attention)
        let x1 = try i.add(x, output(a, .attentionOutput(layer: l), .attention))
        let h1 = try i.norm(x1, .feedForward(layer: l), sumsOver: f.residualAxes, at: CollectiveSite(.feedForward, .normStatistics))
        let gateUp = try project(h1, [.gateUp], .feedForward)[0]
        let d = try reduce([(i.activation(gateUp), .down)], .feedForward)
        return try i.add(x1, output(d, .feedForwardOutput(layer: l), .feedForward))
    case .parallel:
        let h = try i.norm(x, .attention(layer: l), sumsOver: f.residualAxes, at: CollectiveSite(.block, .normStatistics))
        let projected = try project(h, [.qkv, .gateUp], .block)
        return try i.add(x, reduce([(attend(projected[0], .block), .attentionOutput), (i.activation(projected[1]), .down)], .block))
    }
}

extension FeedForwardLayout {
    /// How this layout's weights are stored.
    public var storage: WeightStorage { storesOneDimensional ? .oneDimensional : .twoDimensional }
    /// Axes W_in's partial sums are reduce-scattered over (and W_out's input all-gathered over):
    /// the axes E stays split over in W_in once gathered — x in 2D weight-stationary
    /// (`BLF_yz (partialsum-x) → BLF_xyz`, Fig. 2b), none elsewhere.
    public var hiddenReduceAxes: AxisSet { storage.modelAxes.subtracting(weightGatherAxes) }
}
