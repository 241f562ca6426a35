import ArgumentParser
import CostModel
import Foundation
import Partitioning
import Runtime
import Transformer

/// `plan --hardware cpu`: which hosts, mesh and layouts to run a model on, for this host or the
/// cluster `calibrate --transport mpi` measured (its collectives over the real links, and
/// whether its hosts share one machine's cores) — including one host, no partitioning.
///
/// Every host count from 1 to the cluster's hosts (powers of two) is priced with the paper's
/// cost model over the traced layer program (§2–§4): compute and weight/KV streaming of one
/// device per host, plus each collective at the measured latency and bandwidth of the link.
/// A cluster of namespace hosts on one machine also gets the machine itself as a candidate:
/// one process with all its cores, since its hosts only divide those cores between them.
extension Plan {
    /// One priced configuration: `hosts` hosts (or the whole machine as one process).
    struct CPUCandidate {
        var hosts: Int
        var label: String
        var candidate: PlanCandidate
        var tokensPerSecond: Double
    }

    func planCPU() throws {
        guard let host = loadHostCalibration() else {
            throw ValidationError("--hardware cpu needs measurements: run `meshinfer calibrate` (and `calibrate --transport mpi` on a cluster), or pass --calibration FILE")
        }
        let path = model.hasPrefix("gguf:") ? String(model.dropFirst(5)) : try ModelStore().resolve(model)
        let spec = try resolveModelSpec("gguf:" + path)
        let file = URL(fileURLWithPath: path).lastPathComponent
        let formats = try (weights ?? "native").split(separator: ",").map { s -> WeightPrecision in
            guard let w = WeightPrecision(rawValue: String(s)), [.f32, .int8Grouped, .native].contains(w) else {
                throw ValidationError("--hardware cpu runs native, int8 or f32 weights, not '\(s)'")
            }
            return w
        }
        let batches = try (batch ?? "1,2,4,8,16,32").split(separator: ",").map { s -> Int in
            guard let b = Int(s), b >= 1 else { throw ValidationError("bad batch size '\(s)'") }
            return b
        }
        let inputTokens = self.inputTokens ?? 128
        guard inputTokens >= 1, generateTokens >= 1 else { throw ValidationError("token counts must be positive") }
        let cluster = host.overMPI == nil ? nil : host.mpiCluster
        let maxHosts = min(maxChips, cluster?.hosts ?? 1)
        let hostCounts = (0...10).map { 1 << $0 }.filter { $0 <= maxHosts }
        let phases = phase.map { [$0] } ?? [.prefill, .decode]

        var report: [[String: Any]] = []
        for phase in phases {
            var all: [CPUCandidate] = [], machine: [CPUCandidate] = []
            func add(hosts: Int, label: String, hardware: Hardware, calibration: Calibration, to list: inout [CPUCandidate]) {
                let planner = Planner(model: spec, costModel: CostModel(hardware: hardware, calibration: calibration), phase: phase,
                                      inputTokens: inputTokens, generateTokens: generateTokens, context: context,
                                      layouts: allLayouts ? FeedForwardLayout.allCases : Planner.measuredLayouts)
                for c in planner.candidates(chips: [hosts], batches: batches, weights: formats) {
                    let seconds = phase == .decode ? c.latency / 1e3 : c.latency
                    list.append(CPUCandidate(hosts: hosts, label: label, candidate: c,
                                             tokensPerSecond: Double(c.batch * (phase == .decode ? 1 : inputTokens)) / seconds))
                }
            }
            for n in hostCounts {
                let label = n == 1 ? "one host, no partitioning" : "\(n) hosts"
                for w in formats {
                    if cluster != nil, let (hw, cal) = host.clusterHardware(weights: w, devices: n, model: file) {
                        add(hosts: n, label: label, hardware: hw, calibration: cal, to: &all)
                    } else if n == 1, let (hw, cal) = host.device(weights: w, devices: 1, threads: host.threads, overMPI: false, model: file) {
                        add(hosts: 1, label: "this host, one process", hardware: hw, calibration: cal, to: &all)
                    }
                }
            }
            if let cluster, cluster.sharesMachine, cluster.hosts > 1, cluster.threadsPerRank < host.threads {
                // The hosts are namespaces of this machine: one process with all its cores is a
                // configuration they cannot beat by splitting the same cores. Said beside the
                // recommendation for the hosts, which is what the cluster would do on hosts of its own.
                for w in formats {
                    guard let (hw, cal) = host.device(weights: w, devices: 1, threads: host.threads, overMPI: false, model: file) else { continue }
                    add(hosts: 1, label: "this machine as one process (\(host.threads) threads)", hardware: hw, calibration: cal, to: &machine)
                }
            }
            guard !all.isEmpty else { throw ValidationError("no configuration of \(spec.config.name) fits") }
            let (chosen, why) = choose(all, phase: phase)
            let whole = machine.filter { $0.candidate.batch == chosen.candidate.batch }
                .min { $0.candidate.latency < $1.candidate.latency }
            let aside = whole.map { m in
                String(format: "These hosts share one machine: as one process with all its %d threads it would take %@ (%.0f tokens/s), %@ the recommendation.",
                       host.threads, phase == .decode ? String(format: "%.2f ms per token", m.candidate.latency) : String(format: "%.1f ms", m.candidate.latency * 1e3),
                       m.tokensPerSecond, m.candidate.latency < chosen.candidate.latency ? "faster than" : "not faster than")
            }
            // The fastest candidate per configuration label at the chosen batch: what partitioning buys or costs.
            var best: [String: CPUCandidate] = [:]
            for c in all where c.candidate.batch == chosen.candidate.batch {
                if let b = best[c.label], b.candidate.latency <= c.candidate.latency { continue }
                best[c.label] = c
            }
            let compared = best.values.sorted { ($0.hosts, $0.label) < ($1.hosts, $1.label) }
            let verdict = self.verdict(chosen, compared: compared, phase: phase, link: cluster.flatMap { _ in host.overMPI })
            if json {
                var entry: [String: Any] = ["phase": phase.rawValue, "chosen": object(chosen, phase: phase), "reason": why + " " + verdict,
                                            "best_per_configuration": compared.map { object($0, phase: phase) }, "candidates": all.count]
                if let whole, let aside { entry["machine_as_one_process"] = object(whole, phase: phase); entry["note"] = aside }
                report.append(entry)
            } else {
                print("\(phase.rawValue), \(spec.config.name), \(phase == .decode ? "per generated token" : "\(inputTokens)-token prompts"), batch \(chosen.candidate.batch):")
                for c in compared + (whole.map { [$0] } ?? []) { print("  " + line(c, phase: phase)) }
                print("  recommended: \(describe(chosen)). \(why) \(verdict)" + (aside.map { " " + $0 } ?? ""))
            }
        }
        if json {
            var object: [String: Any] = ["model": spec.config.name, "plans": report]
            if let cluster {
                object["cluster"] = ["hosts": cluster.hosts, "machines": cluster.machines, "threads_per_rank": cluster.threadsPerRank,
                                     "shares_machine": cluster.sharesMachine]
            }
            writeJSON(object)
        } else if cluster == nil {
            print("(no cluster in the calibration: only this host was considered; run `calibrate --transport mpi --output FILE` across the hosts under mpirun, then --calibration FILE)")
        }
    }

