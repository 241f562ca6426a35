import CostModel
import Partitioning
import Testing
import Transformer

struct PredictTests {
    let model = CostModel(hardware: .tpuV4)

    /// The prediction's memory side agrees with Table 1 and with the weights' size.
    @Test func memoryAndMaxContext() throws {
        let p = try model.predict(model: .palm540B, mesh: Mesh(x: 4, y: 4, z: 4), layout: PhaseLayout(.weightStationary2D, .shardedOverBatch),
                                  phase: .decode, batch: 128, inputTokens: 2048, generateTokens: 64, weights: .bf16)
        #expect(abs(p.maxContextTokens - 43000) / 43000 < 0.01)
        #expect(p.fits)
        // bf16 PaLM 540B (padded heads) on 8 chips cannot fit in 32 GiB each.
        let small = try model.predict(model: .palm540B, mesh: Mesh(x: 2, y: 2, z: 2), layout: PhaseLayout(.weightStationary2D, .shardedOverBatch),
                                      phase: .decode, batch: 8, inputTokens: 2048, generateTokens: 64, weights: .bf16)
        #expect(!small.fits)
        #expect(small.memoryPerChipBytes > Double(ModelSpec.palm540B.config.parameterCount) * 2 / 8)
    }

    /// MFU and cost in a prediction satisfy the paper's identity, and decode per-token time is
    /// latency / G.
    @Test func metricsAreConsistent() throws {
        let p = try model.predict(model: .palm62B, mesh: Mesh(x: 2, y: 4, z: 4), layout: PhaseLayout(.weightStationary2D, .shardedOverBatch),
                                  phase: .decode, batch: 64, inputTokens: 512, generateTokens: 32, weights: .int8)
        #expect(abs(p.costChipMsPerToken / 1e3 - Formulas.cost(parameters: 62e9, mfu: p.mfu, peakFLOPs: 275e12)) < 1e-9)
        #expect(abs(p.perTokenMs! - p.latencySeconds / 32 * 1e3) < 1e-9)
        #expect(p.latencySeconds >= max(p.computeSeconds, p.memorySeconds))
    }

    @Test func invalidLayoutIsATypedError() {
        #expect(throws: LayoutError.self) {
            try model.predict(model: .palm8B, mesh: Mesh(x: 3), layout: PhaseLayout(.weightStationary2D, .shardedOverBatch),
                              phase: .prefill, batch: 3, inputTokens: 16, generateTokens: 1, weights: .bf16)
        }
    }

    /// Per-axis bandwidth: equal values change nothing; a slow x axis slows exactly the
    /// collectives that span x (2D weight-stationary has some over x and some over yz only).
    @Test func perAxisBandwidth() throws {
        func predict(_ axisBandwidth: [Double]?) throws -> Prediction {
            var hw = Hardware.a100
            hw.axisBandwidth = axisBandwidth
            return try CostModel(hardware: hw).predict(model: .palm62B, mesh: Mesh(x: 2, y: 2, z: 2),
                                                       layout: PhaseLayout(.weightStationary2D, .shardedOverBatch), phase: .prefill,
                                                       batch: 8, inputTokens: 512, generateTokens: 1, weights: .bf16)
        }
        let bw = Hardware.a100.interconnectBandwidth
        let uniform = try predict(nil), same = try predict([bw, bw, bw])
        #expect(same.communicationSeconds == uniform.communicationSeconds)
        let slowX = try predict([bw / 10, bw, bw]), slowZ = try predict([bw, bw, bw / 10])
        #expect(slowX.communicationBytesPerChip == uniform.communicationBytesPerChip)
        #expect(slowX.communicationSeconds > 2 * uniform.communicationSeconds)
        #expect(slowZ.communicationSeconds > uniform.communicationSeconds)
        #expect(slowX.communicationSeconds < 10 * uniform.communicationSeconds)
    }
}
