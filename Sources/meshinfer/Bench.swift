import ArgumentParser
import Collectives
import Foundation
import Runtime
import Tensors
import CostModel
import CKernels
import Partitioning

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench.",
        discussion: """
            Each row also gives the bytes a step reads per second (weights once per pass, plus the KV \
            cache attended) against the roofline: this host's streaming rate measured in the same run \
            (a 1 GiB huge-page buffer read with the row's thread count, best of 5). --profile times \
            each op class where it runs (device 0 of a mesh).
            """)

    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Option(name: [.customShort("p"), .long], help: "Prompt tokens for the pp test (0 = skip).") var promptTokens: Int = 512
    @Option(name: [.customShort("n"), .long], help: "Generated tokens for the tg test (0 = skip).") var genTokens: Int = 128
    @Option(name: [.customShort("d"), .long], help: "Tokens already in every sequence's cache before the timed run (untimed prefill), like llama-bench -d.")
    var depth: Int = 0
    @Option(help: "Comma-separated weight formats.") var weights: String = "native,int8"
    @Option(help: "Comma-separated thread counts.") var threads: String = "1"
    @Option(help: "KV cache type: f16 or q8.") var kvCache: KVCacheType = .f16
    @Option(name: [.customShort("r"), .long], help: "Repetitions (median, min, max reported).") var repetitions: Int = 5
    @Option(help: "Comma-separated sequences per batch (tokens/s counts all of them).") var batch: String = "1"
    @Flag(help: "Time every op class of a step (matmul by weight, attention, norms, activation quantization, sampling, thread hand-offs, collectives) beside the bytes it moves and its roofline time.")
    var profile = false
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Skip the untimed warm-up run before the timed ones (like llama-bench --no-warmup): for runs that take minutes.")
    var noWarmup = false
    @Flag(help: "Skip the streaming measurement (the roofline columns): about a second per launch, for scripts that launch many runs.")
    var noRoofline = false
    @OptionGroup var meshOptions: MeshOptions

    func run() throws {
        var options = ModelOptions()
        options.model = model
        try runAcrossRanks(model: options, mesh: meshOptions) { try lead() }
    }

    func list<T>(_ text: String, _ what: String, _ parse: (String) -> T?) throws -> [T] {
        try text.split(separator: ",").map { s in
            guard let v = parse(String(s)) else { throw ValidationError("bad \(what) '\(s)'") }
            return v
        }
    }

    func lead() throws {
        let formats = try list(weights, "weight format") { WeightFormat(rawValue: $0) }
        let threadCounts = try list(threads, "thread count") { Int($0).flatMap { $0 >= 1 ? $0 : nil } }
        let batches = try list(batch, "batch size") { Int($0).flatMap { $0 >= 1 ? $0 : nil } }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be >= 1") }
        guard depth >= 0 else { throw ValidationError("--depth must be >= 0") }
        var roofline = Roofline()
        var rows: [[String: Any]] = []
        for format in formats {
            for t in threadCounts {
                for batch in batches {
                    rows += try measure(format: format, threads: t, batch: batch, roofline: &roofline)
                }
            }
        }
        if json { writeJSON(["model": model ?? ModelStore().defaultModelPath, "simd_level": Tensors.simdLevel, "results": rows]) }
    }

    /// The pp and tg rows of one (format, threads, batch).
    func measure(format: WeightFormat, threads t: Int, batch: Int, roofline: inout Roofline) throws -> [[String: Any]] {
        var modelOptions = ModelOptions()
        modelOptions.model = model
        modelOptions.weights = format
        modelOptions.threads = t
        modelOptions.kvCache = kvCache
        let (promptTokens, genTokens, depth) = (promptTokens, genTokens, depth)
        let session = try Session(model: modelOptions, mesh: meshOptions) { _ in
            Workload(batch: batch, promptTokens: max(1, promptTokens, depth), generateTokens: genTokens)
        }
        let engine = session.engine, runner = session.meshEngine
        let config = engine.config
        var rng = SplitMix64(seed: 1)
        let randomTokens = { (n: Int) in (0..<n).map { _ in Int(rng.next() % UInt64(config.vocabularySize)) } }
        // An in-process mesh runs at least one thread per device.
        let streamRate = noRoofline ? nil : roofline.bytesPerSecond(threads: runner is MeshEngine ? max(t, runner.mesh.deviceCount) : t)
        let weightBytes = Double(try runner.weightsByDevice().reduce(0) { $0 + $1.weightBytes })   // every device's shards
        var rows: [[String: Any]] = []
        for test in [("pp", promptTokens), ("tg", genTokens)] where test.1 > 0 {
            let run = BenchRun(kind: test.0, tokens: test.1, depth: depth, batch: batch)
            var rates: [Double] = []
            var commShare: [Double] = []
            var profiled = ProfileTotals()
            if !noWarmup { _ = try run.time(engine, run.inputs(randomTokens), profile: nil) }   // warm-up
            for _ in 0..<repetitions {
                try runner.resetCounters()
                let op = profile ? OpProfile() : nil
                runner.profile = op
                defer { runner.profile = nil }
                let (rate, seconds) = try run.time(engine, run.inputs(randomTokens), profile: op)
                rates.append(rate)
                if let op { profiled.add(op, wallSeconds: seconds) }
                if runner.wallSeconds > 0 { commShare.append(runner.communicationSeconds / runner.wallSeconds) }
            }
            rates.sort()
            commShare.sort()
            let median = rates[rates.count / 2]
            // Work per token: every matrix once (2 FLOPs per weight). Bytes per pass: every weight
            // once, plus the KV cache the pass attends.
            let flopsPerToken = 2.0 * Double(config.parameterCount)
            let passes = test.0 == "tg" ? median / Double(batch) : median / Double(test.1 * batch)   // passes per second
            let kvBytes = run.kvBytesPerPass(config, kvCache: kvCache)
            let gbps = (weightBytes + kvBytes) * passes / 1e9
            var row: [String: Any] = [
                "test": run.name, "weights": format.rawValue, "kv_cache": kvCache.rawValue, "threads": t, "batch": batch, "depth": depth,
                "mesh": runner.mesh.description,
                "tokens_per_s_median": rounded(median, 2), "tokens_per_s_min": rounded(rates.first!, 2),
                "tokens_per_s_max": rounded(rates.last!, 2), "repetitions": repetitions,
                "weight_bytes": Int(weightBytes), "kv_bytes_per_pass": Int(kvBytes),
                "gb_per_s": rounded(gbps, 2), "gflop_per_s": rounded(flopsPerToken * median / 1e9, 2),
            ]
            var rooflineText = ""
            if let streamRate {
                let percent = gbps * 1e9 / streamRate * 100
                row["roofline_gb_per_s"] = rounded(streamRate / 1e9, 2)
                row["roofline_percent"] = rounded(percent, 1)
                rooflineText = String(format: " (%.0f%% of %.1f)", percent, streamRate / 1e9)
            }
            var meshText = ""
            if !commShare.isEmpty {
                let share = commShare[commShare.count / 2]
                let stepSeconds = 1 / passes
                row["layouts"] = ["prefill": "\(runner.prefill)", "decode": "\(runner.decode)"]
                row["step_s"] = rounded(stepSeconds, 6)
                row["compute_s"] = rounded(stepSeconds * (1 - share), 6)
                row["communication_s"] = rounded(stepSeconds * share, 6)
                meshText = String(format: "  mesh %@ %@: step %.2f ms = compute %.2f + communication %.2f",
                                  runner.mesh.description, test.0 == "pp" ? "\(runner.prefill)" : "\(runner.decode)",
                                  stepSeconds * 1e3, stepSeconds * (1 - share) * 1e3, stepSeconds * share * 1e3)
            }
            // The cost model's prediction for the same run, from `meshinfer calibrate`'s numbers.
            var predictedText = ""
            if let predicted = try predictedRate(session: session, run: run, model: modelOptions) {
                row["predicted_tokens_per_s"] = rounded(predicted, 2)
                row["predicted_error"] = rounded(predicted / median - 1, 4)
                predictedText = String(format: "  predicted %.2f tok/s (%+.0f%%)", predicted, (predicted / median - 1) * 100)
            }
            let perPass = test.0 == "tg" ? test.1 * repetitions : repetitions
            if profile {
                row["profile_per"] = test.0 == "tg" ? "decode_step" : "prefill_pass"
                row["profile"] = profiled.json(perPass: perPass, streamRate: streamRate)
            }
            rows.append(row)
            if !json {
                print(String(format: "%-12@ %-7@ threads %2d batch %2d  %8.2f tok/s (min %.2f, max %.2f)  %6.2f GB/s%@  %7.2f GFLOP/s%@%@",
                             run.name, kvCache == .f16 ? format.rawValue : "\(format.rawValue)/kv-\(kvCache.rawValue)", t, batch, median, rates.first!, rates.last!, gbps,
                             rooflineText, flopsPerToken * median / 1e9, meshText, predictedText))
                if profile { print(profiled.table(perPass: perPass, streamRate: streamRate, per: test.0 == "tg" ? "decode step" : "prefill pass")) }
            }
        }
        return rows
    }

    /// Tokens/s the cost model predicts for a run, if this host has been calibrated (the
    /// session's own host cost model: its weights, threads, transport and KV cache type).
    func predictedRate(session: Session, run: BenchRun, model: ModelOptions) throws -> Double? {
        let mesh = session.meshEngine.mesh
        guard let costModel = Session.hostCostModel(meshOptions, model: model, mesh: mesh) else { return nil }
        let layout = run.kind == "pp" ? session.meshEngine.prefill : session.meshEngine.decode
        return try predictedRunRate(hardware: costModel.hardware, calibration: costModel.calibration, config: session.engine.config,
                                    mesh: mesh, layout: layout, precision: WeightPrecision(model.weights), test: run.kind,
                                    tokens: run.tokens, batch: run.batch, depth: run.depth)
    }
}