    /// The candidate for the target: within a latency target the highest throughput per host;
    /// for a throughput target the fewest hosts that reach it (then the lowest latency); with
    /// neither, the lowest latency at the smallest batch.
    func choose(_ all: [CPUCandidate], phase: Phase) -> (CPUCandidate, String) {
        let unit = phase == .decode ? "ms per token" : "ms per prefill"
        func ms(_ c: CPUCandidate) -> Double { phase == .decode ? c.candidate.latency : c.candidate.latency * 1e3 }
        if let target = throughputTarget {
            let ok = all.filter { c in c.tokensPerSecond >= target && (latencyTargetMs.map { ms(c) <= $0 } ?? true) }
            if let c = ok.min(by: { ($0.hosts, ms($0)) < ($1.hosts, ms($1)) }) {
                return (c, String(format: "The fewest hosts that reach %.0f tokens/s%@ (%.0f tokens/s).", target,
                                  latencyTargetMs.map { String(format: " within %.0f %@", $0, unit) } ?? "", c.tokensPerSecond))
            }
            let c = all.max { $0.tokensPerSecond < $1.tokensPerSecond }!
            return (c, String(format: "Nothing reaches %.0f tokens/s; this is the highest throughput (%.0f tokens/s).", target, c.tokensPerSecond))
        }
        if let target = latencyTargetMs {
            let ok = all.filter { ms($0) <= target }
            if let c = ok.max(by: { ($0.tokensPerSecond / Double($0.hosts)) < ($1.tokensPerSecond / Double($1.hosts)) }) {
                return (c, String(format: "The most tokens/s per host within %.0f %@.", target, unit))
            }
            let c = all.min { ms($0) < ms($1) }!
            return (c, String(format: "Nothing meets %.0f %@; this is the fastest.", target, unit))
        }
        let smallest = all.map(\.candidate.batch).min()!
        let c = all.filter { $0.candidate.batch == smallest }.min { ms($0) < ms($1) }!
        return (c, "No target: the lowest latency at batch \(smallest).")
    }

