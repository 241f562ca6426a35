#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds GGUF images (v3 by default, or v2; the layouts are identical little-endian).
/// For test fixtures and tools: it writes what it is given without validation, so it can
/// also produce deliberately inconsistent files (e.g. data shorter than the shape implies).
public struct GGUFWriter: Sendable {
    public let version: UInt32
    public let alignment: Int

    private var keys: [String] = []
    private var values: [String: GGUFValue] = [:]
    private var tensorEntries: [(name: String, dimensions: [Int], type: UInt32, data: [UInt8])] = []

    public init(version: UInt32 = 3, alignment: Int = 32) {
        precondition(alignment > 0, "alignment must be positive")
        self.version = version
        self.alignment = alignment
    }

    /// Sets a metadata value; a new key is appended, an existing key keeps its position.
    /// Arrays must be homogeneous (all elements of the same case).
    public mutating func set(_ key: String, _ value: GGUFValue) {
        if values.updateValue(value, forKey: key) == nil { keys.append(key) }
    }

    public mutating func addTensor(name: String, dimensions: [Int], type: GGMLType, data: [UInt8]) {
        tensorEntries.append((name, dimensions, type.rawValue, data))
    }

    /// Adds a tensor with a raw (possibly unknown) ggml type id; for corrupt-file fixtures.
    public mutating func addTensor(name: String, dimensions: [Int], rawType: UInt32, data: [UInt8]) {
        tensorEntries.append((name, dimensions, rawType, data))
    }

    /// Adds an f32 tensor.
    public mutating func addTensor(name: String, dimensions: [Int], values: [Float]) {
        var data: [UInt8] = []
        data.reserveCapacity(values.count * 4)
        for v in values { data.appendLE(v.bitPattern) }
        addTensor(name: name, dimensions: dimensions, type: .f32, data: data)
    }

    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        var kvKeys = keys
        var kv = values
        if alignment != 32 && kv["general.alignment"] == nil {
            kvKeys.append("general.alignment")
            kv["general.alignment"] = .uint32(UInt32(alignment))
        }
        out.appendLE(UInt32(0x4655_4747))
        out.appendLE(version)
        out.appendLE(UInt64(tensorEntries.count))
        out.appendLE(UInt64(kvKeys.count))
        for key in kvKeys {
            let value = kv[key]!
            out.appendString(key)
            out.appendLE(value.typeID)
            Self.appendValue(value, to: &out)
        }
        var offset = 0
        for t in tensorEntries {
            out.appendString(t.name)
            out.appendLE(UInt32(t.dimensions.count))
            for d in t.dimensions { out.appendLE(UInt64(truncatingIfNeeded: d)) }
            out.appendLE(t.type)
            out.appendLE(UInt64(offset))
            offset += padded(t.data.count)
        }
        if !tensorEntries.isEmpty {
            out.append(contentsOf: repeatElement(0, count: padded(out.count) - out.count))
            for t in tensorEntries {
                out.append(contentsOf: t.data)
                out.append(contentsOf: repeatElement(0, count: padded(t.data.count) - t.data.count))
            }
        }
        return out
    }

    public func write(to path: String) throws(GGUFError) {
        let bytes = serialized()
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path: path, reason: GGUFStorage.errnoString()) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { posixWrite(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let reason = GGUFStorage.errnoString()
                close(fd)
                throw .io(path: path, reason: reason)
            }
            written += n
        }
        guard close(fd) == 0 else { throw .io(path: path, reason: GGUFStorage.errnoString()) }
    }

    private func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    private static func appendValue(_ value: GGUFValue, to out: inout [UInt8]) {
        switch value {
        case let .uint8(v): out.appendLE(v)
        case let .int8(v): out.appendLE(v)
        case let .uint16(v): out.appendLE(v)
        case let .int16(v): out.appendLE(v)
        case let .uint32(v): out.appendLE(v)
        case let .int32(v): out.appendLE(v)
        case let .float32(v): out.appendLE(v.bitPattern)
        case let .bool(v): out.append(v ? 1 : 0)
        case let .string(s): out.appendString(s)
        case let .array(a):
            let elementType = a.first?.typeID ?? 0
            precondition(a.allSatisfy { $0.typeID == elementType }, "GGUF arrays must be homogeneous")
            out.appendLE(elementType)
            out.appendLE(UInt64(a.count))
            for e in a { appendValue(e, to: &out) }  // a nested array is a full array encoding
        case let .uint64(v): out.appendLE(v)
        case let .int64(v): out.appendLE(v)
        case let .float64(v): out.appendLE(v.bitPattern)
        }
    }
}

private func posixWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    write(fd, p, n)
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
    fileprivate mutating func appendString(_ s: String) {
        var s = s
        s.withUTF8 { bytes in
            appendLE(UInt64(bytes.count))
            append(contentsOf: bytes)
        }
    }
}
