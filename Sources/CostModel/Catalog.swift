import Collectives
import Partitioning
import Transformer

/// A collective's measured cost on some transport: seconds per hop (one call between two
/// devices) and bytes sent per second beyond that; over a network also the measured calls
/// themselves (`samples`), because a link's achieved rate depends on the message size.
public struct CollectiveRate: Sendable, Equatable, Codable {
    public var latency: Double
    public var bandwidth: Double
    /// Measured calls between two devices, ascending by bytes: each device sent `bytes` and the
    /// call took `seconds`, each call on its own (as activation collectives run, with compute
    /// between them). nil: latency + bytes / bandwidth at every size.
    public var samples: [Sample]?
    /// The same measured with the calls back to back, as a weight-gathered layer's gathers
    /// run (all-gather only). nil: `samples`.
    public var backToBackSamples: [Sample]?

    public struct Sample: Sendable, Equatable, Codable {
        public var bytes: Double
        public var seconds: Double
        public init(bytes: Double, seconds: Double) {
            self.bytes = bytes
            self.seconds = seconds
        }
    }

    public init(latency: Double, bandwidth: Double, samples: [Sample]? = nil) {
        self.latency = latency
        self.bandwidth = bandwidth
        self.samples = samples
    }

    /// Seconds of one hop that sends `bytes`: interpolated linearly between the two measured
    /// calls around it (a call smaller than the smallest costs what it did; beyond the largest,
    /// the largest call's rate carries on). nil without samples.
    public func seconds(bytes: Double, backToBack: Bool = false) -> Double? {
        guard let s = backToBack ? backToBackSamples ?? samples : samples, let first = s.first, let last = s.last else { return nil }
        if bytes <= first.bytes { return first.seconds }
        if bytes >= last.bytes { return last.seconds * bytes / last.bytes }
        let i = s.firstIndex { $0.bytes >= bytes }!
        let (a, b) = (s[i - 1], s[i])
        return a.seconds + (b.seconds - a.seconds) * (bytes - a.bytes) / (b.bytes - a.bytes)
    }
}

/// An accelerator, as the cost model sees it (SPEC §2).
public struct Hardware: Sendable, Equatable {
    public var name: String
    /// Peak matmul FLOP/s per chip (bf16 / fp16).
    public var peakFLOPs: Double
    /// Memory per chip, bytes.
    public var memoryBytes: Double
    /// Memory bandwidth per chip, bytes/s.
    public var memoryBandwidth: Double
    /// Interconnect bandwidth per chip, bytes/s (the paper's "network bandwidth").
    public var interconnectBandwidth: Double
    /// Whether the interconnect is a TPU-style 3D torus whose links belong to axes, with
    /// wraparound only in slices of whole 4×4×4 cubes (`wrapsAround`); a collective along one
    /// axis without wraparound gets half the bandwidth (Pricing). Otherwise (a switch) every
    /// collective gets the full bandwidth.
    public var torusLinks = false
    /// Per-axis bandwidth (x, y, z), bytes/s, when the axes differ: e.g. a mesh whose x axis
    /// crosses hosts over the network while y and z stay inside a host. A collective moves at
    /// the slowest spanned axis's rate. nil: every axis has `interconnectBandwidth`.
    public var axisBandwidth: [Double]?
    /// Measured rates per collective kind (a host's transports, `calibrate`): seconds per hop
    /// and bytes/s. A kind without one uses the interconnect bandwidth and the calibration's
    /// latency.
    public var collectiveRates: [CollectiveKind: CollectiveRate]?
    /// Bytes per activation element (bf16 on accelerators, f32 in this runtime).
    public var activationBytes = 2.0
    /// Bytes per KV-cache element (bf16 on accelerators, f16 in this runtime: KVCache).
    public var kvCacheBytes = 2.0
    /// FLOP/s of attention's Q·Kᵀ and P·V (nil: the matmul peak, as on accelerators).
    public var attentionFLOPs: Double?
    /// The KV cache's type ("f16", "q8"), a key of `decodeAttentionBandwidth`.
    public var kvCacheType = "f16"
    /// Threads each device runs (a CPU host; decode attention runs its sequences in parallel
    /// over them).
    public var threadsPerDevice = 1
    /// Bytes/s at which one thread's decode attention reads the KV cache, arithmetic included,
    /// per cache type (this host, measured by `calibrate`; times the thread's core share). When
    /// known, a decode pass's attention is priced as a phase of its own after the matmuls
    /// (Pricing), on min(threads, sequences) threads and at most the device's memory bandwidth:
    /// a CPU core runs one op after the other, so attention's KV reads do not stream beside the
    /// weights, and attention reads its short per-head streams slower than the weights stream
    /// (measured: 8 sequences at 192 positions, f16, 8-12 GB/s against 14-17). nil
    /// (accelerators, the paper): attention's FLOPs count with the compute and its KV bytes
    /// with the memory.
    public var decodeAttentionBandwidth: [String: Double]?
    /// Weight streaming with r activation rows as a fraction of `memoryBandwidth` (one row's),
    /// measured at a few row counts (this host's `calibrate`: the kernels themselves, weights
    /// from memory). When known, a decode pass's memory time is its weight bytes at
    /// `memoryBandwidth × rowsStreaming(r)` for r rows per weight (still against the compute
    /// time, max(C, M)): with more rows the kernels' arithmetic hides behind the streaming less
    /// than fully (measured: int8 at 8 rows 0.86 of one row's rate, at 32 rows 0.40; Q4_1 0.84
    /// and 0.23). nil (accelerators, the paper): the memory at the full bandwidth.
    public var decodeRowsStreaming: [Int: Double]?