/// One timed run of `bench`: a prefill of `tokens` per sequence ("pp"), or `tokens` decode
/// steps ("tg"), on fresh caches already holding `depth` tokens (prefilled untimed).
struct BenchRun {
    let kind: String
    let tokens: Int
    let depth: Int
    let batch: Int

    /// llama-bench's names: pp512, tg128, tg128 @ d512.
    var name: String { "\(kind)\(tokens)" + (depth > 0 ? " @ d\(depth)" : "") }

    /// Each sequence's depth tokens, then its timed tokens.
    func inputs(_ random: (Int) -> [Int]) -> [[Int]] { (0..<batch).map { _ in random(depth + tokens) } }

    /// Runs it; returns tokens/s over all sequences and the timed seconds. With a profile, each
    /// decode step's logits are also sampled greedily (timed as "sampling"); the depth prefill
    /// is not profiled.
    func time(_ engine: any ForwardEngine<MeshSequence>, _ inputs: [[Int]], profile: OpProfile?) throws -> (Double, Double) {
        let caches = inputs.map { _ in engine.makeCache(limit: depth + tokens + 1) }
        if depth > 0 { _ = try engine.forward(zip(caches, inputs).map { SequenceInput(cache: $0, tokens: Array($1.prefix(depth))) }) }
        profile?.reset()
        let start = Date()
        if kind == "pp" {
            _ = try engine.forward(zip(caches, inputs).map { SequenceInput(cache: $0, tokens: Array($1[depth...])) })
        } else {
            for i in depth..<(depth + tokens) {
                let logits = try engine.forward(zip(caches, inputs).map { SequenceInput(cache: $0, tokens: [$1[i]]) })
                if let profile {
                    profile.measure("sampling", bytes: Double(logits.count * engine.config.vocabularySize * 4)) {
                        for l in logits { _ = topLogits(UnsafeBufferPointer(start: l.row(0), count: l.columns), k: 1) }
                    }
                }
            }
        }
        let seconds = Date().timeIntervalSince(start)
        return (Double(tokens * inputs.count) / seconds, seconds)
    }

