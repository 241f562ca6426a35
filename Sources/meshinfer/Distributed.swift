import ArgumentParser
import Collectives
import Foundation
import Runtime
import Tensors

/// Rank 0's process-mesh engines that followers are still serving (at most one at a time).
nonisolated(unsafe) private var servedEngines: [ProcessMeshEngine] = []

/// Under `--transport mpi`, every rank runs the same command line. Rank 0 (the leader) runs the
/// command itself: it reads the prompts, drives generation and writes the output. The other
/// ranks follow: for each session the leader opens they load their shards and run the passes
/// the leader broadcasts, until the leader ends the session; then they wait for the next one.
///
/// Session messages, broadcast by the leader: a `SessionSpec` (a session starts), "end" (the
/// command finished: everyone exits 0) or "fail" (the leader failed before or between
/// sessions: everyone exits 1; only the leader prints the error).
func runAcrossRanks(model: ModelOptions, mesh: MeshOptions, leader: () throws -> Void) throws {
    try mesh.checkLaunch()
    guard mesh.transport == .mpi else { return try leader() }
    let world: MPIWorld
    do { world = try mesh.startMPI() } catch {
        // A bad launch is seen alike by every rank: only rank 0 reports it.
        if let w = MPIWorld.current, w.rank != 0 { w.finalize(); throw ExitCode(1) }
        MPIWorld.current?.finalize()
        throw error
    }
    if world.rank != 0 { return try follow(world, model: model, mesh: mesh) }
    do {
        try leader()
        endSessions(failed: false)
        _ = try world.broadcast(Array("end".utf8), root: 0, timeout: 0)
        world.finalize()
    } catch {
        let inSession = !servedEngines.isEmpty
        endSessions(failed: true)
        if !inSession { _ = try? world.broadcast(Array("fail".utf8), root: 0, timeout: 0) }
        world.finalize()
        throw error
    }
}

/// What the leader announces when it opens a session: what every rank must load alike.
struct SessionSpec: Codable {
    var batchSize: Int
    var weights: String
    var threads: Int
}

/// Rank 0: announces a session to the followers (ending the previous one first).
func beginSession(_ world: MPIWorld, model: ModelOptions, batchSize: Int) throws {
    endSessions(failed: false)
    let spec = SessionSpec(batchSize: batchSize, weights: model.weights.rawValue, threads: model.threads)
    _ = try world.broadcast(Array(try JSONEncoder().encode(spec)), root: 0, timeout: 0)
}

func registerSession(_ engine: ProcessMeshEngine) { servedEngines.append(engine) }

private func endSessions(failed: Bool) {
    for engine in servedEngines { engine.shutdown(failed: failed) }
    servedEngines = []
}

private func follow(_ world: MPIWorld, model: ModelOptions, mesh: MeshOptions) throws {
    while true {
        let message = String(decoding: try world.broadcast([], root: 0, timeout: 0), as: UTF8.self)
        if message == "end" { world.finalize(); return }
        guard let spec = try? JSONDecoder().decode(SessionSpec.self, from: Data(message.utf8)),
              let weights = WeightFormat(rawValue: spec.weights)
        else { world.finalize(); throw ExitCode(1) }   // "fail"
        var model = model
        model.weights = weights
        model.threads = spec.threads
        do {
            let session = try Session(model: model, mesh: mesh, batchSize: spec.batchSize)
            try (session.meshEngine as! ProcessMeshEngine).serve()
        } catch ProcessMeshError.leaderFailed {
            world.finalize()
            throw ExitCode(1)
        } catch ProcessMeshError.loadFailed {
            // Every rank saw the failed load; rank 0 names the rank and the reason.
            world.finalize()
            throw ExitCode(1)
        } catch {
            // This rank cannot go on while the others may be mid-pass: stop the whole job.
            printError("meshinfer rank \(world.rank) (\(world.processorName)): \(error)")
            world.abort(code: 1)
            throw ExitCode(1)
        }
    }
}
