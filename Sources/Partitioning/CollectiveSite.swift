/// What a collective carries: activations, weight shards (weight-gathered layouts) or logits.
/// Priced at the activation width, the weight format's bytes, or the activation width.
public enum Payload: String, Sendable, Codable, CaseIterable {
    case activations, weights, logits
}

/// Where in the program a collective runs: the part of the layer and the tensor it moves.
/// Traffic is counted per site, and the cost model prices each by its payload.
public struct CollectiveSite: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Part: String, Sendable, Codable, CaseIterable {
        /// The attention half of a serial block (W_qkv … W_o).
        case attention
        /// The feed-forward half of a serial block (W_in … W_out).
        case feedForward = "ffn"
        /// A parallel block: both halves share their collectives (§3.4).
        case block
        /// The final norm and the vocabulary-sharded unembedding.
        case unembedding = "output"
        /// Measurements and checks outside the model (calibrate, mpi-check, tests).
        case measurement
    }

    public enum Tensor: String, Sendable, Codable, CaseIterable {
        /// RMSNorm's per-row sums of squares of an E-sharded residual (B·L values).
        case normStatistics = "norm"
        /// The same for the norm of a half's output before the residual add (`postNorms`).
        case outputNormStatistics = "output_norm"
        /// The normed layer input, gathered before W_in.
        case input
        /// 2D weight-stationary: W_in's partial sums, reduce-scattered over x.
        case partialSums = "partial_sums"
        /// 2D weight-stationary: W_out's input, all-gathered over x.
        case hidden
        /// Batch-sharded attention: q|k|v to the devices the sequences are homed on, and back.
        case toBatch = "to_batch"
        case fromBatch = "from_batch"
        /// W_out's partial sums, reduce-scattered into the residual.
        case output
        /// Weight shards, all-gathered before a matmul (weight-gathered layouts, §3.2.3).
        case weights
        /// Unembedding: the rows whose logits are wanted, and the vocabulary-sharded logits.
        case logitRows = "logit_rows"
        case logits
        /// A calibration, check or test payload.
        case data
    }

    public var part: Part
    public var tensor: Tensor
    public init(_ part: Part, _ tensor: Tensor) {
        self.part = part
        self.tensor = tensor
    }

    public var payload: Payload {
        switch tensor {
        case .weights: .weights
        case .logits: .logits
        default: .activations
        }
    }

    public var description: String { "\(part.rawValue).\(tensor.rawValue)" }

    /// A measurement's collectives (calibration, checks).
    public static let measurement = CollectiveSite(.measurement, .data)
}
