// swift-tools-version: 6.0
import Foundation
import PackageDescription

// Hot loops live in the C target (AVX-512 / VNNI intrinsics, scalar fallbacks); it is
// built for the host CPU like llama.cpp's GGML_NATIVE. Swift code is orchestration.
// Cross-module optimization: the layer program (Transformer) is generic over its interpreter
// (Runtime's); without it every op of a decode step went through unspecialized generics and
// runtime metadata lookups (~5% of a SmolLM2 decode step on one thread).
let nativeC: [CSetting] = [.unsafeFlags(["-O3", "-march=native", "-ffp-contract=fast"])]
let fastSwift: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo", "-cross-module-optimization"], .when(configuration: .release))]

// Open MPI (issue 5): found by its header; `MESHINFER_MPI_HOME` overrides the search and
// `MESHINFER_NO_MPI=1` skips it. Without it
// the CMPI shim compiles stubs that report "no MPI", and everything else builds and runs.
// After installing or removing MPI, touch this file so SwiftPM re-reads it.
let mpiHome: String? = {
    let env = ProcessInfo.processInfo.environment
    if env["MESHINFER_NO_MPI"] == "1" { return nil }   // build the stubs even where MPI exists
    let candidates = [env["MESHINFER_MPI_HOME"]].compactMap { $0 } + [
        "/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/aarch64-linux-gnu/openmpi", "/usr/lib64/openmpi",
        "/usr/local", "/opt/homebrew", "/usr",
    ]
    return candidates.first { FileManager.default.fileExists(atPath: "\($0)/include/mpi.h") }
}()
let mpiC: [CSetting] = mpiHome.map { [.define("MESHINFER_HAVE_MPI"), .unsafeFlags(["-I\($0)/include"])] } ?? []
let mpiLink: [LinkerSetting] = mpiHome.map { [.unsafeFlags(["-L\($0)/lib"]), .linkedLibrary("mpi")] } ?? []

let package = Package(
    name: "MeshInfer",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "meshinfer", targets: ["meshinfer"]),
        .library(name: "MeshInferRuntime", targets: ["Runtime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // meshinfer serve (issue 11): HTTP, graceful shutdown, Prometheus text.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.20.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    ],
    targets: [
        .target(name: "GGUF", swiftSettings: fastSwift),
        .target(name: "Tokenization", swiftSettings: fastSwift),
        .target(name: "CKernels", cSettings: nativeC),
        .target(name: "Tensors", dependencies: ["CKernels", "GGUF"], swiftSettings: fastSwift),
        .target(name: "Partitioning", swiftSettings: fastSwift),
        .target(name: "CMPI", cSettings: mpiC, linkerSettings: mpiLink),
        .target(name: "Collectives", dependencies: ["Partitioning", "CMPI"], swiftSettings: fastSwift),
        .target(name: "Transformer", dependencies: ["GGUF", "Partitioning"], swiftSettings: fastSwift),
        .target(name: "CostModel", dependencies: ["Transformer", "Partitioning", "Collectives"], swiftSettings: fastSwift),
        .target(name: "Serving", swiftSettings: fastSwift),
        .target(
            name: "Server",
            dependencies: ["Serving", "Runtime", "Tokenization", "CostModel",
                           .product(name: "Hummingbird", package: "hummingbird"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Prometheus", package: "swift-prometheus"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: fastSwift),
        .target(
            name: "Runtime",
            dependencies: ["GGUF", "Tokenization", "Tensors", "Transformer", "Partitioning", "Collectives",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: fastSwift),
        .executableTarget(
            name: "meshinfer",
            dependencies: ["Runtime", "GGUF", "Tokenization", "Tensors", "CKernels", "Transformer", "Partitioning", "Collectives", "CostModel", "Server", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: fastSwift),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF"]),
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization", "GGUF", "Runtime"]),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "CKernels", "GGUF"]),
        // The naive oracle every layout is compared with: plain loops, no production module but
        // the model configuration (Transformer).
        .target(name: "NaiveModel", dependencies: ["Transformer"], path: "Tests/NaiveModel"),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "NaiveModel", "CostModel"]),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "Partitioning"]),
        // Launches the built `meshinfer` under mpirun (build the product first: scripts/test.sh does).
        .testTarget(name: "MPITests"),
        .testTarget(name: "ServingTests", dependencies: ["Serving", "Server", "Runtime", .product(name: "Hummingbird", package: "hummingbird")]),
        .testTarget(name: "CostModelTests", dependencies: ["CostModel", "Partitioning", "Transformer", "Runtime", "Collectives"],
                    exclude: ["Snapshots"]),   // read by path in the tests
    ]
)
