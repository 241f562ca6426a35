/// Feed-forward layouts of Pope et al. §3.2 (SPEC §4.4). The same layouts partition every
/// matmul pair of a layer: (W_in, W_out) of the FFN and (W_qkv, W_o) of attention, with the
/// hidden dimension F replaced by the attention's head columns.
public enum FeedForwardLayout: String, CaseIterable, Sendable, Codable, CustomStringConvertible {
    /// `E F_xyz`: activations all-gathered over xyz before W_in, reduce-scattered after W_out (Megatron).
    case weightStationary1D = "ws1d"
    /// `E_x F_yz`: AG(yz) → W_in → RS(x) → AG(x) → W_out → RS(yz) (§3.2.2, Fig. 2b).
    case weightStationary2D = "ws2d"
    /// Weights all-gathered over x; activations `B_x L E_yz` (§3.2.3, Fig. A.2).
    case weightGatheredX = "wg-x"
    /// Weights all-gathered over xy; activations `B_xy L E_z` (Fig. 2c).
    case weightGatheredXY = "wg-xy"
    /// Weights all-gathered over xyz; activations `B_xyz L E`, no activation collectives.
    case weightGatheredXYZ = "wg-xyz"

    public var description: String { rawValue }

    /// Axes the batch (whole sequences) is split over.
    public var batchAxes: AxisSet {
        switch self {
        case .weightStationary1D, .weightStationary2D: .none
        case .weightGatheredX: .x
        case .weightGatheredXY: .xy
        case .weightGatheredXYZ: .xyz
        }
    }
    /// Axes E is split over in the residual stream between layers.
    public var residualAxes: AxisSet {
        switch self {
        case .weightStationary1D, .weightStationary2D: .xyz
        case .weightGatheredX: .yz
        case .weightGatheredXY: .z
        case .weightGatheredXYZ: .none
        }
    }
    /// Axes the activations are all-gathered over before W_in (E becomes whole, or E_x for 2D).
    public var inputGatherAxes: AxisSet {
        switch self {
        case .weightStationary1D: .xyz
        case .weightStationary2D: .yz
        case .weightGatheredX: .yz
        case .weightGatheredXY: .z
        case .weightGatheredXYZ: .none
        }
    }
    /// Axes the stored `E_x F_yz` weight shards are all-gathered over before each matmul.
    public var weightGatherAxes: AxisSet {
        switch self {
        case .weightStationary1D, .weightStationary2D: .none
        case .weightGatheredX: .x
        case .weightGatheredXY: .xy
        case .weightGatheredXYZ: .xyz
        }
    }
    /// Axes W_out's partial sums are reduce-scattered over (into E).
    public var outputReduceAxes: AxisSet { self == .weightStationary2D ? .yz : residualAxes }
    /// Axes the F (or head) columns are split over between W_in and W_out.
    public var hiddenAxes: AxisSet {
        switch self {
        case .weightStationary1D, .weightStationary2D: .xyz
        case .weightGatheredX: .yz
        case .weightGatheredXY: .z
        case .weightGatheredXYZ: .none
        }
    }
    /// Whether the weights are stored `E F_xyz` (1D) rather than `E_x F_yz`.
    public var storesOneDimensional: Bool { self == .weightStationary1D }
}

/// Attention layouts of §3.3 (SPEC §4.5).
public enum AttentionLayout: String, CaseIterable, Sendable, Codable, CustomStringConvertible {
    /// Q, K, V and the KV cache split over heads (with the FFN layout's hidden axes).
    case shardedOverHeads = "heads"
    /// Q, K, V and the KV cache split over the batch: two all-to-alls per layer (Fig. 5b).
    case shardedOverBatch = "batch"
    public var description: String { rawValue }
}

/// The layouts of one phase (prefill or decode).
public struct PhaseLayout: Hashable, Sendable, Codable, CustomStringConvertible {
    public var feedForward: FeedForwardLayout
    public var attention: AttentionLayout
    public init(_ feedForward: FeedForwardLayout, _ attention: AttentionLayout) {
        self.feedForward = feedForward
        self.attention = attention
    }
    public var description: String { "\(feedForward)+\(attention)" }
}
