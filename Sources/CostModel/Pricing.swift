import Collectives
import Partitioning
import Transformer

/// The cost model's few calibration parameters, each with a physical meaning. The defaults
/// are fitted (`Calibration.fit`) to the paper's 37 TPU v4 measurements in SPEC §5 (Table 2,
/// Figure 1's 540B points and labelled 62B/8B points, Figure 7, Table D.2): median error
/// 11.7%, worst 41% (Table D.2's batch-16 generate, over-predicted).
public struct Calibration: Sendable, Equatable, Codable {
    /// Achieved fraction of peak FLOP/s in matmuls (fitted: 0.70).
    public var computeEfficiency = 0.70
    /// Achieved fraction of peak memory bandwidth streaming weights and KV cache (fitted: 0.50).
    public var memoryEfficiency = 0.50
    /// Seconds per latency step of a collective; a collective over some axes takes
    /// Σ (axis size − 1) steps (fitted: 1.5 µs; the scaling book gives about 1 µs per hop).
    public var collectiveLatency = 1.5e-6
    /// Fraction of activation communication hidden behind compute or memory time (fitted: 0;
    /// weight all-gathers are always prefetched behind compute, §3.5).
    public var overlap = 0.0
    public init() {}
}

/// Bytes per element of each tensor class.
public enum WeightPrecision: String, Sendable, CaseIterable {
    case bf16, int8, f32, native
    /// This runtime's 8-bit weights: one f32 scale and minimum per 32 weights.
    case int8Grouped = "int8-g32"
    /// Bytes per weight element.
    public var bytes: Double {
        switch self {
        case .bf16: 2
        case .int8: 1
        case .f32: 4
        case .native: 0.625  // Q4_1: 20 bytes per 32 weights
        case .int8Grouped: 1.25
        }
    }
}

/// A priced forward pass (or decode run) of one configuration.
public struct Prediction: Sendable {
    public var latencySeconds: Double
    public var computeSeconds: Double
    public var memorySeconds: Double
    public var communicationSeconds: Double
    public var communicationBytesPerChip: Double
    public var mfu: Double
    public var costChipMsPerToken: Double
    public var memoryPerChipBytes: Double
    public var fits: Bool
    public var maxContextTokens: Double
    public var perTokenMs: Double?
}

public enum Phase: String, Sendable { case prefill, decode }

/// A configuration traced once, ready to be priced under any calibration.
public struct TracedConfiguration: Sendable {
    public var model: ModelSpec
    public var mesh: Mesh
    public var phase: Phase
    /// One pass (a prefill, or one decode step at the mean context).
    public var trace: Trace
    /// Passes in the phase: 1 for prefill, G for decode.
    public var passes: Double
    /// Tokens processed (prefill) or generated (decode).
    public var tokens: Double
    public var weights: WeightPrecision
    public var memoryPerChipBytes: Double
    public var maxContextTokens: Double
}

/// Prices traces with the hardware's peak numbers and the calibration. Per pass: weight
/// all-gathers can be prefetched (§3.5), so they overlap compute and memory time fully;
/// activation collectives sit on the critical path except the `overlap` fraction hidden
/// behind the busy time:
/// total = max(compute, memory, weight gathers) + activation comm − overlap·min(activation comm, busy).
public struct CostModel: Sendable {
    public var hardware: Hardware
    public var calibration: Calibration
    public init(hardware: Hardware, calibration: Calibration = Calibration()) {
        self.hardware = hardware
        self.calibration = calibration
    }


