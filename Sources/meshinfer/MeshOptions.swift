import ArgumentParser
import Collectives
import Foundation
import GGUF
import CostModel
import Partitioning
import Runtime
import Tensors
import Tokenization

extension FeedForwardLayout: ExpressibleByArgument {}
extension AttentionLayout: ExpressibleByArgument {}

/// Where the model runs: one device, or a mesh with the paper's layouts.
struct MeshOptions: ParsableArguments {
    @Option(help: "Device mesh XxYxZ (devices are threads of this process).") var mesh: String = "1x1x1"
    @Option(help: "Feed-forward layout for prefill: ws1d, ws2d, wg-x, wg-xy, wg-xyz (default: the cost model's choice; see --verbose).")
    var prefillLayout: FeedForwardLayout?
    @Option(help: "Feed-forward layout for decode (default: the cost model's choice).") var decodeLayout: FeedForwardLayout?
    @Option(help: "Attention layout: heads or batch (default: the cost model's choice).")
    var attention: AttentionLayout?
    @Option(help: "Attention layout for prefill (default: as --attention; the KV cache must stay in place).")
    var prefillAttention: AttentionLayout?
    @Flag(help: "Overlap collectives with matmul chunks (looped collective einsum, §3.5).") var overlap = false
    @Option(help: "Run a random-weight model instead of a file: palm-tiny or llama-tiny.") var modelConfig: String?
    @Option(help: "How devices talk: inprocess (threads of this process) or mpi (one device per rank; start with mpirun -np N).")
    var transport: Transport = .inprocess
    @Option(help: "Seconds a collective waits for its peers before the run fails (mpi transport).")
    var collectiveTimeout: Double = 30
    @Flag(help: "Print which layouts were chosen and why (to stderr).") var verbose = false
    @OptionGroup var calibrationFile: CalibrationOption

    /// `samePhases` (serve): one feed-forward layout for both phases unless both are named.
    func constraints(samePhases: Bool = false) -> LayoutConstraints {
        LayoutConstraints(prefillFeedForward: prefillLayout ?? (samePhases ? decodeLayout : nil),
                          decodeFeedForward: decodeLayout ?? (samePhases ? prefillLayout : nil), attention: attention,
                          prefillAttention: prefillAttention, samePhases: samePhases && (prefillLayout == nil || decodeLayout == nil))
    }
}

/// An engine and tokenizer built from the model and mesh options. A single device is a mesh
/// of one: every session runs the same layer program.
struct Session {
    let tokenizer: Tokenizer
    let meshEngine: any MeshRunner
    let loadSeconds: Double
    /// How the layouts were chosen (nil on MPI followers, which run the leader's choice).
    let layoutChoice: LayoutChoice?
    /// This rank's engine under `--transport mpi`.
    let processEngine: ProcessMeshEngine?
    /// The same engine, as what the generator drives.
    let engine: any ForwardEngine<MeshSequence>
    var generator: Generator<MeshSequence> { Generator(engine: engine, tokenizer: tokenizer) }

    /// `workload` says what the run will do (sequences, prompt tokens, tokens to generate), for
    /// choosing the layouts the options leave open; it is given the model's tokenizer.
    init(model: ModelOptions, mesh options: MeshOptions, workload: @escaping (Tokenizer) -> Workload,
         samePhases: Bool = false) throws {
        try self.init(model: model, mesh: options, layouts: .choose(workload, samePhases: samePhases))
    }

    /// An MPI follower's engine for the session the leader opened.
    static func follower(model: ModelOptions, mesh: MeshOptions, prefill: PhaseLayout, decode: PhaseLayout) throws -> ProcessMeshEngine {
        var mesh = mesh
        mesh.transport = .mpi
        return try Session(model: model, mesh: mesh, layouts: .given(prefill, decode)).processEngine!
    }

    enum Layouts {
        case choose((Tokenizer) -> Workload, samePhases: Bool)
        /// An MPI follower: the leader's choice.
        case given(PhaseLayout, PhaseLayout)
    }

