import Foundation
import Testing
import GGUF

private let everyType: [(String, GGUFValue)] = [
    ("t.uint8", .uint8(200)),
    ("t.int8", .int8(-100)),
    ("t.uint16", .uint16(65_000)),
    ("t.int16", .int16(-32_000)),
    ("t.uint32", .uint32(4_000_000_000)),
    ("t.int32", .int32(-2_000_000_000)),
    ("t.float32", .float32(-1.5e-3)),
    ("t.bool.true", .bool(true)),
    ("t.bool.false", .bool(false)),
    ("t.string", .string("héllo, 世界 🦙")),
    ("t.string.empty", .string("")),
    ("t.uint64", .uint64(18_000_000_000_000_000_000)),
    ("t.int64", .int64(-9_000_000_000_000_000_000)),
    ("t.float64", .float64(3.141592653589793)),
    ("t.array.u8", .array([.uint8(1), .uint8(2), .uint8(255)])),
    ("t.array.i32", .array([.int32(-1), .int32(0), .int32(7)])),
    ("t.array.f32", .array([.float32(0.5), .float32(-2)])),
    ("t.array.f64", .array([.float64(1e300)])),
    ("t.array.bool", .array([.bool(true), .bool(false)])),
    ("t.array.string", .array([.string("a"), .string(""), .string("ccc")])),
    ("t.array.empty", .array([])),
    ("t.array.nested", .array([
        .array([.uint32(1), .uint32(2)]),
        .array([.uint32(3)]),
        .array([]),
    ])),
    ("t.array.nested.deep", .array([.array([.array([.string("deep")])]), .array([.array([])])])),
    ("t.array.nested.mixed", .array([.array([.string("x")]), .array([.int64(-5), .int64(6)])])),
]

@Suite struct MetadataRoundTrip {
    @Test(arguments: [UInt32(2), 3])
    func everyValueTypeRoundTrips(version: UInt32) throws {
        var w = GGUFWriter(version: version)
        for (k, v) in everyType { w.set(k, v) }
        w.addTensor(name: "w", dimensions: [4, 2], values: [1, 2, 3, 4, 5, 6, 7, 8])
        let f = try GGUFFile(bytes: w.serialized())
        #expect(f.version == version)
        #expect(f.metadataKeys == everyType.map(\.0))
        for (k, v) in everyType {
            #expect(f.metadata[k] == v, "\(k)")
        }
        #expect(f.metadata.count == everyType.count)
        #expect(f.alignment == 32)
        #expect(f.path == nil)
        #expect(try f.dequantized(f.tensor("w")) == [1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test func roundTripThroughDiskAndMmap() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("x", .array([.float32(1), .float32(2)]))
        w.addTensor(name: "a", dimensions: [3], values: [1, -2, 3])
        w.addTensor(name: "b", dimensions: [2, 2], values: [4, 5, 6, 7])
        let path = NSTemporaryDirectory() + "gguf-roundtrip-\(UUID().uuidString).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try w.write(to: path)
        let f = try GGUFFile(path: path)
        #expect(f.path == path)
        #expect(f.fileSize == w.serialized().count)
        #expect(try f.string("general.architecture") == "llama")
        #expect(try f.floatArray("x") == [1, 2])
        #expect(f.tensors.map(\.name) == ["a", "b"])
        let b = try f.tensor("b")
        #expect(b.rowLength == 2 && b.rowCount == 2 && b.rowBytes == 8 && b.elementCount == 4)
        #expect(b.offset % 32 == 0)
        #expect(try f.dequantized(b) == [4, 5, 6, 7])
        var row = [Float](repeating: 0, count: 2)
        try f.dequantizeRows(b, rows: 1..<2, into: &row)
        #expect(row == [6, 7])
        let a = try f.tensor("a")
        #expect(Array(f.data(for: a)) == Array(w.serialized()[a.offset..<a.offset + 12]))
    }

    @Test func missingPathIsIOError() {
        let e = gguferror { _ = try GGUFFile(path: "/nonexistent/dir/model.gguf") }
        guard case .io(let path, _) = e else { Issue.record("expected .io, got \(String(describing: e))"); return }
        #expect(path == "/nonexistent/dir/model.gguf")
        let d = gguferror { _ = try GGUFFile(path: "/tmp") }
        guard case .io = d else { Issue.record("expected .io for a directory, got \(String(describing: d))"); return }
    }

    @Test func setKeepsInsertionOrderAndReplacesInPlace() throws {
        var w = GGUFWriter()
        w.set("b", .uint8(1))
        w.set("a", .uint8(2))
        w.set("b", .string("replaced"))
        let f = try GGUFFile(bytes: w.serialized())
        #expect(f.metadataKeys == ["b", "a"])
        #expect(f.metadata["b"] == .string("replaced"))
    }

