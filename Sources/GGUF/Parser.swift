/// A bounds-checked little-endian cursor over a byte range. Every read checks the
/// remaining length first and throws `.truncated` naming what was being read.
struct ByteReader {
    let base: UnsafeRawPointer?
    let size: Int
    var pos: Int = 0

    init(base: UnsafeRawPointer?, size: Int) {
        self.base = size > 0 ? base : nil
        self.size = size
    }

    var remaining: Int { size - pos }

    @inline(__always)
    func need(_ n: Int, _ what: @autoclosure () -> String) throws(GGUFError) {
        if n < 0 || n > size - pos {
            throw .truncated(offset: pos, needed: n, fileSize: size, what: what())
        }
    }

    @inline(__always)
    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws(GGUFError) -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.unsafelyUnwrapped.loadUnaligned(fromByteOffset: pos, as: T.self)
        pos += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func u8(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt8 { try load(UInt8.self, what()) }
    mutating func u32(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws(GGUFError) -> UInt64 { try load(UInt64.self, what()) }

    /// A u64 length followed by that many UTF-8 bytes.
    mutating func string(_ what: @autoclosure () -> String) throws(GGUFError) -> String {
        let start = pos
        let length = try u64("length of \(what())")
        guard length <= UInt64(remaining) else {
            throw .truncated(offset: pos, needed: Int(clamping: length), fileSize: size, what: what())
        }
        let n = Int(length)
        if n == 0 { return "" }
        let bytes = UnsafeBufferPointer(
            start: (base.unsafelyUnwrapped + pos).assumingMemoryBound(to: UInt8.self), count: n)
        guard let s = ByteReader.validatedUTF8(bytes) else {
            throw .invalidUTF8(offset: start)
        }
        pos += n
        return s
    }
}

extension ByteReader {
    /// Decodes UTF-8, returning nil for any ill-formed sequence.
    @inline(__always)
    static func validatedUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        if #available(macOS 15, iOS 18, tvOS 18, watchOS 11, visionOS 2, *) {
            return String(validating: bytes, as: UTF8.self)
        }
        // Repairing decode; a well-formed input round-trips byte for byte, an ill-formed one cannot.
        let s = String(decoding: bytes, as: UTF8.self)
        return s.utf8.elementsEqual(bytes) ? s : nil
    }
}

/// The result of parsing and validating a GGUF image.
struct ParsedGGUF {
    var version: UInt32
    var metadata: [String: GGUFValue]
    var metadataKeys: [String]
    var tensors: [GGUFTensorInfo]
    var tensorIndex: [String: Int]
    var alignment: Int
    var dataOffset: Int
}

enum GGUFParser {
    static let magic: UInt32 = 0x4655_4747  // "GGUF" read little-endian
    static let maxArrayDepth = 32
    static let maxDimensions = 4

    /// Smallest possible encoding of a value of the given type id (for count sanity checks).
    static func minimumEncodedSize(ofType t: UInt32) -> Int {
        switch t {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 10, 11, 12: return 8
        case 8: return 8       // u64 length
        case 9: return 12      // u32 type + u64 count
        default: return 1
        }
    }

