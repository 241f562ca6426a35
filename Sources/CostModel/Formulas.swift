import Partitioning

/// The paper's closed forms (SPEC §4): communication volumes, optimal splits, memory, metrics.
public enum Formulas {
    /// Per-chip bytes moved by one two-matrix FFN layer (Pope et al. §3.2, Appendix A.2;
    /// SPEC §4.9, Fig. 3), with the paper's K ≫ 1 simplification (no (K−1)/K factor).
    /// `tokens` = B·L; activation and weight bytes per element.
    public static func feedForwardBytes(_ layout: FeedForwardLayout, tokens: Double, E: Double, F: Double, mesh: Mesh,
                                        activationBytes: Double = 2, weightBytes: Double = 2) -> Double {
        let X = Double(mesh.x), Y = Double(mesh.y), Z = Double(mesh.z)
        switch layout {
        case .weightStationary1D: return activationBytes * 2 * tokens * E
        case .weightStationary2D: return activationBytes * 2 * tokens * (E / X + F / (Y * Z))
        case .weightGatheredX: return weightBytes * 2 * E * F / (Y * Z) + activationBytes * 2 * tokens * E / X
        case .weightGatheredXY: return weightBytes * 2 * E * F / Z + activationBytes * 2 * tokens * E / (X * Y)
        case .weightGatheredXYZ: return weightBytes * 2 * E * F
        }
    }

    /// The FFN layout with the least communication at `tokens` (Fig. 3's "min volume").
    public static func minimumVolumeLayout(tokens: Double, E: Double, F: Double, mesh: Mesh) -> FeedForwardLayout {
        [FeedForwardLayout.weightStationary2D, .weightGatheredX, .weightGatheredXY, .weightGatheredXYZ]
            .min { feedForwardBytes($0, tokens: tokens, E: E, F: F, mesh: mesh) < feedForwardBytes($1, tokens: tokens, E: E, F: F, mesh: mesh) }!
    }

    /// The optimal 2D weight-stationary split (§3.2.2, Appendix A.2.1): X* = √(n·E/F), YZ* = √(n·F/E);
    /// for F = 4E, X = 0.5·√n.
    public static func optimal2DSplit(chips n: Double, E: Double, F: Double) -> (x: Double, yz: Double) {
        ((n * E / F).squareRoot(), (n * F / E).squareRoot())
    }

    /// Communication of the optimal 2D layout in elements·(1/bw): 4·BL·√(E·F/n) (SPEC §4.4.2).
    public static func optimal2DVolume(tokens: Double, chips n: Double, E: Double, F: Double) -> Double {
        4 * tokens * (E * F / n).squareRoot()
    }

    /// 1D weight-stationary: 2·BL·E, independent of the chip count (§3.2.1).
    public static func oneDVolume(tokens: Double, E: Double) -> Double { 2 * tokens * E }

    /// Whether the optimal 2D weight-stationary layout moves less than 1D: n > 4F/E in general,
    /// n > 16 for F = 4E as the paper states (SPEC §4.4.2).
    public static func twoDBeatsOneD(chips n: Double, E: Double, F: Double) -> Bool {
        optimal2DVolume(tokens: 1, chips: n, E: E, F: F) < oneDVolume(tokens: 1, E: E)
    }

    /// The weight-gather group size that minimises communication: N* = √(BL·n/F) (Appendix A.2.2).
    public static func optimalGatherGroup(tokens: Double, chips n: Double, F: Double) -> Double { (tokens * n / F).squareRoot() }

    /// KV-cache bytes per token: 2 (K, V) × layers × K·Q × bytes (SPEC §4.2).
    public static func kvBytesPerToken(layers: Int, kvHeads: Int, headDimension: Int, bytes: Double = 2) -> Double {
        2 * Double(layers) * Double(kvHeads * headDimension) * bytes
    }

    /// The longest context whose KV cache fits in `fraction` of the chips' memory (Table 1):
    /// batch-sharded multiquery divides the cache over the chips; head-sharded multiquery
    /// replicates it on every chip; multihead divides it over the chips.
    public static func maxContext(kvBytesPerToken: Double, batch: Double, chips: Double, memoryPerChip: Double,
                                  fraction: Double, replicated: Bool) -> Double {
        let budgetPerChip = fraction * memoryPerChip
        let bytesPerChipPerToken = replicated ? kvBytesPerToken * batch : kvBytesPerToken * batch / chips
        return budgetPerChip / bytesPerChipPerToken
    }

    /// MFU = 2·N·tokens / (time · chips · peak) (§4.1).
    public static func mfu(parameters: Double, tokens: Double, seconds: Double, chips: Double, peakFLOPs: Double) -> Double {
        2 * parameters * tokens / (seconds * chips * peakFLOPs)
    }

    /// Cost in chip-seconds per token: chips · time / tokens (§4.1).
    public static func cost(chips: Double, seconds: Double, tokens: Double) -> Double { chips * seconds / tokens }

    /// The same cost from MFU: 2·N / (MFU · peak) — an identity with the two above.
    public static func cost(parameters: Double, mfu: Double, peakFLOPs: Double) -> Double { 2 * parameters / (mfu * peakFLOPs) }
}
