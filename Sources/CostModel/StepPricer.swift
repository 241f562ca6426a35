import Foundation
import Partitioning
import Transformer

/// Seconds the cost model predicts for one step of the serving loop: `sequences` sequences
/// feeding `tokens` new tokens in all (one per decoding sequence, the rest prompt chunks),
/// attending on average to `context` positions (cached + new) — Pope et al. §2 (decode cost
/// grows with batch and context through the KV reads), §4 (the latency/throughput trade).
///
/// A step is traced as one forward pass of `sequences` × ⌈tokens / sequences⌉ rows at the mean
/// context: exact for a pure decode step (one token per sequence; KV reads and attention FLOPs
/// are linear in context, so the mean prices the sum), an approximation for a step mixing
/// prefill chunks with decodes (its rows are spread evenly). A step with prompt tokens runs the
/// prefill layout, a pure decode step the decode layout, as the engine does.
public final class StepPricer: @unchecked Sendable {
    public struct Shape: Hashable, Sendable {
        public var sequences: Int
        public var tokens: Int
        public var context: Int
        public init(sequences: Int, tokens: Int, context: Int) {
            self.sequences = sequences
            self.tokens = tokens
            self.context = context
        }
        var decodesOnly: Bool { tokens == sequences }
    }

    let costModel: CostModel
    let model: ModelSpec
    let mesh: Mesh
    let prefill: PhaseLayout
    let decode: PhaseLayout
    let weights: WeightPrecision
    private let lock = NSLock()
    private var memo: [Shape: Double] = [:]

    public init(costModel: CostModel, config: ModelConfig, mesh: Mesh, prefill: PhaseLayout, decode: PhaseLayout, weights: WeightPrecision) {
        self.costModel = costModel
        model = ModelSpec(config: config, nominalParameters: Double(config.parameterCount))
        self.mesh = mesh
        self.prefill = prefill
        self.decode = decode
        self.weights = weights
    }

    /// Predicted seconds of one step (memoized: contexts are rounded up to a multiple of 16,
    /// a step's cost changes by well under 1% between them).
    public func seconds(_ shape: Shape) -> Double {
        var key = shape
        key.sequences = max(1, shape.sequences)
        key.tokens = max(key.sequences, shape.tokens)
        key.context = max(1, (shape.context + 15) / 16 * 16)
        if let known = lock.withLock({ memo[key] }) { return known }
        let rows = (key.tokens + key.sequences - 1) / key.sequences
        let layout = key.decodesOnly ? decode : prefill
        let value: Double
        do {
            let trace = try Tracer.forward(config: model.config, mesh: mesh, rank: 0, layout: layout,
                                           batch: TracedBatch(sequences: key.sequences, newTokens: rows, context: max(rows, key.context)),
                                           panelRows: weights.panelRows, unitInputs: weights.unitInputs)
            let tc = TracedConfiguration(model: model, mesh: mesh, phase: key.decodesOnly ? .decode : .prefill, trace: trace, passes: 1,
                                         tokens: Double(key.tokens), weights: weights, memoryPerChipBytes: 0, maxContextTokens: 0)
            value = costModel.price(tc).latencySeconds
        } catch {
            value = .infinity   // a shape the layouts cannot run: never within a target
        }
        lock.withLock { memo[key] = value }
        return value
    }
}
