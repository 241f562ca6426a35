import Collectives
import Foundation
import Partitioning
import Tensors
import Transformer

/// A sequence whose KV cache lives on the devices of a mesh (split over heads or batch).
public final class MeshSequence: SequenceState, @unchecked Sendable {
    public let id: Int
    public internal(set) var count = 0
    public let limit: Int
    /// The engine whose devices hold this sequence's caches (ids are per engine).
    let owner: ObjectIdentifier
    let release: @Sendable (Int) -> Void
    init(id: Int, limit: Int, owner: AnyObject, release: @escaping @Sendable (Int) -> Void) {
        self.id = id
        self.limit = limit
        self.owner = ObjectIdentifier(owner)
        self.release = release
    }
    public func truncate(to position: Int) {
        precondition(position >= 0 && position <= count)
        count = position
    }
    deinit { release(id) }
}

/// Runs a model partitioned over a mesh of in-process devices (one thread each), with the
/// layouts of Pope et al. §3 chosen per phase. Weights are loaded already sharded.
public final class MeshEngine: ForwardEngine, @unchecked Sendable {
    public let config: ModelConfig
    public let mesh: Mesh
    public let prefill: PhaseLayout
    public let decode: PhaseLayout
    /// Overlap collectives with chunks of the adjacent matmul (looped collective einsum, §3.5).
    public let overlap: Bool
    let blocks: HiddenBlocks
    let devices: [DeviceWeights]
    let caches: [DeviceCaches]
    let threadsPerDevice: Int
    private let lock = NSLock()
    private var nextSequence = 0
    /// Counters of forward passes, read and written under `lock`.
    private var counters = (traffic: [TrafficCounter](), wall: 0.0, communication: 0.0)
    /// Bytes each device sent and received, per collective kind, axes and site, since the last reset.
    public var traffic: [TrafficCounter] { lock.withLock { counters.traffic } }
    /// Wall time of forward passes, and the mean over devices of the time spent inside
    /// collectives, since the last reset (compute ≈ wall − communication).
    public var wallSeconds: Double { lock.withLock { counters.wall } }
    public var communicationSeconds: Double { lock.withLock { counters.communication } }
    /// When set (tests), each device records what its next passes do here (`ExecutionLog`).
    var executionLogs: [ExecutionLog]?
    public var profile: OpProfile?

