import Collectives
import Foundation
import Partitioning
import Tensors
import Transformer

/// What the leader tells the followers to do next.
struct MeshCommand: Codable {
    enum Kind: String, Codable {
        case forward        // run `batch` under the prefill or decode layout
        case traffic        // report byte counters (an all-gather over the control plane)
        case weights        // report weight formats and bytes (an all-gather over the control plane)
        case resetTraffic
        case stop           // leave `serve()`; `failed` says whether the leader ended with an error
    }
    var kind: Kind
    var batch: MeshBatch?
    var limit = 0
    /// Sequences the leader has released since the last command (their caches are dropped first).
    var released: [Int] = []
    var failed = false
}

public enum ProcessMeshError: Error, CustomStringConvertible {
    /// The leader ended the run with an error; followers exit non-zero too.
    case leaderFailed
    /// Some ranks could not load their part of the model (rank, host, message).
    case loadFailed([(rank: Int, message: String)])
    case malformedCommand(String)

    public var description: String {
        switch self {
        case .leaderFailed: "rank 0 ended the run with an error"
        case let .loadFailed(failures):
            "could not start the mesh: " + failures.map { "rank \($0.rank): \($0.message)" }.joined(separator: "; ")
        case let .malformedCommand(m): "malformed command from rank 0: \(m)"
        }
    }
}

/// One device of a mesh whose devices are separate processes (MPI ranks): this process holds
/// only its own weight shards and KV cache slices, and runs the same `DeviceProgram` as the
/// in-process mesh, with collectives over `comm`.
///
/// Rank 0 is the leader: it is the `ForwardEngine` the generator drives. Each `forward` first
/// broadcasts the batch over `control`, so the followers (ranks ≠ 0, looping in `serve()`) run
/// the same pass in step. The leader must end with `shutdown()`.
public final class ProcessMeshEngine: ForwardEngine, @unchecked Sendable {
    public let config: ModelConfig
    public let mesh: Mesh
    public let prefill: PhaseLayout
    public let decode: PhaseLayout
    public let overlap: Bool
    public let comm: any Communicator
    public let control: any MeshControl
    public var rank: Int { comm.rank }
    let blocks: HiddenBlocks
    let weights: DeviceWeights
    let caches = DeviceCaches()
    let threads: WorkSplitter
    private let lock = NSLock()
    private var nextSequence = 0
    private var released: [Int] = []
    private var stopped = false
    public private(set) var wallSeconds = 0.0
    public private(set) var communicationSeconds = 0.0

