import Collectives
import Partitioning
import Transformer

/// The cost model's five calibration parameters, each a physical rate or fraction. The defaults
/// are fitted (`Calibration.fit`) to the paper's 37 TPU v4 measurements in SPEC §5 (Table 2,
/// Figure 1's 540B points and labelled 62B/8B points, Figure 7, Table D.2's PaLM columns):
/// median error 4.6%, worst 14.5% (Figure 1's 8B decode on 16 chips); on the 9 SPEC points kept
/// out of the fit (`Measurement.heldOut`) median 6.3%, worst 8.2%.
public struct Calibration: Sendable, Equatable, Codable {
    /// Achieved fraction of peak FLOP/s in matmuls and attention (fitted: 0.884).
    public var computeEfficiency = 0.88
    /// Achieved fraction of peak memory bandwidth streaming weights and KV cache (fitted: 1.0,
    /// the top of its range: the traced bytes include this runtime's per-block copies of the
    /// multiquery K/V projections, ~13% of PaLM 540B's weights, which a TPU implementation would
    /// not read, so the real fraction is nearer 0.9).
    public var memoryEfficiency = 1.0
    /// Achieved fraction of the chip's interconnect bandwidth by any collective, whatever torus
    /// axes it spans (i.e. 47 GB/s of TPU v4's 270 GB/s: about the two links of one
    /// bidirectional ring at half their 45 GB/s each — the paper's collectives are loops of
    /// collective-permutes on a ring, §3.5). The measurements rule out bandwidth growing with the
    /// axes spanned: the XYZ weight all-gather of Fig. 7 runs no faster per byte than 2D
    /// weight-stationary's one- and two-axis collectives. (Fitted: 0.174.)
    public var interconnectEfficiency = 0.175
    /// Seconds per hop of a collective: one over some axes takes Σ (axis size − 1) ring steps
    /// (fitted: 2.5 µs; the scaling book puts one hop near 1 µs, before synchronisation). At
    /// small batch this latency, not bandwidth, dominates the measured decode steps (PaLM 540B
    /// on 64 chips: 45 hops per layer, 13 ms of a 28–36 ms step).
    public var collectiveLatency = 2.5e-6
    /// Fraction of activation communication hidden behind compute — Looped CollectiveEinsum
    /// (§3.5) overlaps collectives with the matmuls they feed, but never with the streaming of
    /// weights or KV cache, which the same dependent steps wait on (fitted: 0.46).
    public var overlap = 0.46
    /// Whether weight all-gathers are prefetched behind the rest of the pass (a TPU's ICI moves
    /// them without the cores, §3.5). On a CPU host the "all-gather" is copying on the cores
    /// that multiply, so it adds to the pass (`HostCalibration.calibration` sets false).
    public var prefetchesWeights = true
    public init() {}
}