    static func parse(base: UnsafeRawPointer?, size: Int) throws(GGUFError) -> ParsedGGUF {
        var r = ByteReader(base: base, size: size)

        let m = try r.u32("the magic number")
        guard m == magic else { throw .badMagic(found: m) }
        let version = try r.u32("the version")
        guard version == 2 || version == 3 else { throw .unsupportedVersion(version) }
        let tensorCount64 = try r.u64("the tensor count")
        let kvCount64 = try r.u64("the metadata entry count")

        // Counts are untrusted: never allocate more than the remaining bytes could encode.
        // Each metadata entry needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor
        // info at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
        // Reading then proceeds entry by entry, so an inflated count fails at the first
        // entry that is actually missing, with a precise truncation error.
        let minKV = 13, minTensor = 32
        let kvCount = Int(clamping: kvCount64), tensorCount = Int(clamping: tensorCount64)

        // Metadata.
        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(min(kvCount, r.remaining / minKV))
        var keys: [String] = []
        keys.reserveCapacity(min(kvCount, r.remaining / minKV))
        var alignmentValueOffset = 0
        for i in 0..<kvCount {
            let key = try r.string("the key of metadata entry #\(i)")
            let typeOffset = r.pos
            let type = try r.u32("the value type of metadata key '\(key)'")
            guard type <= 12 else { throw .unknownValueType(raw: type, key: key) }
            if key == "general.alignment" { alignmentValueOffset = typeOffset + 4 }
            let value = try readValue(&r, type: type, key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else { throw .duplicateKey(key) }
            keys.append(key)
        }

        // Alignment.
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.intValue else {
                throw .typeMismatch(key: "general.alignment", expected: "uint32", found: a.typeName)
            }
            guard v > 0, v & (v - 1) == 0, v <= 1 << 30 else {
                throw .invalidValue(key: "general.alignment", offset: alignmentValueOffset,
                                    reason: "alignment \(v) is not a positive power of two")
            }
            alignment = v
        }

        // Tensor infos.
        struct RawTensor { var name: String; var dims: [Int]; var type: GGMLType; var rel: UInt64; var byteCount: Int }
        var raws: [RawTensor] = []
        raws.reserveCapacity(min(tensorCount, r.remaining / minTensor))
        var tensorIndex: [String: Int] = [:]
        tensorIndex.reserveCapacity(min(tensorCount, r.remaining / minTensor))
        for i in 0..<tensorCount {
            let name = try r.string("the name of tensor #\(i)")
            let nd = try r.u32("the dimension count of tensor '\(name)'")
            guard nd >= 1, nd <= UInt32(maxDimensions) else {
                throw .badTensorShape(name: name, reason: "it has \(nd) dimensions; 1 to \(maxDimensions) are allowed")
            }
            var dims: [Int] = []
            dims.reserveCapacity(Int(nd))
            for j in 0..<Int(nd) {
                let d = try r.u64("dimension \(j) of tensor '\(name)'")
                guard d <= UInt64(Int.max) else {
                    throw .badTensorShape(name: name, reason: "dimension \(j) is \(d), which is too large")
                }
                dims.append(Int(d))
            }
            let rawType = try r.u32("the type of tensor '\(name)'")
            let rel = try r.u64("the data offset of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw .unknownTensorType(raw: rawType, tensor: name)
            }
            let byteCount = try GGUFTensorInfo.byteSize(name: name, dimensions: dims, type: type)
            guard tensorIndex.updateValue(i, forKey: name) == nil else { throw .duplicateTensor(name) }
            raws.append(RawTensor(name: name, dims: dims, type: type, rel: rel, byteCount: byteCount))
        }

        // Data section: end of the tensor infos rounded up to the alignment.
        let dataOffset = (r.pos + alignment - 1) / alignment * alignment  // r.pos <= size, no overflow
        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(raws.count)
        for t in raws {
            guard t.rel % UInt64(alignment) == 0 else {
                throw .badAlignment(tensor: t.name, offset: Int(clamping: t.rel), alignment: alignment)
            }
            let absolute = UInt64(dataOffset).addingReportingOverflow(t.rel)
            guard !absolute.overflow, absolute.partialValue <= UInt64(size) else {
                throw .tensorOutOfBounds(name: t.name, offset: Int(clamping: absolute.overflow ? UInt64.max : absolute.partialValue),
                                         byteCount: t.byteCount, fileSize: size)
            }
            let offset = Int(absolute.partialValue)
            guard t.byteCount <= size - offset else {
                throw .tensorOutOfBounds(name: t.name, offset: offset, byteCount: t.byteCount, fileSize: size)
            }
            tensors.append(GGUFTensorInfo(name: t.name, dimensions: t.dims, type: t.type, offset: offset, byteCount: t.byteCount))
        }

        // Overlap: sort by start and compare neighbours.
        if tensors.count > 1 {
            let order = tensors.indices.sorted { tensors[$0].offset < tensors[$1].offset }
            for k in 1..<order.count {
                let a = tensors[order[k - 1]], b = tensors[order[k]]
                if a.offset + a.byteCount > b.offset {
                    throw .overlappingTensors(a.name, b.name)
                }
            }
        }

        return ParsedGGUF(version: version, metadata: metadata, metadataKeys: keys, tensors: tensors,
                          tensorIndex: tensorIndex, alignment: alignment, dataOffset: dataOffset)
    }

    static func readValue(_ r: inout ByteReader, type: UInt32, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
        switch type {
        case 0: return .uint8(try r.load(UInt8.self, "the value of metadata key '\(key)'"))
        case 1: return .int8(try r.load(Int8.self, "the value of metadata key '\(key)'"))
        case 2: return .uint16(try r.load(UInt16.self, "the value of metadata key '\(key)'"))
        case 3: return .int16(try r.load(Int16.self, "the value of metadata key '\(key)'"))
        case 4: return .uint32(try r.load(UInt32.self, "the value of metadata key '\(key)'"))
        case 5: return .int32(try r.load(Int32.self, "the value of metadata key '\(key)'"))
        case 6: return .float32(Float(bitPattern: try r.load(UInt32.self, "the value of metadata key '\(key)'")))
        case 7: return .bool(try r.load(UInt8.self, "the value of metadata key '\(key)'") != 0)
        case 8: return .string(try r.string("the string value of metadata key '\(key)'"))
        case 9: return try readArray(&r, key: key, depth: depth)
        case 10: return .uint64(try r.load(UInt64.self, "the value of metadata key '\(key)'"))
        case 11: return .int64(try r.load(Int64.self, "the value of metadata key '\(key)'"))
        case 12: return .float64(Double(bitPattern: try r.load(UInt64.self, "the value of metadata key '\(key)'")))
        default: throw .unknownValueType(raw: type, key: key)
        }
    }

    static func readArray(_ r: inout ByteReader, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
        let start = r.pos
        let elementType = try r.u32("the element type of array '\(key)'")
        guard elementType <= 12 else { throw .unknownValueType(raw: elementType, key: key) }
        let count64 = try r.u64("the element count of array '\(key)'")
        let minSize = UInt64(minimumEncodedSize(ofType: elementType))
        guard count64 <= UInt64(r.remaining) / minSize else {
            let (needed, o) = count64.multipliedReportingOverflow(by: minSize)
            throw .truncated(offset: r.pos, needed: o ? Int.max : Int(clamping: needed), fileSize: r.size,
                             what: "\(count64) elements of array '\(key)'")
        }
        if elementType == 9 && depth + 1 >= maxArrayDepth {
            throw .invalidValue(key: key, offset: start, reason: "arrays are nested more than \(maxArrayDepth) deep")
        }
        let count = Int(count64)
        var out: [GGUFValue] = []
        out.reserveCapacity(count)
        switch elementType {
        case 8:
            for i in 0..<count { out.append(.string(try r.string("string element \(i) of array '\(key)'"))) }
        case 9:
            for _ in 0..<count { out.append(try readArray(&r, key: key, depth: depth + 1)) }
        default:
            for _ in 0..<count { out.append(try readValue(&r, type: elementType, key: key, depth: depth + 1)) }
        }
        return .array(out)
    }
}
