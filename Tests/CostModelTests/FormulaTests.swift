import CostModel
import Partitioning
import Testing
import Transformer

/// The paper's pure-formula results (SPEC §5, §9.1), re-derived.
struct FormulaTests {
    static let fig3Mesh = Mesh(x: 4, y: 4, z: 4)
    static let E = 16384.0, F = 65536.0

    /// Figure 3 (SPEC §5.5): volumes in GB for 2D WS, X-, XY-, XYZ-WG, within 0.1%.
    static let figure3: [(Double, [Double])] = [
        (2048, [0.0671, 0.3020, 1.0821, 4.2950]), (4096, [0.1342, 0.3355, 1.0905, 4.2950]),
        (8192, [0.2684, 0.4027, 1.1073, 4.2950]), (16384, [0.5369, 0.5369, 1.1409, 4.2950]),
        (32768, [1.0737, 0.8053, 1.2080, 4.2950]), (65536, [2.1475, 1.3422, 1.3422, 4.2950]),
        (131072, [4.2950, 2.4159, 1.6106, 4.2950]), (262144, [8.5899, 4.5634, 2.1475, 4.2950]),
        (524288, [17.1799, 8.8584, 3.2212, 4.2950]), (1048576, [34.3597, 17.4483, 5.3687, 4.2950]),
        (2097152, [68.7195, 34.6282, 9.6637, 4.2950]), (4194304, [137.4389, 68.9879, 18.2536, 4.2950]),
        (8388608, [274.8779, 137.7074, 35.4335, 4.2950]), (16777216, [549.7558, 275.1463, 69.7932, 4.2950]),
    ]

    @Test func figure3Volumes() {
        let layouts: [FeedForwardLayout] = [.weightStationary2D, .weightGatheredX, .weightGatheredXY, .weightGatheredXYZ]
        for (tokens, expected) in Self.figure3 {
            for (layout, gb) in zip(layouts, expected) {
                let v = Formulas.feedForwardBytes(layout, tokens: tokens, E: Self.E, F: Self.F, mesh: Self.fig3Mesh) / 1e9
                #expect(abs(v - gb) / gb < 0.001, "\(layout) at \(tokens): \(v) GB vs \(gb)")
            }
        }
    }

    /// The minimum-volume layout switches WS→X at 16,384, X→XY at 65,536, XY→XYZ at 786,432.
    @Test func figure3SwitchPoints() {
        func best(_ t: Double) -> FeedForwardLayout { Formulas.minimumVolumeLayout(tokens: t, E: Self.E, F: Self.F, mesh: Self.fig3Mesh) }
        #expect(best(16383) == .weightStationary2D && best(16385) == .weightGatheredX)
        #expect(best(65535) == .weightGatheredX && best(65537) == .weightGatheredXY)
        #expect(best(786_431) == .weightGatheredXY && best(786_433) == .weightGatheredXYZ)
    }

    /// For F = 4E, X* = 0.5·√n: 64 chips → 4 × 16, 256 chips → 8 × 32.
    @Test(arguments: [(64.0, 4.0, 16.0), (256.0, 8.0, 32.0), (16.0, 2.0, 8.0)])
    func optimal2DSplit(_ n: Double, _ x: Double, _ yz: Double) {
        let s = Formulas.optimal2DSplit(chips: n, E: 1024, F: 4096)
        #expect(abs(s.x - x) < 1e-9 && abs(s.yz - yz) < 1e-9 && abs(s.x - 0.5 * n.squareRoot()) < 1e-9)
    }

    /// With F = 4E, 2D beats 1D exactly when n > 16.
    @Test func twoDBeatsOneDExactlyAbove16Chips() {
        for n in 1...1024 {
            #expect(Formulas.twoDBeatsOneD(chips: Double(n), E: 18432, F: 73728) == (n > 16), "n = \(n)")
        }
    }

    @Test func optimalGatherGroupForPaLM540B() {
        let n = Formulas.optimalGatherGroup(tokens: 1_048_576, chips: 64, F: 73728)
        #expect(abs(n - 30.17) < 0.01)
    }

    /// Table 1 (SPEC §5.1): PaLM 540B on 64 chips, 30% of 32 GiB each for the KV cache; within 1%.
    @Test func table1MaxContext() {
        let palm = ModelSpec.palm540B.config, mh = ModelSpec.palm540BMultihead.config
        let mqa = Formulas.kvBytesPerToken(layers: palm.layers, kvHeads: palm.kvHeads, headDimension: palm.headDimension)
        let mha = Formulas.kvBytesPerToken(layers: mh.layers, kvHeads: mh.kvHeads, headDimension: mh.headDimension)
        #expect(mqa == 120_832 && mha == 3_866_624)
        let memory = Hardware.tpuV4.memoryBytes
        func context(_ perToken: Double, _ batch: Double, replicated: Bool) -> Double {
            Formulas.maxContext(kvBytesPerToken: perToken, batch: batch, chips: 64, memoryPerChip: memory, fraction: 0.3, replicated: replicated)
        }
        for (value, paper) in [(context(mha, 128, replicated: false), 1320.0), (context(mha, 512, replicated: false), 330),
                               (context(mqa, 128, replicated: true), 660), (context(mqa, 512, replicated: true), 165),
                               (context(mqa, 128, replicated: false), 43000), (context(mqa, 512, replicated: false), 10700)] {
            #expect(abs(value - paper) / paper < 0.01, "\(value) vs \(paper)")
        }
    }

    /// Table 2: MFU and cost recomputed from latency, and the cost–MFU identity.
    @Test func table2MFUAndCostIdentity() {
        // (batch, tokens per sequence, seconds, paper MFU, paper cost chip-ms/token)
        let rows: [(Double, Double, Double, Double, Double)] = [
            (1, 2048, 0.29, 0.433, 9.06), (64, 64, 1.82, 0.138, 28.44), (512, 2048, 85.2, 0.755, 5.20), (512, 64, 6.0, 0.335, 11.72),
        ]
        for (b, l, t, paperMFU, paperCost) in rows {
            let mfu = Formulas.mfu(parameters: 540e9, tokens: b * l, seconds: t, chips: 64, peakFLOPs: 275e12)
            let cost = Formulas.cost(chips: 64, seconds: t, tokens: b * l) * 1e3
            #expect(abs(mfu - paperMFU) < 0.0006)
            #expect(abs(cost - paperCost) < 0.006)
            #expect(abs(Formulas.cost(parameters: 540e9, mfu: mfu, peakFLOPs: 275e12) * 1e3 - cost) < 1e-9)
        }
    }

    /// Parameter counts (SPEC §3.1): 8.63B, 62.50B; 540B padded to 64 heads adds 17.8B.
    @Test func palmParameterCounts() {
        #expect(abs(Double(ModelSpec.palm8B.config.parameterCount) / 1e9 - 8.63) < 0.01)
        #expect(abs(Double(ModelSpec.palm62B.config.parameterCount) / 1e9 - 62.50) < 0.01)
        var unpadded = ModelSpec.palm540B.config
        unpadded.heads = 48
        #expect(abs(Double(unpadded.parameterCount) / 1e9 - 540.35) < 0.01)
        #expect(abs(Double(ModelSpec.palm540B.config.parameterCount - unpadded.parameterCount) / 1e9 - 17.8) < 0.05)
    }
}
