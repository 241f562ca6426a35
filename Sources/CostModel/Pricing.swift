import Collectives
import Partitioning
import Transformer

/// The cost model's few calibration parameters, each with a physical meaning.
public struct Calibration: Sendable, Equatable, Codable {
    /// Achieved fraction of peak FLOP/s in matmuls.
    public var computeEfficiency = 0.8
    /// Achieved fraction of peak memory bandwidth when streaming weights and KV cache.
    public var memoryEfficiency = 0.8
    /// Fixed cost of one collective per chip it spans beyond the first (seconds): per-hop
    /// latency, which dominates small-batch decode (SPEC §4.3, §10; about 1 µs per hop on a
    /// TPU v4 torus per the scaling book's figure).
    public var collectiveLatency = 1e-6
    /// Fraction of communication hidden behind compute or memory time (§3.5).
    public var overlap = 0.5
    public init() {}
}

/// Bytes per element of each tensor class.
public enum WeightPrecision: String, Sendable, CaseIterable {
    case bf16, int8, f32, native
    /// Bytes per weight element.
    public var bytes: Double {
        switch self {
        case .bf16: 2
        case .int8: 1
        case .f32: 4
        case .native: 0.625  // Q4_1: 20 bytes per 32 weights
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

/// Prices traces with the hardware's peak numbers and the calibration (roofline per pass:
/// max(compute, memory) plus the communication not hidden behind it).
public struct CostModel: Sendable {
    public var hardware: Hardware
    public var calibration: Calibration
    public init(hardware: Hardware, calibration: Calibration = Calibration()) {
        self.hardware = hardware
        self.calibration = calibration
    }

    /// Seconds for one traced pass on one device.
    func price(_ t: Trace, weightBytes: Double, activationBytes: Double) -> (total: Double, compute: Double, memory: Double, comm: Double, commBytes: Double) {
        let compute = (t.matmulFLOPs + t.attentionFLOPs) / (hardware.peakFLOPs * calibration.computeEfficiency)
        let memory = (t.weightElements * weightBytes + t.kvElements * activationBytes) / (hardware.memoryBandwidth * calibration.memoryEfficiency)
        var comm = 0.0, bytes = 0.0
        for c in t.collectives {
            let b = c.label.hasSuffix(".weights") ? c.bytesSent(elementBytes: weightBytes) : c.bytesSent(elementBytes: activationBytes)
            bytes += b
            comm += b / hardware.interconnectBandwidth + calibration.collectiveLatency * Double(c.groupSize - 1)
        }
        let busy = max(compute, memory)
        let total = busy + comm - calibration.overlap * min(comm, busy)
        return (total, compute, memory, comm, bytes)
    }

    /// Predicts a prefill of B×L tokens, or the decode of G tokens after C cached ones.
    public func predict(model: ModelSpec, mesh: Mesh, layout: PhaseLayout, phase: Phase, batch B: Int, inputTokens L: Int,
                        generateTokens G: Int, context C: Int? = nil, weights: WeightPrecision,
                        kvMemoryFraction: Double = 0.3) throws -> Prediction {
        let config = model.config
        try layout.validate(for: config, on: mesh)
        let activationBytes = 2.0  // bf16 activations and KV cache
        let n = Double(mesh.deviceCount)
        let context = C ?? L
        var seconds = 0.0, compute = 0.0, memory = 0.0, comm = 0.0, commBytes = 0.0, tokens = 0.0
        switch phase {
        case .prefill:
            let t = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                       batch: TracedBatch(sequences: B, newTokens: L, context: L))
            (seconds, compute, memory, comm, commBytes) = price(t, weightBytes: weights.bytes, activationBytes: activationBytes)
            tokens = Double(B * L)
        case .decode:
            // G steps with the context growing from C to C + G: priced at the mean context.
            let t = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                       batch: TracedBatch(sequences: B, newTokens: 1, context: context + G / 2))
            let step = price(t, weightBytes: weights.bytes, activationBytes: activationBytes)
            let g = Double(G)
            (seconds, compute, memory, comm, commBytes) = (step.total * g, step.compute * g, step.memory * g, step.comm * g, step.commBytes * g)
            tokens = Double(B * G)
        }
        // Memory per chip: weight shards, plus the KV cache of B sequences at full context.
        let weightBytes = Double(config.parameterCount) * weights.bytes / n
        let kvPerToken = Formulas.kvBytesPerToken(layers: config.layers, kvHeads: config.kvHeads, headDimension: config.headDimension,
                                                  bytes: activationBytes)
        let replicated = layout.attention == .shardedOverHeads && config.kvHeads < mesh.deviceCount
        let kvPerChip = replicated ? kvPerToken * Double(B) * Double(context + G) : kvPerToken * Double(B) * Double(context + G) / n
        let memoryPerChip = weightBytes + kvPerChip
        let maxContext = Formulas.maxContext(kvBytesPerToken: kvPerToken, batch: Double(B), chips: n, memoryPerChip: hardware.memoryBytes,
                                             fraction: kvMemoryFraction, replicated: replicated)
        return Prediction(
            latencySeconds: seconds, computeSeconds: compute, memorySeconds: memory, communicationSeconds: comm,
            communicationBytesPerChip: commBytes,
            mfu: Formulas.mfu(parameters: model.nominalParameters, tokens: tokens, seconds: seconds, chips: n, peakFLOPs: hardware.peakFLOPs),
            costChipMsPerToken: Formulas.cost(chips: n, seconds: seconds, tokens: tokens) * 1e3,
            memoryPerChipBytes: memoryPerChip, fits: memoryPerChip <= hardware.memoryBytes, maxContextTokens: maxContext,
            perTokenMs: phase == .decode ? seconds / Double(G) * 1e3 : nil)
    }
}

