import ArgumentParser
import Collectives
import Foundation
import Partitioning
import Runtime
import Tensors

/// Rank 0's process-mesh engine that the followers are serving, if a session is open.
nonisolated(unsafe) private var servedEngine: ProcessMeshEngine?

/// Under `--transport mpi`, every rank runs the same command line. Rank 0 (the leader) runs the
/// command itself: it reads the prompts, drives generation and writes the output. The other
/// ranks follow: for each session the leader opens they load their shards and run the passes
/// the leader broadcasts, until the leader ends the session; then they wait for the next one.
///
/// The leader's messages are `ControlMessage`s: `open` (a session starts), its passes and
/// reports, `close`, and at last `end` (failed when the leader failed: it has printed the error
/// and every rank exits 1). Followers run them through `ProcessMeshEngine.follow`.
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
        try ControlMessage.end(failed: false).broadcast(over: world)
        world.finalize()
    } catch {
        // Print first: the followers exit once told, and the launcher then stops this rank too.
        printError(MeshInfer.fullMessage(for: error))
        if error is CollectiveError || error is MPIError {
            // A peer is gone or stuck mid-pass: it cannot take the message; stop the whole job.
            world.abort(code: 1)
        }
        endSessions(failed: true)
        try? ControlMessage.end(failed: true).broadcast(over: world)
        world.finalize()
        throw ExitCode(MeshInfer.exitCode(for: error).rawValue)
    }
}

/// Rank 0: opens a session on the followers (closing the previous one first).
func beginSession(_ world: MPIWorld, model: ModelOptions, prefill: PhaseLayout, decode: PhaseLayout) throws {
    endSessions(failed: false)
    try ControlMessage.open(SessionSpec(prefill: prefill, decode: decode, weights: model.weights, threads: model.threads,
                                                  kvCache: model.kvCache)).broadcast(over: world)
}

func registerSession(_ engine: ProcessMeshEngine) { servedEngine = engine }

private func endSessions(failed: Bool) {
    servedEngine?.shutdown(failed: failed)
    servedEngine = nil
}

private func follow(_ world: MPIWorld, model: ModelOptions, mesh: MeshOptions) throws {
    let failed: Bool
    do {
        failed = try ProcessMeshEngine.follow(control: world) { spec in
            var model = model
            model.weights = spec.weights
            model.threads = spec.threads
            model.kvCache = spec.kvCache
            return try Session.follower(model: model, mesh: mesh, prefill: spec.prefill, decode: spec.decode)
        }
    } catch {
        // This rank cannot go on while the others may be mid-pass: stop the whole job.
        printError("meshinfer rank \(world.rank) (\(world.processorName)): \(error)")
        world.abort(code: 1)
        throw ExitCode(1)
    }
    world.finalize()
    if failed { throw ExitCode(1) }
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
