import ArgumentParser
import Collectives
import Foundation
import GGUF
import Partitioning
import Runtime
import Tensors
import Tokenization

extension FeedForwardLayout: ExpressibleByArgument {}
extension AttentionLayout: ExpressibleByArgument {}

/// Where the model runs: one device, or a mesh with the paper's layouts.
struct MeshOptions: ParsableArguments {
    @Option(help: "Device mesh XxYxZ (devices are threads of this process).") var mesh: String = "1x1x1"
    @Option(help: "Feed-forward layout for prefill: ws1d, ws2d, wg-x, wg-xy, wg-xyz (default: §7's rule).")
    var prefillLayout: FeedForwardLayout?
    @Option(help: "Feed-forward layout for decode (default ws2d).") var decodeLayout: FeedForwardLayout?
    @Option(help: "Attention layout: heads or batch (default: batch when the batch covers the mesh).")
    var attention: AttentionLayout?
    @Option(help: "Attention layout for prefill (default: as --attention; the KV cache must stay in place).")
    var prefillAttention: AttentionLayout?
    @Flag(help: "Overlap collectives with matmul chunks (looped collective einsum, §3.5).") var overlap = false
    @Option(help: "Run a random-weight model instead of a file: palm-tiny or llama-tiny.") var modelConfig: String?
    @Option(help: "How devices talk: inprocess (threads of this process) or mpi (one device per rank; start with mpirun -np N).")
    var transport: Transport = .inprocess
    @Option(help: "Seconds a collective waits for its peers before the run fails (mpi transport).")
    var collectiveTimeout: Double = 30
}

/// An engine and tokenizer built from the model and mesh options. A single device is a mesh
/// of one: every session runs the same layer program.
struct Session {
    let tokenizer: Tokenizer
    let meshEngine: any MeshRunner
    let loadSeconds: Double
    var engine: any ForwardEngine { meshEngine }
    var generator: Generator { Generator(engine: engine, tokenizer: tokenizer) }

    init(model: ModelOptions, mesh options: MeshOptions, batchSize: Int) throws {
        let start = Date()
        let mesh = try Mesh(parsing: options.mesh)
        guard model.threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if options.transport == .mpi {
            // Rank 0 read the prompts and announces the batch size (`runAcrossRanks`), so every rank
            // picks the same layouts.
            guard let world = MPIWorld.current else { throw MPIError.failed("MPI was not started") }
            if world.rank == 0 { try beginSession(world, model: model, batchSize: batchSize) }
            let comm = try MPICommunicator(world: world, mesh: mesh, timeout: options.collectiveTimeout)
            var tokenizer: Tokenizer?
            let engine = try ProcessMeshEngine(
                load: {
                    let (source, config, t) = try Session.source(model: model, options: options)
                    tokenizer = t
                    let (prefill, decode) = Session.layouts(options, config: config, mesh: mesh, batchSize: batchSize)
                    return (source, config, prefill, decode)
                },
                comm: comm, control: world, format: model.weights,
                threads: max(1, model.threads / MPIWorld.ranksOnThisHost), overlap: options.overlap)
            if world.rank == 0 { registerSession(engine) }
            self.tokenizer = tokenizer!
            meshEngine = engine
            loadSeconds = Date().timeIntervalSince(start)
            return
        }
        let (source, config, tokenizer) = try Session.source(model: model, options: options)
        self.tokenizer = tokenizer
        let (prefill, decode) = Session.layouts(options, config: config, mesh: mesh, batchSize: batchSize)
        let engine = try MeshEngine(source: source, config: config, mesh: mesh, prefill: prefill, decode: decode,
                                    format: model.weights, threads: model.threads, overlap: options.overlap)
        meshEngine = engine
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
        let path = try model.model ?? ModelStore().defaultModel()
        let file = try GGUFFile(path: path)
        return (file, try ModelConfig(gguf: file), try Tokenizer(Vocabulary(gguf: file)))
    }

    /// The layouts the options name, with §7's defaults: decode is 2D weight-stationary with
    /// batch-sharded attention once the batch covers the mesh; prefill uses the same attention
    /// (the KV cache stays where prefill put it). On a mesh of one every layout is the same
    /// program with identity collectives; 1D with attention over heads has the least bookkeeping.
    static func layouts(_ options: MeshOptions, config: ModelConfig, mesh: Mesh, batchSize: Int) -> (PhaseLayout, PhaseLayout) {
        let n = mesh.deviceCount
        let blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: n)
        let single = LoadedModel.singleDeviceLayout
        let attention = options.attention
            ?? (n == 1 ? single.attention : batchSize >= n || !blocks.headAligned ? .shardedOverBatch : .shardedOverHeads)
        let decode = PhaseLayout(options.decodeLayout ?? (n > 1 ? .weightStationary2D : single.feedForward), attention)
        let prefill = PhaseLayout(options.prefillLayout ?? decode.feedForward, options.prefillAttention ?? attention)
        return (prefill, decode)
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
