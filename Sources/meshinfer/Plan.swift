import ArgumentParser
import CostModel
import Foundation
import Partitioning
import Transformer

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Search chips, batch, topology, layouts and weight formats; print the cost/latency Pareto frontier and a choice.")

    @Option(help: "palm-8b, palm-62b, palm-540b, palm-540b-multihead, mt-nlg-530b, or gguf:PATH (or a pulled model's name with --hardware cpu).") var model: String
    @Option(help: "tpu-v4, a100-80g, h100-sxm, h200, or cpu (this host or the cluster in --calibration, after `meshinfer calibrate`).") var hardware: String
    @Option(help: "prefill or decode (with --hardware cpu default: both).") var phase: Phase?
    @Option(help: "Tokens already cached before decode (default: --input-tokens).") var context: Int?
    @Option(help: "Prompt tokens per sequence (default 2048; with --hardware cpu 128).") var inputTokens: Int?
    @Option(help: "Generated tokens per sequence.") var generateTokens: Int = 64
    @Option(help: "Latency target in ms (per token for decode, for the whole prefill otherwise).") var latencyTargetMs: Double?
    @Option(help: "With --hardware cpu: a throughput target in tokens/s (the fewest hosts that reach it).") var throughputTarget: Double?
    @Option(help: "Largest chip count to consider.") var maxChips: Int = 256
    @Option(help: "Comma-separated weight formats to consider (default bf16,int8; with --hardware cpu native).") var weights: String?
    @Option(help: "With --hardware cpu: comma-separated batch sizes to consider (default 1,2,4,8,16,32).") var batch: String?
    @Flag(help: "Also search X- and XY-weight-gathered feed-forward layouts (never measured by the paper; the model is optimistic about them).")
    var allLayouts = false
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "Draw the frontier (cost vs latency, like the paper's Figure 1) as SVG.") var plot: String?
    @OptionGroup var calibrationFile: CalibrationOption

    func run() throws {
        if hardware == "cpu" { return try planCPU() }
        guard let phase else { throw ValidationError("--phase prefill or decode is required (only --hardware cpu plans both)") }
        guard throughputTarget == nil, batch == nil else { throw ValidationError("--throughput-target and --batch are for --hardware cpu") }
        let inputTokens = self.inputTokens ?? 2048
        let weights = self.weights ?? "bf16,int8"
        let spec = try resolveModelSpec(model)
        guard let hw = Hardware.named(hardware) else { throw ValidationError("unknown --hardware '\(hardware)'") }
        let formats = try weights.split(separator: ",").map { s -> WeightPrecision in
            guard let w = WeightPrecision(rawValue: String(s)) else { throw ValidationError("unknown weight format '\(s)'") }
            return w
        }
        guard maxChips >= 1 else { throw ValidationError("--max-chips must be positive") }
        let planner = Planner(model: spec, costModel: CostModel(hardware: hw), phase: phase, inputTokens: inputTokens,
                              generateTokens: generateTokens, context: context,
                              layouts: allLayouts ? FeedForwardLayout.allCases : Planner.measuredLayouts)
        let chips = (0...10).map { 1 << $0 }.filter { $0 >= 8 && $0 <= maxChips }
        let batches = (0...10).map { 1 << $0 }
        let start = Date()
        let all = planner.candidates(chips: chips.isEmpty ? [maxChips] : chips, batches: batches, weights: formats)
        let frontier = Planner.pareto(all)
        guard let chosen = Planner.choose(frontier, latencyTargetMs: latencyTargetMs, phase: phase) else {
            throw ValidationError("no configuration of \(model) fits on up to \(maxChips) \(hardware) chips")
        }
        let explanation = Planner.explain(chosen, phase: phase)
            + (latencyTargetMs.map { t in (phase == .decode ? chosen.latency : chosen.latency * 1e3) <= t
                ? " It is the cheapest point within the \(t) ms target." : " Nothing meets the \(t) ms target; this is the fastest point." }
               ?? " No latency target: the cheapest point.")
        func object(_ c: PlanCandidate) -> [String: Any] {
            ["chips": c.chips, "batch": c.batch, "topology": c.topology.description, "ffn_layout": c.layout.feedForward.rawValue,
             "attention": c.layout.attention.rawValue, "weights": c.weights.rawValue, "latency_s": c.prediction.latencySeconds,
             "cost_chip_ms_per_token": c.prediction.costChipMsPerToken, "mfu": c.prediction.mfu]
        }
        if let plot { try svg(frontier, all: all).write(toFile: plot, atomically: true, encoding: .utf8) }
        if json {
            writeJSON(["pareto": frontier.map(object), "chosen": object(chosen), "explanation": explanation,
                       "candidates": all.count, "search_s": Date().timeIntervalSince(start)])
        } else {
            print("\(all.count) configurations that fit, searched in \(String(format: "%.2f", Date().timeIntervalSince(start))) s; Pareto frontier:")
            for c in frontier {
                print(String(format: "  %4d chips %-7@ batch %4d  %-6@ %-5@ %-4@  %@  %8.3f chip-ms/token  MFU %5.1f%%",
                             c.chips, c.topology.description, c.batch, c.layout.feedForward.rawValue, c.layout.attention.rawValue,
                             c.weights.rawValue, phase == .decode ? String(format: "%8.2f ms/token", c.latency) : String(format: "%8.3f s", c.latency),
                             c.prediction.costChipMsPerToken, c.prediction.mfu * 100))
            }
            print("chosen: " + explanation)
        }
    }

    /// Cost vs latency, log–log, frontier as a line and all candidates as faint dots.
    func svg(_ frontier: [PlanCandidate], all: [PlanCandidate]) -> String {
        let w = 640.0, h = 420.0, m = 60.0
        let xs = all.map { log10($0.latency) }, ys = all.map { log10($0.prediction.costChipMsPerToken) }
        let (x0, x1, y0, y1) = (xs.min()!, max(xs.max()!, xs.min()! + 1e-9), ys.min()!, max(ys.max()!, ys.min()! + 1e-9))
        func px(_ c: PlanCandidate) -> (Double, Double) {
            (m + (log10(c.latency) - x0) / (x1 - x0) * (w - 2 * m), h - m - (log10(c.prediction.costChipMsPerToken) - y0) / (y1 - y0) * (h - 2 * m))
        }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        out += "<text x=\"\(Int(w / 2))\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">\(model) \(phase?.rawValue ?? "") on \(hardware): cost vs latency</text>\n"
        out += "<text x=\"\(Int(w / 2))\" y=\"\(Int(h - 15))\" text-anchor=\"middle\">\(phase == .decode ? "ms per token" : "seconds") (log)</text>\n"
        out += "<text x=\"15\" y=\"\(Int(h / 2))\" transform=\"rotate(-90 15 \(Int(h / 2)))\" text-anchor=\"middle\">chip-ms per token (log)</text>\n"
        for c in all { let (x, y) = px(c); out += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.5\" fill=\"#bbb\"/>\n", x, y) }
        let points = frontier.map { px($0) }.map { String(format: "%.1f,%.1f", $0.0, $0.1) }.joined(separator: " ")
        out += "<polyline points=\"\(points)\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n"
        for c in frontier {
            let (x, y) = px(c)
            out += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#1f77b4\"/><text x=\"%.1f\" y=\"%.1f\">C:%d,B:%d %@</text>\n",
                          x, y, x + 5, y - 5, c.chips, c.batch, c.weights.rawValue)
        }
        for (v, label) in [(x0, String(format: "%.3g", pow(10, x0))), (x1, String(format: "%.3g", pow(10, x1)))] {
            out += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%@</text>\n", m + (v - x0) / (x1 - x0) * (w - 2 * m), h - m + 15, label)
        }
        for (v, label) in [(y0, String(format: "%.3g", pow(10, y0))), (y1, String(format: "%.3g", pow(10, y1)))] {
            out += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", m - 5, h - m - (v - y0) / (y1 - y0) * (h - 2 * m), label)
        }
        return out + "</svg>\n"
    }
}
