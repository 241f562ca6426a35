import Foundation
import Collectives
@testable import CostModel
import Partitioning
@testable import Runtime
import Tensors
import Testing
import Transformer

/// The tracer runs the same layer program as the runtime: what it records equals what a real
/// run does, device by device (DESIGN.md).
struct TraceTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let parallel: Bool
        let mesh: String
        let ffn: FeedForwardLayout
        let attention: AttentionLayout
        var testDescription: String { "\(parallel ? "palm" : "llama") \(mesh) \(ffn) \(attention)" }
    }

    static let cases: [Case] = [false, true].flatMap { p in
        ["1", "2", "4", "2x2", "2x2x2"].flatMap { m in
            FeedForwardLayout.allCases.flatMap { f in AttentionLayout.allCases.map { Case(parallel: p, mesh: m, ffn: f, attention: $0) } }
        }
    }

    /// `bench --profile`'s op classes, on device 0 of meshes of 1 and 2 with both attention
    /// layouts: one matmul per layer matrix plus the unembedding, each under its tensors' names;
    /// the attention class's bytes equal the KV bytes the tracer prices for device 0 (its own
    /// formula); every class's time is positive and together within the pass's wall time.
    @Test(arguments: ["1", "2"], AttentionLayout.allCases)
    func profileAgreesWithTheTrace(meshText: String, attention: AttentionLayout) throws {
        let config = ModelConfig.gemmaTiny()
        let mesh = try Mesh(parsing: meshText)
        let layout = PhaseLayout(.weightStationary1D, attention)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .int8, threads: 1)
        let caches = (0..<3).map { _ in engine.makeCache() }
        for (step, (n, context)) in [(7, 7), (1, 8)].enumerated() {
            let profile = OpProfile()
            engine.profile = profile
            let start = Date()
            _ = try engine.forward(caches.enumerated().map { i, c in SequenceInput(cache: c, tokens: (0..<n).map { (i * 5 + $0 + step) % 90 }) })
            let wall = Date().timeIntervalSince(start)
            let matmuls = profile.entries.filter { $0.key.hasPrefix("matmul ") }
            #expect(Set(matmuls.keys) == ["matmul attn_q|attn_k|attn_v", "matmul attn_output", "matmul ffn_gate|ffn_up", "matmul ffn_down",
                                          "matmul token_embd"], "\(matmuls.keys.sorted())")
            #expect(matmuls.values.reduce(0) { $0 + $1.calls } == 4 * config.layers + 1)
            #expect(profile.entries["attention"]?.calls == config.layers)
            let trace = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout,
                                           batch: TracedBatch(sequences: 3, newTokens: n, context: context),
                                           panelRows: WeightPrecision.int8Grouped.panelRows, unitInputs: WeightPrecision.int8Grouped.unitInputs)
            #expect(profile.entries["attention"]?.bytes == trace.kvElements * KVCacheType.f16.bytesPerElement, "\(meshText) \(attention) step \(step)")
            #expect(profile.entries.values.allSatisfy { $0.seconds > 0 || $0.calls == 0 })
            #expect(profile.totalSeconds <= wall)
        }
    }

    /// A weight-gathered decode step (§3.2.3) on this host: the bytes the runtime copies to
    /// assemble its gathered weights (`bench --profile`'s weight_gather class, counted at each
    /// copy from the sizes of the shard, the tiles and the joined matrix) are the bytes the cost
    /// model prices for them, from the trace.
    @Test(arguments: ["2", "2x2"], [FeedForwardLayout.weightGatheredX, .weightGatheredXYZ])
    func gatheredWeightCopiesArePricedAsExecuted(meshText: String, ffn: FeedForwardLayout) throws {
        let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        let mesh = try Mesh(parsing: meshText)
        let layout = PhaseLayout(ffn, .shardedOverHeads)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .int8, threads: 1)
        let cache = engine.makeCache()
        _ = try engine.forward([SequenceInput(cache: cache, tokens: [1, 2, 3])])
        let profile = OpProfile()
        engine.profile = profile
        _ = try engine.forward([SequenceInput(cache: cache, tokens: [4])])
        var host = Hardware(name: "cpu", peakFLOPs: 1e11, memoryBytes: 1e10, memoryBandwidth: 1e10, interconnectBandwidth: 1e9)
        host.copiesGatheredWeights = true
        let traced = try CostModel(hardware: host).trace(model: ModelSpec(config: config, nominalParameters: 1), mesh: mesh, layout: layout,
                                                         phase: .decode, batch: 1, inputTokens: 1, generateTokens: 1, context: 3,
                                                         weights: .int8Grouped)
        let priced = PassTotals(traced, hardware: host).gatherCopyBytes
        #expect(priced > 0)
        #expect(profile.entries["weight_gather"]?.bytes == priced, "\(meshText) \(ffn)")
        host.copiesGatheredWeights = false
        #expect(PassTotals(traced, hardware: host).gatherCopyBytes == 0)
    }

    /// Trace == execution, device by device, for a prefill of B sequences of L tokens and the
    /// decode step after it: the ordered collectives (kind, axes, site, bytes the transport
    /// counted), the matmul and attention FLOPs, and the weight and KV-cache bytes read. The
    /// executed side is counted where it happened (the shapes handed to the kernels, the
    /// buffers' sizes, the transports' counters), never from a formula shared with the tracer.
    @Test(arguments: cases)
    func traceEqualsExecution(_ c: Case) throws {
        let config: ModelConfig = c.parallel
            ? .palmTiny(layers: 2, modelDimension: 64, heads: 8, vocabularySize: 96)
            : .llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        try Self.check(config, try Mesh(parsing: c.mesh), PhaseLayout(c.ffn, c.attention), .f32)
    }

    /// Gemma 3's block (post norms, a 5-position window on 2 of 3 layers, 4 multiquery heads
    /// padded where they do not divide): the decode step after a 5-token prefill reads only the
    /// window on local layers, priced as executed.
    @Test(arguments: ["1", "2", "4", "2x2"], FeedForwardLayout.allCases)
    func traceEqualsExecutionForGemma(_ meshName: String, _ ffn: FeedForwardLayout) throws {
        let config = ModelConfig.gemmaTiny(layers: 3, modelDimension: 64, heads: 4, headDimension: 32, vocabularySize: 96)
        for attention in AttentionLayout.allCases {
            try Self.check(config, try Mesh(parsing: meshName), PhaseLayout(ffn, attention), .f32)
        }
    }

    /// One sequence on every mesh: the other devices' rows (weight-gathered layouts) and homes
    /// (batch-sharded attention) are padding, priced as executed.
    @Test(arguments: ["2", "4", "2x2x2"], FeedForwardLayout.allCases)
    func traceEqualsExecutionForOneSequence(_ meshName: String, _ ffn: FeedForwardLayout) throws {
        let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        for attention in AttentionLayout.allCases {
            try Self.check(config, try Mesh(parsing: meshName), PhaseLayout(ffn, attention), .f32, sequences: 1)
        }
    }

    /// Padded heads (9 query heads over 3 KV heads on 2, 3 and 4 devices; 4 multiquery heads
    /// on 3): the padding slots are priced as executed.
    @Test(arguments: ["2", "3", "4"], FeedForwardLayout.allCases)
    func traceEqualsExecutionForPaddedHeads(_ meshName: String, _ ffn: FeedForwardLayout) throws {
        let gqa = ModelConfig.llamaTiny(layers: 2, modelDimension: 72, heads: 9, kvHeads: 3, vocabularySize: 96)
        let mqa = ModelConfig.palmTiny(layers: 2, modelDimension: 48, heads: 4, vocabularySize: 96)
        for config in [gqa, mqa] {
            try Self.check(config, try Mesh(parsing: meshName), PhaseLayout(ffn, .shardedOverHeads), .f32)
            try Self.check(config, try Mesh(parsing: meshName), PhaseLayout(ffn, .shardedOverHeads), .f32, sequences: 1)
        }
    }

    /// 8-bit weights: 32-input groups and 16-channel panels. On 4 devices a 2D shard's E/x = 16
    /// columns start inside a group and are stored as the whole group (16 extra columns), head
    /// slots of Q = 8 as whole groups too; weight-gathered layouts gather and join those whole
    /// groups (each member's columns where its shard holds them). The trace prices what is stored.
    @Test(arguments: ["2", "4", "2x2"], [FeedForwardLayout.weightStationary1D, .weightStationary2D, .weightGatheredX])
    func traceEqualsExecutionInt8(_ meshName: String, _ ffn: FeedForwardLayout) throws {
        let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        try Self.check(config, try Mesh(parsing: meshName), PhaseLayout(ffn, .shardedOverBatch), .int8)
    }

    /// Weight-gathered layouts gather shards as stored, so members' shards must be stored alike:
    /// E/x = 24 columns over 32-input groups are one group on the first device and two on the
    /// second; refused with a typed error before any pass.
    @Test func shardsStoredUnlikeAreRefused() throws {
        let config = ModelConfig.llamaTiny(layers: 1, modelDimension: 96, heads: 8, kvHeads: 2, vocabularySize: 96)
        let layout = PhaseLayout(.weightGatheredX, .shardedOverBatch)
        #expect(throws: LayoutError.shardInsideBlock(layout: "wg-x", columns: 24, block: 32, format: "int8")) {
            try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: Mesh(x: 4), prefill: layout,
                           decode: layout, format: .int8, threads: 1)
        }
    }

    /// Trace == execution, device by device, for a prefill of B sequences of L tokens and the
    /// decode step after it: the ordered collectives (kind, axes, site, bytes the transport
    /// counted), the matmul and attention FLOPs, and the weight and KV-cache bytes read. The
    /// executed side is counted where it happened (the shapes handed to the kernels, the
    /// buffers' sizes, the transports' counters), never from a formula shared with the tracer.
    static func check(_ config: ModelConfig, _ mesh: Mesh, _ layout: PhaseLayout, _ format: WeightFormat,
                      sequences: Int? = nil) throws {
        let precision: WeightPrecision = format == .int8 ? .int8Grouped : .f32
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: format, threads: 1)
        let B = sequences ?? mesh.deviceCount + 1, L = 5
        let caches = (0..<B).map { _ in engine.makeCache() }
        for (step, batch) in [TracedBatch(sequences: B, newTokens: L, context: L), TracedBatch(sequences: B, newTokens: 1, context: L + 1)].enumerated() {
            let logs = (0..<mesh.deviceCount).map { _ in ExecutionLog() }
            engine.executionLogs = logs
            engine.resetTraffic()
            _ = try engine.forward(caches.enumerated().map { i, cache in
                SequenceInput(cache: cache, tokens: (0..<batch.newTokens).map { (i * 3 + $0 + step) % 90 })
            })
            for rank in 0..<mesh.deviceCount {
                let trace = try Tracer.forward(config: config, mesh: mesh, rank: rank, layout: layout, batch: batch,
                                               panelRows: precision.panelRows, unitInputs: precision.unitInputs)
                let log = logs[rank]
                let where_ = "\(layout) \(format) step \(step) rank \(rank)"
                func bytes(_ c: TracedCollective) -> Double { c.bytesSent(elementBytes: c.site.payload == .weights ? precision.bytes : 4) }
                #expect(trace.collectives.map { "\($0.kind.rawValue)(\($0.axes)) \($0.site) \(Int(bytes($0))) B" }
                        == log.collectives.map(\.description), "\(where_)")
                #expect(trace.matmulFLOPs == log.matmulFLOPs, "\(where_)")
                #expect(trace.attentionFLOPs == log.attentionFLOPs, "\(where_)")
                #expect(trace.weightElements * precision.bytes == log.weightBytes, "\(where_)")
                #expect(trace.kvElements * KVCacheType.f16.bytesPerElement == log.kvBytes, "\(where_)")
                // The transport's per-kind counters agree with the ordered list.
                for kind in CollectiveKind.allCases {
                    let traced = trace.collectives.filter { $0.kind == kind }.reduce(0.0) { $0 + bytes($1) }
                    #expect(traced == Double(engine.traffic[rank].sentBytes(kind: kind)), "\(where_) \(kind)")
                }
            }
        }
    }
}
