import ArgumentParser
import Collectives
import Foundation
import Partitioning
import Tensors

/// Checks the MPI transport against the in-process one: every collective over every axis
/// subset of the mesh, on the same inputs, must give bitwise-equal results and equal byte
/// counts. Run it under mpirun to validate a cluster before a long job.
struct MPICheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mpi-check",
        abstract: "Check every MPI collective over every axis subset against the in-process transport (run under mpirun).")

    @Option(help: "Device mesh XxYxZ (= the number of ranks).") var mesh: String = "2"
    @Option(help: "Seconds a collective waits for its peers.") var collectiveTimeout: Double = 30
    @Flag(help: "Print JSON.") var json = false

    /// Deterministic, rank-dependent inputs with non-trivial bits (so summation order shows).
    static func input(rank: Int, kind: CollectiveKind, axes: AxisSet, count: Int) -> [Float] {
        (0..<count).map { i in Float(sin(Double(i * 7 + rank * 131 + axes.rawValue * 17 + (CollectiveKind.allCases.firstIndex(of: kind) ?? 0))) * 1.37e3) / 3.1 }
    }

    /// Element counts per collective: divisible by every group size for the chunked ones, and
    /// an odd count for all-gather and all-reduce (all-reduce pads to a multiple of K).
    static func count(_ kind: CollectiveKind) -> Int {
        switch kind {
        case .allGather, .allReduce: 1001
        case .reduceScatter, .allToAll: 960
        }
    }

    func run() throws {
        let parsed = try Mesh(parsing: mesh)
        let options = try MeshOptions.parse(["--mesh", mesh, "--transport", "mpi", "--collective-timeout", "\(collectiveTimeout)"])
        let world = try options.startMPI()
        defer { world.finalize() }
        let comm = try MPICommunicator(world: world, mesh: parsed, timeout: collectiveTimeout)
        let cases = AxisSet.allSubsets.flatMap { axes in CollectiveKind.allCases.map { (axes, $0) } }
        // The reference: the whole mesh in this process, one thread per device.
        let fabric = LocalFabric(mesh: parsed, timeout: collectiveTimeout)
        let expected = try fabric.run { rank, local in
            let outputs = try cases.map { axes, kind in
                try local.collective(kind, Self.input(rank: rank, kind: kind, axes: axes, count: Self.count(kind)), over: axes, site: .measurement)
            }
            return UncheckedSendable((outputs, local.traffic))
        }[world.rank].value
        var mismatches: [String] = []
        for (i, (axes, kind)) in cases.enumerated() {
            let got = try comm.collective(kind, Self.input(rank: world.rank, kind: kind, axes: axes, count: Self.count(kind)), over: axes, site: .measurement)
            let want = expected.0[i]
            if got.count != want.count || zip(got, want).contains(where: { $0.bitPattern != $1.bitPattern }) {
                mismatches.append("rank \(world.rank): \(kind.rawValue) over '\(axes)'")
            }
        }
        if comm.traffic != expected.1 { mismatches.append("rank \(world.rank): byte counters differ from the in-process transport") }
        let all = try world.allGather(Array(mismatches.joined(separator: "\n").utf8))
            .map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }
        if world.rank == 0 {
            let bytes = comm.traffic
            let summary: [String: Any] = [
                "mesh": parsed.description, "ranks": world.size, "checks": cases.count * world.size,
                "mismatches": all, "ok": all.isEmpty,
                "bytes_sent_rank0": Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, bytes.sentBytes(kind: $0)) }),
                "library": world.libraryVersion.split(separator: "\n").first.map(String.init) ?? "",
            ]
            if json { writeJSON(summary) } else {
                print(all.isEmpty ? "mpi-check \(parsed): \(cases.count) collectives x \(world.size) ranks equal the in-process transport"
                                  : "mpi-check \(parsed): MISMATCH\n" + all.joined(separator: "\n"))
            }
        }
        if !all.isEmpty { throw ExitCode(1) }
    }
}