    /// `decodeRowsStreaming` at `rows` rows: linear between the measured row counts (1 row: 1),
    /// and beyond the largest the largest's (where the compute term prices the matmuls). Entries
    /// that are not positive are ignored.
    public func rowsStreaming(_ rows: Double) -> Double {
        let measured = (decodeRowsStreaming ?? [:]).filter { $0.key > 1 && $0.value > 0 }
        guard !measured.isEmpty, rows > 1 else { return 1 }
        let points = ([(1, 1.0)] + measured.map { ($0.key, $0.value) }).sorted { $0.0 < $1.0 }
        let last = points[points.count - 1]
        if rows >= Double(last.0) { return last.1 }
        let i = points.firstIndex { Double($0.0) >= rows }!
        let (a, b) = (points[i - 1], points[i])
        return a.1 + (b.1 - a.1) * (rows - Double(a.0)) / Double(b.0 - a.0)
    }
    /// Whether this runtime's unembedding gathers (logit rows in, every device's logits out
    /// for sampling) are priced. Not for the paper's hardware: it samples from sharded logits
    /// on device (§3.6). On this host they are real traffic — over a slow link a 262k-word
    /// vocabulary's logits are most of a decode step's bytes.
    public var pricesUnembedding = false
    /// Whether a weight all-gather's shards are copied on the device's cores into the matrix
    /// the matmul reads (this runtime, `DeviceProgram.weight`), not received in place. Priced
    /// as memory traffic added to the gather; not for the paper's hardware.
    public var copiesGatheredWeights = false

    public init(name: String, peakFLOPs: Double, memoryBytes: Double, memoryBandwidth: Double,
                interconnectBandwidth: Double, torusLinks: Bool = false, activationBytes: Double = 2) {
        self.activationBytes = activationBytes
        self.name = name
        self.peakFLOPs = peakFLOPs
        self.memoryBytes = memoryBytes
        self.memoryBandwidth = memoryBandwidth
        self.interconnectBandwidth = interconnectBandwidth
        self.torusLinks = torusLinks
    }

    static let gib = 1024.0 * 1024 * 1024

    /// Bandwidth of one collective: its kind's measured rate if any, else the spanned axes'.
    public func bandwidth(of kind: CollectiveKind, spanning axes: [Axis]) -> Double {
        collectiveRates?[kind]?.bandwidth ?? bandwidth(spanning: axes)
    }

    /// Bandwidth of a collective spanning `axes`: the slowest of them (§4.3's collectives are
    /// loops over every spanned axis, so the slowest link paces them).
    public func bandwidth(spanning axes: [Axis]) -> Double {
        guard let perAxis = axisBandwidth, perAxis.count == 3 else { return interconnectBandwidth }
        return axes.map { perAxis[$0.rawValue] }.min() ?? interconnectBandwidth
    }

