import CostModel
import Foundation
import Partitioning
import Testing
import Transformer

/// Snapshots of what the layer program does under every layout (after MaxText's sharding
/// snapshot tests): a layout change shows up as a reviewable diff of these files. A missing or
/// changed snapshot fails. To accept a change, run the tests with MESHINFER_RECORD_SNAPSHOTS=1
/// (never in CI), review `git diff Tests/CostModelTests/Snapshots`, and commit.
struct SnapshotTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Snapshots")

    func expectSnapshot(_ text: String, _ name: String) throws {
        let url = Self.directory.appendingPathComponent(name)
        let env = ProcessInfo.processInfo.environment
        if env["MESHINFER_RECORD_SNAPSHOTS"] == "1" {
            try #require(env["CI"] != "true", "snapshots are never recorded in CI")
            try text.write(to: url, atomically: true, encoding: .utf8)
            Issue.record("recorded \(name): review the diff and run the tests again without MESHINFER_RECORD_SNAPSHOTS")
            return
        }
        guard let expected = try? String(contentsOf: url, encoding: .utf8) else {
            Issue.record("missing snapshot \(url.path); record it with MESHINFER_RECORD_SNAPSHOTS=1")
            return
        }
        if expected != text {
            let fresh = FileManager.default.temporaryDirectory.appendingPathComponent(name)
            try text.write(to: fresh, atomically: true, encoding: .utf8)
            Issue.record("\(name) changed: diff \(url.path) \(fresh.path)")
        }
    }

    /// Tiny Llama (4 heads: too few for 8 devices), tiny Llama with 8 heads over 2 KV heads, tiny
    /// PaLM (parallel block, multiquery), and the default model's configuration (SmolLM2-135M).
    static let models: [ModelConfig] = {
        var gqa = ModelConfig.llamaTiny(heads: 8, kvHeads: 2)
        gqa.name = "llama-tiny-8-heads"
        let smol = ModelConfig(name: "smollm2-135m", layers: 30, modelDimension: 576, feedForwardDimension: 1536, heads: 9,
                               kvHeads: 3, headDimension: 64, vocabularySize: 49152, contextLength: 8192, ropeBase: 100000)
        return [.llamaTiny(), gqa, .palmTiny(), smol]
    }()

    /// `meshinfer layouts --mesh 2x2x2 --model-config <name>`'s output.
    @Test(arguments: models)
    func layoutsOnTwoByTwoByTwo(_ config: ModelConfig) throws {
        try expectSnapshot(layoutsReport(config: config, mesh: Mesh(x: 2, y: 2, z: 2)), "layouts-\(config.name)-2x2x2.txt")
    }

    /// Per layout, device 0's traced decode step (8 sequences at context 64) and prefill (8 × 16
    /// tokens) on 2x2x2: every collective in program order and the work, f32 weights.
    @Test(arguments: models)
    func tracesOnTwoByTwoByTwo(_ config: ModelConfig) throws {
        let mesh = Mesh(x: 2, y: 2, z: 2)
        var text = "model \(config.name), mesh \(mesh), device 0, f32 weights (16-channel panels)\n"
        for ffn in FeedForwardLayout.allCases {
            for attention in AttentionLayout.allCases {
                let layout = PhaseLayout(ffn, attention)
                for (name, batch) in [("decode B=8 C=64", TracedBatch(sequences: 8, newTokens: 1, context: 64)),
                                      ("prefill B=8 L=16", TracedBatch(sequences: 8, newTokens: 16, context: 16))] {
                    text += "\n== \(layout) \(name)\n"
                    do {
                        try layout.validate(for: config, on: mesh)
                        let t = try Tracer.forward(config: config, mesh: mesh, rank: 0, layout: layout, batch: batch,
                                                   panelRows: WeightPrecision.f32.panelRows)
                        text += String(format: "matmul %.0f FLOP, attention %.0f FLOP, weights %.0f, KV %.0f elements\n",
                                       t.matmulFLOPs, t.attentionFLOPs, t.weightElements, t.kvElements)
                        // One layer's collectives (every layer repeats them), then the unembedding's.
                        let perLayer = t.collectives.filter { $0.site.part != .unembedding }
                        for c in perLayer.prefix(perLayer.count / config.layers) + t.collectives.filter({ $0.site.part == .unembedding }) {
                            text += "  \(c)\n"
                        }
                    } catch {
                        text += "invalid: \(error)\n"
                    }
                }
            }
        }
        try expectSnapshot(text, "trace-\(config.name)-2x2x2.txt")
    }
}

extension ModelConfig: CustomTestStringConvertible {
    public var testDescription: String { name }
}
