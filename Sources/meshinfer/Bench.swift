import ArgumentParser
import Foundation
import Runtime
import Tensors

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench.")

    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Option(name: [.customShort("p"), .long], help: "Prompt tokens for the pp test (0 = skip).") var promptTokens: Int = 512
    @Option(name: [.customShort("n"), .long], help: "Generated tokens for the tg test (0 = skip).") var genTokens: Int = 128
    @Option(help: "Comma-separated weight formats.") var weights: String = "native,int8"
    @Option(help: "Comma-separated thread counts.") var threads: String = "1"
    @Option(name: [.customShort("r"), .long], help: "Repetitions (median, min, max reported).") var repetitions: Int = 5
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let formats = try weights.split(separator: ",").map { s -> WeightFormat in
            guard let f = WeightFormat(rawValue: String(s)) else { throw ValidationError("unknown weight format '\(s)'") }
            return f
        }
        let threadCounts = try threads.split(separator: ",").map { s -> Int in
            guard let t = Int(s), t >= 1 else { throw ValidationError("bad thread count '\(s)'") }
            return t
        }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be >= 1") }
        let path = try model ?? ModelStore().defaultModel()
        var rows: [[String: Any]] = []
        for format in formats {
            let loaded = try LoadedModel(path: path, format: format, threads: threadCounts.max()!)
            let config = loaded.weights.config
            for t in threadCounts {
                let engine = Engine(weights: loaded.weights, threads: t)
                var rng = SplitMix64(seed: 1)
                let randomTokens = { (n: Int) in (0..<n).map { _ in Int(rng.next() % UInt64(config.vocabularySize)) } }
                for test in [("pp", promptTokens), ("tg", genTokens)] where test.1 > 0 {
                    var rates: [Double] = []
                    _ = try runOnce(engine, test.0, test.1, randomTokens(test.1))   // warm-up
                    for _ in 0..<repetitions { rates.append(try runOnce(engine, test.0, test.1, randomTokens(test.1))) }
                    rates.sort()
                    let median = rates[rates.count / 2]
                    // Work per token: every matrix once (2 FLOPs per weight), plus weights read
                    // once per decode step / once per prompt batch.
                    let flopsPerToken = 2.0 * Double(config.parameterCount - (config.tiedEmbeddings ? 0 : 0))
                    let bytesPerStep = Double(loaded.weights.matrixBytes)
                    let gbps = test.0 == "tg" ? bytesPerStep * median / 1e9 : bytesPerStep * median / Double(test.1) / 1e9
                    let row: [String: Any] = [
                        "test": "\(test.0)\(test.1)", "weights": format.rawValue, "threads": t,
                        "tokens_per_s_median": rounded(median, 2), "tokens_per_s_min": rounded(rates.first!, 2),
                        "tokens_per_s_max": rounded(rates.last!, 2), "repetitions": repetitions,
                        "gb_per_s": rounded(gbps, 2), "gflop_per_s": rounded(flopsPerToken * median / 1e9, 2),
                    ]
                    rows.append(row)
                    if !json {
                        print(String(format: "%-8@ %-7@ threads %2d  %8.2f tok/s (min %.2f, max %.2f)  %6.2f GB/s  %7.2f GFLOP/s",
                                     "\(test.0)\(test.1)", format.rawValue, t, median, rates.first!, rates.last!, gbps,
                                     flopsPerToken * median / 1e9))
                    }
                }
            }
        }
        if json { writeJSON(["model": path, "simd_level": Tensors.simdLevel, "results": rows]) }
    }

    /// One pp or tg run on a fresh cache; returns tokens per second.
    func runOnce(_ engine: Engine, _ kind: String, _ n: Int, _ tokens: [Int]) throws -> Double {
        let cache = engine.makeCache(limit: n + 1)
        let start = Date()
        if kind == "pp" {
            _ = try engine.forward([SequenceInput(cache: cache, tokens: tokens)])
        } else {
            for t in tokens { _ = try engine.forward([SequenceInput(cache: cache, tokens: [t])]) }
        }
        return Double(n) / Date().timeIntervalSince(start)
    }
}
