import ArgumentParser
import Foundation
import Runtime
import Tensors
import CostModel
import Partitioning

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench.")

    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Option(name: [.customShort("p"), .long], help: "Prompt tokens for the pp test (0 = skip).") var promptTokens: Int = 512
    @Option(name: [.customShort("n"), .long], help: "Generated tokens for the tg test (0 = skip).") var genTokens: Int = 128
    @Option(help: "Comma-separated weight formats.") var weights: String = "native,int8"
    @Option(help: "Comma-separated thread counts.") var threads: String = "1"
    @Option(name: [.customShort("r"), .long], help: "Repetitions (median, min, max reported).") var repetitions: Int = 5
    @Option(help: "Sequences per batch (tokens/s counts all of them).") var batch: Int = 1
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var meshOptions: MeshOptions

    func run() throws {
        var options = ModelOptions()
        options.model = model
        try runAcrossRanks(model: options, mesh: meshOptions) { try lead() }
    }

    func lead() throws {
        let formats = try weights.split(separator: ",").map { s -> WeightFormat in
            guard let f = WeightFormat(rawValue: String(s)) else { throw ValidationError("unknown weight format '\(s)'") }
            return f
        }
        let threadCounts = try threads.split(separator: ",").map { s -> Int in
            guard let t = Int(s), t >= 1 else { throw ValidationError("bad thread count '\(s)'") }
            return t
        }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be >= 1") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1") }
        var rows: [[String: Any]] = []
        for format in formats {
            for t in threadCounts {
                var modelOptions = ModelOptions()
                modelOptions.model = model
                modelOptions.weights = format
                modelOptions.threads = t
                let (batch, promptTokens, genTokens) = (batch, promptTokens, genTokens)
                let session = try Session(model: modelOptions, mesh: meshOptions) { _ in
                    Workload(batch: batch, promptTokens: max(1, promptTokens), generateTokens: genTokens)
                }
                let engine = session.engine
                let config = engine.config
                var rng = SplitMix64(seed: 1)
                let randomTokens = { (n: Int) in (0..<n).map { _ in Int(rng.next() % UInt64(config.vocabularySize)) } }
                for test in [("pp", promptTokens), ("tg", genTokens)] where test.1 > 0 {
                    var rates: [Double] = []
                    var commShare: [Double] = []
                    _ = try timeRun(engine, test.0, test.1, (0..<batch).map { _ in randomTokens(test.1) })   // warm-up
                    for _ in 0..<repetitions {
                        try session.meshEngine.resetCounters()
                        rates.append(try timeRun(engine, test.0, test.1, (0..<batch).map { _ in randomTokens(test.1) }))
                        if session.meshEngine.wallSeconds > 0 { let m = session.meshEngine;  commShare.append(m.communicationSeconds / m.wallSeconds) }
                    }
                    rates.sort()
                    commShare.sort()
                    let median = rates[rates.count / 2]
                    // Work per token: every matrix once (2 FLOPs per weight); bytes: every
                    // weight once per decode step (per prompt batch for pp).
                    let flopsPerToken = 2.0 * Double(config.parameterCount)
                    // The weight bytes every device holds (each shard once, in the format it runs).
                    let bytesPerStep = Double(try session.meshEngine.weightsByDevice().reduce(0) { $0 + $1.weightBytes })
                    let steps = test.0 == "tg" ? median / Double(batch) : median / Double(test.1 * batch)
                    let gbps = bytesPerStep * steps / 1e9
                    var row: [String: Any] = [
                        "test": "\(test.0)\(test.1)", "weights": format.rawValue, "threads": t, "batch": batch,
                        "mesh": session.meshEngine.mesh.description,
                        "tokens_per_s_median": rounded(median, 2), "tokens_per_s_min": rounded(rates.first!, 2),
                        "tokens_per_s_max": rounded(rates.last!, 2), "repetitions": repetitions,
                        "gb_per_s": rounded(gbps, 2), "gflop_per_s": rounded(flopsPerToken * median / 1e9, 2),
                    ]
                    var meshText = ""
                    if !commShare.isEmpty {
                        let m = session.meshEngine
                        let share = commShare[commShare.count / 2]
                        let stepSeconds = 1 / steps
                        row["layouts"] = ["prefill": "\(m.prefill)", "decode": "\(m.decode)"]
                        row["step_s"] = rounded(stepSeconds, 6)
                        row["compute_s"] = rounded(stepSeconds * (1 - share), 6)
                        row["communication_s"] = rounded(stepSeconds * share, 6)
                        meshText = String(format: "  mesh %@ %@: step %.2f ms = compute %.2f + communication %.2f",
                                          m.mesh.description, test.0 == "pp" ? "\(m.prefill)" : "\(m.decode)",
                                          stepSeconds * 1e3, stepSeconds * (1 - share) * 1e3, stepSeconds * share * 1e3)
                    }
                    // The cost model's prediction for the same run, from `meshinfer calibrate`'s numbers.
                    var predictedText = ""
                    if let predicted = try predictedRate(session: session, test: test.0, tokens: test.1, format: format, threads: t) {
                        row["predicted_tokens_per_s"] = rounded(predicted, 2)
                        row["predicted_error"] = rounded(predicted / median - 1, 4)
                        predictedText = String(format: "  predicted %.2f tok/s (%+.0f%%)", predicted, (predicted / median - 1) * 100)
                    }
                    rows.append(row)
                    meshText += predictedText
                    if !json {
                        print(String(format: "%-8@ %-7@ threads %2d batch %2d  %8.2f tok/s (min %.2f, max %.2f)  %6.2f GB/s  %7.2f GFLOP/s%@",
                                     "\(test.0)\(test.1)", format.rawValue, t, batch, median, rates.first!, rates.last!, gbps,
                                     flopsPerToken * median / 1e9, meshText))
                    }
                }
            }
        }
        if json { writeJSON(["model": model ?? ModelStore().defaultModelPath, "simd_level": Tensors.simdLevel, "results": rows]) }
    }

    /// Tokens/s the cost model predicts for a pp or tg run, if this host has been calibrated.
    func predictedRate(session: Session, test: String, tokens: Int, format: WeightFormat, threads t: Int) throws -> Double? {
        guard var host = loadHostCalibration() else { return nil }
        if session.meshEngine is ProcessMeshEngine {
            guard let mpi = host.overMPI else { return nil }   // run `calibrate --transport mpi`
            host = mpi
        }
        let mesh = session.meshEngine.mesh
        let precision = WeightPrecision(format)
        let layout = test == "pp" ? session.meshEngine.prefill : session.meshEngine.decode
        return try predictedRunRate(host: host, calibration: host.calibration(for: precision, activeThreads: t),
                                    config: session.engine.config, mesh: mesh, layout: layout, precision: precision,
                                    threads: t, test: test, tokens: tokens, batch: batch)
    }

}