    /// TPU v4: 275 TFLOP/s bf16, 32 GiB HBM at 1200 GB/s, 270 GB/s ICI (SPEC §2.1).
    public static let tpuV4 = Hardware(name: "tpu-v4", peakFLOPs: 275e12, memoryBytes: 32 * gib,
                                       memoryBandwidth: 1200e9, interconnectBandwidth: 270e9, torusLinks: true)
    /// A100 80 GB: 312 TFLOP/s dense bf16 (the peak the paper's FT MFUs use, SPEC §2.2),
    /// 2039 GB/s HBM2e, NVLink 600 GB/s.
    public static let a100 = Hardware(name: "a100-80g", peakFLOPs: 312e12, memoryBytes: 80 * gib,
                                      memoryBandwidth: 2039e9, interconnectBandwidth: 600e9)
    /// H100 SXM: 989 TFLOP/s dense bf16, 80 GB HBM3 at 3350 GB/s, NVLink 900 GB/s.
    public static let h100 = Hardware(name: "h100-sxm", peakFLOPs: 989e12, memoryBytes: 80 * gib,
                                      memoryBandwidth: 3350e9, interconnectBandwidth: 900e9)
    /// H200: H100's compute with 141 GB HBM3e at 4800 GB/s.
    public static let h200 = Hardware(name: "h200", peakFLOPs: 989e12, memoryBytes: 141e9,
                                      memoryBandwidth: 4800e9, interconnectBandwidth: 900e9)

    public static let catalog: [Hardware] = [.tpuV4, .a100, .h100, .h200]
    public static func named(_ name: String) -> Hardware? { catalog.first { $0.name == name } }
}

/// A model for the cost model: its configuration and the nominal parameter count the paper
/// uses for MFU (SPEC §3, §4.1).
public struct ModelSpec: Sendable, Equatable {
    public var config: ModelConfig
    public var nominalParameters: Double

    public init(config: ModelConfig, nominalParameters: Double) {
        self.config = config
        self.nominalParameters = nominalParameters
    }

    /// PaLM family: multiquery, parallel block, SwiGLU, 256k vocabulary, head dim 256 (SPEC §3.1).
    static func palm(_ name: String, layers: Int, E: Int, heads: Int, nominal: Double) -> ModelSpec {
        ModelSpec(config: ModelConfig(name: name, layers: layers, modelDimension: E, feedForwardDimension: 4 * E,
                                      heads: heads, kvHeads: 1, headDimension: 256, vocabularySize: 256_000,
                                      contextLength: 2048, block: .parallel, tiedEmbeddings: true),
                  nominalParameters: nominal)
    }

    public static let palm8B = palm("palm-8b", layers: 32, E: 4096, heads: 16, nominal: 8e9)
    public static let palm62B = palm("palm-62b", layers: 64, E: 8192, heads: 32, nominal: 62e9)
    /// 48 heads padded to 64 for inference, as the paper did; MFU on the nominal 540B.
    public static let palm540B = palm("palm-540b", layers: 118, E: 18432, heads: 64, nominal: 540e9)
    /// The multihead variant of Table 1: 64 heads of 128.
    public static let palm540BMultihead: ModelSpec = {
        var m = palm("palm-540b-multihead", layers: 118, E: 18432, heads: 64, nominal: 540e9)
        m.config.kvHeads = 64
        m.config.headDimension = 128
        return m
    }()
    /// Megatron-Turing NLG 530B (Table D.1): multihead, serial block; MFU on the nominal 530B.
    public static let mtNLG530B = ModelSpec(
        config: ModelConfig(name: "mt-nlg-530b", layers: 105, modelDimension: 20480, feedForwardDimension: 81920,
                            heads: 128, kvHeads: 128, headDimension: 160, vocabularySize: 51200, contextLength: 2048,
                            block: .serial, tiedEmbeddings: true),
        nominalParameters: 530e9)

    public static let catalog: [ModelSpec] = [.palm8B, .palm62B, .palm540B, .palm540BMultihead, .mtNLG530B]
    public static func named(_ name: String) -> ModelSpec? { catalog.first { $0.config.name == name } }
}

