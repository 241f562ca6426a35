import ArgumentParser
import CostModel
import Foundation
import GGUF
import Partitioning
import Transformer

extension Phase: ExpressibleByArgument {}
extension WeightPrecision: ExpressibleByArgument {}
extension BlockKind: ExpressibleByArgument {}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict latency, MFU and cost of one configuration with the paper's cost model (priced from the traced layer program).")

    @Option(help: "palm-8b, palm-62b, palm-540b, palm-540b-multihead, mt-nlg-530b, or gguf:PATH.") var model: String
    @Option(help: "tpu-v4, a100-80g, h100-sxm, h200, or cpu (this host, after `meshinfer calibrate`).") var hardware: String
    @Option(help: "Number of chips.") var chips: Int
    @Option(help: "Mesh XxYxZ (default: X near the optimal 2D split √(n·E/F)).") var topology: String?
    @Option(help: "prefill or decode.") var phase: Phase
    @Option(help: "Sequences per batch.") var batch: Int
    @Option(help: "Prompt tokens per sequence.") var inputTokens: Int
    @Option(help: "Generated tokens per sequence (decode).") var generateTokens: Int = 64
    @Option(help: "Tokens already cached before decode (default: --input-tokens).") var context: Int?
    @Option(help: "ws1d, ws2d, wg-x, wg-xy, wg-xyz.") var ffnLayout: FeedForwardLayout = .weightStationary2D
    @Option(help: "heads or batch.") var attention: AttentionLayout = .shardedOverBatch
    @Option(help: "bf16, int8, f32, native.") var weights: WeightPrecision = .bf16
    @Option(help: "parallel or serial block (overrides the model's).") var block: BlockKind?
    @Option(help: "Override the number of layers.") var layers: Int?
    @Option(help: "Fraction of memory reserved for the KV cache (max context).") var kvMemoryFraction: Double = 0.3
    @Option(help: "Calibration: achieved fraction of peak FLOP/s.") var computeEfficiency: Double?
    @Option(help: "Calibration: achieved fraction of memory bandwidth.") var memoryEfficiency: Double?
    @Option(help: "Calibration: achieved fraction of the interconnect bandwidth.") var interconnectEfficiency: Double?
    @Option(help: "Calibration: seconds per hop (Σ (axis size − 1) per collective).") var collectiveLatency: Double?
    @Option(help: "Calibration: fraction of activation communication hidden behind compute.") var overlap: Double?
    @Flag(help: "Print JSON.") var json = false

    var calibration: Calibration {
        var c = Calibration()
        if let v = computeEfficiency { c.computeEfficiency = v }
        if let v = memoryEfficiency { c.memoryEfficiency = v }
        if let v = interconnectEfficiency { c.interconnectEfficiency = v }
        if let v = collectiveLatency { c.collectiveLatency = v }
        if let v = overlap { c.overlap = v }
        return c
    }

    @Option(help: "Per-axis interconnect bandwidth X,Y,Z in GB/s (e.g. 12.5,50,50 when x crosses hosts); a collective moves at its slowest axis.")
    var axisBandwidth: String?
    @Option(help: "With --hardware cpu: price collectives as measured on this transport (inprocess or mpi; with a cluster calibrated by `calibrate --transport mpi`, one device per host of it).")
    var transport: Transport = .inprocess
    @OptionGroup var calibrationFile: CalibrationOption

    func run() throws {
        var spec = try resolveModelSpec(model)
        if let block { spec.config.block = block }
        if let layers { spec.config.layers = layers }
        var calibration = self.calibration
        var hw: Hardware
        if hardware == "cpu" {
            guard let host = loadHostCalibration() else {
                throw ValidationError("--hardware cpu needs this host's measurements: run `meshinfer calibrate` first")
            }
            // The whole-pass efficiencies measured on this model file, if `calibrate` found it.
            let file = model.hasPrefix("gguf:") ? URL(fileURLWithPath: String(model.dropFirst(5))).lastPathComponent : nil
            // Over MPI with a recorded cluster: one device per rank, as the cluster ran them.
            guard let device = host.device(weights: weights, devices: chips, threads: host.threads, overMPI: transport == .mpi, model: file) else {
                throw ValidationError("--transport mpi needs MPI measurements: run `mpirun -np 2 meshinfer calibrate --transport mpi` first")
            }
            (hw, calibration) = device
        } else {
            guard let h = Hardware.named(hardware) else {
                throw ValidationError("unknown --hardware '\(hardware)' (tpu-v4, a100-80g, h100-sxm, h200, cpu)")
            }
            hw = h
        }
        if let axisBandwidth {
            let values = axisBandwidth.split(separator: ",").compactMap { Double($0) }
            guard values.count == 3, values.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("--axis-bandwidth takes three positive numbers X,Y,Z in GB/s, got '\(axisBandwidth)'")
            }
            hw.axisBandwidth = values.map { $0 * 1e9 }
        }
        guard chips >= 1, batch >= 1, inputTokens >= 1, generateTokens >= 1 else { throw ValidationError("--chips, --batch and token counts must be positive") }
        let mesh = try topology.map { try Mesh(parsing: $0) } ?? Mesh.torus(chips: chips, config: spec.config)
        guard mesh.deviceCount == chips else { throw ValidationError("--topology \(mesh) has \(mesh.deviceCount) chips, not \(chips)") }
        let p = try CostModel(hardware: hw, calibration: calibration).predict(
            model: spec, mesh: mesh, layout: PhaseLayout(ffnLayout, attention), phase: phase, batch: batch,
            inputTokens: inputTokens, generateTokens: generateTokens, context: context, weights: weights,
            kvMemoryFraction: kvMemoryFraction)
        if json {
            var object: [String: Any] = [
                "latency_s": p.latencySeconds, "mfu": p.mfu, "cost_chip_ms_per_token": p.costChipMsPerToken,
                "fits": p.fits, "memory_per_chip_bytes": p.memoryPerChipBytes, "max_context_tokens": Int(p.maxContextTokens),
                "topology": mesh.description,
                "breakdown": ["compute_s": p.computeSeconds, "memory_s": p.memorySeconds, "communication_s": p.communicationSeconds,
                              "communication_bytes_per_chip": p.communicationBytesPerChip, "attention_s": p.attentionSeconds],
            ]
            if let t = p.perTokenMs { object["per_token_ms"] = t }
            writeJSON(object)
        } else {
            print(String(format: "%@ %@ on %d x %@ (%@), %@ B=%d: latency %.4f s%@, MFU %.1f%%, cost %.3f chip-ms/token",
                         spec.config.name, phase.rawValue, chips, hw.name, mesh.description, "\(ffnLayout)+\(attention)", batch,
                         p.latencySeconds, p.perTokenMs.map { String(format: " (%.2f ms/token)", $0) } ?? "", p.mfu * 100, p.costChipMsPerToken))
            print(String(format: "  compute %.4f s, memory %.4f s,%@ communication %.4f s (%.3g bytes/chip); %.3g bytes/chip, %@; max context %.0f",
                         p.computeSeconds, p.memorySeconds, p.attentionSeconds > 0 ? String(format: " attention (decode, own phase) %.4f s,", p.attentionSeconds) : "",
                         p.communicationSeconds, p.communicationBytesPerChip,
                         p.memoryPerChipBytes, p.fits ? "fits" : "does NOT fit", p.maxContextTokens))
        }
    }
}

/// A catalog model name or `gguf:PATH` (configuration read from the file; nominal size = its
/// parameter count).
func resolveModelSpec(_ name: String) throws -> ModelSpec {
    if name.hasPrefix("gguf:") {
        let config = try ModelConfig(gguf: GGUFFile(path: String(name.dropFirst(5))))
        return ModelSpec(config: config, nominalParameters: Double(config.parameterCount))
    }
    guard let m = ModelSpec.named(name) else {
        throw ValidationError("unknown --model '\(name)' (\(ModelSpec.catalog.map(\.config.name).joined(separator: ", ")), gguf:PATH)")
    }
    return m
}
