#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns the bytes of a GGUF image: a read-only memory mapping or a heap copy.
final class GGUFStorage: @unchecked Sendable {
    enum Kind { case mapped, heap, empty }
    let base: UnsafeRawPointer?
    let size: Int
    let kind: Kind

    init(mappingPath path: String) throws(GGUFError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, reason: GGUFStorage.errnoString()) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path: path, reason: GGUFStorage.errnoString()) }
        guard (st.st_mode & 0o170000) == 0o100000 else {
            throw .io(path: path, reason: "not a regular file")
        }
        let size = Int(st.st_size)
        if size == 0 {
            base = nil; self.size = 0; kind = .empty
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .io(path: path, reason: "mmap failed: " + GGUFStorage.errnoString())
        }
        base = UnsafeRawPointer(p)
        self.size = size
        kind = .mapped
    }

    init(copying bytes: [UInt8]) {
        size = bytes.count
        if bytes.isEmpty {
            base = nil; kind = .empty
            return
        }
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        base = UnsafeRawPointer(p)
        kind = .heap
    }

    deinit {
        guard let base else { return }
        switch kind {
        case .mapped: munmap(UnsafeMutableRawPointer(mutating: base), size)
        case .heap: UnsafeMutableRawPointer(mutating: base).deallocate()
        case .empty: break
        }
    }

    static func errnoString() -> String {
        let e = errno
        if let s = strerror(e) { return String(cString: s) + " (errno \(e))" }
        return "errno \(e)"
    }
}

/// A parsed, fully validated GGUF file. Tensor data is accessed zero-copy from a
/// read-only memory mapping (or an in-memory copy for `init(bytes:)`).
public final class GGUFFile: @unchecked Sendable {
    public let path: String?
    /// 2 or 3.
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    /// `general.alignment`, or 32.
    public let alignment: Int
    public let fileSize: Int
    /// Absolute byte offset of the (aligned) tensor data section.
    public let dataOffset: Int

    private let storage: GGUFStorage
    private let tensorIndex: [String: Int]

    /// Maps the file read-only and validates its header, metadata and tensor table eagerly.
    public convenience init(path: String) throws(GGUFError) {
        try self.init(storage: GGUFStorage(mappingPath: path), path: path)
    }

    /// Parses an in-memory copy of a GGUF image.
    public convenience init(bytes: [UInt8]) throws(GGUFError) {
        try self.init(storage: GGUFStorage(copying: bytes), path: nil)
    }

    private init(storage: GGUFStorage, path: String?) throws(GGUFError) {
        let parsed = try GGUFParser.parse(base: storage.base, size: storage.size)
        self.storage = storage
        self.path = path
        self.version = parsed.version
        self.metadata = parsed.metadata
        self.metadataKeys = parsed.metadataKeys
        self.tensors = parsed.tensors
        self.tensorIndex = parsed.tensorIndex
        self.alignment = parsed.alignment
        self.fileSize = storage.size
        self.dataOffset = parsed.dataOffset
    }

    // MARK: Tensors

    public func tensor(_ name: String) throws(GGUFError) -> GGUFTensorInfo {
        guard let i = tensorIndex[name] else { throw .missingTensor(name) }
        return tensors[i]
    }

    public func hasTensor(_ name: String) -> Bool { tensorIndex[name] != nil }

