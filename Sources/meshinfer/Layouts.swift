import ArgumentParser
import Foundation
import GGUF
import Partitioning
import Runtime

struct Layouts: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every layout's tensor shardings (paper notation) and its collectives per layer, for a mesh and model.")

    @Option(help: "Device mesh XxYxZ.") var mesh: String = "2x2x2"
    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Option(help: "A built-in configuration instead of a file: palm-tiny or llama-tiny.") var modelConfig: String?

    func run() throws {
        let mesh = try Mesh(parsing: self.mesh)
        let config: ModelConfig
        switch modelConfig {
        case "palm-tiny": config = .palmTiny()
        case "llama-tiny": config = .llamaTiny()
        case nil: config = try ModelConfig(gguf: GGUFFile(path: model ?? ModelStore().defaultModel()))
        case let other?: throw ValidationError("unknown --model-config '\(other)'")
        }
        let E = config.modelDimension, F = config.feedForwardDimension, n = mesh.deviceCount
        let X = mesh.x
        let blocks = HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: n)
        print("model \(config.name): E=\(E) F=\(F) H=\(config.heads) K=\(config.kvHeads) Q=\(config.headDimension) layers=\(config.layers) block=\(config.block)")
        print("mesh \(mesh) (\(n) devices)\n")
        for ffn in FeedForwardLayout.allCases {
            let heads = PhaseLayout(ffn, .shardedOverHeads), batch = PhaseLayout(ffn, .shardedOverBatch)
            print("== \(ffn)")
            do { try MeshEngine.validate(config: config, mesh: mesh, prefill: batch, decode: batch) } catch {
                print("   invalid: \(error)\n")
                continue
            }
            let stored = ffn.storesOneDimensional ? "E F_xyz" : "E_x F_yz"
            let (eShard, fShard) = ffn.storesOneDimensional ? (E, F / n) : (E / X, F / n * X)
            print("   weights (stored \(stored)):")
            print("     W_gate, W_up  \(ffn.storesOneDimensional ? "E F_xyz" : "E_x F_yz")   per device \(eShard) x \(fShard) each")
            print("     W_down        \(ffn.storesOneDimensional ? "F_xyz E" : "F_yz E_x")   per device \(fShard) x \(eShard)")
            print("     W_q|W_k|W_v   \(ffn.storesOneDimensional ? "E (HQ)_xyz" : "E_x (HQ)_yz")   per device \(eShard) x \(blocks.qkv[0].count * config.headDimension * (ffn.storesOneDimensional ? 1 : X)) (\(blocks.headAligned ? "whole heads" : "heads do not divide: even column split"))")
            print("     W_o           \(ffn.storesOneDimensional ? "(HQ)_xyz E" : "(HQ)_yz E_x")")
            if !ffn.weightGatherAxes.axes.isEmpty { print("     all-gathered over \(ffn.weightGatherAxes) before each matmul") }
            let residual = ffn.batchAxes.axes.isEmpty ? "BLE_\(ffn.residualAxes)" : "B_\(ffn.batchAxes)LE\(ffn.residualAxes.axes.isEmpty ? "" : "_\(ffn.residualAxes)")"
            print("   residual stream: \(residual)")
            print("   feed-forward: \(ffn.dataflow)")
            let hidden = ffn.hiddenAxes.axes.isEmpty ? "" : "_\(ffn.hiddenAxes)"
            print("   attention over heads: \(headsValid(config, mesh, heads) ?? "BLH\(hidden)Q -attention-> KV cache \(ffn.batchAxes.axes.isEmpty ? "B" : "B_\(ffn.batchAxes)")LH\(hidden)Q")")
            print("   attention over batch: BLH\(hidden)Q -all-to-all(\(ffn.hiddenAxes))-> B_xyzLHQ -attention (KV cache B_xyzLKQ)-> -all-to-all(\(ffn.hiddenAxes))-> BLH\(hidden)Q")
            print("   collectives per layer (\(config.block) block):")
            for line in collectives(ffn, config.block) { print("     \(line)") }
            print("")
        }
    }

    func headsValid(_ c: ModelConfig, _ mesh: Mesh, _ layout: PhaseLayout) -> String? {
        do { try MeshEngine.validate(config: c, mesh: mesh, prefill: layout, decode: layout); return nil } catch { return "invalid: \(error)" }
    }

    /// The sequence of collectives one layer runs, in program order.
    func collectives(_ f: FeedForwardLayout, _ block: BlockKind) -> [String] {
        func ag(_ a: AxisSet, _ what: String) -> [String] { a.axes.isEmpty ? [] : ["all-gather(\(a)) \(what)"] }
        func rs(_ a: AxisSet, _ what: String) -> [String] { a.axes.isEmpty ? [] : ["reduce-scatter(\(a)) \(what)"] }
        let w = f.weightGatherAxes
        let norm = f.residualAxes.axes.isEmpty ? [] : ["all-reduce(\(f.residualAxes)) RMSNorm sum of squares (B·L floats)"]
        let attention = ag(w, "W_qkv") + (f == .weightStationary2D ? rs(.x, "q|k|v partial sums") : [])
            + ["[batch layout: all-to-all(\(f.hiddenAxes)) q|k|v, attention, all-to-all(\(f.hiddenAxes)) back]"]
            + (f == .weightStationary2D ? ag(.x, "attention output") : []) + ag(w, "W_o")
        let ffn = ag(w, "W_gate|W_up") + (f == .weightStationary2D ? rs(.x, "gate|up partial sums") + ag(.x, "swiglu output") : [])
            + ag(w, "W_down")
        switch block {
        case .serial:
            return norm + ag(f.inputGatherAxes, "normed input") + attention + rs(f.outputReduceAxes, "attention output")
                + norm + ag(f.inputGatherAxes, "normed input") + ffn + rs(f.outputReduceAxes, "FFN output")
        case .parallel:
            return norm + ag(f.inputGatherAxes, "normed input (shared)") + attention + ffn
                + rs(f.outputReduceAxes, "attention + FFN output (one reduction)")
        }
    }
}