    public init(source: TensorSource, config: ModelConfig, mesh: Mesh, prefill: PhaseLayout, decode: PhaseLayout,
                format: WeightFormat, threads: Int, overlap: Bool = false, kvCache: KVCacheType = .f16) throws {
        try MeshEngine.validate(config: config, mesh: mesh, prefill: prefill, decode: decode)
        try EngineError.check(kvCache, config)
        self.overlap = overlap
        self.config = config
        self.mesh = mesh
        self.prefill = prefill
        self.decode = decode
        blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount, attention: prefill.attention)
        let threadsPerDevice = max(1, threads / mesh.deviceCount)
        devices = try runOnMesh(mesh) { rank, _ in
            try DeviceWeights(source: source, config: config, mesh: mesh, rank: rank, prefill: prefill, decode: decode,
                              format: format, threads: threadsPerDevice)
        }
        caches = (0..<mesh.deviceCount).map { _ in DeviceCaches(type: kvCache) }
        self.threadsPerDevice = threadsPerDevice
        counters.traffic = Array(repeating: TrafficCounter(), count: mesh.deviceCount)
    }

    /// Checks a layout against the model and mesh before anything is allocated.
    public static func validate(config: ModelConfig, mesh: Mesh, prefill: PhaseLayout, decode: PhaseLayout) throws(LayoutError) {
        try PhaseLayout.validatePhases(prefill: prefill, decode: decode, config: config, mesh: mesh)
    }

    public func makeCache(limit: Int?) -> MeshSequence { makeSequence(limit: limit, home: nil) }
    public func makeCache(limit: Int?, home: Int) -> MeshSequence { makeSequence(limit: limit, home: home) }

    public func copyPrefix(_ positions: Int, from: MeshSequence, to: MeshSequence) throws {
        try MeshSequence.checkCopy(positions, from: from, to: to, engine: self, devices: mesh.deviceCount)
        for c in caches { c.copyPrefix(positions, from: from.id, to: to.id, limit: to.limit) }
        to.count = positions
    }

    private func makeSequence(limit: Int?, home: Int?) -> MeshSequence {
        let id = lock.withLock { nextSequenceID(&nextSequence, home: home, devices: mesh.deviceCount) }
        let caches = caches
        return MeshSequence(id: id, limit: limit ?? config.contextLength, owner: self) { id in
            for c in caches { c.release([id]) }
        }
    }

    public func resetTraffic() {
        lock.withLock { counters = (Array(repeating: TrafficCounter(), count: mesh.deviceCount), 0, 0) }
    }

    public func forward(_ batch: [SequenceInput<MeshSequence>]) throws -> [Matrix] {
        let (meshBatch, sequences, limit) = try MeshBatch.checked(batch, engine: self, config: config)
        let layout = meshBatch.isPrefill ? prefill : decode
        let (config, mesh, blocks, devices, caches, threads, overlap, logs, profile) = (config, mesh, blocks, devices, caches, threadsPerDevice, overlap, executionLogs, profile)
        let start = DispatchTime.now().uptimeNanoseconds
        let results = try runOnMesh(mesh) { rank, comm in
            let timed = TimedCommunicator(comm)
            let program = DeviceProgram(config: config, mesh: mesh, rank: rank, layout: layout, blocks: blocks,
                                        weights: devices[rank], caches: caches[rank], comm: timed,
                                        threads: WorkSplitter(threads: threads), limit: limit, overlap: overlap, log: logs?[rank],
                                        profile: rank == 0 ? profile : nil)
            return UncheckedSendable((try program.forward(meshBatch), comm.traffic, timed.seconds))
        }
        let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        lock.withLock {
            counters.wall += wall
            counters.communication += results.reduce(0) { $0 + $1.value.2 } / Double(results.count)
            for (rank, r) in results.enumerated() { counters.traffic[rank] = counters.traffic[rank] + r.value.1 }
        }
        return MeshBatch.finish(batch, sequences, logits: results[0].value.0, vocabularySize: config.vocabularySize)
    }
}

extension MeshBatch {
    /// Checks a batch against the engine, the model and the sequences' limits; returns the batch
    /// every device runs (sequences with no new tokens left out), each input's sequence, and
    /// the longest cache limit.
    static func checked(_ batch: [SequenceInput<MeshSequence>], engine: AnyObject, config: ModelConfig) throws -> (MeshBatch, [MeshSequence], limit: Int) {
        guard batch.contains(where: { !$0.tokens.isEmpty }) else { throw EngineError.emptyInput }
        let V = config.vocabularySize
        var entries: [MeshBatch.Entry] = []
        var sequences: [MeshSequence] = []
        for input in batch {
            let s = input.cache
            guard s.owner == ObjectIdentifier(engine) else { throw EngineError.foreignSequence }
            sequences.append(s)
            let end = s.count + input.tokens.count
            if end > s.limit { throw EngineError.contextOverflow(requested: end, limit: s.limit) }
            for t in input.tokens where t < 0 || t >= V { throw EngineError.invalidToken(id: t, vocabularySize: V) }
            entries.append(.init(sequence: s.id, start: s.count, tokens: input.tokens, logitsFrom: input.logitsFrom))
        }
        if Set(entries.map(\.sequence)).count != entries.count { throw EngineError.duplicateSequence }
        let limit = batch.map { $0.cache.limit }.max() ?? config.contextLength
        return (MeshBatch(entries: entries.filter { !$0.tokens.isEmpty }), sequences, limit)
    }