    /// A zero-copy view of a tensor's bytes. The tensor must come from this file
    /// (its bounds were validated at load); a tensor lying outside the file traps.
    public func data(for tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        guard tensor.offset >= 0, tensor.byteCount >= 0, tensor.offset <= fileSize - tensor.byteCount else {
            fatalError("GGUFFile.data(for:): tensor '\(tensor.name)' lies outside this \(fileSize)-byte file")
        }
        guard let base = storage.base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + tensor.offset, count: tensor.byteCount)
    }

    /// Re-checks a tensor description against this file (it may have been built by hand).
    private func validated(_ tensor: GGUFTensorInfo) throws(GGUFError) -> UnsafeRawPointer {
        let expected = try GGUFTensorInfo.byteSize(name: tensor.name, dimensions: tensor.dimensions, type: tensor.type)
        guard expected == tensor.byteCount else {
            throw .badTensorShape(name: tensor.name, reason: "byte count \(tensor.byteCount) does not match its shape (\(expected) bytes)")
        }
        guard tensor.offset >= 0, tensor.offset <= fileSize - tensor.byteCount, let base = storage.base else {
            throw .tensorOutOfBounds(name: tensor.name, offset: tensor.offset, byteCount: tensor.byteCount, fileSize: fileSize)
        }
        return base + tensor.offset
    }

    /// The whole tensor converted to f32, in ggml element order.
    public func dequantized(_ tensor: GGUFTensorInfo) throws(GGUFError) -> [Float] {
        let source = try validated(tensor)
        guard tensor.type.isDequantizable else { throw .unsupportedTensorType(tensor.type) }
        let count = tensor.elementCount
        var failure: GGUFError?
        let out = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            do throws(GGUFError) {
                if count > 0 { try dequantize(tensor.type, from: source, count: count, into: buffer.baseAddress!) }
                initialized = count
            } catch {
                buffer.baseAddress.map { $0.initialize(repeating: 0, count: count) }
                initialized = count
                failure = error
            }
        }
        if let failure { throw failure }
        return out
    }

    /// Converts rows `rows` (each `rowLength` elements) to f32 into `destination`, which
    /// must have room for `rows.count * tensor.rowLength` floats.
    public func dequantizeRows(_ tensor: GGUFTensorInfo, rows: Range<Int>,
                               into destination: UnsafeMutablePointer<Float>) throws(GGUFError) {
        let source = try validated(tensor)
        guard tensor.type.isDequantizable else { throw .unsupportedTensorType(tensor.type) }
        guard rows.lowerBound >= 0, rows.upperBound <= tensor.rowCount else {
            throw .invalidRange(tensor: tensor.name, reason: "rows \(rows) are outside 0..<\(tensor.rowCount)")
        }
        if rows.isEmpty { return }
        let rowBytes = tensor.rowBytes
        try dequantize(tensor.type, from: source + rows.lowerBound * rowBytes,
                       count: rows.count * tensor.rowLength, into: destination)
    }

    // MARK: Typed metadata accessors

    private func value(_ key: String) throws(GGUFError) -> GGUFValue {
        guard let v = metadata[key] else { throw .missingKey(key) }
        return v
    }

    public func string(_ key: String) throws(GGUFError) -> String {
        let v = try value(key)
        guard let s = v.stringValue else { throw .typeMismatch(key: key, expected: "string", found: v.typeName) }
        return s
    }

    public func integer(_ key: String) throws(GGUFError) -> Int {
        let v = try value(key)
        guard let i = v.intValue else { throw .typeMismatch(key: key, expected: "integer", found: v.typeName) }
        return i
    }

    public func float(_ key: String) throws(GGUFError) -> Double {
        let v = try value(key)
        guard let d = v.doubleValue else { throw .typeMismatch(key: key, expected: "number", found: v.typeName) }
        return d
    }

    public func bool(_ key: String) throws(GGUFError) -> Bool {
        let v = try value(key)
        guard let b = v.boolValue else { throw .typeMismatch(key: key, expected: "bool", found: v.typeName) }
        return b
    }

    private func array<T>(_ key: String, _ expected: String, _ convert: (GGUFValue) -> T?) throws(GGUFError) -> [T] {
        let v = try value(key)
        guard let a = v.arrayValue else { throw .typeMismatch(key: key, expected: expected, found: v.typeName) }
        var out: [T] = []
        out.reserveCapacity(a.count)
        for e in a {
            guard let x = convert(e) else {
                throw .typeMismatch(key: key, expected: expected, found: "array containing \(e.typeName)")
            }
            out.append(x)
        }
        return out
    }

    public func stringArray(_ key: String) throws(GGUFError) -> [String] {
        try array(key, "array[string]") { $0.stringValue }
    }

    public func integerArray(_ key: String) throws(GGUFError) -> [Int] {
        try array(key, "array[integer]") { $0.intValue }
    }

    public func floatArray(_ key: String) throws(GGUFError) -> [Double] {
        try array(key, "array[number]") { $0.doubleValue }
    }
}
