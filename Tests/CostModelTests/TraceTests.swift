import Collectives
import CostModel
import Partitioning
import Runtime
import Testing
import Transformer

/// The tracer runs the same layer program as the runtime: the bytes it predicts for every
/// collective kind equal the bytes a real run sends, device by device (DESIGN.md).
struct TraceTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let parallel: Bool
        let mesh: String
        let ffn: FeedForwardLayout
        let attention: AttentionLayout
        var testDescription: String { "\(parallel ? "palm" : "llama") \(mesh) \(ffn) \(attention)" }
    }

    static let cases: [Case] = [false, true].flatMap { p in
        ["2", "4", "2x2", "2x2x2"].flatMap { m in
            FeedForwardLayout.allCases.flatMap { f in AttentionLayout.allCases.map { Case(parallel: p, mesh: m, ffn: f, attention: $0) } }
        }
    }

    @Test(arguments: cases)
    func tracedBytesEqualMeasured(_ c: Case) throws {
        let config: ModelConfig = c.parallel
            ? .palmTiny(layers: 2, modelDimension: 64, heads: 8, vocabularySize: 96)
            : .llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        let mesh = try Mesh(parsing: c.mesh)
        let layout = PhaseLayout(c.ffn, c.attention)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 5), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .f32, threads: 1)
        let B = mesh.deviceCount + 1, L = 5
        let caches = (0..<B).map { _ in engine.makeCache() }
        _ = try engine.forward(caches.enumerated().map { i, cache in SequenceInput(cache: cache, tokens: (0..<L).map { (i * 3 + $0) % 90 }) })
        for rank in 0..<mesh.deviceCount {
            let trace = try Tracer.forward(config: config, mesh: mesh, rank: rank, layout: layout,
                                           batch: TracedBatch(sequences: B, newTokens: L, context: L),
                                           panelRows: WeightPrecision.f32.panelRows)
            for kind in CollectiveKind.allCases {
                let traced = trace.collectives.filter { $0.kind == kind }.reduce(0.0) { $0 + $1.bytesSent(elementBytes: 4) }
                let measured = engine.traffic[rank].sent.filter { $0.key.kind == kind && $0.key.label != "output" }.values.reduce(0, +)
                #expect(traced == Double(measured), "rank \(rank) \(kind): traced \(traced), measured \(measured)")
            }
        }
    }
}