    /// Why partitioning pays or not: the chosen configuration against the best without it.
    func verdict(_ chosen: CPUCandidate, compared: [CPUCandidate], phase: Phase, link: HostCalibration?) -> String {
        func ms(_ c: CPUCandidate) -> Double { phase == .decode ? c.candidate.latency : c.candidate.latency * 1e3 }
        let single = compared.filter { $0.hosts == 1 }.min { ms($0) < ms($1) }
        let split = compared.filter { $0.hosts > 1 }.min { ms($0) < ms($1) }
        guard let single, let split else { return "" }
        let p = split.candidate.prediction, q = single.candidate.prediction
        let scale = phase == .decode ? 1e3 / Double(generateTokens) : 1e3   // seconds -> ms per token / per prefill
        let linkText = link.map { String(format: " (measured link: %.0f µs per collective, %.0f MB/s)", $0.collectiveLatency * 1e6, $0.collectiveBandwidth / 1e6) } ?? ""
        // The larger of compute and streaming: what a device spends besides collectives.
        let work = { (p: Prediction) in max(p.computeSeconds, p.memorySeconds) * scale }
        if chosen.hosts == 1 {
            return String(format: "Partitioning does not pay: the best split (%@, %@+%@) would spend %.2f ms in collectives%@ and %.2f ms computing and streaming weights, against %.2f ms for %@ — %.2f ms against %.2f ms in all.",
                          split.label, split.candidate.layout.feedForward.rawValue, split.candidate.layout.attention.rawValue,
                          p.communicationSeconds * scale, linkText, work(p), work(q), single.label, ms(split), ms(single))
        }
        return String(format: "Partitioning pays: %@ computes and streams in %.2f ms instead of %.2f ms and spends %.2f ms in collectives%@, %.2f ms against %.2f ms for %@.",
                      split.label, work(p), work(q), p.communicationSeconds * scale, linkText, ms(split), ms(single), single.label)
    }

    func describe(_ c: CPUCandidate) -> String {
        "\(c.label), mesh \(c.candidate.topology), \(c.candidate.layout.feedForward.rawValue)+\(c.candidate.layout.attention.rawValue), \(c.candidate.weights.rawValue) weights, batch \(c.candidate.batch)"
    }

    func line(_ c: CPUCandidate, phase: Phase) -> String {
        let p = c.candidate.prediction
        let scale = phase == .decode ? 1e3 / Double(generateTokens) : 1e3
        return String(format: "%-36@ %-14@ %9.2f ms%@  %8.1f tok/s  (compute %.2f, memory %.2f, collectives %.2f ms)",
                      c.label, "\(c.candidate.layout.feedForward.rawValue)+\(c.candidate.layout.attention.rawValue)",
                      phase == .decode ? c.candidate.latency : c.candidate.latency * 1e3, phase == .decode ? "/token" : "      ",
                      c.tokensPerSecond, p.computeSeconds * scale, p.memorySeconds * scale, p.communicationSeconds * scale)
    }

    func object(_ c: CPUCandidate, phase: Phase) -> [String: Any] {
        let p = c.candidate.prediction
        return ["hosts": c.hosts, "configuration": c.label, "mesh": c.candidate.topology.description,
                "ffn_layout": c.candidate.layout.feedForward.rawValue, "attention": c.candidate.layout.attention.rawValue,
                "weights": c.candidate.weights.rawValue, "batch": c.candidate.batch, "latency_s": p.latencySeconds,
                "tokens_per_s": c.tokensPerSecond,
                "breakdown": ["compute_s": p.computeSeconds, "memory_s": p.memorySeconds, "communication_s": p.communicationSeconds]]
    }
}