/// This host, as measured by `meshinfer calibrate` (achieved numbers, not data-sheet peaks).
public struct HostCalibration: Sendable, Codable, Equatable {
    /// Achieved f32 and int8 GEMM rates of one thread, FLOP/s (int8: multiply-adds × 2).
    public var f32FLOPsPerThread: Double
    public var int8OPsPerThread: Double
    /// Achieved weight-streaming bandwidth (decode-like matvec) with 1 and with all threads, bytes/s.
    public var memoryBandwidthOneThread: Double
    public var memoryBandwidthAllThreads: Double
    public var threads: Int
    /// In-process collectives between 2 devices: seconds per call (8-byte all-gather) and bytes/s (large all-gather).
    public var collectiveLatency: Double
    public var collectiveBandwidth: Double
    public var memoryBytes: Double
    /// Achieved attention FLOP/s of one thread (prefill-shaped causal attention).
    public var attentionFLOPsPerThread: Double?
    /// Bytes/s at which one thread's decode attention reads a KV cache from memory, its
    /// arithmetic included, per cache type ("f16", "q8"; `Calibrate.decodeAttentionBandwidth`).
    public var decodeAttentionBandwidthOneThread: [String: Double]?
    /// The same with all `threads` threads, the sequences split over them.
    public var decodeAttentionBandwidthAllThreads: [String: Double]?
    /// Weight streaming with 2–32 activation rows (a decode step of that many sequences) as a
    /// fraction of one row's rate, per format and thread count (`passKey`), keyed by rows.
    public var decodeRowsStreaming: [String: [String: Double]]?
    /// The in-place Q4_1 kernel (`native` weights): GEMM rate of one thread, and weight
    /// streaming with 1 and with all threads.
    public var nativeOPsPerThread: Double?
    public var nativeBandwidthOneThread: Double?
    public var nativeBandwidthAllThreads: Double?
    /// GEMM rate of all `threads` threads together, per weight precision (`rawValue`): with every
    /// thread busy a thread may get less than its solo rate (shared execution units, power).
    public var allThreadsOPs: [String: Double]?
    /// Weight streaming of the f32 kernel (decode-like matvecs) with 1 and with all threads;
    /// the 8-bit pair above is `memoryBandwidth…`.
    public var f32BandwidthOneThread: Double?
    public var f32BandwidthAllThreads: Double?
    /// Achieved fraction of the kernel rates above in a whole forward pass of a real model
    /// (norms, RoPE, activation quantization, copies, allocation and thread hand-offs between
    /// the matmuls), per weight precision and thread count (`passKey`): prefill time for
    /// compute, decode time for memory. `calibrate` measures them on one device with one thread
    /// and with all threads; a mesh is priced with the value for the threads busy in all
    /// (a 2-device mesh of 1 thread each: the 2-thread value). Missing: 1.
    public var passComputeEfficiency: [String: Double]?
    public var passMemoryEfficiency: [String: Double]?
    /// The same two tables measured on each model file `calibrate` found (file name → tables):
    /// a model whose block formats run other kernels (Gemma's K-quants) reaches another fraction
    /// of the Q4_1 kernel's rate. A model without its own entry uses the tables above.
    public var modelPassEfficiency: [String: PassEfficiency]?

    public struct PassEfficiency: Sendable, Codable, Equatable {
        public var compute: [String: Double]
        public var memory: [String: Double]
        public init(compute: [String: Double], memory: [String: Double]) {
            self.compute = compute
            self.memory = memory
        }
    }

    /// Every collective kind measured on its own between 2 devices (`CollectiveKind.rawValue`
    /// → rate), in-process and over MPI; they override the all-gather pair above per kind.
    public var collectiveRates: [String: CollectiveRate]?
    public var mpiCollectiveRates: [String: CollectiveRate]?

    /// MPI collectives (`calibrate --transport mpi`), measured like the in-process pair:
    /// seconds per call and bytes/s, with the rank count they were measured on.
    public var mpiCollectiveLatency: Double?
    public var mpiCollectiveBandwidth: Double?
    public var mpiRanks: Int?
    /// Where those MPI measurements ran (nil in files written before it was recorded).
    public var mpiCluster: Cluster?

