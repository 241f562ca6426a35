import CostModel
import Partitioning
import Runtime
import Testing
import Transformer

/// Default layouts (no layout flags): the cost model's lowest predicted time for the run, priced
/// with a host calibration — here a fixture, never the user's file — or §7's rule without one.
struct DefaultLayoutTests {
    /// SmolLM2-135M's shape (the default model): E 576, F 1536, 9 query and 3 KV heads, 30 layers.
    static let smol = ModelSpec(config: ModelConfig(name: "smollm2-135m", layers: 30, modelDimension: 576, feedForwardDimension: 1536,
                                                    heads: 9, kvHeads: 3, headDimension: 64, vocabularySize: 49152,
                                                    contextLength: 8192, block: .serial, tiedEmbeddings: true),
                                nominalParameters: 135e6)

    /// A host whose cores stream weights fast but whose devices exchange data slowly (0.2 GB/s
    /// between devices, 20 µs per collective call): moving fewer activation bytes matters more
    /// than anything §7's rule weighs.
    static let slowLinks: HostCalibration = {
        var h = HostCalibration(f32FLOPsPerThread: 60e9, int8OPsPerThread: 120e9, memoryBandwidthOneThread: 12e9,
                                memoryBandwidthAllThreads: 16e9, threads: 2, collectiveLatency: 20e-6, collectiveBandwidth: 0.2e9,
                                memoryBytes: 8e9)
        h.nativeOPsPerThread = 100e9
        h.nativeBandwidthOneThread = 12e9
        h.nativeBandwidthAllThreads = 16e9
        return h
    }()

    static func pricing(_ host: HostCalibration, threads: Int, mesh: Mesh) -> CostModel {
        CostModel(hardware: host.hardware(weights: .native, threadsPerDevice: max(1, threads / mesh.deviceCount), activeThreads: threads),
                  calibration: host.calibration(for: .native, activeThreads: threads))
    }

    /// Under the fixture the choice differs from §7's rule, and it is the fastest of every pair
    /// that keeps the KV cache in place, each priced here on its own with `CostModel.predict`.
    @Test(arguments: [(2, 1), (4, 1), (2, 4), (4, 16)])
    func fixtureCalibrationChoosesTheFastestPair(_ devices: Int, _ batch: Int) throws {
        let mesh = Mesh(x: devices)
        let workload = Workload(batch: batch, promptTokens: 24, generateTokens: 64)
        let pricing = Self.pricing(Self.slowLinks, threads: 2, mesh: mesh)
        let choice = LayoutChooser.choose(model: Self.smol, mesh: mesh, workload: workload, weights: .native, pricing: pricing,
                                          singleDevice: PhaseLayout(.weightStationary1D, .shardedOverHeads))
        #expect(choice.basis == .costModel)
        let rule = LayoutChooser.paperRule(mesh: mesh, batch: batch)
        #expect((choice.prefill, choice.decode) != rule, "\(choice.reason)")

        func seconds(_ p: PhaseLayout, _ d: PhaseLayout) throws -> Double {
            try pricing.predict(model: Self.smol, mesh: mesh, layout: p, phase: .prefill, batch: batch, inputTokens: 24,
                                generateTokens: 64, weights: .native).latencySeconds
                + pricing.predict(model: Self.smol, mesh: mesh, layout: d, phase: .decode, batch: batch, inputTokens: 24,
                                  generateTokens: 64, weights: .native).latencySeconds
        }
        var pairs: [(PhaseLayout, PhaseLayout)] = []
        for a in AttentionLayout.allCases {
            for p in FeedForwardLayout.allCases {
                for d in FeedForwardLayout.allCases {
                    let pair = (PhaseLayout(p, a), PhaseLayout(d, a))
                    if (try? PhaseLayout.validatePhases(prefill: pair.0, decode: pair.1, config: Self.smol.config, mesh: mesh)) != nil {
                        pairs.append(pair)
                    }
                }
            }
        }
        #expect(choice.ranked.count == pairs.count)
        let fastest = try pairs.map { try seconds($0.0, $0.1) }.min()!
        #expect(try seconds(choice.prefill, choice.decode) == fastest, "\(choice.reason)")
        #expect(try seconds(rule.prefill, rule.decode) > fastest)
    }