    /// Prefill when any sequence brings more than one new token.
    var isPrefill: Bool { entries.contains { $0.tokens.count > 1 } }

    /// Advances the sequences past their new tokens and hands each input its logits.
    static func finish(_ batch: [SequenceInput<MeshSequence>], _ sequences: [MeshSequence], logits: [Matrix], vocabularySize V: Int) -> [Matrix] {
        for (input, s) in zip(batch, sequences) { s.count += input.tokens.count }
        var logits = logits
        return batch.map { $0.tokens.isEmpty ? Matrix(rows: 0, columns: V) : logits.removeFirst() }
    }
}

/// A model partitioned over a mesh, whichever transport connects its devices (threads of this
/// process, or MPI ranks): what `generate --json` and `bench` report about it.
public protocol MeshRunner: ForwardEngine where Sequence == MeshSequence {
    var mesh: Mesh { get }
    var prefill: PhaseLayout { get }
    var decode: PhaseLayout { get }
    var overlap: Bool { get }
    /// Wall time of forward passes and the time spent inside collectives since the last reset.
    var wallSeconds: Double { get }
    var communicationSeconds: Double { get }
    /// When set, device 0 (rank 0 under MPI, the leader) times its ops per class here.
    var profile: OpProfile? { get set }
    /// Zeroes byte counters and timers (on every device).
    func resetCounters() throws
    /// Every device's byte counters, in rank order.
    func trafficByDevice() throws -> [TrafficCounter]
    /// Every device's weight formats and bytes, in rank order.
    func weightsByDevice() throws -> [DeviceWeightReport]
    /// A new sequence homed on device `home` (under batch-sharded attention its KV lives
    /// there; sequences are homed on device id mod n).
    func makeCache(limit: Int?, home: Int) -> MeshSequence
    /// `to` (empty, homed as `from`) starts as a copy of the first `positions` positions of
    /// `from`'s KV cache, on every device: one prompt prefilled once for several sequences.
    func copyPrefix(_ positions: Int, from: MeshSequence, to: MeshSequence) throws
}

extension MeshSequence {
    /// The device it is homed on, in a mesh of `devices`.
    public func home(devices: Int) -> Int { id % devices }

    /// Checks a prefix copy between two sequences of `engine`.
    static func checkCopy(_ positions: Int, from: MeshSequence, to: MeshSequence, engine: AnyObject, devices: Int) throws {
        guard from.owner == ObjectIdentifier(engine), to.owner == ObjectIdentifier(engine) else { throw EngineError.foreignSequence }
        guard to.count == 0, positions >= 0, positions <= from.count, positions <= to.limit,
              from.home(devices: devices) == to.home(devices: devices) else {
            throw EngineError.invalidCopy(positions: positions, from: from.count, to: to.count)
        }
    }
}

/// The next free sequence id homed on `home` of n devices (ids are homed on id mod n).
func nextSequenceID(_ next: inout Int, home: Int?, devices n: Int) -> Int {
    var id = next
    if let home { id += ((home % n) - id % n + n) % n }
    next = id + 1
    return id
}

extension MeshEngine: MeshRunner {
    public func resetCounters() { resetTraffic() }
    public func trafficByDevice() -> [TrafficCounter] { traffic }
    public func weightsByDevice() -> [DeviceWeightReport] { devices.map(\.report) }
}

/// What one device holds: the formats its matrices run in and their bytes.
public struct DeviceWeightReport: Sendable, Codable, Equatable {
    public var formats: [WeightFormat]
    public var weightBytes: Int
}

extension DeviceWeights {
    var report: DeviceWeightReport { DeviceWeightReport(formats: formats, weightBytes: weightBytes) }
}

extension ProcessMeshEngine: MeshRunner {
    public func resetCounters() throws { try resetTraffic() }
    public func trafficByDevice() throws -> [TrafficCounter] { try gatherTraffic() }
    public func weightsByDevice() throws -> [DeviceWeightReport] { try gatherWeights() }
}
