import ArgumentParser
import Collectives
import CostModel
import Foundation
import GGUF
import Partitioning
import Runtime
import Tensors
import CKernels

/// The median of 5 runs of `f` (calibrate's measurements).
private func median(_ f: () throws -> Double) rethrows -> Double { try (0..<5).map { _ in try f() }.sorted()[2] }

/// The file `--calibration FILE` named (set when the command line is validated).
nonisolated(unsafe) private var calibrationFile: String?

/// Where `calibrate` stores this host's measurements (read by `predict --hardware cpu`, `plan`,
/// `bench` and the default layout choice): `--calibration FILE`, else `MESHINFER_CALIBRATION`,
/// else the model cache's cpu-calibration.json.
func hostCalibrationPath() -> String {
    calibrationFile ?? ProcessInfo.processInfo.environment["MESHINFER_CALIBRATION"] ?? ModelStore().directory + "/cpu-calibration.json"
}

func loadHostCalibration() -> HostCalibration? {
    guard let data = FileManager.default.contents(atPath: hostCalibrationPath()) else { return nil }
    return try? JSONDecoder().decode(HostCalibration.self, from: data)
}

/// `--calibration FILE`: the measurements to price with, one file per machine or cluster and
/// link rate (`calibrate --output FILE`, then `mpirun … calibrate --transport mpi --output FILE`
/// on the cluster). A named file must exist and hold a calibration.
struct CalibrationOption: ParsableArguments {
    @Option(help: "Calibration file to price with (default: this host's, from `meshinfer calibrate`); e.g. one per cluster and link rate.")
    var calibration: String?