    @Test(arguments: [1, 8, 64, 128])
    func customAlignment(alignment: Int) throws {
        var w = GGUFWriter(alignment: alignment)
        w.set("k", .uint8(1))
        w.addTensor(name: "a", dimensions: [3], values: [1, 2, 3])
        w.addTensor(name: "b", dimensions: [5], values: [1, 2, 3, 4, 5])
        let f = try GGUFFile(bytes: w.serialized())
        #expect(f.alignment == alignment)
        for t in f.tensors { #expect(t.offset % alignment == 0) }
        #expect(f.dataOffset % alignment == 0)
        #expect(try f.dequantized(f.tensor("b")) == [1, 2, 3, 4, 5])
        if alignment != 32 { #expect(f.metadata["general.alignment"]?.intValue == alignment) }
    }

    @Test func emptyFileWithNoTensorsOrMetadata() throws {
        let f = try GGUFFile(bytes: GGUFWriter().serialized())
        #expect(f.tensors.isEmpty && f.metadata.isEmpty && f.version == 3)
    }

    @Test func valueAccessors() {
        #expect(GGUFValue.uint8(7).intValue == 7)
        #expect(GGUFValue.int64(-3).intValue == -3)
        #expect(GGUFValue.uint64(UInt64.max).intValue == nil)
        #expect(GGUFValue.bool(true).intValue == nil)
        #expect(GGUFValue.float32(1).intValue == nil)
        #expect(GGUFValue.float32(0.5).doubleValue == 0.5)
        #expect(GGUFValue.int16(-2).doubleValue == -2)
        #expect(GGUFValue.uint64(UInt64.max).doubleValue == Double(UInt64.max))
        #expect(GGUFValue.string("x").doubleValue == nil)
        #expect(GGUFValue.string("x").stringValue == "x")
        #expect(GGUFValue.uint8(1).stringValue == nil)
        #expect(GGUFValue.bool(false).boolValue == false)
        #expect(GGUFValue.uint8(1).boolValue == nil)
        #expect(GGUFValue.array([.uint8(1)]).arrayValue == [.uint8(1)])
        #expect(GGUFValue.uint8(1).arrayValue == nil)
    }
}

@Suite struct TypedAccessors {
    let file: GGUFFile

    init() throws {
        var w = GGUFWriter()
        w.set("s", .string("str"))
        w.set("i", .uint32(42))
        w.set("neg", .int8(-4))
        w.set("f", .float32(0.25))
        w.set("b", .bool(true))
        w.set("sa", .array([.string("x"), .string("y")]))
        w.set("ia", .array([.int32(-1), .int32(2)]))
        w.set("fa", .array([.float32(1.5)]))
        w.set("empty", .array([]))
        w.set("big", .uint64(UInt64.max))
        file = try GGUFFile(bytes: w.serialized())
    }

    @Test func successes() throws {
        #expect(try file.string("s") == "str")
        #expect(try file.integer("i") == 42)
        #expect(try file.integer("neg") == -4)
        #expect(try file.float("f") == 0.25)
        #expect(try file.float("i") == 42)  // integers widen to floats
        #expect(try file.bool("b"))
        #expect(try file.stringArray("sa") == ["x", "y"])
        #expect(try file.integerArray("ia") == [-1, 2])
        #expect(try file.floatArray("fa") == [1.5])
        #expect(try file.floatArray("ia") == [-1, 2])
        #expect(try file.stringArray("empty") == [])
    }

    @Test(arguments: ["nope", "general.architecture", ""])
    func missingKey(key: String) {
        #expect(gguferror { _ = try file.string(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.integer(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.float(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.bool(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.stringArray(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.integerArray(key) } == .missingKey(key))
        #expect(gguferror { _ = try file.floatArray(key) } == .missingKey(key))
    }

    @Test func typeMismatches() {
        #expect(gguferror { _ = try file.string("i") } == .typeMismatch(key: "i", expected: "string", found: "uint32"))
        #expect(gguferror { _ = try file.integer("s") } == .typeMismatch(key: "s", expected: "integer", found: "string"))
        #expect(gguferror { _ = try file.integer("f") } == .typeMismatch(key: "f", expected: "integer", found: "float32"))
        #expect(gguferror { _ = try file.integer("big") } == .typeMismatch(key: "big", expected: "integer", found: "uint64"))
        #expect(gguferror { _ = try file.float("b") } == .typeMismatch(key: "b", expected: "number", found: "bool"))
        #expect(gguferror { _ = try file.bool("i") } == .typeMismatch(key: "i", expected: "bool", found: "uint32"))
        #expect(gguferror { _ = try file.stringArray("s") } == .typeMismatch(key: "s", expected: "array[string]", found: "string"))
        #expect(gguferror { _ = try file.stringArray("ia") } == .typeMismatch(key: "ia", expected: "array[string]", found: "array containing int32"))
        #expect(gguferror { _ = try file.integerArray("sa") } == .typeMismatch(key: "sa", expected: "array[integer]", found: "array containing string"))
        #expect(gguferror { _ = try file.integerArray("fa") } != nil)
        #expect(gguferror { _ = try file.tensor("w") } == .missingTensor("w"))
        #expect(!file.hasTensor("w"))
    }

    @Test func errorDescriptionsAreSentences() {
        let errors: [GGUFError] = [
            .io(path: "/x", reason: "No such file"), .badMagic(found: 0x58554747), .unsupportedVersion(1),
            .truncated(offset: 10, needed: 8, fileSize: 12, what: "the tensor count"),
            .unknownValueType(raw: 13, key: "k"), .unknownTensorType(raw: 99, tensor: "t"),
            .tensorOutOfBounds(name: "t", offset: 100, byteCount: 4, fileSize: 50),
            .badTensorShape(name: "t", reason: "r"), .missingKey("k"),
            .typeMismatch(key: "k", expected: "string", found: "uint8"), .missingTensor("t"),
            .invalidUTF8(offset: 3), .unsupportedTensorType(.q2_K), .duplicateKey("k"), .duplicateTensor("t"),
            .badAlignment(tensor: "t", offset: 4, alignment: 32), .overlappingTensors("a", "b"),
            .invalidValue(key: "k", offset: 0, reason: "r"), .invalidRange(tensor: "t", reason: "r"),
        ]
        for e in errors {
            #expect(e.description.hasSuffix("."), "\(e)")
            #expect(!e.description.contains("\n"))
        }
        #expect(GGUFError.truncated(offset: 10, needed: 8, fileSize: 12, what: "the tensor count").description.contains("10"))
        #expect(GGUFError.missingKey("llama.block_count").description.contains("llama.block_count"))
    }
}
