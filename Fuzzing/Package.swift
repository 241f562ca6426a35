// swift-tools-version: 6.0
// libFuzzer targets for the GGUF parser and both tokenizers (`scripts/fuzz.sh` builds and
// runs them). A package of its own, depending on the root package by path, so that the root
// package's `swift build` and `swift test` never build it. Each executable's `@main` hands
// its `LLVMFuzzerTestOneInput` to libFuzzer's `LLVMFuzzerRunDriver` (linked by
// `-sanitize=fuzzer`): on Linux SwiftPM points an executable's `main` at the module's own
// entry point, so libFuzzer's `main` cannot be the program's.
import Foundation
import PackageDescription

// SwiftPM names a path dependency by its directory: the checkout's, whatever it is called.
let root = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent()
let runtime: Target.Dependency = .product(name: "MeshInferRuntime", package: root.lastPathComponent.lowercased())

let package = Package(
    name: "MeshInferFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [.package(path: "..")],
    targets: [
        // Declares libFuzzer's driver for Swift.
        .target(name: "CLibFuzzer"),
        // The driver call, model-file lookup, the tokenizer round-trip property and text seeds.
        .target(name: "FuzzSupport", dependencies: ["CLibFuzzer", runtime]),
        .executableTarget(name: "FuzzGGUF", dependencies: ["FuzzSupport", runtime]),
        .executableTarget(name: "FuzzBPE", dependencies: ["FuzzSupport", runtime]),
        .executableTarget(name: "FuzzSentencePiece", dependencies: ["FuzzSupport", runtime]),
    ]
)