/// Bytes per element of each tensor class.
public enum WeightPrecision: String, Sendable, CaseIterable {
    case bf16, int8, f32, native
    /// This runtime's 8-bit weights (`--weights int8`): GGML Q8_0 blocks, one f16 scale per 32
    /// weights (34 bytes per 32). The raw value is the name host calibrations are keyed by
    /// (`allThreadsOPs`, the pass efficiencies); it still describes the format (8 bits, groups
    /// of 32), so it was kept when the format moved from an f32 scale and minimum per group to
    /// Q8_0 — a calibration measured before that describes the older kernel: re-run `calibrate`.
    case int8Grouped = "int8-g32"
    /// Bytes per weight element.
    public var bytes: Double {
        switch self {
        case .bf16: 2
        case .int8: 1
        case .f32: 4
        case .native: 0.625  // Q4_1: 20 bytes per 32 weights
        case .int8Grouped: 34.0 / 32
        }
    }
    /// Output channels per stored panel (this runtime packs f32 weights and int8's Q8_0 blocks
    /// 16 channels to a panel; the paper's formats and `native` are counted row by row).
    public var panelRows: Int { self == .f32 || self == .int8Grouped ? 16 : 1 }
    /// Inputs per stored unit: int8's Q8_0 blocks and the file's 4-bit blocks are 32 wide, so a
    /// shard's columns are stored as whole units of 32.
    public var unitInputs: Int { self == .int8Grouped || self == .native ? 32 : 1 }
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
    /// A decode run's attention phase on a host that measured its decode attention
    /// (Hardware.decodeAttentionBandwidth), seconds; 0 when attention counts with compute and memory.
    public var attentionSeconds = 0.0
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

/// Prices traces with the hardware's peak numbers and the calibration. Per pass, with compute
/// C, memory M (weights and KV cache), activation communication A and weight all-gathers W:
///
///     pass = max(C + (1 − overlap)·A, M + A, W) + collectiveLatency · hops
///
/// On a host that measured its decode attention (`Hardware.decodeAttentionBandwidth`), a decode
/// pass adds that attention as a phase of its own, T = max(attention FLOPs at the attention
/// rate, KV bytes at the measured rate), and C and M are the matmuls' FLOPs and weight bytes;
/// with `Hardware.decodeRowsStreaming` a decode pass's M is its weight bytes at the streaming
/// rate measured for its rows per weight.
/// (with `prefetchesWeights` false: max(C + (1 − overlap)·A, M + A) + W + latency).
/// Matmuls overlap everything else; activation collectives overlap compute only in part and
/// memory streaming not at all (at small batch a decode step is memory plus communication plus
/// latency); weight all-gathers are prefetched behind everything (§3.5). Every collective moves
/// its traced bytes at `interconnectEfficiency` × the chip's interconnect bandwidth, except that
/// a collective along a single TPU torus axis without wraparound (slices smaller than a 4×4×4
/// cube are meshes, not tori; Cloud TPU v4 docs) has no ring to run on — a line or a pair of
/// chips — and gets half.
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
                                       batch: TracedBatch(sequences: B, newTokens: L, context: L), panelRows: weights.panelRows, unitInputs: weights.unitInputs)
            (passes, tokens) = (1, Double(B * L))
        case .decode:
            // G steps with the context growing from C to C + G: priced at the mean context.
            trace = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                       batch: TracedBatch(sequences: B, newTokens: 1, context: context + G / 2), panelRows: weights.panelRows, unitInputs: weights.unitInputs)
            (passes, tokens) = (Double(G), Double(B * G))
        }
        // Memory per chip: weight shards plus the KV cache of B sequences at full context.
        let weightBytes = Double(config.parameterCount) * weights.bytes / n
        let kvPerToken = Formulas.kvBytesPerToken(layers: config.layers, kvHeads: config.kvHeads,
                                                  headDimension: config.headDimension, bytes: hardware.kvCacheBytes)
        let replicated = layout.attention == .shardedOverHeads && config.kvHeads < mesh.deviceCount
        let kvTotal = kvPerToken * Double(B) * Double(context + (phase == .decode ? G : 0))
        let memoryPerChip = weightBytes + (replicated ? kvTotal : kvTotal / n)
        let maxContext = Formulas.maxContext(kvBytesPerToken: kvPerToken, batch: Double(B), chips: n, memoryPerChip: hardware.memoryBytes,
                                             fraction: kvMemoryFraction, replicated: replicated)
        return TracedConfiguration(model: model, mesh: mesh, phase: phase, trace: trace, passes: passes, tokens: tokens,
                                   weights: weights, memoryPerChipBytes: memoryPerChip, maxContextTokens: maxContext)
    }

    public func price(_ tc: TracedConfiguration) -> Prediction {
        price(tc, totals: PassTotals(tc, hardware: hardware))
    }

    func price(_ tc: TracedConfiguration, totals t: PassTotals) -> Prediction {
        let c = calibration
        let compute = t.compute / c.computeEfficiency
        let memory = t.memory / c.memoryEfficiency
        let activations = t.activationCommunication / c.interconnectEfficiency
        let weightGathers = t.weightCommunication / c.interconnectEfficiency
        let latency = c.collectiveLatency * t.hops + t.measuredLatency
        let streamed = max(compute + (1 - c.overlap) * activations, memory + activations)
        let pass = (c.prefetchesWeights ? max(streamed, weightGathers) : streamed + weightGathers) + latency + t.attention
        let n = Double(tc.mesh.deviceCount)
        let seconds = pass * tc.passes
        return Prediction(
            latencySeconds: seconds, computeSeconds: compute * tc.passes, memorySeconds: memory * tc.passes,
            communicationSeconds: (activations + weightGathers + latency) * tc.passes, communicationBytesPerChip: t.bytes * tc.passes,
            mfu: Formulas.mfu(parameters: tc.model.nominalParameters, tokens: tc.tokens, seconds: seconds, chips: n, peakFLOPs: hardware.peakFLOPs),
            costChipMsPerToken: Formulas.cost(chips: n, seconds: seconds, tokens: tc.tokens) * 1e3,
            memoryPerChipBytes: tc.memoryPerChipBytes, fits: tc.memoryPerChipBytes <= hardware.memoryBytes,
            maxContextTokens: tc.maxContextTokens, perTokenMs: tc.phase == .decode ? pass * 1e3 : nil,
            attentionSeconds: t.attention * tc.passes)
    }

    /// Traces and prices one configuration.
    public func predict(model: ModelSpec, mesh: Mesh, layout: PhaseLayout, phase: Phase, batch B: Int, inputTokens L: Int,
                        generateTokens G: Int, context C: Int? = nil, weights: WeightPrecision,
                        kvMemoryFraction: Double = 0.3) throws -> Prediction {
        price(try trace(model: model, mesh: mesh, layout: layout, phase: phase, batch: B, inputTokens: L, generateTokens: G,
                        context: C, weights: weights, kvMemoryFraction: kvMemoryFraction))
    }
}

