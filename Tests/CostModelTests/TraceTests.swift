import Collectives
import CostModel
import Partitioning
@testable import Runtime
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
        let mesh = try Mesh(parsing: c.mesh)
        let layout = PhaseLayout(c.ffn, c.attention)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .f32, threads: 1)
        let B = mesh.deviceCount + 1, L = 5
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
                                               panelRows: WeightPrecision.f32.panelRows)
                let log = logs[rank]
                let where_ = "step \(step) rank \(rank)"
                #expect(trace.collectives.map { "\($0.kind.rawValue)(\($0.axes)) \($0.site) \(Int($0.bytesSent(elementBytes: 4))) B" }
                        == log.collectives.map(\.description), "\(where_)")
                #expect(trace.matmulFLOPs == log.matmulFLOPs, "\(where_)")
                #expect(trace.attentionFLOPs == log.attentionFLOPs, "\(where_)")
                #expect(trace.weightElements * 4 == log.weightBytes, "\(where_)")
                #expect(trace.kvElements * 4 == log.kvBytes, "\(where_)")
                // The transport's per-kind counters agree with the ordered list.
                for kind in CollectiveKind.allCases {
                    let traced = trace.collectives.filter { $0.kind == kind }.reduce(0.0) { $0 + $1.bytesSent(elementBytes: 4) }
                    #expect(traced == Double(engine.traffic[rank].sentBytes(kind: kind)), "\(where_) \(kind)")
                }
            }
        }
    }
}
