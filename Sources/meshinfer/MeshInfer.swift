import ArgumentParser
import CKernels
import Foundation
import Runtime
import Tensors

@main
struct MeshInfer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshinfer",
        abstract: "Transformer inference after Pope et al., \"Efficiently Scaling Transformer Inference\".",
        subcommands: [Generate.self, Chat.self, Serve.self, Tokenize.self, Perplexity.self, Bench.self, Layouts.self, Predict.self, Plan.self, Calibrate.self, Pull.self, MPICheck.self])

    static func main() {
        // Activations are allocated and freed per op (a mesh device allocates a few MB per
        // collective and matmul). glibc's defaults return such blocks to the kernel on free, so
        // every op paid for fresh zeroed pages: a profile of in-process mesh prefill showed ~20%
        // of its time in page faults and page clearing; keeping freed memory in the heap made
        // `bench --mesh 2 -p 128` about 1.7x faster.
        mi_keep_freed_memory()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            // Under mpirun every rank parses the same command line: a bad argument is reported
            // once, by rank 0. (Errors only one rank sees are printed where they happen.)
            if let rank = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"], rank != "0" {
                Foundation.exit(exitCode(for: error).rawValue)
            }
            exit(withError: error)
        }
    }
}


/// Options shared by every command that loads a model.
struct ModelOptions: ParsableArguments {
    @Option(help: "GGUF model file, or a model pulled by name: smollm2-135m, gemma3-270m (default: the cached SmolLM2-135M-Instruct; see `meshinfer pull`).")
    var model: String?

    @Option(help: "Weight format: native (the file's blocks), int8 (per-channel, quantized on load) or f32.")
    var weights: WeightFormat = .native

    @Option(help: "Worker threads (default: all cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "KV cache type: f16 (llama.cpp's default) or q8 (int8 with a scale per 32 elements: 0.56 of the bytes).")
    var kvCache: KVCacheType = .f16

    func load() throws -> LoadedModel {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        let path = try ModelStore().resolve(model)
        return try LoadedModel(path: path, format: weights, threads: threads, kvCache: kvCache)
    }
}

extension WeightFormat: ExpressibleByArgument {}
extension KVCacheType: ExpressibleByArgument {}

/// Options of the sampler.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Temperature; 0 = greedy.") var temperature: Float = 0.8
    @Option(help: "Top-k (0 = off).") var topK: Int = 40
    @Option(help: "Top-p (1 = off).") var topP: Float = 0.95
    @Option(help: "Min-p (0 = off).") var minP: Float = 0.05
    @Option(help: "Repetition penalty (1 = off).") var repeatPenalty: Float = 1.0
    @Option(help: "Tokens the repetition penalty looks back over.") var repeatLastN: Int = 64
    @Option(help: "Random seed (default: random; printed with the timings).") var seed: UInt64?

    func parameters() throws -> SamplingParameters {
        guard temperature >= 0 else { throw ValidationError("--temperature must be >= 0") }
        guard topK >= 0 else { throw ValidationError("--top-k must be >= 0") }
        guard topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard minP >= 0 && minP <= 1 else { throw ValidationError("--min-p must be in [0, 1]") }
        guard repeatPenalty > 0 else { throw ValidationError("--repeat-penalty must be > 0") }
        var p = SamplingParameters()
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repetitionPenalty = repeatPenalty
        p.repetitionWindow = repeatLastN
        p.seed = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        return p
    }
}

func writeJSON(_ object: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

/// Unbuffered stdout (streamed text and newlines must not be reordered by stdio buffering).
func writeOut(_ s: String) { FileHandle.standardOutput.write(Data(s.utf8)) }

func printError(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

func rounded(_ x: Double, _ digits: Int = 4) -> Double {
    let p = pow(10.0, Double(digits))
    return (x * p).rounded() / p
}
