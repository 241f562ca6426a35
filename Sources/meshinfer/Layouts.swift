import ArgumentParser
import Foundation
import GGUF
import Partitioning
import CostModel
import Runtime

struct Layouts: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every layout's weight storage and one layer's dataflow in the paper's notation (derived from the layer program), for a mesh and model.")

    @Option(help: "Device mesh XxYxZ.") var mesh: String = "2x2x2"
    @Option(help: "GGUF model file (default: the cached default model).") var model: String?
    @Option(help: "A built-in configuration instead of a file: palm-tiny or llama-tiny.") var modelConfig: String?

    func run() throws {
        let mesh = try Mesh(parsing: self.mesh)
        let config: ModelConfig
        switch modelConfig {
        case "palm-tiny": config = .palmTiny()
        case "llama-tiny": config = .llamaTiny()
        case nil: config = try ModelConfig(gguf: GGUFFile(path: ModelStore().resolve(model)))
        case let other?: throw ValidationError("unknown --model-config '\(other)'")
        }
        print(layoutsReport(config: config, mesh: mesh), terminator: "")
    }
}