/// One pp (a single prefill of n tokens per sequence) or tg (n decode steps) run on fresh
/// caches; returns tokens per second over all sequences.
func timeRun(_ engine: any ForwardEngine<MeshSequence>, _ kind: String, _ n: Int, _ tokens: [[Int]]) throws -> Double {
    let caches = tokens.map { _ in engine.makeCache(limit: n + 1) }
    let start = Date()
    if kind == "pp" {
        _ = try engine.forward(zip(caches, tokens).map { SequenceInput(cache: $0, tokens: $1) })
    } else {
        for i in 0..<n { _ = try engine.forward(zip(caches, tokens).map { SequenceInput(cache: $0, tokens: [$1[i]]) }) }
    }
    return Double(n * tokens.count) / Date().timeIntervalSince(start)
}

extension WeightPrecision {
    /// The precision a runtime weight format runs at (every device keeps its shards in it).
    init(_ format: WeightFormat) {
        switch format {
        case .int8: self = .int8Grouped
        case .f32: self = .f32
        case .native: self = .native
        }
    }
}

/// Tokens/s the cost model gives this host for one `bench`-style run (`timeRun`): a prefill of
/// `tokens` per sequence ("pp"), or `tokens` decode steps from an empty cache ("tg").
func predictedRunRate(host: HostCalibration, calibration: Calibration, config: ModelConfig, mesh: Mesh, layout: PhaseLayout,
                      precision: WeightPrecision, threads: Int, test: String, tokens: Int, batch: Int) throws -> Double {
    let prefill = test == "pp"
    let hardware = host.hardware(weights: precision, threadsPerDevice: max(1, threads / mesh.deviceCount), activeThreads: threads)
    let p = try CostModel(hardware: hardware, calibration: calibration).predict(
        model: ModelSpec(config: config, nominalParameters: Double(config.parameterCount)), mesh: mesh, layout: layout,
        phase: prefill ? .prefill : .decode, batch: batch, inputTokens: prefill ? tokens : 1,
        generateTokens: prefill ? 1 : tokens, context: prefill ? nil : 0, weights: precision)
    return Double(batch * tokens) / p.latencySeconds
}
