import Foundation
import Testing

/// The MPI transport, end to end: `mpirun` launches the built `meshinfer` binary as 2 or 4 ranks
/// (oversubscribed on small machines) and the results are compared with the in-process
/// transport. Needs Open MPI's `mpirun`; scripts/test.sh installs it and sets
/// MESHINFER_REQUIRE_MPI=1, so in CI a missing MPI fails the suite instead of skipping it.
@Suite(.serialized, .enabled(if: MPI.available || MPI.required, "mpirun not found (install openmpi-bin)"))
struct MPITests {
    /// Every collective over every axis subset: bitwise-equal results and equal byte counters.
    @Test(arguments: [("2", 2), ("4", 4), ("2x2", 4)])
    func collectivesEqualInProcess(_ mesh: String, _ ranks: Int) throws {
        let r = try MPI.mpirun(ranks, ["mpi-check", "--mesh", mesh, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(r.json.first)
        #expect(json["ok"] as? Bool == true, "\(json["mismatches"] ?? "")")
        #expect(json["checks"] as? Int == 32 * ranks)
        #expect(json["ranks"] as? Int == ranks)
    }

    /// The default model, greedy, f32: the same tokens and collective bytes as the in-process
    /// mesh of the same shape (72 positions for the longest prompt, past the KV caches' first
    /// growth).
    @Test(arguments: [("2", 2), ("4", 4), ("2x2", 4)])
    func realModelMatchesInProcess(_ mesh: String, _ ranks: Int) throws {
        let prompts = ["The capital of France is Paris. The capital of Germany is", "1, 2, 3, 5, 8, 13, 21, 34,", "Hi",
                       "What is the capital of France?"]
        let args = ["generate", "--weights", "f32", "--temperature", "0", "--max-tokens", "60", "--ignore-eos", "--json",
                    "--mesh", mesh] + prompts.flatMap { ["--prompt", $0] }
        let mpi = try MPI.mpirun(ranks, args + ["--transport", "mpi"])
        #expect(mpi.status == 0, "\(mpi.stderr)")
        let local = try MPI.run(MPI.binary, args)
        #expect(local.status == 0, "\(local.stderr)")
        #expect(mpi.json.count == prompts.count && local.json.count == prompts.count)
        for (a, b) in zip(mpi.json, local.json) {
            #expect(a["transport"] as? String == "mpi" && b["transport"] as? String == "inprocess")
            let tokens = a["token_ids"] as? [Int]
            #expect(tokens?.count == 60)
            #expect(tokens == b["token_ids"] as? [Int])
            #expect(NSDictionary(dictionary: ["b": a["collective_bytes"] ?? 0]) == NSDictionary(dictionary: ["b": b["collective_bytes"] ?? 0]))
        }
    }

    /// One rank killed mid-generation: every other rank (and mpirun) exits non-zero within 30 s.
    @Test func killedRankStopsTheJob() throws {
        let process = try MPI.start(2, ["generate", "--transport", "mpi", "--mesh", "2", "--weights", "f32", "--prompt", "a",
                                        "--prompt", "b", "--max-tokens", "100000", "--ignore-eos", "--json"])
        let launcher = process.process.processIdentifier
        defer {
            // Never leave ranks behind, whatever the outcome.
            for pid in MPI.ranks(of: launcher) { kill(pid, SIGKILL) }
            if process.process.isRunning { process.process.terminate() }
        }
        // Wait until both ranks are generating (their loads are done), then kill rank 1.
        var victim: Int32?
        let start = Date()
        while victim == nil && Date().timeIntervalSince(start) < 60 {
            Thread.sleep(forTimeInterval: 0.5)
            let ranks = MPI.ranks(of: process.process.processIdentifier)
            if ranks.count == 2, Date().timeIntervalSince(start) > 4 { victim = ranks[1] }
        }
        let pid = try #require(victim, "rank 1 never started")
        let survivors = MPI.ranks(of: process.process.processIdentifier).filter { $0 != pid }
        kill(pid, SIGKILL)
        let killed = Date()
        while process.process.isRunning && Date().timeIntervalSince(killed) < 30 { Thread.sleep(forTimeInterval: 0.1) }
        #expect(!process.process.isRunning, "mpirun still running 30 s after a rank was killed")
        #expect(process.process.terminationStatus != 0)
        for s in survivors { #expect(!MPI.isAlive(s), "rank process \(s) still alive") }
    }

    /// One rank stopped (alive but stuck) mid-generation: rank 0's collective times out, it
    /// says so, and the whole job ends non-zero.
    @Test func stuckRankTimesOut() throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("mpi-stuck-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let process = try MPI.start(2, ["generate", "--transport", "mpi", "--mesh", "2", "--weights", "f32", "--collective-timeout", "5",
                                        "--prompt", "a", "--prompt", "b", "--max-tokens", "100000", "--ignore-eos", "--json"], stderr: log)
        let launcher = process.process.processIdentifier
        defer {
            for pid in MPI.ranks(of: launcher) { kill(pid, SIGKILL) }
            if process.process.isRunning { process.process.terminate() }
        }
        var ranks: [Int32] = []
        let start = Date()
        while Date().timeIntervalSince(start) < 60 {
            Thread.sleep(forTimeInterval: 0.5)
            ranks = MPI.ranks(of: launcher)
            if ranks.count == 2, Date().timeIntervalSince(start) > 4 { break }
        }
        try #require(ranks.count == 2, "the ranks never started")
        kill(ranks[1], SIGSTOP)
        let stopped = Date()
        while process.process.isRunning && Date().timeIntervalSince(stopped) < 30 { Thread.sleep(forTimeInterval: 0.1) }
        #expect(!process.process.isRunning, "mpirun still running 30 s after a rank got stuck")
        #expect(process.process.terminationStatus != 0)
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        #expect(text.contains("collective timed out: a peer did not arrive within 5.0 s"), "\(text)")
    }

    /// More ranks than devices: a clear error from rank 0, non-zero exit.
    @Test func rankCountMustMatchMesh() throws {
        let r = try MPI.mpirun(3, ["generate", "--transport", "mpi", "--mesh", "2", "--prompt", "a", "--prompt", "b"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("bad MPI launch: the mesh 2 has 2 devices but this job has 3 rank(s)"), "\(r.stderr)")
    }

    /// The model missing on one rank: rank 0 names that rank and the file; everyone exits non-zero.
    @Test func modelMissingOnOneRank() throws {
        let model = try MPI.defaultModel()
        let script = "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then M=/nonexistent/model.gguf; else M='\(model)'; fi; "
            + "exec '\(MPI.binary)' generate --model \"$M\" --transport mpi --mesh 2 --prompt a --prompt b --max-tokens 2"
        let r = try MPI.run(MPI.mpirunPath, MPI.mpirunFlags(2) + ["sh", "-c", script])
        #expect(r.status != 0)
        #expect(r.stderr.contains("could not start the mesh: rank 1:") && r.stderr.contains("/nonexistent/model.gguf"), "\(r.stderr)")
    }
}

extension MPITests {
    /// `calibrate --transport mpi` adds MPI collective latency and bandwidth to an existing host
    /// calibration and keeps the rest.
    @Test func calibrateMeasuresMPICollectives() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("mpi-calibration-\(getpid()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let base: [String: Any] = [
            "f32FLOPsPerThread": 1e11, "int8OPsPerThread": 2e11, "memoryBandwidthOneThread": 1e10,
            "memoryBandwidthAllThreads": 1e10, "threads": 2, "collectiveLatency": 2e-5, "collectiveBandwidth": 5e9,
            "memoryBytes": 1e10,
        ]
        try JSONSerialization.data(withJSONObject: base).write(to: file)
        let r = try MPI.mpirun(2, ["calibrate", "--transport", "mpi", "--output", file.path])
        #expect(r.status == 0, "\(r.stderr)")
        let saved = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
        let latency = try #require(saved["mpiCollectiveLatency"] as? Double)
        let bandwidth = try #require(saved["mpiCollectiveBandwidth"] as? Double)
        #expect(latency > 0 && latency < 0.01, "latency \(latency) s")
        #expect(bandwidth > 1e6, "bandwidth \(bandwidth) B/s")
        #expect(saved["mpiRanks"] as? Int == 2)
        #expect(saved["f32FLOPsPerThread"] as? Double == 1e11)
    }

    /// `bench --transport mpi` runs on the ranks and reports the mesh's step split into compute
    /// and communication.
    @Test func benchRunsOverMPI() throws {
        let r = try MPI.mpirun(2, ["bench", "--transport", "mpi", "--mesh", "2", "--weights", "f32", "--batch", "2",
                                   "-p", "16", "-n", "4", "-r", "1", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let results = try #require(r.json.first?["results"] as? [[String: Any]])
        #expect(results.map { $0["test"] as? String } == ["pp16", "tg4"])
        for row in results {
            #expect(row["mesh"] as? String == "2x1x1")
            #expect((row["tokens_per_s_median"] as? Double ?? 0) > 0)
            #expect((row["communication_s"] as? Double ?? 0) > 0)
        }
    }
}

enum MPI {
    static let mpirunPath = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "mpirun"
    static var available: Bool { FileManager.default.isExecutableFile(atPath: mpirunPath) }
    static var required: Bool { ProcessInfo.processInfo.environment["MESHINFER_REQUIRE_MPI"] == "1" }

    /// The meshinfer binary built next to this test bundle.
    static var binary: String {
        if let b = ProcessInfo.processInfo.environment["MESHINFER_BIN"] { return b }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("meshinfer").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "meshinfer"
    }

    static func defaultModel() throws -> String {
        let r = try run(binary, ["pull"])
        let path = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        guard r.status == 0, FileManager.default.fileExists(atPath: path) else {
            throw POSIXError(.ENOENT)
        }
        return path
    }

    static func mpirunFlags(_ ranks: Int) -> [String] { ["-np", "\(ranks)", "--oversubscribe"] }

    static var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        return env
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        /// One JSON object per stdout line.
        var json: [[String: Any]] {
            stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
    }

    static func mpirun(_ ranks: Int, _ args: [String]) throws -> Result {
        try run(mpirunPath, mpirunFlags(ranks) + [binary] + args)
    }

    final class Running: @unchecked Sendable {
        let process = Process()
        let out = Pipe(), err = Pipe()
    }

    static func start(_ ranks: Int, _ args: [String], stderr: URL? = nil) throws -> Running {
        let r = Running()
        r.process.executableURL = URL(fileURLWithPath: mpirunPath)
        r.process.arguments = mpirunFlags(ranks) + [binary] + args
        r.process.environment = environment
        r.process.standardOutput = FileHandle.nullDevice
        if let stderr {
            FileManager.default.createFile(atPath: stderr.path, contents: nil)
            r.process.standardError = try FileHandle(forWritingTo: stderr)
        } else {
            r.process.standardError = FileHandle.nullDevice
        }
        try r.process.run()
        return r
    }

    /// Runs a command to completion (killed after 300 s), collecting its output.
    static func run(_ executable: String, _ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.environment = environment
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let watchdog = DispatchWorkItem { if p.isRunning { p.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 300, execute: watchdog)
        // Read both pipes concurrently so a full pipe never blocks the child.
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        watchdog.cancel()
        return Result(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Whether a process exists and is not a zombie.
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let state = stat.split(separator: ")").last?.split(separator: " ").first else { return false }
        return state != "Z" && state != "X"
    }

    /// The meshinfer rank processes a launcher started, ordered by MPI rank.
    static func ranks(of launcher: Int32) -> [Int32] {
        var found: [(rank: Int, pid: Int32)] = []
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        for e in entries {
            guard let pid = Int32(e), let environ = FileManager.default.contents(atPath: "/proc/\(e)/environ"),
                  let cmd = FileManager.default.contents(atPath: "/proc/\(e)/cmdline"),
                  String(decoding: cmd, as: UTF8.self).contains("meshinfer") else { continue }
            let vars = environ.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard let rank = vars.first(where: { $0.hasPrefix("OMPI_COMM_WORLD_RANK=") }).flatMap({ Int($0.dropFirst(21)) })
            else { continue }
            // Only descendants of this launcher.
            var parent = pid, belongs = false
            for _ in 0..<5 {
                guard let stat = try? String(contentsOfFile: "/proc/\(parent)/stat", encoding: .utf8) else { break }
                let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
                guard fields.count > 1, let pp = Int32(fields[1]) else { break }   // "S ppid ..."
                if pp == launcher { belongs = true; break }
                parent = pp
            }
            if belongs { found.append((rank, pid)) }
        }
        return found.sorted { $0.rank < $1.rank }.map(\.pid)
    }
}