    init(model: ModelOptions, mesh options: MeshOptions, layouts: Layouts) throws {
        let start = Date()
        let mesh = try Mesh(parsing: options.mesh)
        guard model.threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        func choose(_ config: ModelConfig, _ tokenizer: Tokenizer) -> (PhaseLayout, PhaseLayout, LayoutChoice?) {
            switch layouts {
            case let .given(p, d): return (p, d, nil)
            case let .choose(workload, samePhases):
                let choice = Session.chooseLayouts(options, model: model, config: config, mesh: mesh, workload: workload(tokenizer),
                                                   samePhases: samePhases)
                if options.verbose { printError("layouts: \(choice.reason)") }
                return (choice.prefill, choice.decode, choice)
            }
        }
        if options.transport == .mpi {
            // Rank 0 chooses the layouts and announces them with the session (`runAcrossRanks`),
            // so every rank loads the same shards whatever its own calibration file says.
            guard let world = MPIWorld.current else { throw MPIError.failed("MPI was not started") }
            var chosen: (PhaseLayout, PhaseLayout, LayoutChoice?)?
            var loaded: (TensorSource, ModelConfig, Tokenizer)?
            if world.rank == 0 {
                let (source, config, tokenizer) = try Session.source(model: model, options: options)
                loaded = (source, config, tokenizer)
                chosen = choose(config, tokenizer)
                try beginSession(world, model: model, prefill: chosen!.0, decode: chosen!.1)
            }
            let comm = try MPICommunicator(world: world, mesh: mesh, timeout: options.collectiveTimeout)
            let engine = try ProcessMeshEngine(
                load: {
                    let (source, config, tokenizer) = try loaded ?? Session.source(model: model, options: options)
                    loaded = (source, config, tokenizer)
                    let (prefill, decode, _) = chosen ?? choose(config, tokenizer)
                    return (source, config, prefill, decode)
                },
                comm: comm, control: world, format: model.weights,
                threads: max(1, model.threads / MPIWorld.ranksOnThisHost), overlap: options.overlap, kvCache: model.kvCache)
            if world.rank == 0 { registerSession(engine) }
            self.tokenizer = loaded!.2
            meshEngine = engine
            self.engine = engine
            processEngine = engine
            layoutChoice = chosen?.2
            loadSeconds = Date().timeIntervalSince(start)
            return
        }
        let (source, config, tokenizer) = try Session.source(model: model, options: options)
        self.tokenizer = tokenizer
        let (prefill, decode, choice) = choose(config, tokenizer)
        let engine = try MeshEngine(source: source, config: config, mesh: mesh, prefill: prefill, decode: decode,
                                    format: model.weights, threads: model.threads, overlap: options.overlap, kvCache: model.kvCache)
        meshEngine = engine
        self.engine = engine
        processEngine = nil
        layoutChoice = choice
        loadSeconds = Date().timeIntervalSince(start)
    }

    /// The model file (memory-mapped; each device reads only its shards) or a random-weight model.
    static func source(model: ModelOptions, options: MeshOptions) throws -> (TensorSource, ModelConfig, Tokenizer) {
        if let name = options.modelConfig {
            let config: ModelConfig
            switch name {
            case "palm-tiny": config = .palmTiny()
            case "llama-tiny": config = .llamaTiny()
            default: throw ValidationError("unknown --model-config '\(name)' (palm-tiny, llama-tiny)")
            }
            return (RandomWeights(config: config, seed: 0), config, try Tokenizer(.byteLevel(size: config.vocabularySize)))
        }
        let path = try ModelStore().resolve(model.model)
        let file = try GGUFFile(path: path)
        return (file, try ModelConfig(gguf: file), try Tokenizer(Vocabulary(gguf: file)))
    }

    /// The layouts the options name; those they leave open are the cost model's choice for the
    /// workload, priced with this host's calibration (`meshinfer calibrate`; for MPI its MPI
    /// measurements), or §7's rule without one (`LayoutChooser`).
    static func chooseLayouts(_ options: MeshOptions, model: ModelOptions, config: ModelConfig, mesh: Mesh,
                              workload: Workload, samePhases: Bool = false) -> LayoutChoice {
        let precision = WeightPrecision(model.weights)
        let pricing = hostCostModel(options, model: model, mesh: mesh)
        return LayoutChooser.choose(model: ModelSpec(config: config, nominalParameters: Double(config.parameterCount)), mesh: mesh,
                                    workload: workload, weights: precision, pricing: pricing, constraints: options.constraints(samePhases: samePhases),
                                    singleDevice: LoadedModel.singleDeviceLayout)
    }