    func validate() throws {
        guard let calibration else { return }
        guard let data = FileManager.default.contents(atPath: calibration) else {
            throw ValidationError("--calibration \(calibration): no such file (write one with `meshinfer calibrate --output \(calibration)`)")
        }
        do { _ = try JSONDecoder().decode(HostCalibration.self, from: data) } catch {
            throw ValidationError("--calibration \(calibration) is not a calibration file: \(error)")
        }
        calibrationFile = calibration
    }
}

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure this host for the cost model: GEMM and attention rates, weight streaming, whole-pass efficiencies of the model, collective latency and bandwidth (in-process, or MPI with --transport mpi under mpirun).")

    @Option(help: "Collectives to measure: inprocess (and the whole host), or mpi (run under mpirun with 2 or more ranks; adds MPI collective latency and bandwidth to the saved measurements).")
    var transport: Transport = .inprocess
    @Option(help: "Output file (default: the model cache's cpu-calibration.json).") var output: String?
    @Option(help: "GGUF model whose whole forward pass is timed for the pass efficiencies (default: the cached default model).")
    var model: String?
    @Option(help: "With --transport mpi: threads each rank will run (recorded for pricing; default: this host's cores / ranks on it).")
    var threads: Int?

    func run() throws {
        if transport == .mpi { return try calibrateMPI() }
        try MeshOptions.parse([]).checkLaunch()
        let threads = ProcessInfo.processInfo.activeProcessorCount
        func time(_ body: () -> Void) -> Double { let s = Date(); body(); return Date().timeIntervalSince(s) }

        // GEMM rates on one thread: a prefill-shaped (512 x 576) x (576 -> 1536) product.
        let M = 512, K = 576, N = 1536
        let x = Matrix(rows: M, columns: K, values: (0..<(M * K)).map { Float(($0 % 97) - 48) / 50 })
        let w = (0..<(N * K)).map { Float(($0 % 89) - 44) / 60 }
        let one = WorkSplitter(threads: 1), all = WorkSplitter(threads: threads)
        var rates: [String: Double] = [:], ratesAll: [String: Double] = [:]
        for format in [WeightFormat.f32, .int8] {
            let weight = LinearWeight(values: w, outputs: N, inputs: K, format: format)
            _ = weight.apply(x, threads: one)
            rates[format.rawValue] = 2 * Double(M * N * K) / median { time { _ = weight.apply(x, threads: one) } }
            ratesAll[format.rawValue] = 2 * Double(M * N * K) / median { time { _ = weight.apply(x, threads: all) } }
        }
        // Causal attention of 512 positions, 9 heads of 64 over 3 KV heads (the default model's
        // shape), from one layer's tiles of 16 positions (KVCache's layout: (L/16, KV, 2, 16, Q)).
        let L = 512, H = 9, KV = 3, Q = 64, headStride = 2 * 16 * Q, tileStride = KV * headStride
        let qkv = (0..<(L * H * Q)).map { Float($0 % 17) / 17 }, kv = (0..<(L * KV * 2 * Q)).map { Float16(Float($0 % 13) / 13).bitPattern }
        var scratch = [Float](repeating: 0, count: L), out = [Float](repeating: 0, count: H * Q)
        let attentionSeconds = median {
            time {
                for i in 0..<L {
                    qkv.withUnsafeBufferPointer { q in
                        mi_attention_row(q.baseAddress! + i * H * Q, Int32(H), Int32(KV), Int32(Q), kv, Int64(headStride), Int64(tileStride),
                                         Int64(Int(MI_KV_CHUNK) / 16 * tileStride), 0, Int32(i + 1), 0.125, &scratch, &out, 0)
                    }
                }
            }
        }
        // In the cost model's accounting (Tracer): 4·H·Q FLOPs per query per context position,
        // over the full L × L square as an accelerator computes it. This runtime skips the masked
        // half, which the measured rate then includes.
        let attentionRate = 4 * Double(H * Q) * Double(L * (L + 1) / 2) / attentionSeconds   // causal, as the tracer counts
        // Weight streaming: decode-like matvecs over ~200 MB of 8-bit weights (beyond the caches;
        // int8 is Q8_0 blocks, 1.06 bytes per weight), in matrices of a small model's shape
        // (1536 x 576), as decode reads them — on huge pages, side by side, as a device's loaded
        // weights are (WeightArena).
        let arena = WeightArena()
        let pattern = (0..<(1536 * 576)).map { Float(($0 % 251) - 125) / 200 }
        let big = (0..<212).map { _ in LinearWeight(values: pattern, outputs: 1536, inputs: 576, format: .int8, arena: arena) }
        // Bytes/s of `weights` streamed through matvecs of `rows` activation rows (a decode step
        // of `rows` sequences).
        func stream(_ weights: [LinearWeight], rows: Int = 1, _ t: WorkSplitter) -> Double {
            let x = Matrix(rows: rows, columns: 576, values: (0..<(rows * 576)).map { Float($0 % 13) / 13 })
            return Double(weights.reduce(0) { $0 + $1.byteCount }) / median { time { for b in weights { _ = b.apply(x, threads: t) } } }
        }
        let v = Matrix(rows: 1, columns: 576, values: (0..<576).map { Float($0 % 13) / 13 })
        let bw1 = stream(big, one), bwAll = stream(big, all)
        func decodeAttention(_ t: WorkSplitter) throws -> [String: Double] {
            Dictionary(uniqueKeysWithValues: try KVCacheType.allCases.map { type in
                (type.rawValue, try decodeAttentionBandwidth(type, threads: t, between: { for b in big.prefix(5) { _ = b.apply(v, threads: t) } }))
            })
        }
        let decodeAttentionOne = try decodeAttention(one), decodeAttentionAll = try decodeAttention(all)
        // The same for f32 weights (a different kernel: f32 decode reads 3.2x the bytes per
        // weight and does no dequantization, so it streams at its own rate).
        let bigF32 = (0..<60).map { _ in LinearWeight(values: pattern, outputs: 1536, inputs: 576, format: .f32, arena: arena) }
        let fbw1 = stream(bigF32, one), fbwAll = stream(bigF32, all)
        // The same two measurements for the in-place Q4_1 kernel (`--weights native`), on a
        // Q4_1 tensor written to an in-memory GGUF file.
        let q4 = try nativeWeights(rows: 1536, columns: 576)
        let qx = Matrix(rows: M, columns: 576, values: (0..<(M * 576)).map { Float(($0 % 97) - 48) / 50 })
        _ = q4.apply(qx, threads: one)
        let nativeRate = 2 * Double(M * 1536 * 576) / median { time { _ = q4.apply(qx, threads: one) } }
        let nativeRateAll = 2 * Double(M * 1536 * 576) / median { time { _ = q4.apply(qx, threads: all) } }
        let nativeBig = try (0..<180).map { _ in try nativeWeights(rows: 1536, columns: 576, arena: arena) }
        let nbw1 = stream(nativeBig, one), nbwAll = stream(nativeBig, all)
        // Batched decode: the same streams with 2–32 activation rows, as a fraction of one row's
        // rate (per format, with one thread and with all: `passKey`).
        var rowsStreaming: [String: [String: Double]] = [:]
        for (precision, weights) in [(WeightPrecision.int8Grouped, big), (.f32, bigF32), (.native, nativeBig)] {
            for t in [one, all] {
                let single = stream(weights, t)
                rowsStreaming[HostCalibration.passKey(precision, threads: t.threads)] = Dictionary(uniqueKeysWithValues: [2, 4, 8, 16, 32].map {
                    (String($0), stream(weights, rows: $0, t) / single) })
            }
        }
        // In-process collectives between two devices: every kind, and all-gather as the default.
        let inProcess = try collectiveRates { kind, count, calls in try meshTime(kind, count: count, calls: calls) }
        let small = inProcess[CollectiveKind.allGather.rawValue]!.latency
        let bandwidth = inProcess[CollectiveKind.allGather.rawValue]!.bandwidth
        var result = HostCalibration(
            f32FLOPsPerThread: rates["f32"]!, int8OPsPerThread: rates["int8"]!, memoryBandwidthOneThread: bw1,
            memoryBandwidthAllThreads: bwAll, threads: threads, collectiveLatency: small, collectiveBandwidth: bandwidth,
            memoryBytes: Double(ProcessInfo.processInfo.physicalMemory))
        result.attentionFLOPsPerThread = attentionRate
        result.decodeAttentionBandwidthOneThread = decodeAttentionOne
        result.decodeAttentionBandwidthAllThreads = decodeAttentionAll
        result.decodeRowsStreaming = rowsStreaming
        result.collectiveRates = inProcess
        result.nativeOPsPerThread = nativeRate
        result.nativeBandwidthOneThread = nbw1
        result.nativeBandwidthAllThreads = nbwAll
        // All threads at once: the cores may share execution units or power, so the rate with
        // every thread busy is measured rather than assumed to be threads × one thread's.
        result.allThreadsOPs = ["f32": ratesAll["f32"]!, "int8-g32": ratesAll["int8"]!, "native": nativeRateAll]
        result.f32BandwidthOneThread = fbw1
        result.f32BandwidthAllThreads = fbwAll
        try measurePassEfficiencies(&result)
        let path = output ?? hostCalibrationPath()
        // Keep MPI measurements from an earlier `calibrate --transport mpi`.
        if let data = FileManager.default.contents(atPath: path), let old = try? JSONDecoder().decode(HostCalibration.self, from: data) {
            result.mpiCollectiveLatency = old.mpiCollectiveLatency
            result.mpiCollectiveBandwidth = old.mpiCollectiveBandwidth
            result.mpiRanks = old.mpiRanks
            result.mpiCollectiveRates = old.mpiCollectiveRates
            result.mpiCluster = old.mpiCluster
        }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(result).write(to: URL(fileURLWithPath: path))
        print(String(format: "GEMM with %d threads: f32 %.1f GFLOP/s, int8 %.1f GOP/s, native %.1f GOP/s", threads,
                     ratesAll["f32"]! / 1e9, ratesAll["int8"]! / 1e9, nativeRateAll / 1e9))
        print(String(format: "f32 weight streaming %.1f GB/s (1 thread), %.1f GB/s (%d threads)", fbw1 / 1e9, fbwAll / 1e9, threads))
        print(String(format: "attention %.1f GFLOP/s per thread; native Q4_1 %.1f GOP/s per thread, streaming %.1f / %.1f GB/s",
                     attentionRate / 1e9, nativeRate / 1e9, nbw1 / 1e9, nbwAll / 1e9))
        print("weight streaming with 8 and 32 rows, as a fraction of 1 row's: " + rowsStreaming.keys.sorted().map {
            String(format: "%@ %.2f, %.2f", $0, rowsStreaming[$0]!["8"]!, rowsStreaming[$0]!["32"]!) }.joined(separator: "; "))
        print("decode attention (8 sequences of 192 positions, from memory; 1 / \(threads) threads): "
            + decodeAttentionOne.keys.sorted().map { String(format: "%@ cache %.1f / %.1f GB/s", $0, decodeAttentionOne[$0]! / 1e9,
                                                             (decodeAttentionAll[$0] ?? 0) / 1e9) }.joined(separator: ", "))
        print(String(format: "f32 %.1f GFLOP/s and int8 %.1f GOP/s per thread; weight streaming %.1f GB/s (1 thread), %.1f GB/s (%d threads)",
                     result.f32FLOPsPerThread / 1e9, result.int8OPsPerThread / 1e9, bw1 / 1e9, bwAll / 1e9, threads))
        print("in-process collectives: " + Self.describe(inProcess))
        print("saved to \(path)")
    }

    /// Bytes/s at which decode attention on `threads` consumes a KV cache of `type`, its
    /// arithmetic included: 8 sequences of 192 cached positions, the default model's shape (9
    /// heads of 64 over 3 KV heads, 30 layers, in tiles as KVCache keeps them, on huge pages),
    /// one query row per sequence and layer, the sequences split over the threads, as a decode
    /// step runs them — after `between` (the layer's weights streamed through the caches) at
    /// every layer, so each layer's keys and values come from memory. The median of 5 steps'
    /// attention time (weights not counted).
    func decodeAttentionBandwidth(_ type: KVCacheType, threads: WorkSplitter, between: () -> Void) throws -> Double {
        let sequences = 8, layers = 30, H = 9, KV = 3, Q = 64, capacity = 256, count = 192, C = Int(MI_KV_CHUNK)
        // KVCache's layout: (chunks, layers, C/16, KV heads, K/V, 16, Q) elements, q8 scales after them.
        let headStride = 2 * 16 * Q, tileStride = KV * headStride, perLayer = C / 16 * tileStride, chunkStride = layers * perLayer
        let elements = capacity / C * chunkStride            // one sequence's cache
        let codeBytes = type == .f16 ? 2 : 1
        let bytesPerSequence = elements * codeBytes + (type == .q8 ? elements / 32 * 4 : 0)
        var caches: [UnsafeMutableRawPointer] = []
        defer { caches.forEach { mi_huge_free($0) } }
        for _ in 0..<sequences {
            guard let c = mi_huge_alloc(bytesPerSequence) else {
                throw ValidationError("calibrate: no memory for the decode-attention measurement's KV caches (\(sequences) × \(bytesPerSequence) bytes)")
            }
            caches.append(c)
        }
        for c in caches {
            // Varied keys and values (f16 between 0.5 and 0.56, or q8 codes of ±100 with scales of 1/254).
            let codes = c.assumingMemoryBound(to: UInt8.self)
            for i in 0..<(elements * codeBytes) { codes[i] = type == .f16 ? (i % 2 == 1 ? 0x38 : UInt8(i % 251)) : UInt8(truncatingIfNeeded: i % 201 - 100) }
            if type == .q8 {
                let scales = (c + elements).assumingMemoryBound(to: Float.self)
                for i in 0..<(elements / 32) { scales[i] = 1.0 / 254 }
            }
        }
        let q = (0..<(H * Q)).map { Float($0 % 7) / 7 - 0.4 }
        func step() -> Double {
            var seconds = 0.0
            for l in 0..<layers {
                between()
                let start = Date()
                threads.parallelFor(sequences) { range in
                    // Each thread its own scratch (count floats) and output row.
                    var out = [Float](repeating: 0, count: H * Q), scratch = [Float](repeating: 0, count: count)
                    for c in caches[range] {
                        let at = l * perLayer
                        switch type {
                        case .f16:
                            let e = c.assumingMemoryBound(to: UInt16.self)
                            mi_attention_row(q, Int32(H), Int32(KV), Int32(Q), e + at, Int64(headStride), Int64(tileStride), Int64(chunkStride), 0,
                                             Int32(count), 0.125, &scratch, &out, 1)
                        case .q8:
                            let e = c.assumingMemoryBound(to: Int8.self), scales = (c + elements).assumingMemoryBound(to: Float.self)
                            mi_attention_row_q8(q, Int32(H), Int32(KV), Int32(Q), e + at, scales + at / 32, Int64(headStride), Int64(tileStride),
                                                Int64(chunkStride), 0, Int32(count), 0.125, &scratch, &out, 1)
                        }
                    }
                }
                seconds += Date().timeIntervalSince(start)
            }
            return seconds
        }
        _ = step()
        let read = Double(sequences * layers * 2 * KV * count * Q) * type.bytesPerElement
        return read / median(step)
    }

    /// Whole-pass efficiencies on the model file (default: the cached default model; skipped if
    /// absent), and on every other catalog model in the cache (per file): for each weight
    /// format, on one device with one thread and with all threads, a 256-token prefill and 32
    /// decode steps, each the median of 5, against the cost model's time at the kernel rates.
    func measurePassEfficiencies(_ host: inout HostCalibration) throws {
        guard let path = try? ModelStore().resolve(model) else {
            print("no model file: whole-pass efficiencies not measured (run `meshinfer pull`)")
            return
        }
        let store = ModelStore()
        let others = ModelStore.catalog.map { store.directory + "/" + $0.fileName }
            .filter { $0 != path && FileManager.default.fileExists(atPath: $0) }
        var perModel: [String: HostCalibration.PassEfficiency] = [:]
        for file in [path] + others {
            let measured = try passEfficiencies(file, host)
            perModel[URL(fileURLWithPath: file).lastPathComponent] = measured
            if file == path {
                host.passComputeEfficiency = measured.compute
                host.passMemoryEfficiency = measured.memory
            }
            print("whole-pass efficiency of \(URL(fileURLWithPath: file).lastPathComponent) (prefill / decode): " + measured.compute.keys.sorted().map {
                String(format: "%@ %.2f / %.2f", $0, measured.compute[$0]!, measured.memory[$0]!) }.joined(separator: ", "))
        }
        host.modelPassEfficiency = perModel
    }

    func passEfficiencies(_ path: String, _ host: HostCalibration) throws -> HostCalibration.PassEfficiency {
        let threads = ProcessInfo.processInfo.activeProcessorCount
        var compute: [String: Double] = [:], memory: [String: Double] = [:]
        for t in Set([1, threads]).sorted() {
            for format in [WeightFormat.f32, .int8, .native] {
                let loaded = try LoadedModel(path: path, format: format, threads: t)
                let config = loaded.config
                let precision = WeightPrecision(format)
                let layout = PhaseLayout(.weightStationary1D, .shardedOverHeads)
                var rng = SplitMix64(seed: 7)
                let tokens = (0..<256).map { _ in Int(rng.next() % UInt64(config.vocabularySize)) }
                // measured rate / the model's rate at kernel speed (efficiencies 1): the fraction of
                // the kernel rates a whole pass achieves.
                func efficiency(_ test: String, _ n: Int) throws -> Double {
                    let run = BenchRun(kind: test, tokens: n, depth: 0, batch: 1)
                    _ = try run.time(loaded.engine, [Array(tokens.prefix(n))], profile: nil)
                    let measured = try median { try run.time(loaded.engine, [Array(tokens.prefix(n))], profile: nil).0 }
                    let predicted = try predictedRunRate(hardware: host.hardware(weights: precision, threadsPerDevice: t, activeThreads: t),
                                                         calibration: host.calibration(), config: config, mesh: .single,
                                                         layout: layout, precision: precision, test: test, tokens: n, batch: 1)
                    return min(1.5, measured / predicted)
                }
                let key = HostCalibration.passKey(precision, threads: t)
                compute[key] = try efficiency("pp", 256)
                memory[key] = try efficiency("tg", 32)
            }
        }
        return .init(compute: compute, memory: memory)
    }

    static func describe(_ rates: [String: CollectiveRate]) -> String {
        CollectiveKind.allCases.compactMap { kind in
            rates[kind.rawValue].map { String(format: "%@ %.1f us + %.2f GB/s", kind.rawValue, $0.latency * 1e6, $0.bandwidth / 1e9) }
        }.joined(separator: ", ")
    }

    /// A Q4_1 matrix (rows × columns) with varied blocks, loaded as `native` weights.
    func nativeWeights(rows: Int, columns: Int, arena: WeightArena? = nil) throws -> LinearWeight {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(rows * columns / 32 * 20)
        for b in 0..<(rows * columns / 32) {
            let d = Float16(0.01 + Float(b % 7) * 0.001), m = Float16(-0.08)
            withUnsafeBytes(of: d.bitPattern) { bytes += $0 }
            withUnsafeBytes(of: m.bitPattern) { bytes += $0 }
            for i in 0..<16 { bytes.append(UInt8((b * 7 + i * 3) & 0xFF)) }
        }
        var writer = GGUFWriter()
        writer.addTensor(name: "w", dimensions: [columns, rows], type: .q4_1, data: bytes)
        let file = try GGUFFile(bytes: writer.serialized())
        return try LinearWeight(source: file, spec: ShardSpec(rows: [.tensor("w", 0..<rows)], columns: [.source(0..<columns)]), format: .native,
                                arena: arena)
    }

    /// MPI collectives between 2 ranks (the x axis of a 2 × N/2 mesh): seconds per all-gather call
    /// and bytes/s, and the cluster the ranks ran on (hosts, machines, threads per rank), merged
    /// by rank 0 into the host measurements: `--output FILE` if it exists, else this host's file
    /// (written to `--output`, else back to this host's file).
    func calibrateMPI() throws {
        let size = MPIWorld.launchedSize ?? 1
        guard size >= 2, size % 2 == 0 else {
            throw ValidationError("calibrate --transport mpi needs an even number of ranks, at least 2: mpirun -np 2 meshinfer calibrate --transport mpi")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        let options = try MeshOptions.parse(["--transport", "mpi", "--mesh", "2x\(size / 2)"])
        let world = try options.startMPI()
        defer { world.finalize() }
        // Who ran where: a host per distinct host name, a machine per distinct boot id (network
        // namespaces of one machine share it, and share its cores).
        let threadsPerRank = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / MPIWorld.ranksOnThisHost)
        let bootID = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? world.processorName
        let identities = try world.allGather(Array("\(world.processorName)\n\(bootID.trimmingCharacters(in: .whitespacesAndNewlines))".utf8))
            .map { String(decoding: $0, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
        let cluster = HostCalibration.Cluster(ranks: size, hosts: Set(identities.map { $0[0] }).count,
                                              machines: Set(identities.map { $0.last! }).count, threadsPerRank: threadsPerRank)
        let comm = try MPICommunicator(world: world, mesh: Mesh(x: 2, y: size / 2), timeout: 60)
        // Seconds per call of `calls` calls. `backToBack` false: each call on its own, the ranks
        // starting it together (a barrier before each), as a layer program's activation
        // collectives run, with compute between two of them. `backToBack` true: one call after
        // the other, as a weight-gathered layer gathers its weight tiles. Over a shaped TCP link
        // the two differ: back to back both directions stay full, and a large message's protocol
        // replies queue behind the other direction's data (half the link rate from 64 KB up at
        // 100 Mbit/s), which calls on their own never see.
        func callTime(_ kind: CollectiveKind, count: Int, calls: Int, backToBack: Bool) throws -> Double {
            let data = [Float](repeating: 1, count: count)
            var runs: [Double] = []
            for _ in 0..<3 {
                var seconds = 0.0
                try world.barrier()
                if backToBack {
                    let start = Date()
                    for _ in 0..<calls { _ = try comm.collective(kind, data, over: .x, site: .measurement) }
                    seconds = Date().timeIntervalSince(start)
                } else {
                    for _ in 0..<calls {
                        try world.barrier()
                        let start = Date()
                        _ = try comm.collective(kind, data, over: .x, site: .measurement)
                        seconds += Date().timeIntervalSince(start)
                    }
                }
                runs.append(seconds / Double(calls))
            }
            return runs.sorted()[1]
        }
        // Floats per call: the fit's 16 KB–4 MB, and below them decode's calls of a few KB.
        let fitted = [1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20]
        var rates = try collectiveRates(sizes: [1 << 8, 1 << 10] + fitted, fitFrom: fitted[0], minimumCalls: 3) { kind, count, calls in
            try callTime(kind, count: count, calls: calls, backToBack: false)
        }
        // Weight gathers (§3.2.3's weight-gathered layouts): all-gathers of 16 KB–4 MB back to back.
        let gathers = try collectiveRates(sizes: fitted, minimumCalls: 3, kinds: [.allGather]) { kind, count, calls in
            try callTime(kind, count: count, calls: calls, backToBack: true)
        }
        rates[CollectiveKind.allGather.rawValue]?.backToBackSamples = gathers[CollectiveKind.allGather.rawValue]?.samples
        let small = rates[CollectiveKind.allGather.rawValue]!.latency
        let bandwidth = rates[CollectiveKind.allGather.rawValue]!.bandwidth
        guard world.rank == 0 else { return }
        let path = output ?? hostCalibrationPath()
        let base = output.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil } ?? hostCalibrationPath()
        guard let data = FileManager.default.contents(atPath: base),
              var host = try? JSONDecoder().decode(HostCalibration.self, from: data) else {
            throw ValidationError("no host measurements at \(base): run `meshinfer calibrate` (without mpirun) first")
        }
        host.mpiCollectiveLatency = small
        host.mpiCollectiveBandwidth = bandwidth
        host.mpiRanks = size
        host.mpiCollectiveRates = rates
        host.mpiCluster = cluster
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(host).write(to: URL(fileURLWithPath: path))
        print("MPI collectives (\(size) ranks on \(cluster.hosts) host(s), \(cluster.machines) machine(s)"
            + (cluster.sharesMachine && cluster.hosts > 1 ? ", sharing this machine's \(host.threads) cores" : "")
            + ", \(threadsPerRank) thread(s) per rank; \(world.libraryVersion.split(separator: ",").first.map(String.init) ?? "MPI")): "
            + Self.describe(rates) + "; saved to \(path)")
    }

    /// Seconds per call of a collective of `count` floats between 2 in-process devices (median
    /// of 3 runs).
    func meshTime(_ kind: CollectiveKind, count: Int, calls: Int) throws -> Double {
        let data = [Float](repeating: 1, count: count)
        var runs: [Double] = []
        for _ in 0..<3 {
            let start = Date()
            _ = try runOnMesh(Mesh(x: 2)) { _, comm in
                for _ in 0..<calls { _ = try comm.collective(kind, data, over: .x, site: .measurement) }
                return 0
            }
            runs.append(Date().timeIntervalSince(start) / Double(calls))
        }
        return runs.sorted()[1]
    }

    /// Latency (a 2-element call) and bandwidth (bytes sent by a 2^20-element call beyond that
    /// latency) of every collective kind, from a timer of (kind, count, calls) → seconds per call.
    /// With several `sizes` (element counts), the bandwidth is fitted over all of them instead
    /// (the 1/bandwidth that minimises the relative error of latency + bytes/bandwidth at each
    /// size) and every measured call is kept as a sample the cost model interpolates: over TCP
    /// a link's achieved rate depends on the message size (a 4 MB message reaches ~60% of the
    /// rate 64 KB–1 MB messages reach on a shaped 1 Gbit/s link; calls of a few KB, decode's,
    /// more than any fit of the large ones says), and a run's messages span that range.
    /// Sizes below `fitFrom` elements are kept as samples but left out of the fit.
    func collectiveRates(sizes: [Int] = [1 << 20], fitFrom: Int = 0, minimumCalls: Int = 10,
                         kinds: [CollectiveKind] = CollectiveKind.allCases,
                         _ seconds: (CollectiveKind, Int, Int) throws -> Double) throws -> [String: CollectiveRate] {
        var rates: [String: CollectiveRate] = [:]
        for kind in kinds {
            let small = try seconds(kind, 2, 1000)
            var num = 0.0, den = 0.0
            var samples = [CollectiveRate.Sample(bytes: Double(collectiveBytes(kind, count: 2, groupSize: 2)), seconds: small)]
            for count in sizes {
                // Calls enough to move ~8 MB of floats (at least `minimumCalls`): a second
                // per size on a 100 Mbit/s link.
                let t = try seconds(kind, count, max(minimumCalls, min(1000, (2 << 20) / count)))
                let bytes = Double(collectiveBytes(kind, count: count, groupSize: 2))
                samples.append(.init(bytes: bytes, seconds: t))
                guard count >= fitFrom else { continue }
                num += bytes * (t - small) / (t * t)
                den += bytes * bytes / (t * t)
            }
            rates[kind.rawValue] = CollectiveRate(latency: small, bandwidth: den / max(1e-30, num),
                                                  samples: sizes.count > 1 ? samples : nil)
        }
        return rates
    }
}
