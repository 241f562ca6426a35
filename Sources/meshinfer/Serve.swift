import ArgumentParser
import CostModel
import Foundation
import Hummingbird
import Logging
import Partitioning
import Runtime
import Server
import Serving
import ServiceLifecycle

/// `meshinfer serve`: the OpenAI-compatible server (issue 11), continuous batching over one
/// device, a mesh or MPI ranks.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over HTTP with the OpenAI API (chat and text completions, streaming), batching concurrent requests.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var meshOptions: MeshOptions
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8080
    @Option(help: "Require this key (Authorization: Bearer KEY); also from MESHINFER_API_KEY.") var apiKey: String?
    @Option(help: "Model id in requests and responses (default: the model file's stem).") var servedModelName: String?
    @Option(help: "Positions per sequence: prompt + generated (default: min(model's, 4096)).") var context: Int?
    @Option(help: "Sequences decoded together in one step.") var maxBatch = 16
    @Option(help: "Requests waiting to be admitted before new ones get 429.") var maxQueue = 64
    @Option(help: "KV cache bytes per device that running sequences may reserve (default: --max-batch full contexts).")
    var kvMemory: Int?
    @Option(help: "Tokens one step may feed (decodes first, the rest prompt chunks).") var stepTokens = 256
    @Option(help: "Largest request body in bytes (413 beyond).") var maxBodyBytes = 2 << 20
    @Option(help: "Seconds in-flight requests get to finish on SIGTERM/SIGINT before they are ended.") var shutdownTimeout = 10.0
    @Option(help: "Seconds a stream may stay silent (queued, or a long prefill) before it gets a `: ping` comment line.") var pingInterval = 5.0
    @Option(help: "Cap the decode batch and prefill chunks so the predicted inter-token latency stays within T ms (the cost model with this host's calibration: run `meshinfer calibrate` first).")
    var latencyTargetMs: Double?

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be in 1...65535") }
        guard maxBatch >= 1, maxQueue >= 0, stepTokens >= 1, maxBodyBytes >= 1024, shutdownTimeout >= 0, (0.05...3600).contains(pingInterval) else {
            throw ValidationError("--max-batch and --step-tokens must be at least 1, --max-queue and --shutdown-timeout at least 0, --max-body-bytes at least 1024, --ping-interval within 0.05...3600 seconds")
        }
        if let context, context < 2 { throw ValidationError("--context must be at least 2") }
        if let kvMemory, kvMemory < 1 { throw ValidationError("--kv-memory must be positive") }
        if let latencyTargetMs, !(latencyTargetMs > 0) { throw ValidationError("--latency-target-ms must be positive") }
    }

    func run() throws {
        try runAcrossRanks(model: modelOptions, mesh: meshOptions) { try lead() }
    }

    func lead() throws {
        // Only rank 0 prices steps: only its calibration matters.
        if latencyTargetMs != nil {
            var host = loadHostCalibration()
            if meshOptions.transport == .mpi { host = host?.overMPI }
            guard host != nil else {
                throw ValidationError("--latency-target-ms prices steps with this host's calibration: run `meshinfer calibrate` first"
                    + (meshOptions.transport == .mpi ? " (and `mpirun -np 2 meshinfer calibrate --transport mpi`)" : ""))
            }
        }
        var options = ServeOptions()
        options.host = host
        options.port = port
        options.apiKey = apiKey ?? ProcessInfo.processInfo.environment["MESHINFER_API_KEY"]
        options.maxBodyBytes = maxBodyBytes
        options.shutdownTimeout = shutdownTimeout
        options.pingSeconds = pingInterval
        let path = try ModelStore().resolve(modelOptions.model)
        options.servedModelName = servedModelName ?? URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        let metrics = ServeMetrics()
        let slot = ModelSlot()
        let server = OpenAIServer(options: options, slot: slot, metrics: metrics)
        let logger = Logger(label: "meshinfer.serve")

        // Load on this thread while the HTTP server already answers /health with 503.
        let (maxBatch, stepTokens, maxQueue, kvMemory, contextFlag) = (maxBatch, stepTokens, maxQueue, kvMemory, context)
        let app = Application(router: server.router(), configuration: .init(address: .hostname(host, port: port), serverName: "meshinfer"),
                              logger: logger)
        // On SIGTERM/SIGINT a service group shuts its services down last to first, each after
        // the one behind it has finished: the loop drains (within --shutdown-timeout) before
        // the HTTP server, which waits for its open responses.
        let group = ServiceGroup(configuration: .init(services: [app, LoopShutdown(slot: slot, timeout: shutdownTimeout)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let finished = DispatchSemaphore(value: 0)
        let outcome = LockedBox<Error?>(nil)
        Task {
            do { try await group.run() } catch { outcome.set(error) }
            finished.signal()
        }
        // A step prefills some sequences while it decodes others: with the same feed-forward
        // layout for both phases a sequence's numbers do not depend on its neighbours (batch
        // invariance), unless the user names two layouts.
        do {
            // The layouts the options leave open: the cost model's choice for --max-batch
            // sequences filling --context (4096 when not given; half prompt, half generated).
            let contextGuess = contextFlag ?? 4096
            let session = try Session(model: modelOptions, mesh: meshOptions, workload: { _ in
                Workload(batch: maxBatch, promptTokens: max(1, contextGuess / 2), generateTokens: max(1, contextGuess / 2))
            }, samePhases: true)
            let config = session.engine.config
            let context = min(contextFlag ?? min(config.contextLength, 4096), config.contextLength)
            // Keys and values of every layer, in the cache's type (f16: 2 bytes, q8: 1.125).
            let perPosition = modelOptions.kvCache.bytes(elements: 2 * config.layers * config.kvHeads * config.headDimension)
            let devices = try Mesh(parsing: meshOptions.mesh).deviceCount
            // The cache is made in whole chunks: the budget counts them (a 100-token chat holds 256 positions).
            let positions = kvMemory.map { $0 / perPosition * devices } ?? maxBatch * KVCacheType.wholeChunks(context)
            let pricer = session.stepPricer(model: modelOptions, mesh: meshOptions)
            var price: Scheduler.Price?
            if let pricer {
                price = { sequences, tokens, context in pricer.seconds(StepPricer.Shape(sequences: sequences, tokens: tokens, context: context)) }
            }
            let loop = ServeLoop(engine: session.meshEngine, tokenizer: session.tokenizer,
                                 limits: .init(maxBatch: maxBatch, maxQueue: maxQueue, kvPositions: positions, context: context, stepTokens: stepTokens,
                                               latencyTarget: latencyTargetMs.map { $0 / 1000 }, kvChunk: KVCacheType.chunkPositions),
                                 metrics: metrics, price: price)
            loop.onFatal = { error in
                // A rank is gone: answer 503, end the HTTP server, exit non-zero.
                slot.fail("the device mesh failed: \(error)")
                outcome.set(error)
                Task { await group.triggerGracefulShutdown() }
            }
            loop.start()
            slot.set(loop)
            printError("meshinfer serve: \(options.servedModelName) on http://\(host):\(port) (context \(context), max batch \(maxBatch), "
                + "KV for \(positions) positions, layouts \(session.meshEngine.prefill)/\(session.meshEngine.decode)"
                + (latencyTargetMs.map { ", latency target \($0) ms" } ?? "") + (pricer == nil ? ", no host calibration: steps not priced" : "") + ")")
        } catch {
            slot.fail("the model failed to load: \(error)")
            printError("meshinfer serve: the model failed to load: \(error)")
            throw error
        }
        finished.wait()
        if let error = outcome.value { throw error }
    }
}

/// On SIGTERM/SIGINT: the loop refuses new requests, lets running ones finish for up to
/// `timeout` seconds, then ends the rest with finish reason "abort".
struct LoopShutdown: Service {
    let slot: ModelSlot
    let timeout: Double
    func run() async throws {
        try? await gracefulShutdown()
        await slot.drain(timeout: timeout)
    }
}

final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T { lock.withLock { stored } }
    func set(_ v: T) { lock.withLock { stored = v } }
}
