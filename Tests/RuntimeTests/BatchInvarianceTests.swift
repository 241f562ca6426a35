import Foundation
import Partitioning
import Testing
@testable import Runtime
import Tensors

/// Batch invariance (issue 11): at temperature 0 a sequence's logits must not depend on what
/// runs beside it or on how its prompt is chunked — bitwise, in every weight format, on one
/// device and on a mesh of 2.
@Suite(.enabled(if: modelAvailable, "default model or reference file absent"), .serialized)
struct BatchInvarianceTests {
    /// A 70-token prompt: alone in one pass; beside 2 and 15 other sequences (of 3 to 73
    /// tokens, then decoding); in chunks of 1, 7 and 64 tokens; in chunks of 7 beside 15
    /// others. The last position's logits are bitwise equal in every case. On mesh 2 with
    /// attention over heads (1D) and over the batch (2D: the sequence's home device changes
    /// with its id). And from a copy of another sequence's prefill (the choices of `n > 1`).
    @Test(arguments: [WeightFormat.f32, .int8, .native], ["1", "2 ws1d+heads", "2 ws2d+batch"])
    func logitsDoNotDependOnTheBatchOrTheChunks(_ format: WeightFormat, _ setup: String) throws {
        let model = try ModelCache.shared.model(format)
        let meshName = String(setup.split(separator: " ")[0])
        let mesh = try Mesh(parsing: meshName)
        let layout = setup.hasSuffix("batch") ? PhaseLayout(.weightStationary2D, .shardedOverBatch) : PhaseLayout(.weightStationary1D, .shardedOverHeads)
        let engine = mesh.deviceCount == 1 ? model.engine
            : try MeshEngine(source: model.file, config: model.config, mesh: mesh, prefill: layout, decode: layout, format: format, threads: 2)
        let base = Reference.shared!.prompt("english")["prompt_token_ids"] as! [Int]
        let prompt = Array((base + base + base + base + base).prefix(70))
        let others = (0..<15).map { i in (0..<(3 + i * 5)).map { ($0 * 31 + i * 7 + 11) % 49152 } }

        func run(_ chunk: Int, beside: Int) throws -> [Float] {
            let s = engine.makeCache()
            let companions = others.prefix(beside).map { _ in engine.makeCache() }
            var logits: [Float] = []
            var at = 0
            while at < prompt.count {
                let piece = Array(prompt[at..<min(prompt.count, at + chunk)])
                let batch = [SequenceInput(cache: s, tokens: piece)]
                    + zip(companions, others).map { SequenceInput(cache: $0, tokens: at == 0 ? $1 : [($1.last! + at) % 49152]) }
                logits = try engine.forward(batch)[0].values
                at += piece.count
            }
            return logits
        }
        let alone = try run(prompt.count, beside: 0)
        for (chunk, beside) in [(70, 2), (70, 15), (1, 0), (7, 0), (64, 0), (7, 15)] {
            let got = try run(chunk, beside: beside)
            let d = maxAbsDifference(got, alone)
            #expect(got == alone, "\(format) \(setup), chunks of \(chunk), \(beside) beside: max |Δ| = \(d)")
        }
        // A prefill shared by another choice (`n > 1`): a sequence homed alike starts from a copy
        // of the first 69 positions and feeds the last token itself, beside 3 others.
        let source = engine.makeCache()
        _ = try engine.forward([SequenceInput(cache: source, tokens: Array(prompt.dropLast()))])
        let copy = engine.makeCache(limit: nil, home: source.home(devices: mesh.deviceCount))
        try engine.copyPrefix(prompt.count - 1, from: source, to: copy)
        let companions = others.prefix(3).map { _ in engine.makeCache() }
        let got = try engine.forward([SequenceInput(cache: copy, tokens: [prompt.last!])]
                                     + zip(companions, others).map { SequenceInput(cache: $0, tokens: $1) })[0].values
        #expect(got == alone, "\(format) \(setup), from a copied prefill: max |Δ| = \(maxAbsDifference(got, alone))")
    }
}