    /// Bytes of KV cache (keys and values of `kvCache`'s type) one pass must read, over all sequences: each
    /// sequence's attended positions once per layer — the mean over the run's decode steps, or
    /// the span the prefill's rows attend together.
    func kvBytesPerPass(_ config: ModelConfig, kvCache: KVCacheType) -> Double {
        let passes = kind == "tg" ? (depth..<(depth + tokens)).map { $0..<($0 + 1) } : [depth..<(depth + tokens)]
        var positions = 0
        for pass in passes {
            for l in 0..<config.layers { positions += pass.upperBound - config.firstAttended(layer: l, position: pass.lowerBound) }
        }
        return Double(kvCache.bytes(elements: positions * 2 * config.kvHeads * config.headDimension)) * Double(batch) / Double(passes.count)
    }
}

/// `bench --profile`'s op-class totals over a row's repetitions, with their wall time (the
/// remainder, not inside any timed op, is "other": glue between ops, allocation, bookkeeping).
struct ProfileTotals {
    var entries: [String: OpProfile.Entry] = [:]
    var wallSeconds = 0.0

    mutating func add(_ profile: OpProfile, wallSeconds: Double) {
        for (op, e) in profile.entries {
            entries[op, default: .init()].seconds += e.seconds
            entries[op, default: .init()].bytes += e.bytes
            entries[op, default: .init()].calls += e.calls
        }
        self.wallSeconds += wallSeconds
    }

