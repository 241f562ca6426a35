// swift-tools-version: 6.0
import PackageDescription

// Hot loops live in the C target (AVX-512 / VNNI intrinsics, scalar fallbacks); it is
// built for the host CPU like llama.cpp's GGML_NATIVE. Swift code is orchestration.
let nativeC: [CSetting] = [.unsafeFlags(["-O3", "-march=native", "-ffp-contract=fast"])]
let fastSwift: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

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
    ],
    targets: [
        .target(name: "GGUF", swiftSettings: fastSwift),
        .target(name: "Tokenization", swiftSettings: fastSwift),
        .target(name: "CKernels", cSettings: nativeC),
        .target(name: "Tensors", dependencies: ["CKernels", "GGUF"], swiftSettings: fastSwift),
        .target(name: "Partitioning", swiftSettings: fastSwift),
        .target(name: "Collectives", dependencies: ["Partitioning"], swiftSettings: fastSwift),
        .target(name: "Transformer", dependencies: ["Tensors", "GGUF", "Partitioning"], swiftSettings: fastSwift),
        .target(name: "CostModel", dependencies: ["Transformer", "Partitioning", "Collectives"], swiftSettings: fastSwift),
        .target(
            name: "Runtime",
            dependencies: ["GGUF", "Tokenization", "Tensors", "Transformer", "Partitioning", "Collectives",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: fastSwift),
        .executableTarget(
            name: "meshinfer",
            dependencies: ["Runtime", "GGUF", "Tokenization", "Tensors", "CKernels", "Transformer", "Partitioning", "Collectives", "CostModel", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: fastSwift),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF"]),
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization", "GGUF"]),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "CKernels"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime"]),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "Partitioning"]),
        .testTarget(name: "CostModelTests", dependencies: ["CostModel", "Partitioning", "Transformer", "Runtime", "Collectives"]),
    ]
)
