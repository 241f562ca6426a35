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
            let mpiBytes = try #require(a["collective_bytes"] as? [[String: Any]]), localBytes = try #require(b["collective_bytes"] as? [[String: Any]])
            #expect(mpiBytes.count == ranks)
            #expect(NSArray(array: mpiBytes) == NSArray(array: localBytes))
        }
    }

    /// One prompt on meshes of 2 and 4 ranks (heads and the batch padded to the mesh): the
    /// tokens of one device, with the default layouts (reported in --json, chosen by §7's rule:
    /// no host calibration is read here) and with each attention layout named.
    @Test(arguments: [("2", 2), ("4", 4)], [nil, "heads", "batch"])
    func onePromptEqualsOneDevice(_ mesh: (String, Int), _ attention: String?) throws {
        let args = ["generate", "--weights", "f32", "--temperature", "0", "--max-tokens", "16", "--ignore-eos", "--json",
                    "--prompt", "The capital of France is"]
        let mpi = try MPI.mpirun(mesh.1, args + ["--mesh", mesh.0, "--transport", "mpi"] + (attention.map { ["--attention", $0] } ?? []))
        #expect(mpi.status == 0, "\(mpi.stderr)")
        let single = try MPI.run(MPI.binary, args)
        #expect(single.status == 0, "\(single.stderr)")
        #expect(mpi.json.count == 1 && single.json.count == 1)
        #expect(mpi.json.first?["token_ids"] as? [Int] == single.json.first?["token_ids"] as? [Int])
        #expect((mpi.json.first?["token_ids"] as? [Int])?.count == 16)
        let layouts = mpi.json.first?["layouts"] as? [String: [String: String]]
        #expect(layouts?["decode"]?["attention"] == attention ?? "heads", "\(layouts ?? [:])")
        let choice = mpi.json.first?["layout_choice"] as? [String: Any]
        #expect(choice?["basis"] as? String == "paper_rule")
    }

    /// One rank killed mid-generation: every other rank (and mpirun) exits non-zero within 30 s.
    @Test func killedRankStopsTheJob() throws {
        let job = try MPI.Generation(extra: [])
        defer { job.cleanUp() }
        let ranks = try job.waitUntilGenerating()
        kill(ranks[1], SIGKILL)
        #expect(job.waitForExit(seconds: 30), "mpirun still running 30 s after a rank was killed")
        #expect(job.exitStatus != 0)
        for pid in ranks where pid != ranks[1] { #expect(!MPI.isAlive(pid), "rank process \(pid) still alive") }
    }

    /// One rank stopped (alive but stuck) mid-generation: a collective waiting for it times out,
    /// says so, and the whole job ends non-zero.
    @Test func stuckRankTimesOut() throws {
        let job = try MPI.Generation(extra: ["--collective-timeout", "5"])
        defer { job.cleanUp() }
        let ranks = try job.waitUntilGenerating()
        kill(ranks[1], SIGSTOP)
        #expect(job.waitForExit(seconds: 30), "mpirun still running 30 s after a rank got stuck")
        #expect(job.exitStatus != 0)
        #expect(job.stderr.contains("a peer did not arrive within 5 s; aborting the MPI job"), "\(job.stderr)")
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
    /// `calibrate --transport mpi` adds MPI collective latency and bandwidth, and the measured
    /// calls, to an existing host calibration and keeps the rest.
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
        let rates = try #require(saved["mpiCollectiveRates"] as? [String: [String: Any]])
        #expect(Set(rates.keys) == ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"])
        for (kind, rate) in rates {
            #expect((rate["latency"] as? Double ?? 0) > 0 && (rate["bandwidth"] as? Double ?? 0) > 0, "\(kind): \(rate)")
            // Every measured call is kept (8 sizes, ascending), and all-gathers also back to back.
            let samples = (rate["samples"] as? [[String: Double]]) ?? []
            #expect(samples.count == 8 && samples.map { $0["bytes"] ?? 0 } == samples.map { $0["bytes"] ?? 0 }.sorted()
                    && samples.allSatisfy { ($0["seconds"] ?? 0) > 0 }, "\(kind): \(samples)")
            #expect(((rate["backToBackSamples"] as? [[String: Double]])?.count ?? 0) == (kind == "all_gather" ? 6 : 0), "\(kind)")
        }
        #expect(saved["f32FLOPsPerThread"] as? Double == 1e11)
    }

    /// `bench --transport mpi` runs on the ranks and reports the mesh's step split into compute
    /// and communication, and the roofline unless `--no-roofline`.
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
            #expect((row["roofline_gb_per_s"] as? Double ?? 0) > 0)
        }
        // --no-roofline leaves the streaming measurement (and its columns) out, nothing else.
        let quick = try MPI.mpirun(2, ["bench", "--transport", "mpi", "--mesh", "2", "--weights", "f32",
                                       "-p", "0", "-n", "2", "-r", "1", "--no-warmup", "--no-roofline", "--profile", "--json"])
        #expect(quick.status == 0, "\(quick.stderr)")
        let row = try #require((quick.json.first?["results"] as? [[String: Any]])?.first)
        #expect(row["test"] as? String == "tg2")
        #expect((row["tokens_per_s_median"] as? Double ?? 0) > 0)
        #expect(row["roofline_gb_per_s"] == nil && row["roofline_percent"] == nil)
        let profile = try #require(row["profile"] as? [String: [String: Any]])
        #expect(profile["collectives"]?["seconds"] != nil)
        #expect(profile.values.allSatisfy { $0["roofline_seconds"] == nil && $0["bytes"] != nil })
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
        // Default layouts follow §7's rule here: no test reads the user's host calibration.
        env["MESHINFER_CALIBRATION"] = "/nonexistent/cpu-calibration.json"
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

    /// A long greedy generation of the default model on 3 ranks (mesh 3 with head-sharded
    /// attention: its 9 heads split 3 ways, so one prompt suffices and the text streams), with
    /// its output in files.
    final class Generation: @unchecked Sendable {
        let process = Process()
        let prompt = "The capital of France is"
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("mpi-gen-\(UUID().uuidString).out")
        let err = FileManager.default.temporaryDirectory.appendingPathComponent("mpi-gen-\(UUID().uuidString).err")

        init(extra: [String]) throws {
            FileManager.default.createFile(atPath: out.path, contents: nil)
            FileManager.default.createFile(atPath: err.path, contents: nil)
            process.executableURL = URL(fileURLWithPath: mpirunPath)
            process.arguments = mpirunFlags(3) + [binary, "generate", "--transport", "mpi", "--mesh", "3", "--attention", "heads",
                                                   "--weights", "f32", "--temperature", "0", "--prompt", prompt, "--max-tokens", "100000",
                                                   "--ignore-eos"] + extra
            process.environment = environment
            process.standardOutput = try FileHandle(forWritingTo: out)
            process.standardError = try FileHandle(forWritingTo: err)
            try process.run()
        }

        /// Waits until rank 0 has streamed generated text (every rank is past loading and in
        /// the middle of decoding); returns the rank processes in rank order.
        func waitUntilGenerating() throws -> [Int32] {
            let start = Date()
            while Date().timeIntervalSince(start) < 120 && process.isRunning {
                let written = (try? FileManager.default.attributesOfItem(atPath: out.path)[.size] as? Int) ?? 0
                let ranks = MPI.ranks(of: process.processIdentifier)
                if written > prompt.utf8.count + 16 && ranks.count == 3 { return ranks }
                Thread.sleep(forTimeInterval: 0.2)
            }
            throw POSIXError(.ETIMEDOUT)
        }

        /// Whether mpirun exited within `seconds`.
        func waitForExit(seconds: Double) -> Bool {
            let start = Date()
            while process.isRunning && Date().timeIntervalSince(start) < seconds { Thread.sleep(forTimeInterval: 0.1) }
            return !process.isRunning
        }

        /// mpirun's exit status, or -1 if it is still running.
        var exitStatus: Int32 { process.isRunning ? -1 : process.terminationStatus }

        var stderr: String { (try? String(contentsOf: err, encoding: .utf8)) ?? "" }

        /// Never leaves ranks behind, whatever the outcome.
        func cleanUp() {
            for pid in MPI.ranks(of: process.processIdentifier) { kill(pid, SIGKILL) }
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
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
