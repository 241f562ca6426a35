import Collectives
import Foundation
import Partitioning
import Tensors
import Transformer

public enum ProcessMeshError: Error, CustomStringConvertible {
    /// Some ranks could not load their part of the model (rank, host, message).
    case loadFailed([(rank: Int, message: String)])
    /// The leader used a session after closing it (the followers have left it).
    case sessionClosed

    public var description: String {
        switch self {
        case let .loadFailed(failures):
            "could not start the mesh: " + failures.map { "rank \($0.rank): \($0.message)" }.joined(separator: "; ")
        case .sessionClosed: "this process mesh session is closed; open a new one"
        }
    }
}

/// One device of a mesh whose devices are separate processes (MPI ranks): this process holds
/// only its own weight shards and KV cache slices, and runs the same `DeviceProgram` as the
/// in-process mesh, with collectives over `comm`.
///
/// Rank 0 is the leader: it is the `ForwardEngine` the generator drives. Each `forward` first
/// broadcasts the batch over `control` (`ControlMessage`), so the followers (ranks ≠ 0, in
/// `follow`) run the same pass in step. The leader must end the session with `shutdown()`.
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
    let caches: DeviceCaches
    let threads: WorkSplitter
    private let lock = NSLock()
    private var nextSequence = 0
    private var released: [Int] = []
    private var stopped = false
    /// When set on the leader, its device times its ops per class here (`bench --profile`).
    public var profile: OpProfile?
    public private(set) var wallSeconds = 0.0
    public private(set) var communicationSeconds = 0.0

    /// Loads this rank's shards. Every rank must call it (it ends with a control-plane exchange
    /// in which each rank reports whether its load succeeded, so one rank's missing model file
    /// becomes an error on every rank, named by rank 0, instead of a hang).
    /// `load` opens the model and picks the layouts (it runs on every rank, so their choices
    /// must depend only on what every rank knows).
    public init(load: () throws -> (TensorSource, ModelConfig, prefill: PhaseLayout, decode: PhaseLayout),
                comm: any Communicator, control: any MeshControl, format: WeightFormat, threads: Int, overlap: Bool = false,
                kvCache: KVCacheType = .f16) throws {
        let mesh = comm.mesh
        var loaded: (DeviceWeights, ModelConfig, PhaseLayout, PhaseLayout)?
        var failure = ""
        do {
            let (source, config, prefill, decode) = try load()
            try MeshEngine.validate(config: config, mesh: mesh, prefill: prefill, decode: decode)
            try EngineError.check(kvCache, config)
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
        caches = DeviceCaches(type: kvCache)
        blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount, attention: prefill.attention)
        self.threads = WorkSplitter(threads: max(1, threads))
    }

    public func makeCache(limit: Int?) -> MeshSequence { makeSequence(limit: limit, home: nil) }
    public func makeCache(limit: Int?, home: Int) -> MeshSequence { makeSequence(limit: limit, home: home) }

    /// Leader only: the copy is made here and announced to every rank (each copies what it holds).
    public func copyPrefix(_ positions: Int, from: MeshSequence, to: MeshSequence) throws {
        precondition(rank == 0, "only rank 0 drives a process mesh")
        try MeshSequence.checkCopy(positions, from: from, to: to, engine: self, devices: mesh.deviceCount)
        try lead(.copyPrefix(positions: positions, from: from.id, to: to.id, limit: to.limit))
        caches.copyPrefix(positions, from: from.id, to: to.id, limit: to.limit)
        to.count = positions
    }

    private func makeSequence(limit: Int?, home: Int?) -> MeshSequence {
        let id = lock.withLock { nextSequenceID(&nextSequence, home: home, devices: mesh.deviceCount) }
        return MeshSequence(id: id, limit: limit ?? config.contextLength, owner: self) { [weak self] id in
            guard let self else { return }
            self.caches.release([id])
            self.lock.withLock { self.released.append(id) }
        }
    }

    /// Leader only: one forward pass on every rank.
    public func forward(_ batch: [SequenceInput<MeshSequence>]) throws -> [Matrix] {
        precondition(rank == 0, "only rank 0 drives a process mesh")
        let (meshBatch, sequences, limit) = try MeshBatch.checked(batch, engine: self, config: config)
        try lead(.forward(meshBatch, limit: limit, released: takeReleased()))
        let logits: [Matrix]
        do { logits = try run(meshBatch, limit: limit) } catch let error as CollectiveError {
            // A peer is gone or stuck: the caller ends what it serves (serve answers 503, ends
            // its streams), then stops the job (`runAcrossRanks` aborts on a CollectiveError).
            // The transport has stopped entering MPI; the other ranks time out or are killed.
            throw error
        } catch {
            // The followers are mid-pass, waiting in collectives this rank will never join.
            comm.abort(reason: "rank 0 failed during a forward pass: \(error)")
            throw error
        }
        return MeshBatch.finish(batch, sequences, logits: logits, vocabularySize: config.vocabularySize)
    }

    /// Leader only: every rank's byte counters, in rank order.
    public func gatherTraffic() throws -> [TrafficCounter] {
        try lead(.reportTraffic)
        return try reportTraffic()
    }

    /// Leader only: every rank's weight formats and bytes, in rank order.
    public func gatherWeights() throws -> [DeviceWeightReport] {
        try lead(.reportWeights)
        return try reportWeights()
    }

    /// Leader only: zeroes the byte counters and timers on every rank.
    public func resetTraffic() throws {
        try lead(.resetCounters)
        resetLocal()
    }

    /// Leader only: closes the session on every rank. Call once, on success or failure.
    public func shutdown(failed: Bool = false) {
        guard rank == 0, !stopped else { return }
        stopped = true
        try? ControlMessage.close(failed: failed).broadcast(over: control)
    }

    /// A follower: does what the leader asked (`follow`).
    func perform(_ action: FollowerMachine.Action) throws {
        precondition(rank != 0, "rank 0 leads; it does not follow")
        switch action {
        case let .forward(batch, limit, released):
            caches.release(released)
            _ = try run(batch, limit: limit)
        case let .copyPrefix(positions, from, to, limit): caches.copyPrefix(positions, from: from, to: to, limit: limit)
        case .reportTraffic: _ = try reportTraffic()
        case .reportWeights: _ = try reportWeights()
        case .resetCounters: resetLocal()
        case .open, .close, .exit: break
        }
    }

    /// Leader only: sends the followers their next step of this session.
    private func lead(_ message: ControlMessage) throws {
        guard !stopped else { throw ProcessMeshError.sessionClosed }
        try message.broadcast(over: control)
    }

    /// Sequences released since the last pass (their caches on the followers go next pass).
    private func takeReleased() -> [Int] { lock.withLock { defer { released = [] }; return released } }

    private func run(_ batch: MeshBatch, limit: Int) throws -> [Matrix] {
        let layout = batch.isPrefill ? prefill : decode
        let timed = TimedCommunicator(comm)
        let program = DeviceProgram(config: config, mesh: mesh, rank: rank, layout: layout, blocks: blocks, weights: weights,
                                    caches: caches, comm: timed, threads: threads, limit: limit, overlap: overlap, profile: profile)
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