    /// No calibration: §7's rule — attention over heads (padded) for a batch smaller than the
    /// mesh, over the batch once it covers the mesh; 2D weight-stationary in both phases.
    @Test func withoutCalibrationTheRule() {
        for (batch, attention) in [(1, AttentionLayout.shardedOverHeads), (4, .shardedOverBatch)] {
            let c = LayoutChooser.choose(model: Self.smol, mesh: Mesh(x: 4), workload: Workload(batch: batch, promptTokens: 8, generateTokens: 8),
                                         weights: .native, pricing: nil, singleDevice: PhaseLayout(.weightStationary1D, .shardedOverHeads))
            #expect(c.basis == .paperRule)
            #expect(c.prefill == PhaseLayout(.weightStationary2D, attention) && c.decode == PhaseLayout(.weightStationary2D, attention))
        }
    }

    /// Layouts the user names are kept; only the rest is chosen.
    @Test func namedLayoutsAreKept() {
        let mesh = Mesh(x: 2)
        let c = LayoutChooser.choose(model: Self.smol, mesh: mesh, workload: Workload(batch: 2, promptTokens: 8, generateTokens: 8), weights: .native,
                                     pricing: Self.pricing(Self.slowLinks, threads: 2, mesh: mesh),
                                     constraints: LayoutConstraints(decodeFeedForward: .weightGatheredXYZ, attention: .shardedOverBatch),
                                     singleDevice: PhaseLayout(.weightStationary1D, .shardedOverHeads))
        #expect(c.decode == PhaseLayout(.weightGatheredXYZ, .shardedOverBatch))
        #expect(c.prefill.attention == .shardedOverBatch)
        #expect(c.ranked.allSatisfy { $0.decode == c.decode })
    }

    /// A prefill attention layout named alone sets the decode's too (the KV cache stays put),
    /// with or without a calibration.
    @Test func prefillAttentionAloneGivesOnePlacement() throws {
        let mesh = Mesh(x: 2)
        for pricing in [nil, Self.pricing(Self.slowLinks, threads: 2, mesh: mesh)] {
            let c = LayoutChooser.choose(model: Self.smol, mesh: mesh, workload: Workload(batch: 4, promptTokens: 8, generateTokens: 8),
                                         weights: .native, pricing: pricing, constraints: LayoutConstraints(prefillAttention: .shardedOverHeads),
                                         singleDevice: PhaseLayout(.weightStationary1D, .shardedOverHeads))
            #expect(c.prefill.attention == .shardedOverHeads && c.decode.attention == .shardedOverHeads)
            try PhaseLayout.validatePhases(prefill: c.prefill, decode: c.decode, config: Self.smol.config, mesh: mesh)
        }
    }

    /// Every pair the chooser ranks loads: with int8 weights and E/x = 24 on 4 devices the
    /// weight-gathered-over-x layouts would store shards of different widths and are left out;
    /// each remaining pair builds an engine.
    @Test func everyRankedPairLoads() throws {
        let config = ModelConfig.llamaTiny(layers: 1, modelDimension: 96, heads: 8, kvHeads: 2, vocabularySize: 64)
        let mesh = Mesh(x: 4)
        let c = LayoutChooser.choose(model: ModelSpec(config: config, nominalParameters: 1e5), mesh: mesh,
                                     workload: Workload(batch: 4, promptTokens: 8, generateTokens: 8), weights: .int8Grouped,
                                     pricing: Self.pricing(Self.slowLinks, threads: 2, mesh: mesh),
                                     singleDevice: PhaseLayout(.weightStationary1D, .shardedOverHeads))
        #expect(!c.ranked.isEmpty)
        #expect(!c.ranked.contains { $0.prefill.feedForward == .weightGatheredX || $0.decode.feedForward == .weightGatheredX })
        for pair in c.ranked {
            _ = try MeshEngine(source: RandomWeights(config: config, seed: 1), config: config, mesh: mesh, prefill: pair.prefill,
                               decode: pair.decode, format: .int8, threads: 1)
        }
    }
}
