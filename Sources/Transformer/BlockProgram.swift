/// A weight matrix of one layer, as the sharded layer program names it.
public enum LayerMatrix: Hashable, Sendable {
    case qkv, attentionOutput, gateUp, down
}

/// The ops of one layer of a partitioned model (Pope et al. §3): each interpreter gives them
/// a meaning on one device — the runtime executes them with real collectives, the cost
/// model's tracer records the FLOPs, bytes and collectives they would cost.
public protocol ShardedLayerInterpreter {
    associatedtype Value
    /// RMSNorm of the residual (an all-reduce of row statistics when E is sharded).
    func norm(_ x: Value, feedForward: Bool, layer: Int) throws -> Value
    /// All-gather the normed input over the layout's input axes, multiply by each matrix
    /// (all-gathering weight shards first in weight-gathered layouts).
    func gatherThenMultiply(_ h: Value, _ matrices: [LayerMatrix], layer: Int, label: String) throws -> [Value]
    /// The 2D layout's reduce-scatter over x of W_in-side partial sums (`BLF_yz (partialsum-x)
    /// → BLF_xyz`), one collective for all the given tensors; identity in other layouts.
    func scatterHidden(_ values: [Value], label: String) throws -> [Value]
    /// The 2D layout's all-gather over x before W_out (`BLF_xyz → BLF_yz`), one collective for
    /// all the given tensors; identity in other layouts.
    func gatherHidden(_ values: [Value], label: String) throws -> [Value]
    /// Between W_qkv and W_o: attention over heads or over the batch.
    func attentionCore(_ qkv: Value, layer: Int) throws -> Value
    /// Between W_in and W_out: swiglu.
    func feedForwardCore(_ gateUp: Value) throws -> Value
    /// Σ xᵢ·Wᵢᵀ, then reduce-scatter over the layout's output axes.
    func multiplyThenReduce(_ pairs: [(Value, LayerMatrix)], layer: Int, label: String) throws -> Value
    func add(_ a: Value, _ b: Value) -> Value
}

/// One layer of the partitioned model, written once for every layout and interpreter.
/// Serial: x + attn(norm x), then + ffn(norm ·). Parallel (§3.4): both branches share one
/// gathered input, one hidden-axis reduce-scatter and all-gather (the fused projections), and
/// one reduction of their sum.
public func shardedLayer<I: ShardedLayerInterpreter>(_ i: I, block: BlockKind, layer l: Int, _ x: I.Value) throws -> I.Value {
    let h = try i.norm(x, feedForward: false, layer: l)
    switch block {
    case .serial:
        let qkv = try i.scatterHidden(i.gatherThenMultiply(h, [.qkv], layer: l, label: "attention"), label: "attention")[0]
        let o = try i.gatherHidden([i.attentionCore(qkv, layer: l)], label: "attention")[0]
        let x1 = i.add(x, try i.multiplyThenReduce([(o, .attentionOutput)], layer: l, label: "attention"))
        let h1 = try i.norm(x1, feedForward: true, layer: l)
        let gu = try i.scatterHidden(i.gatherThenMultiply(h1, [.gateUp], layer: l, label: "ffn"), label: "ffn")[0]
        let act = try i.gatherHidden([i.feedForwardCore(gu)], label: "ffn")[0]
        return i.add(x1, try i.multiplyThenReduce([(act, .down)], layer: l, label: "ffn"))
    case .parallel:
        let projected = try i.scatterHidden(i.gatherThenMultiply(h, [.qkv, .gateUp], layer: l, label: "block"), label: "block")
        let hidden = try i.gatherHidden([i.attentionCore(projected[0], layer: l), i.feedForwardCore(projected[1])], label: "block")
        return i.add(x, try i.multiplyThenReduce([(hidden[0], .attentionOutput), (hidden[1], .down)], layer: l, label: "block"))
    }
}