    /// Traces a prefill of B×L tokens, or the decode of G tokens after C cached ones.
    public func trace(model: ModelSpec, mesh: Mesh, layout: PhaseLayout, phase: Phase, batch B: Int, inputTokens L: Int,
                      generateTokens G: Int, context C: Int? = nil, weights: WeightPrecision,
                      kvMemoryFraction: Double = 0.3) throws -> TracedConfiguration {
        let config = model.config
        try layout.validate(for: config, on: mesh)
        let n = Double(mesh.deviceCount)
        let context = C ?? L
        let trace: Trace, passes: Double, tokens: Double
        switch phase {
        case .prefill:
            trace = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                       batch: TracedBatch(sequences: B, newTokens: L, context: L))
            (passes, tokens) = (1, Double(B * L))
        case .decode:
            // G steps with the context growing from C to C + G: priced at the mean context.
            trace = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                       batch: TracedBatch(sequences: B, newTokens: 1, context: context + G / 2))
            (passes, tokens) = (Double(G), Double(B * G))
        }
        // Memory per chip: weight shards plus the KV cache of B sequences at full context.
        let weightBytes = Double(config.parameterCount) * weights.bytes / n
        let kvPerToken = Formulas.kvBytesPerToken(layers: config.layers, kvHeads: config.kvHeads,
                                                  headDimension: config.headDimension, bytes: hardware.activationBytes)
        let replicated = layout.attention == .shardedOverHeads && config.kvHeads < mesh.deviceCount
        let kvTotal = kvPerToken * Double(B) * Double(context + (phase == .decode ? G : 0))
        let memoryPerChip = weightBytes + (replicated ? kvTotal : kvTotal / n)
        let maxContext = Formulas.maxContext(kvBytesPerToken: kvPerToken, batch: Double(B), chips: n, memoryPerChip: hardware.memoryBytes,
                                             fraction: kvMemoryFraction, replicated: replicated)
        return TracedConfiguration(model: model, mesh: mesh, phase: phase, trace: trace, passes: passes, tokens: tokens,
                                   weights: weights, memoryPerChipBytes: memoryPerChip, maxContextTokens: maxContext)
    }

    public func price(_ tc: TracedConfiguration) -> Prediction {
        let t = tc.trace
        let c = calibration
        let compute = (t.matmulFLOPs / hardware.peakFLOPs + t.attentionFLOPs / (hardware.attentionFLOPs ?? hardware.peakFLOPs))
            / c.computeEfficiency
        let memory = (t.weightElements * tc.weights.bytes + t.kvElements * hardware.activationBytes)
            / (hardware.memoryBandwidth * c.memoryEfficiency)
        var weightComm = 0.0, activationComm = 0.0, bytes = 0.0
        for col in t.collectives {
            let isWeights = col.label.hasSuffix(".weights")
            let b = col.bytesSent(elementBytes: isWeights ? tc.weights.bytes : hardware.activationBytes)
            // A multi-axis collective runs axis by axis on the torus: Σ (size − 1) latency steps.
            let steps = col.axes.axes.reduce(0) { $0 + tc.mesh.size($1) - 1 }
            // Links are per axis: a collective over some axes of the 3D torus uses their share of
            // the chip's interconnect bandwidth.
            let bandwidth = hardware.torusLinks ? hardware.interconnectBandwidth * Double(col.axes.axes.count) / 3
                                                : hardware.interconnectBandwidth
            let seconds = b / bandwidth + c.collectiveLatency * Double(steps)
            bytes += b
            if isWeights { weightComm += seconds } else { activationComm += seconds }
        }
        let busy = max(compute, memory, weightComm)
        let pass = busy + activationComm - c.overlap * min(activationComm, max(compute, memory))
        let n = Double(tc.mesh.deviceCount)
        let seconds = pass * tc.passes
        return Prediction(
            latencySeconds: seconds, computeSeconds: compute * tc.passes, memorySeconds: memory * tc.passes,
            communicationSeconds: (weightComm + activationComm) * tc.passes, communicationBytesPerChip: bytes * tc.passes,
            mfu: Formulas.mfu(parameters: tc.model.nominalParameters, tokens: tc.tokens, seconds: seconds, chips: n, peakFLOPs: hardware.peakFLOPs),
            costChipMsPerToken: Formulas.cost(chips: n, seconds: seconds, tokens: tc.tokens) * 1e3,
            memoryPerChipBytes: tc.memoryPerChipBytes, fits: tc.memoryPerChipBytes <= hardware.memoryBytes,
            maxContextTokens: tc.maxContextTokens, perTokenMs: tc.phase == .decode ? pass * 1e3 : nil)
    }

    /// Traces and prices one configuration.
    public func predict(model: ModelSpec, mesh: Mesh, layout: PhaseLayout, phase: Phase, batch B: Int, inputTokens L: Int,
                        generateTokens G: Int, context C: Int? = nil, weights: WeightPrecision,
                        kvMemoryFraction: Double = 0.3) throws -> Prediction {
        price(try trace(model: model, mesh: mesh, layout: layout, phase: phase, batch: B, inputTokens: L, generateTokens: G,
                        context: C, weights: weights, kvMemoryFraction: kvMemoryFraction))
    }
}