    /// `mesh`, `layouts`, per-device `collective_bytes` (bytes sent per collective kind) and
    /// per-device `device_weights` (the formats its matrices run in, and their bytes).
    var meshJSON: [String: Any] {
        let m = meshEngine
        return [
            "mesh": m.mesh.description,
            "overlap": m.overlap,
            "layouts": [
                "prefill": ["ffn": m.prefill.feedForward.rawValue, "attention": m.prefill.attention.rawValue],
                "decode": ["ffn": m.decode.feedForward.rawValue, "attention": m.decode.attention.rawValue],
            ],
            "transport": m is ProcessMeshEngine ? "mpi" : "inprocess",
            "layout_choice": layoutChoice.map { c -> [String: Any] in
                var o: [String: Any] = [
                    "basis": c.basis.rawValue, "reason": c.reason,
                    "workload": ["batch": c.workload.batch, "prompt_tokens": c.workload.promptTokens,
                                 "generate_tokens": c.workload.generateTokens],
                    "paper_rule": ["prefill": "\(c.rule.prefill)", "decode": "\(c.rule.decode)"],
                ]
                if !c.ranked.isEmpty {
                    o["candidates"] = c.ranked.prefix(8).map {
                        ["prefill": "\($0.prefill)", "decode": "\($0.decode)", "predicted_s": rounded($0.seconds, 6)] as [String: Any]
                    }
                }
                return o
            } ?? NSNull(),
            "collective_bytes": ((try? m.trafficByDevice()) ?? []).enumerated().map { rank, t in
                [
                    "device": rank,
                    "sent": Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, t.sentBytes(kind: $0)) }),
                    "received": Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, t.receivedBytes(kind: $0)) }),
                ] as [String: Any]
            },
            "device_weights": ((try? m.weightsByDevice()) ?? []).enumerated().map { rank, w in
                ["device": rank, "formats": w.formats.map(\.rawValue), "weight_bytes": w.weightBytes] as [String: Any]
            },
        ]
    }
}

enum Transport: String, ExpressibleByArgument, CaseIterable {
    case inprocess, mpi
}

extension MeshOptions {
    /// Starts MPI for `--transport mpi` and checks the launch against the mesh (a bad launch is
    /// reported by rank 0 and ends every rank with the same exit code).
    func startMPI() throws -> MPIWorld {
        guard MPIWorld.isCompiledWithMPI else {
            throw MPIError.unavailable("this meshinfer was built without Open MPI; run scripts/setup.sh, or install "
                + "libopenmpi-dev and openmpi-bin, then `touch Package.swift && swift build -c release`")
        }
        let world = try MPIWorld.start(timeout: collectiveTimeout)
        let devices = try Mesh(parsing: mesh).deviceCount
        guard world.size == devices else {
            // Every rank sees a bad launch alike. Rank 0 reports it before anyone exits (the
            // launcher kills the job as soon as one rank exits non-zero); main prints nothing
            // for the other ranks.
            let error = MPIError.badLaunch("the mesh \(mesh) has \(devices) devices but this job has \(world.size) rank(s); "
                + "start it with: mpirun -np \(devices) meshinfer ... --transport mpi --mesh \(mesh)")
            if world.rank == 0 { printError(MeshInfer.fullMessage(for: error)) }
            try? world.barrier(timeout: 10)
            world.finalize()
            throw ExitCode(MeshInfer.exitCode(for: error).rawValue)
        }
        return world
    }

    /// Refuses to run N copies of an in-process job under mpirun (each would print its own output).
    func checkLaunch() throws {
        if transport == .inprocess, let n = MPIWorld.launchedSize, n > 1 {
            throw ValidationError("started by mpirun with \(n) ranks but --transport is inprocess; add --transport mpi")
        }
    }
}

extension Session {
    /// The cost model's price of one serving step for this session's mesh, layouts and weights,
    /// with this host's calibration (for MPI its MPI measurements); nil when uncalibrated.
    func stepPricer(model: ModelOptions, mesh options: MeshOptions) -> StepPricer? {
        guard let costModel = Session.hostCostModel(options, model: model, mesh: meshEngine.mesh) else { return nil }
        return StepPricer(costModel: costModel, config: engine.config, mesh: meshEngine.mesh, prefill: meshEngine.prefill,
                          decode: meshEngine.decode, weights: WeightPrecision(model.weights))
    }

    /// This host's hardware and calibration for the run's weights and threads (for MPI its MPI
    /// measurements; the model file's whole-pass efficiencies when `calibrate` measured it), its
    /// KV bytes priced in the run's cache type, or nil when `meshinfer calibrate` has not run.
    static func hostCostModel(_ options: MeshOptions, model: ModelOptions, mesh: Mesh) -> CostModel? {
        let overMPI = options.transport == .mpi
        // Threads per device as the engines split them: in-process over the mesh, MPI per host.
        guard let (hardware, calibration) = loadHostCalibration()?.device(
            weights: WeightPrecision(model.weights), devices: mesh.deviceCount, threads: model.threads, overMPI: overMPI,
            rankThreads: overMPI ? max(1, model.threads / MPIWorld.ranksOnThisHost) : nil,
            model: (try? ModelStore().resolve(model.model)).map { URL(fileURLWithPath: $0).lastPathComponent }) else { return nil }
        var priced = hardware
        priced.kvCacheBytes = model.kvCache.bytesPerElement
        priced.kvCacheType = model.kvCache.rawValue
        return CostModel(hardware: priced, calibration: calibration)
    }
}
