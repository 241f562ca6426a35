import Collectives
import Foundation
import Partitioning
import Testing
@testable import Runtime
import Tensors
import Transformer

/// The MPI leader/follower protocol without `mpirun`: the follower's state machine on its own,
/// and whole sessions between device threads over the in-process fabric (the mpirun tests in
/// MPITests run the same code across processes).
struct ControlProtocolTests {
    static let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 48, heads: 6, kvHeads: 3, vocabularySize: 64)
    static let spec = SessionSpec(prefill: PhaseLayout(.weightGatheredX, .shardedOverBatch), decode: PhaseLayout(.weightStationary2D, .shardedOverBatch),
                                  weights: .f32, threads: 1)

    @Test func followerMachineFollowsTheProtocol() throws {
        var m = FollowerMachine()
        #expect(try m.handle(.received(.open(Self.spec))) == .open(Self.spec) && m.state == .opening)
        #expect(try m.handle(.opened(true)) == nil && m.state == .serving)
        let batch = MeshBatch(entries: [.init(sequence: 0, start: 0, tokens: [1, 2], logitsFrom: nil)])
        #expect(try m.handle(.received(.forward(batch, limit: 8, released: [3]))) == .forward(batch, limit: 8, released: [3]))
        #expect(try m.handle(.received(.reportTraffic)) == .reportTraffic)
        #expect(try m.handle(.received(.reportWeights)) == .reportWeights)
        #expect(try m.handle(.received(.resetCounters)) == .resetCounters && m.state == .serving)
        #expect(try m.handle(.received(.close(failed: false))) == .close && m.state == .idle)
        // A session no rank could open leaves the follower idle, ready for the leader's end.
        #expect(try m.handle(.received(.open(Self.spec))) == .open(Self.spec))
        #expect(try m.handle(.opened(false)) == nil && m.state == .idle)
        #expect(try m.handle(.received(.end(failed: true))) == .exit(failed: true) && m.state == .finished)
    }

    @Test func followerMachineRefusesOutOfOrderMessages() throws {
        var idle = FollowerMachine()
        #expect(throws: ControlError.unexpected(message: "forward", state: "idle")) {
            try idle.handle(.received(.forward(MeshBatch(entries: []), limit: 1, released: [])))
        }
        #expect(throws: ControlError.unexpected(message: "reportTraffic", state: "idle")) { try idle.handle(.received(.reportTraffic)) }
        #expect(throws: ControlError.unexpected(message: "a load report", state: "idle")) { try idle.handle(.opened(true)) }
        var serving = FollowerMachine()
        _ = try serving.handle(.received(.open(Self.spec)))
        _ = try serving.handle(.opened(true))
        #expect(throws: ControlError.unexpected(message: "open", state: "serving")) { try serving.handle(.received(.open(Self.spec))) }
        var opening = FollowerMachine()
        _ = try opening.handle(.received(.open(Self.spec)))
        #expect(throws: ControlError.unexpected(message: "close", state: "opening")) { try opening.handle(.received(.close(failed: false))) }
    }

    /// Results of the follower threads, under a lock.
    final class Outcomes: @unchecked Sendable {
        let lock = NSLock()
        var results: [Int: Result<Bool, Error>] = [:]
        var engines: [Int: ProcessMeshEngine] = [:]
    }

    /// Runs `leader` on rank 0 and `follow` on the other ranks of `mesh` (threads, in-process
    /// fabrics for data and control); returns each follower's outcome.
    static func run(mesh: Mesh, source: @escaping @Sendable (Int) -> TensorSource = { _ in RandomWeights(config: config, seed: 4) },
                    leader: (_ open: (SessionSpec) throws -> ProcessMeshEngine, _ control: any MeshControl, _ followers: Outcomes) throws -> Void) throws -> Outcomes {
        let data = LocalFabric(mesh: mesh, timeout: 60), control = LocalFabric(mesh: mesh, timeout: 60)
        let outcomes = Outcomes()
        let done = DispatchSemaphore(value: 0)
        func open(_ rank: Int) -> @Sendable (SessionSpec) throws -> ProcessMeshEngine {
            { spec in
                let engine = try ProcessMeshEngine(load: { (source(rank), config, spec.prefill, spec.decode) }, comm: data.communicator(rank: rank),
                                                   control: control.communicator(rank: rank), format: spec.weights, threads: spec.threads,
                                                   kvCache: spec.kvCache)
                outcomes.lock.withLock { outcomes.engines[rank] = engine }
                return engine
            }
        }
        for rank in 1..<mesh.deviceCount {
            let opener = open(rank)
            Thread {
                let r = Result { try ProcessMeshEngine.follow(control: control.communicator(rank: rank), open: opener) }
                outcomes.lock.withLock { outcomes.results[rank] = r }
                done.signal()
            }.start()
        }
        defer { for _ in 1..<mesh.deviceCount { done.wait() } }
        try leader(open(0), control.communicator(rank: 0), outcomes)
        return outcomes
    }

    /// Two sessions (different layouts) over 2 and 4 threads: every pass's logits equal the
    /// in-process mesh's exactly, reports come back from every rank, released sequences' caches
    /// are dropped on the followers at the next pass, a prefix copied on every rank continues
    /// alike, a closed session refuses more work with a
    /// typed error, and `end` lets the followers return.
    @Test(.timeLimit(.minutes(2)), arguments: ["2", "2x2"])
    func sessionsOverTheInProcessFabric(_ meshName: String) throws {
        let mesh = try Mesh(parsing: meshName)
        let heads = SessionSpec(prefill: PhaseLayout(.weightStationary1D, .shardedOverHeads), decode: PhaseLayout(.weightStationary1D, .shardedOverHeads),
                                weights: .f32, threads: 1)
        let outcomes = try Self.run(mesh: mesh) { open, control, followers in
            for spec in [Self.spec, heads] {
                try ControlMessage.open(spec).broadcast(over: control)
                let engine = try open(spec)
                let local = try MeshEngine(source: RandomWeights(config: Self.config, seed: 4), config: Self.config, mesh: mesh,
                                           prefill: spec.prefill, decode: spec.decode, format: .f32, threads: 1)
                var gone: MeshSequence? = engine.makeCache()
                _ = try engine.forward([SequenceInput(cache: gone!, tokens: [5, 6, 7])])
                let released = gone!.id
                gone = nil
                let prompts = [[1, 2, 3], [4, 5], [6]]
                let a = prompts.map { _ in engine.makeCache() }, b = prompts.map { _ in local.makeCache() }
                var x = try engine.forward(zip(a, prompts).map { SequenceInput(cache: $0, tokens: $1) })
                var y = try local.forward(zip(b, prompts).map { SequenceInput(cache: $0, tokens: $1) })
                for _ in 0..<3 {
                    #expect(x.map(\.values) == y.map(\.values))
                    let next = y.map { [Sampler.argmax($0.rowArray(0))] }
                    x = try engine.forward(zip(a, next).map { SequenceInput(cache: $0, tokens: $1) })
                    y = try local.forward(zip(b, next).map { SequenceInput(cache: $0, tokens: $1) })
                }
                #expect(try engine.gatherWeights() == local.weightsByDevice())
                #expect(try engine.gatherTraffic().count == mesh.deviceCount)
                try engine.resetTraffic()
                #expect(try engine.gatherTraffic().allSatisfy { $0.sentBytes(kind: .allGather) == 0 })
                // The released sequence's caches went on every follower at the pass after its
                // release; the live ones stay (each on its home device, or on all for heads).
                let held = followers.lock.withLock { followers.engines.filter { $0.key != 0 }.values.map(\.caches.sequences) }
                #expect(held.count == mesh.deviceCount - 1)
                #expect(held.allSatisfy { $0.isSubset(of: Set(a.map(\.id))) }, "\(held), live \(a.map(\.id)), released \(released)")
                if spec.decode.attention == .shardedOverHeads { #expect(held.allSatisfy { $0 == Set(a.map(\.id)) }) }
                // A prefix copied on every rank (the choices of n > 1) continues as on the in-process mesh.
                let c = engine.makeCache(limit: nil, home: a[0].home(devices: mesh.deviceCount))
                let d = local.makeCache(limit: nil, home: b[0].home(devices: mesh.deviceCount))
                try engine.copyPrefix(a[0].count, from: a[0], to: c)
                try local.copyPrefix(b[0].count, from: b[0], to: d)
                #expect(try engine.forward([SequenceInput(cache: c, tokens: [9])]).map(\.values)
                        == local.forward([SequenceInput(cache: d, tokens: [9])]).map(\.values))
                engine.shutdown()
                #expect(throws: ProcessMeshError.self) { try engine.forward([SequenceInput(cache: a[0], tokens: [1])]) }
            }
            try ControlMessage.end(failed: false).broadcast(over: control)
        }
        for rank in 1..<mesh.deviceCount {
            #expect(try outcomes.results[rank]?.get() == false, "rank \(rank)")
        }
    }

    /// The leader failing: it closes the session and ends the command failed; followers return
    /// `true` (the CLI exits 1 on every rank).
    @Test(.timeLimit(.minutes(1))) func leaderFailureEndsEveryRankFailed() throws {
        let outcomes = try Self.run(mesh: Mesh(x: 2)) { open, control, _ in
            try ControlMessage.open(Self.spec).broadcast(over: control)
            let engine = try open(Self.spec)
            _ = try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: [1, 2])])
            engine.shutdown(failed: true)
            try ControlMessage.end(failed: true).broadcast(over: control)
        }
        #expect(try outcomes.results[1]?.get() == true)
    }

    /// One rank cannot load its shards: every rank learns it from the load report, rank 0
    /// names the rank, the followers go back to idle and end with the leader.
    @Test(.timeLimit(.minutes(1))) func loadFailureOnOneRankReachesEveryRank() throws {
        let broken = { var c = Self.config; c.feedForwardDimension += 16; return c }()
        let outcomes = try Self.run(mesh: Mesh(x: 2), source: { rank in RandomWeights(config: rank == 1 ? broken : Self.config, seed: 4) }) { open, control, _ in
            try ControlMessage.open(Self.spec).broadcast(over: control)
            #expect {
                _ = try open(Self.spec)
            } throws: { error in
                guard case let ProcessMeshError.loadFailed(failures) = error else { return false }
                return failures.map(\.rank) == [1]
            }
            try ControlMessage.end(failed: true).broadcast(over: control)
        }
        #expect(try outcomes.results[1]?.get() == true)
    }

    /// A message the protocol does not allow is a typed error on the follower, not a hang.
    @Test(.timeLimit(.minutes(1))) func outOfOrderMessageIsATypedError() throws {
        let outcomes = try Self.run(mesh: Mesh(x: 2)) { _, control, _ in
            try ControlMessage.reportTraffic.broadcast(over: control)
        }
        #expect(throws: ControlError.unexpected(message: "reportTraffic", state: "idle")) { try outcomes.results[1]?.get() }
    }
}
