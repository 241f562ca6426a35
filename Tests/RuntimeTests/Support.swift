import Foundation
import GGUF
import NaiveModel
import Partitioning
@testable import Runtime
import Tensors

/// The reference outputs of llama.cpp for the default model (../shared/reference).
struct Reference: @unchecked Sendable {
    let json: [String: Any]

    static let shared: Reference? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let url = root.deletingLastPathComponent().appendingPathComponent("shared/reference/smollm2-135m-reference.json")
        guard let data = try? Data(contentsOf: url),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return Reference(json: json)
    }()

    var prompts: [[String: Any]] { json["prompts"] as! [[String: Any]] }

    func prompt(_ id: String) -> [String: Any] { prompts.first { $0["id"] as? String == id }! }

    func variant(_ promptID: String, _ variant: String) -> [String: Any] {
        (prompt(promptID)["references"] as! [String: Any])[variant] as! [String: Any]
    }

    /// The largest first-position top-5 disagreement between llama.cpp's own variants for a prompt.
    func variantTolerance(_ promptID: String) -> Double {
        let agreement = json["variant_agreement"] as! [String: Any]
        var worst = 0.0
        for (_, value) in agreement {
            guard let rows = value as? [[String: Any]] else { continue }
            for r in rows where r["prompt"] as? String == promptID {
                worst = max(worst, (r["max_abs_top5_logit_diff_first_pos"] as? Double) ?? 0)
            }
        }
        return worst
    }

    func perplexity(_ variant: String) -> Double {
        (((json["perplexity"] as! [String: Any])["results"] as! [String: Any])[variant] as! [String: Any])["ppl"] as! Double
    }
}

/// The default model file, if present (tests that need it are skipped otherwise).
let defaultModelPath: String? = {
    let env = ProcessInfo.processInfo.environment
    let path = env["MESHINFER_MODEL"] ?? ModelStore().defaultModelPath
    return FileManager.default.fileExists(atPath: path) ? path : nil
}()

let modelAvailable = defaultModelPath != nil && Reference.shared != nil

/// Models are loaded once per format and shared by the tests.
final class ModelCache: @unchecked Sendable {
    static let shared = ModelCache()
    private let lock = NSLock()
    private var models: [WeightFormat: LoadedModel] = [:]

    func model(_ format: WeightFormat) throws -> LoadedModel {
        lock.lock()
        defer { lock.unlock() }
        if let m = models[format] { return m }
        let m = try LoadedModel(path: defaultModelPath!, format: format, threads: ProcessInfo.processInfo.activeProcessorCount)
        models[format] = m
        return m
    }
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// A mesh of one over seeded random weights: the single-device engine.
func singleDevice(_ config: ModelConfig, seed: UInt64, format: WeightFormat = .f32, threads: Int = 2) throws -> MeshEngine {
    try MeshEngine(source: RandomWeights(config: config, seed: seed), config: config, mesh: .single,
                   prefill: LoadedModel.singleDeviceLayout, decode: LoadedModel.singleDeviceLayout, format: format, threads: threads)
}

/// The naive oracle over the same seeded random weights.
func oracle(_ config: ModelConfig, seed: UInt64) -> NaiveModel {
    let source = RandomWeights(config: config, seed: seed)
    return try! NaiveModel(config: config) { try source.vector($0) }
}

extension NaiveModel {
    /// Feeds each sequence its tokens; returns, like `ForwardEngine.forward`, the logits of the
    /// tokens from `logitsFrom` on (nil: the last one), one (rows, V) matrix per sequence.
    func forward(_ sequences: [Sequence], _ tokens: [[Int]], logitsFrom: Int? = nil) -> [Matrix] {
        zip(sequences, tokens).map { s, toks in
            let rows = toks.map { step(s, $0) }
            let kept = Array(rows[(logitsFrom.map { min($0, toks.count - 1) } ?? (toks.count - 1))...])
            return Matrix(rows: kept.count, columns: config.vocabularySize, values: kept.flatMap { $0 })
        }
    }
}
