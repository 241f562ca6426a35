import Transformer

public enum ModelLoadError: Error, CustomStringConvertible {
    case missingTensor(String)
    case badShape(tensor: String, expected: [Int], found: [Int])
    case config(ModelConfigError)

    public var description: String {
        switch self {
        case let .missingTensor(n): "model file has no tensor '\(n)'"
        case let .badShape(n, e, f): "tensor '\(n)' has shape \(f), expected \(e)"
        case let .config(e): "\(e)"
        }
    }
}

/// A small, fast, seedable generator (Steele et al.'s SplitMix64): sampling and random weights.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }
    /// Uniform in [-1, 1).
    public mutating func nextSignedUnit() -> Float { 2 * nextUnit() - 1 }
}