    /// The ranks `calibrate --transport mpi` ran on: how many hosts (distinct host names), how
    /// many physical machines (distinct boot ids) and threads per rank. Hosts that are network
    /// namespaces of one machine (`scripts/hosts.sh`) share its cores and memory bandwidth:
    /// `sharesMachine`, and the cost model prices their devices so.
    public struct Cluster: Sendable, Codable, Equatable {
        public var ranks: Int
        public var hosts: Int
        public var machines: Int
        public var threadsPerRank: Int
        public init(ranks: Int, hosts: Int, machines: Int, threadsPerRank: Int) {
            self.ranks = ranks
            self.hosts = hosts
            self.machines = machines
            self.threadsPerRank = threadsPerRank
        }
        /// Every rank ran on this one machine (namespaces or processes), sharing its cores.
        public var sharesMachine: Bool { machines == 1 }
        /// Threads busy on one machine when `devices` devices (one per rank, one rank per host
        /// in a cluster of several hosts) run at once.
        public func activeThreads(devices: Int) -> Int {
            let perMachine = sharesMachine ? devices : (devices + machines - 1) / machines
            return max(1, perMachine) * threadsPerRank
        }
    }

    /// The key of a whole-pass efficiency: the precision, and the thread count unless 1.
    public static func passKey(_ weights: WeightPrecision, threads: Int) -> String {
        threads > 1 ? "\(weights.rawValue)@\(threads)" : weights.rawValue
    }

    /// This host with its collectives on MPI (nil until `calibrate --transport mpi` has run).
    public var overMPI: HostCalibration? {
        guard let latency = mpiCollectiveLatency, let bandwidth = mpiCollectiveBandwidth else { return nil }
        var c = self
        c.collectiveLatency = latency
        c.collectiveBandwidth = bandwidth
        c.collectiveRates = mpiCollectiveRates
        return c
    }

    public init(f32FLOPsPerThread: Double, int8OPsPerThread: Double, memoryBandwidthOneThread: Double, memoryBandwidthAllThreads: Double,
                threads: Int, collectiveLatency: Double, collectiveBandwidth: Double, memoryBytes: Double) {
        self.f32FLOPsPerThread = f32FLOPsPerThread
        self.int8OPsPerThread = int8OPsPerThread
        self.memoryBandwidthOneThread = memoryBandwidthOneThread
        self.memoryBandwidthAllThreads = memoryBandwidthAllThreads
        self.threads = threads
        self.collectiveLatency = collectiveLatency
        self.collectiveBandwidth = collectiveBandwidth
        self.memoryBytes = memoryBytes
    }

    /// The host as one "chip" per device of a mesh, each device running `threadsPerDevice`
    /// threads, with `activeThreads` threads in use in all. More threads than the host's
    /// `threads` cores (ranks of namespace hosts sharing one machine) share the cores: each
    /// thread gets cores/activeThreads of one.
    public func hardware(weights: WeightPrecision, threadsPerDevice: Int, activeThreads: Int) -> Hardware {
        let native = weights == .native && nativeOPsPerThread != nil
        // The kernel family whose measurements price these weights (the keys of the tables below).
        let kernel: WeightPrecision = native ? .native : weights == .int8Grouped ? .int8Grouped : .f32
        var perThread = native ? nativeOPsPerThread! : weights == .int8Grouped ? int8OPsPerThread : f32FLOPsPerThread
        if activeThreads > 1, let all = allThreadsOPs?[kernel.rawValue] {
            perThread = all / Double(max(1, threads))
        }
        let coreShare = min(1, Double(max(1, threads)) / Double(max(1, activeThreads)))
        let peak = perThread * Double(threadsPerDevice) * coreShare
        let f32 = weights == .f32 && f32BandwidthOneThread != nil
        let bw = native ? (activeThreads > 1 ? nativeBandwidthAllThreads! : nativeBandwidthOneThread!)
            : f32 ? (activeThreads > 1 ? f32BandwidthAllThreads! : f32BandwidthOneThread!)
            : (activeThreads > 1 ? memoryBandwidthAllThreads : memoryBandwidthOneThread)
        let devices = max(1, activeThreads / max(1, threadsPerDevice))
        var h = Hardware(name: "cpu", peakFLOPs: peak, memoryBytes: memoryBytes, memoryBandwidth: bw / Double(devices),
                         interconnectBandwidth: collectiveBandwidth, activationBytes: 4)
        h.attentionFLOPs = attentionFLOPsPerThread.map { $0 * Double(threadsPerDevice) * coreShare }
        h.threadsPerDevice = threadsPerDevice
        // Per thread: alone, or its share of all threads' rate when more than one is busy (as
        // the GEMM rates above), times its core share.
        let attentionPerThread = activeThreads > 1
            ? decodeAttentionBandwidthAllThreads?.mapValues { $0 / Double(max(1, threads)) } ?? decodeAttentionBandwidthOneThread
            : decodeAttentionBandwidthOneThread
        h.decodeAttentionBandwidth = attentionPerThread?.filter { $0.value > 0 }.mapValues { $0 * coreShare }
        h.decodeRowsStreaming = decodeRowsStreaming?[Self.passKey(kernel, threads: activeThreads > 1 ? threads : 1)].map { table in
            Dictionary(table.compactMap { key, value in Int(key).map { ($0, value) } }, uniquingKeysWith: { first, _ in first })
        }
        h.pricesUnembedding = true
        h.copiesGatheredWeights = true
        if let rates = collectiveRates {
            h.collectiveRates = Dictionary(uniqueKeysWithValues: rates.compactMap { key, rate in
                CollectiveKind(rawValue: key).map { ($0, rate) } })
        }
        return h
    }