    /// Loads this rank's shards. Every rank must call it (it ends with a control-plane exchange
    /// in which each rank reports whether its load succeeded, so one rank's missing model file
    /// becomes an error on every rank, named by rank 0, instead of a hang).
    /// `load` opens the model and picks the layouts (it runs on every rank, so their choices
    /// must depend only on what every rank knows).
    public init(load: () throws -> (TensorSource, ModelConfig, prefill: PhaseLayout, decode: PhaseLayout),
                comm: any Communicator, control: any MeshControl, format: WeightFormat, threads: Int, overlap: Bool = false) throws {
        let mesh = comm.mesh
        var loaded: (DeviceWeights, ModelConfig, PhaseLayout, PhaseLayout)?
        var failure = ""
        do {
            let (source, config, prefill, decode) = try load()
            try MeshEngine.validate(config: config, mesh: mesh, prefill: prefill, decode: decode)
            loaded = (try DeviceWeights(source: source, config: config, mesh: mesh, rank: comm.rank, prefill: prefill,
                                        decode: decode, format: format, threads: max(1, threads)), config, prefill, decode)
        } catch {
            failure = "\(error)"
        }
        // Loading can take long on big models: wait for every rank without the collective timeout.
        let reports = try control.allGather(Array(failure.utf8), timeout: 0)
        let failures = reports.enumerated().filter { !$0.element.isEmpty }.map { (rank: $0.offset, message: String(decoding: $0.element, as: UTF8.self)) }
        guard failures.isEmpty, let (weights, config, prefill, decode) = loaded else { throw ProcessMeshError.loadFailed(failures) }
        self.config = config
        self.mesh = mesh
        self.prefill = prefill
        self.decode = decode
        self.overlap = overlap
        self.comm = comm
        self.control = control
        self.weights = weights
        blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount)
        self.threads = WorkSplitter(threads: max(1, threads))
    }

    public func makeCache(limit: Int?) -> any SequenceState {
        let id = lock.withLock { () -> Int in nextSequence += 1; return nextSequence - 1 }
        return MeshSequence(id: id, limit: limit ?? config.contextLength, owner: self) { [weak self] id in
            guard let self else { return }
            self.lock.withLock {
                self.caches.caches[id] = nil
                self.released.append(id)
            }
        }
    }

    /// Leader only: one forward pass on every rank.
    public func forward(_ batch: [SequenceInput]) throws -> [Matrix] {
        precondition(rank == 0, "only rank 0 drives a process mesh")
        let (meshBatch, sequences, limit) = try MeshBatch.checked(batch, engine: self, config: config)
        try send(MeshCommand(kind: .forward, batch: meshBatch, limit: limit))
        let logits: [Matrix]
        do { logits = try run(meshBatch, limit: limit) } catch {
            // The followers are mid-pass, waiting in collectives this rank will never join.
            comm.abort(reason: "rank 0 failed during a forward pass: \(error)")
            throw error
        }
        return MeshBatch.finish(batch, sequences, logits: logits, vocabularySize: config.vocabularySize)
    }

    /// Leader only: every rank's byte counters, in rank order.
    public func gatherTraffic() throws -> [TrafficCounter] {
        try send(MeshCommand(kind: .traffic))
        return try reportTraffic()
    }

    /// Leader only: every rank's weight formats and bytes, in rank order.
    public func gatherWeights() throws -> [DeviceWeightReport] {
        try send(MeshCommand(kind: .weights))
        return try reportWeights()
    }

    /// Leader only: zeroes the byte counters and timers on every rank.
    public func resetTraffic() throws {
        try send(MeshCommand(kind: .resetTraffic))
        resetLocal()
    }

    /// Leader only: releases the followers from `serve()`. Call once, on success or failure.
    public func shutdown(failed: Bool = false) {
        guard rank == 0, !stopped else { return }
        stopped = true
        _ = try? send(MeshCommand(kind: .stop, failed: failed))
    }

    /// Followers: runs the leader's commands until it stops. Throws `.leaderFailed` when the
    /// leader ended with an error, and any error of a pass (a collective timing out, say).
    public func serve() throws {
        precondition(rank != 0, "rank 0 leads; it does not serve")
        while true {
            // Idle until the leader's next command, however long that takes (a chat user typing).
            let bytes = try control.broadcast([], root: 0, timeout: 0)
            let command: MeshCommand
            do { command = try JSONDecoder().decode(MeshCommand.self, from: Data(bytes)) } catch {
                throw ProcessMeshError.malformedCommand("\(error)")
            }
            lock.withLock { for id in command.released { caches.caches[id] = nil } }
            switch command.kind {
            case .forward:
                guard let batch = command.batch else { throw ProcessMeshError.malformedCommand("forward without a batch") }
                _ = try run(batch, limit: command.limit)
            case .traffic: _ = try reportTraffic()
            case .weights: _ = try reportWeights()
            case .resetTraffic: resetLocal()
            case .stop:
                if command.failed { throw ProcessMeshError.leaderFailed }
                return
            }
        }
    }

    private func send(_ command: MeshCommand) throws {
        var command = command
        command.released = lock.withLock { defer { released = [] }; return released }
        _ = try control.broadcast(Array(try JSONEncoder().encode(command)), root: 0, timeout: nil)
    }

    private func run(_ batch: MeshBatch, limit: Int) throws -> [Matrix] {
        let layout = batch.isPrefill ? prefill : decode
        let timed = TimedCommunicator(comm)
        let program = DeviceProgram(config: config, mesh: mesh, rank: rank, layout: layout, blocks: blocks, weights: weights,
                                    caches: caches, comm: timed, threads: threads, limit: limit, overlap: overlap)
        let start = DispatchTime.now().uptimeNanoseconds
        let logits = try program.forward(batch)
        wallSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        communicationSeconds += timed.seconds
        return logits
    }

    private func reportTraffic() throws -> [TrafficCounter] {
        let all = try control.allGather(Array(try JSONEncoder().encode(comm.traffic)), timeout: nil)
        return try all.map { try JSONDecoder().decode(TrafficCounter.self, from: Data($0)) }
    }

    private func reportWeights() throws -> [DeviceWeightReport] {
        let all = try control.allGather(Array(try JSONEncoder().encode(weights.report)), timeout: nil)
        return try all.map { try JSONDecoder().decode(DeviceWeightReport.self, from: Data($0)) }
    }

    private func resetLocal() {
        comm.resetTraffic()
        wallSeconds = 0
        communicationSeconds = 0
    }
}
