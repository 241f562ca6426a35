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

    var isSingleDevice: Bool {
        (try? Mesh(parsing: mesh))?.deviceCount == 1 && !overlap && prefillLayout == nil && decodeLayout == nil && attention == nil
            && prefillAttention == nil && modelConfig == nil
    }
}

/// An engine and tokenizer built from the model and mesh options.
struct Session {
    let engine: any ForwardEngine
    let tokenizer: Tokenizer
    let meshEngine: MeshEngine?
    let loadSeconds: Double
    var generator: Generator { Generator(engine: engine, tokenizer: tokenizer) }

    init(model: ModelOptions, mesh options: MeshOptions, batchSize: Int) throws {
        if options.isSingleDevice {
            let loaded = try model.load()
            engine = loaded.engine
            tokenizer = loaded.tokenizer
            meshEngine = nil
            loadSeconds = loaded.loadSeconds
            return
        }
        let start = Date()
        let mesh = try Mesh(parsing: options.mesh)
        let source: TensorSource
        let config: ModelConfig
        if let name = options.modelConfig {
            switch name {
            case "palm-tiny": config = .palmTiny()
            case "llama-tiny": config = .llamaTiny()
            default: throw ValidationError("unknown --model-config '\(name)' (palm-tiny, llama-tiny)")
            }
            source = RandomWeights(config: config, seed: 0)
            tokenizer = try Tokenizer(.byteLevel(size: config.vocabularySize))
        } else {
            let path = try model.model ?? ModelStore().defaultModel()
            let file = try GGUFFile(path: path)
            config = try ModelConfig(gguf: file)
            source = file
            tokenizer = try Tokenizer(Vocabulary(gguf: file))
        }
        let n = mesh.deviceCount
        let blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: n)
        // §7: decode is 2D weight-stationary with batch-sharded attention once the batch covers
        // the mesh; prefill uses the same attention (the KV cache stays where prefill put it).
        let attention = options.attention
            ?? (batchSize >= n || !blocks.headAligned ? AttentionLayout.shardedOverBatch : .shardedOverHeads)
        let decode = PhaseLayout(options.decodeLayout ?? (n > 1 ? .weightStationary2D : .weightStationary1D), attention)
        let prefill = PhaseLayout(options.prefillLayout ?? decode.feedForward, options.prefillAttention ?? attention)
        let engine = try MeshEngine(source: source, config: config, mesh: mesh, prefill: prefill, decode: decode,
                                    format: model.weights, threads: model.threads, overlap: options.overlap)
        try engine.validate(batchSize: batchSize)
        self.engine = engine
        meshEngine = engine
        loadSeconds = Date().timeIntervalSince(start)
    }

    /// `mesh`, `layouts` and per-device `collective_bytes` (bytes sent per collective kind).
    var meshJSON: [String: Any] {
        guard let m = meshEngine else {
            return ["mesh": "1x1x1", "layouts": ["prefill": ["ffn": "none", "attention": "none"], "decode": ["ffn": "none", "attention": "none"]],
                    "collective_bytes": [[String: Any]]()]
        }
        return [
            "mesh": m.mesh.description,
            "overlap": m.overlap,
            "layouts": [
                "prefill": ["ffn": m.prefill.feedForward.rawValue, "attention": m.prefill.attention.rawValue],
                "decode": ["ffn": m.decode.feedForward.rawValue, "attention": m.decode.attention.rawValue],
            ],
            "collective_bytes": m.traffic.enumerated().map { rank, t in
                [
                    "device": rank,
                    "sent": Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, t.sentBytes(kind: $0)) }),
                    "received": Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, t.receivedBytes(kind: $0)) }),
                ] as [String: Any]
            },
        ]
    }
}