    /// One device per rank of the cluster MPI was calibrated on (`mpiCluster`), `devices` of
    /// them at once: each runs the cluster's threads per rank; devices on one machine share its
    /// cores and memory bandwidth. Nil without a recorded cluster.
    /// `threadsPerRank` overrides the recorded threads per rank (a run that uses other ones).
    public func clusterHardware(weights: WeightPrecision, devices: Int, threadsPerRank: Int? = nil,
                                model: String? = nil) -> (Hardware, Calibration)? {
        guard var cluster = mpiCluster, let mpi = overMPI else { return nil }
        if let threadsPerRank { cluster.threadsPerRank = threadsPerRank }
        let active = cluster.activeThreads(devices: devices)
        return (mpi.hardware(weights: weights, threadsPerDevice: cluster.threadsPerRank, activeThreads: active),
                mpi.calibration(for: weights, activeThreads: active, model: model))
    }

    /// One device of a `devices`-device mesh run with `threads` threads on this host in all, as
    /// every command prices it. In-process the devices split the threads. Over MPI: a recorded
    /// cluster's ranks (`clusterHardware`, with `rankThreads` per rank when given), else this
    /// host's MPI measurements with `rankThreads` (default the in-process split) per device;
    /// nil when MPI has not been measured.
    public func device(weights: WeightPrecision, devices: Int, threads: Int, overMPI: Bool, rankThreads: Int? = nil,
                       model: String? = nil) -> (Hardware, Calibration)? {
        var host = self
        if overMPI {
            guard let mpi = self.overMPI else { return nil }
            if let cluster = clusterHardware(weights: weights, devices: devices, threadsPerRank: rankThreads, model: model) { return cluster }
            host = mpi
        }
        return (host.hardware(weights: weights, threadsPerDevice: rankThreads ?? max(1, threads / devices), activeThreads: threads),
                host.calibration(for: weights, activeThreads: threads, model: model))
    }

    /// Measured numbers are achieved rates: kernel efficiencies 1 (times the whole-pass
    /// efficiencies for `weights`, when measured), the measured per-call latency, and no overlap
    /// of collectives or weight gathers with anything
    /// (in-process "communication" is copying on the cores the matmuls use).
    /// `model` (a model file's name) picks the efficiencies measured on that file, if any.
    public func calibration(for weights: WeightPrecision? = nil, activeThreads: Int = 1, model: String? = nil) -> Calibration {
        func pick(_ table: [String: Double]?) -> Double {
            guard let weights, let table else { return 1 }
            return table[Self.passKey(weights, threads: activeThreads > 1 ? threads : 1)] ?? table[weights.rawValue] ?? 1
        }
        let own = model.flatMap { modelPassEfficiency?[$0] }
        var c = Calibration()
        c.computeEfficiency = pick(own?.compute ?? passComputeEfficiency)
        c.memoryEfficiency = pick(own?.memory ?? passMemoryEfficiency)
        c.interconnectEfficiency = 1
        c.collectiveLatency = collectiveLatency
        c.overlap = 0
        c.prefetchesWeights = false
        return c
    }
}
