import ArgumentParser
import Collectives
import Foundation
import Runtime
import Tensors

/// Rank 0's process-mesh engine that the followers are serving, if a session is open.
nonisolated(unsafe) private var servedEngine: ProcessMeshEngine?

/// Under `--transport mpi`, every rank runs the same command line. Rank 0 (the leader) runs the
/// command itself: it reads the prompts, drives generation and writes the output. The other
/// ranks follow: for each session the leader opens they load their shards and run the passes
/// the leader broadcasts, until the leader ends the session; then they wait for the next one.
///
/// Session messages, broadcast by the leader: a `SessionSpec` (a session starts), "end" (the
/// command finished: everyone exits 0) or "fail" (the leader failed: it has printed the error;
/// everyone exits 1). A failed session (the leader's error, or a rank that could not load its
/// shards) is followed by "fail".
func runAcrossRanks(model: ModelOptions, mesh: MeshOptions, leader: () throws -> Void) throws {
    try mesh.checkLaunch()
    guard mesh.transport == .mpi else { return try leader() }
    let world = try mesh.startMPI()
    installTerminationMessage(rank: world.rank)
    if world.rank != 0 {
        do { return try follow(world, model: model, mesh: mesh) } catch let exit as ExitCode { throw exit } catch {
            // Followers' errors are not printed by main (it leaves argument errors to rank 0).
            printError("meshinfer rank \(world.rank) (\(world.processorName)): \(error)")
            world.abort(code: 1)
            throw ExitCode(1)
        }
    }
    do {
        try leader()
        endSessions(failed: false)
        _ = try world.broadcast(Array("end".utf8), root: 0, timeout: 0)
        world.finalize()
    } catch {
        // Print first: the followers exit once told, and the launcher then stops this rank too.
        printError(MeshInfer.fullMessage(for: error))
        if error is CollectiveError || error is MPIError {
            // A peer is gone or stuck mid-pass: it cannot take the message; stop the whole job.
            world.abort(code: 1)
        }
        endSessions(failed: true)
        _ = try? world.broadcast(Array("fail".utf8), root: 0, timeout: 0)
        world.finalize()
        throw ExitCode(MeshInfer.exitCode(for: error).rawValue)
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

func registerSession(_ engine: ProcessMeshEngine) { servedEngine = engine }

private func endSessions(failed: Bool) {
    servedEngine?.shutdown(failed: failed)
    servedEngine = nil
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
            continue   // "fail" follows, once rank 0 has printed its error
        } catch ProcessMeshError.loadFailed {
            continue   // every rank saw it; rank 0 names the rank and the reason, then sends "fail"
        } catch {
            // This rank cannot go on while the others may be mid-pass: stop the whole job.
            printError("meshinfer rank \(world.rank) (\(world.processorName)): \(error)")
            world.abort(code: 1)
            throw ExitCode(1)
        }
    }
}

/// The message a rank prints when the launcher terminates it (mpirun sends SIGTERM to every
/// rank when one of them dies or exits non-zero), so each rank says why it stopped.
nonisolated(unsafe) private var terminationMessage: UnsafeMutableBufferPointer<UInt8>?

private func installTerminationMessage(rank: Int) {
    let text = Array("meshinfer rank \(rank): terminated by the MPI launcher (another rank failed, or the job was cancelled)\n".utf8)
    let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: text.count)
    _ = buffer.initialize(from: text)
    terminationMessage = buffer
    signal(SIGTERM) { _ in
        // Only async-signal-safe calls here: write(2) and _exit(2).
        if let m = terminationMessage { _ = write(2, m.baseAddress, m.count) }
        _exit(143)
    }
}