    /// Per pass, largest first, "other" last.
    func perPass(_ n: Int) -> [(op: String, seconds: Double, bytes: Double)] {
        let classes = entries.map { (op: $0.key, seconds: $0.value.seconds / Double(n), bytes: $0.value.bytes / Double(n)) }
            .sorted { $0.seconds > $1.seconds }
        let timed = entries.values.reduce(0) { $0 + $1.seconds }
        return classes + [(op: "other", seconds: max(0, wallSeconds - timed) / Double(n), bytes: 0)]
    }

    func json(perPass n: Int, streamRate: Double?) -> [String: Any] {
        var out: [String: Any] = [:]
        for c in perPass(n) {
            var entry: [String: Any] = ["seconds": rounded(c.seconds, 7), "bytes": Int(c.bytes)]
            if let streamRate { entry["roofline_seconds"] = rounded(c.bytes / streamRate, 7) }
            out[c.op] = entry
        }
        return out
    }

    func table(perPass n: Int, streamRate: Double?, per: String) -> String {
        let classes = perPass(n)
        let total = wallSeconds / Double(n)
        var lines = [String(format: "  profile of one %@ (%.3f ms):  %-34@ %9@ %6@ %10@ %12@", per, total * 1e3, "op class", "ms", "share", "MB", "roofline ms")]
        for c in classes {
            let roofline = streamRate.map { String(format: "%12.3f", c.bytes / $0 * 1e3) } ?? String(repeating: " ", count: 11) + "-"
            lines.append(String(format: "  %@  %-34@ %9.3f %5.1f%% %10.3f %@", String(repeating: " ", count: 25), c.op, c.seconds * 1e3,
                                c.seconds / total * 100, c.bytes / 1e6, roofline))
        }
        return lines.joined(separator: "\n")
    }
}

/// What one core (or the row's threads) can stream from memory, measured once per thread count
/// in the process: a 1 GiB buffer on huge pages, read whole with the widest loads, best of 5.
struct Roofline {
    private var measured: [Int: Double] = [:]

    mutating func bytesPerSecond(threads: Int) -> Double {
        if let r = measured[threads] { return r }
        let bytes = 1 << 30, parts = 64
        guard let buffer = mi_huge_alloc(bytes) else { return .nan }
        defer { mi_huge_free(buffer) }
        memset(buffer, 1, bytes)   // fault every page in before timing
        let splitter = WorkSplitter(threads: threads)
        var best = 0.0
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            splitter.parallelFor(parts) { range in
                for p in range { _ = mi_stream_read(buffer + p * (bytes / parts), bytes / parts) }
            }
            best = max(best, Double(bytes) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
        }
        measured[threads] = best
        return best
    }
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

/// Tokens/s the cost model gives this host for one `bench`-style run (`BenchRun`): a prefill of
/// `tokens` per sequence ("pp"), or `tokens` decode steps from an empty cache ("tg").
func predictedRunRate(hardware: Hardware, calibration: Calibration, config: ModelConfig, mesh: Mesh, layout: PhaseLayout,
                      precision: WeightPrecision, test: String, tokens: Int, batch: Int, depth: Int = 0) throws -> Double {
    let prefill = test == "pp"
    let p = try CostModel(hardware: hardware, calibration: calibration).predict(
        model: ModelSpec(config: config, nominalParameters: Double(config.parameterCount)), mesh: mesh, layout: layout,
        phase: prefill ? .prefill : .decode, batch: batch, inputTokens: prefill ? tokens : 1,
        generateTokens: prefill ? 1 : tokens, context: prefill ? nil : depth, weights: precision)
    return Double(batch * tokens) / p.latencySeconds
}