/// One pass of a trace at the hardware's peak rates, before any calibration: seconds of compute,
/// memory and communication at 100% efficiency, and the collectives' latency hops.
struct PassTotals {
    var compute = 0.0
    var memory = 0.0
    /// A decode pass's attention priced as its own phase (Hardware.decodeAttentionBandwidth),
    /// seconds at the measured rate; 0 when attention counts with compute and memory.
    var attention = 0.0
    /// Activation collectives, seconds at the full interconnect bandwidth.
    var activationCommunication = 0.0
    /// Weight all-gathers (weight-gathered layouts), seconds at the full interconnect bandwidth.
    var weightCommunication = 0.0
    /// Σ over collectives of Σ (axis size − 1), for kinds priced at the calibration's latency.
    var hops = 0.0
    /// Seconds of latency of collectives whose kind has a measured rate (hops × its latency).
    var measuredLatency = 0.0
    var bytes = 0.0
    /// Bytes the device copies to assemble gathered weights (`copiesGatheredWeights`).
    var gatherCopyBytes = 0.0

    init(_ tc: TracedConfiguration, hardware: Hardware) {
        let t = tc.trace
        let attentionCompute = t.attentionFLOPs / (hardware.attentionFLOPs ?? hardware.peakFLOPs)
        let kvBytes = t.kvElements * hardware.kvCacheBytes
        compute = t.matmulFLOPs / hardware.peakFLOPs
        memory = t.weightElements * tc.weights.bytes / hardware.memoryBandwidth
        if tc.phase == .decode, t.weightElements > 0 {
            // A decode pass streams its weights at the rate measured for its rows per weight,
            // when known (Hardware.decodeRowsStreaming; 1 row: the full bandwidth).
            memory /= hardware.rowsStreaming(t.matmulFLOPs / (2 * t.weightElements))
        }
        if tc.phase == .decode, let perThread = hardware.decodeAttentionBandwidth?[hardware.kvCacheType] {
            // This host's decode attention, a phase of its own (Hardware.decodeAttentionBandwidth):
            // its KV bytes at the measured rate (arithmetic included) on as many threads as it
            // has sequences (the runtime splits decode attention by sequence; the pass's whole
            // batch bounds a device's share), at most the device's memory bandwidth — or its
            // FLOPs, if slower.
            let sequences = max(1, (tc.tokens / max(1, tc.passes)).rounded(.down))
            let rate = min(perThread * min(Double(hardware.threadsPerDevice), sequences), hardware.memoryBandwidth)
            attention = max(attentionCompute, kvBytes / rate)
        } else {
            compute += attentionCompute
            memory += kvBytes / hardware.memoryBandwidth
        }
        // The unembedding's gathers (logit rows in, logits out to every device for sampling) are
        // this runtime's, not the layouts': the paper samples from sharded logits on device
        // (§3.6). Priced only for this host (`pricesUnembedding`).
        for col in t.collectives where col.site.part != .unembedding || hardware.pricesUnembedding {
            let isWeights = col.site.payload == .weights
            let b = col.bytesSent(elementBytes: isWeights ? tc.weights.bytes : hardware.activationBytes)
            let spanned = col.axes.axes.filter { tc.mesh.size($0) > 1 }
            let ring = spanned.count != 1 || hardware.wrapsAround(spanned[0], in: tc.mesh)
            var seconds = b / (hardware.bandwidth(of: col.kind, spanning: spanned) * (ring ? 1 : 0.5))
            let collectiveHops = Double(spanned.reduce(0) { $0 + tc.mesh.size($1) - 1 })
            if let rate = hardware.collectiveRates?[col.kind] {
                measuredLatency += rate.latency * collectiveHops
                // Measured calls (a network link): each of the hops sends its share of the
                // bytes and takes what a measured 2-device call of that size took (weight
                // gathers: calls back to back); the part beyond the latency is the transfer.
                if collectiveHops > 0, let hop = rate.seconds(bytes: b / collectiveHops, backToBack: isWeights) {
                    seconds = max(0, hop - rate.latency) * collectiveHops
                }
            } else {
                hops += collectiveHops
            }
            if isWeights && hardware.copiesGatheredWeights {
                // §3.2.3's weight gathers on this host (WeightGather.swift): the own shard is
                // copied out to send (read and written once), then the gathered shards into
                // tiles and the tiles into the joined matrix (the whole matrix read and written
                // twice), on the cores that multiply. Which bytes reach memory depends on the
                // caches: priced are the shard's round trip, the gathered words read and the
                // joined matrix written, at the device's streaming rate, the tiles' round trip
                // left to the cache — a rule chosen to match one measurement (in-process SmolLM2
                // weight-gathered XYZ decode on 2 devices: 359 MB copied in 15.4 ms), not derived.
                let shard = Double(col.count) * tc.weights.bytes, matrix = shard * Double(col.groupSize)
                gatherCopyBytes += 2 * shard + 4 * matrix
                seconds += (2 * shard + 2 * matrix) / hardware.memoryBandwidth
            }
            bytes += b
            if isWeights { weightCommunication += seconds } else { activationCommunication += seconds }
        }
    }
}

extension Hardware {
    /// Whether a torus axis of the mesh has wraparound links. On TPU v4 only slices built of whole
    /// 4×4×4 cubes are tori, and then along axes that are multiples of 4; smaller slices are
    /// meshes (Cloud TPU v4 docs). Switched interconnects (`torusLinks` false) always have a ring.
    public func wrapsAround(_ axis: Axis, in mesh: Mesh) -> Bool {
        guard torusLinks else { return true }
        return mesh.deviceCount >= 64 && mesh.size(axis) % 4 == 0
    }
}
