import CostModel
import Partitioning
import Testing
import Transformer

/// The planner's layout choices against the paper's (§3.2, §7, Fig. 7, Table 2), PaLM 540B on
/// 64 TPU v4 chips.
struct PlannerTests {
    let cube = Mesh(x: 4, y: 4, z: 4)

    /// Decode: 2D weight-stationary with batch-sharded attention — on the 4×4×4 cube and over
    /// every 64-chip topology — ahead of 1D (2D moves less once n > 16 for F = 4E, §3.2.2).
    @Test(arguments: [64, 128, 256, 512, 1024], [WeightPrecision.bf16, .int8])
    func decodeIs2DWeightStationaryShardedOverBatch(_ batch: Int, _ weights: WeightPrecision) throws {
        let planner = Planner(model: .palm540B, costModel: CostModel(hardware: .tpuV4), phase: .decode)
        let best = try #require(planner.bestLayout(mesh: cube, batch: batch, weights: weights))
        #expect(best.layout == PhaseLayout(.weightStationary2D, .shardedOverBatch), "batch \(batch) \(weights): \(best.layout)")
        let overall = try #require(planner.candidates(chips: [64], batches: [batch], weights: [weights]).min { $0.latency < $1.latency })
        #expect(overall.layout == PhaseLayout(.weightStationary2D, .shardedOverBatch) && overall.topology == cube,
                "batch \(batch) \(weights): \(overall.topology) \(overall.layout)")
        let oneD = try CostModel(hardware: .tpuV4).predict(model: .palm540B, mesh: cube, layout: PhaseLayout(.weightStationary1D, .shardedOverBatch),
                                                           phase: .decode, batch: batch, inputTokens: 2048, generateTokens: 64, weights: weights)
        #expect(oneD.latencySeconds > best.prediction.latencySeconds * 1.05)
    }

    /// Prefill at 2048 tokens per sequence: weight-stationary up to 131,072 tokens (64 sequences),
    /// weight-gathered from 262,144 tokens (128 sequences) on (Fig. 7).
    @Test(arguments: [(32, false), (64, false), (128, true), (256, true), (512, true)])
    func prefillSwitchesToWeightGatheredAfter64Sequences(_ sequences: Int, _ gathered: Bool) throws {
        let planner = Planner(model: .palm540B, costModel: CostModel(hardware: .tpuV4), phase: .prefill)
        let best = try #require(planner.bestLayout(mesh: cube, batch: sequences, weights: .bf16))
        #expect(!best.layout.feedForward.weightGatherAxes.axes.isEmpty == gathered, "\(sequences) sequences: \(best.layout)")
        if gathered { #expect(best.layout.feedForward == .weightGatheredXYZ) }
    }

    /// Fig. 7's two curves directly: 2D weight-stationary (head-sharded attention) against XYZ
    /// weight-gathered (batch-sharded), whatever else the planner searches.
    @Test(arguments: [(64, false), (128, true), (256, true), (512, true)])
    func figure7Crossover(_ sequences: Int, _ gatheredFaster: Bool) throws {
        let model = CostModel(hardware: .tpuV4)
        func seconds(_ layout: PhaseLayout) throws -> Double {
            try model.predict(model: .palm540B, mesh: cube, layout: layout, phase: .prefill, batch: sequences, inputTokens: 2048,
                              generateTokens: 1, weights: .bf16).latencySeconds
        }
        let stationary = try seconds(PhaseLayout(.weightStationary2D, sequences > 64 ? .shardedOverBatch : .shardedOverHeads))
        let gathered = try seconds(PhaseLayout(.weightGatheredXYZ, .shardedOverBatch))
        #expect((gathered < stationary) == gatheredFaster, "\(sequences) sequences: WS \(stationary) s, WG \(gathered) s")
    }

    /// X- and XY-weight-gathered are searched only when asked for (`Planner.measuredLayouts`).
    @Test func partialWeightGatheringOnlyOnRequest() {
        let model = CostModel(hardware: .tpuV4)
        let byDefault = Planner(model: .palm540B, costModel: model, phase: .prefill)
            .candidates(chips: [64], batches: [64, 128], weights: [.bf16])
        #expect(!byDefault.isEmpty && byDefault.allSatisfy { Planner.measuredLayouts.contains($0.layout.feedForward) })
        let all = Planner(model: .palm540B, costModel: model, phase: .prefill, layouts: FeedForwardLayout.allCases)
            .candidates(chips: [64], batches: [64, 128], weights: [.bf16])
        #expect(all.contains { $0.layout.feedForward == .weightGatheredXY })
    }

    @Test func paretoIsMonotone() {
        let planner = Planner(model: .palm62B, costModel: CostModel(hardware: .tpuV4), phase: .decode)
        let frontier = Planner.pareto(planner.candidates(chips: [8, 16, 32], batches: [16, 64, 256], weights: [.bf16, .int8]))
        #expect(frontier.count >= 2)
        for (a, b) in zip(frontier, frontier.dropFirst()) {
            #expect(a.latency <= b.latency && a.prediction.costChipMsPerToken > b.prediction.costChipMsPerToken)
        }
    }
}
