import Foundation
import Partitioning

/// Collects per-rank results and the first error (by time) of a mesh run.
private final class RunState<T: Sendable>: @unchecked Sendable {
    let lock = NSCondition()
    var results: [T?]
    var firstError: (any Error)?
    var running: Int

    init(count: Int) {
        results = Array(repeating: nil, count: count)
        running = count
    }
}

extension LocalFabric {
    /// Runs `body(rank, communicator)` on one dedicated thread per device of this fabric (a mesh
    /// of one runs on the calling thread) and
    /// returns each rank's result in rank order. If any device throws, the fabric is aborted (so
    /// the others stop with `.aborted` instead of hanging) and the first error (by time) is
    /// rethrown once every device thread has finished.
    public func run<T: Sendable>(
        stackSize: Int = 16 << 20,
        _ body: @escaping @Sendable (Int, any Communicator) throws -> T
    ) throws -> [T] {
        let count = mesh.deviceCount
        // A mesh of one is the calling thread: no device thread, every collective an identity.
        if count == 1 { return [try body(0, communicator(rank: 0))] }
        let state = RunState<T>(count: count)
        for rank in 0..<count {
            let comm = communicator(rank: rank)
            let thread = Thread {
                var outcome: Result<T, any Error>
                do { outcome = .success(try body(rank, comm)) } catch { outcome = .failure(error) }
                if case let .failure(error) = outcome {
                    state.lock.lock()
                    let first = state.firstError == nil
                    if first { state.firstError = error }
                    state.lock.unlock()
                    if first { self.abort(reason: "device \(rank) failed: \(error)") }
                }
                state.lock.lock()
                if case let .success(value) = outcome { state.results[rank] = value }
                state.running -= 1
                if state.running == 0 { state.lock.broadcast() }
                state.lock.unlock()
            }
            thread.name = "mesh-device-\(rank)"
            thread.stackSize = stackSize
            thread.start()
        }
        state.lock.lock()
        while state.running > 0 { state.lock.wait() }
        let error = state.firstError
        let results = state.results
        state.lock.unlock()
        if let error { throw error }
        return results.map { $0! }
    }
}

/// Runs `body(rank, communicator)` on `mesh.deviceCount` dedicated threads sharing a fresh
/// `LocalFabric`. Returns each rank's result in rank order. If any device throws, the fabric is
/// aborted (so the others stop with `.aborted` instead of hanging) and the first error (by time)
/// is rethrown.
public func runOnMesh<T: Sendable>(
    _ mesh: Mesh, timeout: Double = 60, _ body: @escaping @Sendable (Int, any Communicator) throws -> T
) throws -> [T] {
    try LocalFabric(mesh: mesh, timeout: timeout).run(body)
}
