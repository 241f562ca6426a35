import Testing
import GGUF

/// A small valid file with metadata of several types and two tensors. The last tensor's
/// data ends exactly at a 32-byte boundary, so the file has no trailing padding and every
/// proper prefix is genuinely truncated.
private func smallFixture() -> [UInt8] {
    var w = GGUFWriter()
    w.set("general.architecture", .string("llama"))
    w.set("llama.embedding_length", .uint32(8))
    w.set("tokenizer.ggml.tokens", .array([.string("<s>"), .string("a"), .string("bc")]))
    w.set("nested", .array([.array([.int16(1)]), .array([])]))
    w.set("f", .float64(0.5))
    var q8: [UInt8] = []
    for b in 0..<2 { q8 += le16(Half.one) + (0..<32).map { UInt8($0 + b) } }
    w.addTensor(name: "token_embd.weight", dimensions: [32, 2], type: .q8_0, data: q8)
    w.addTensor(name: "norm.weight", dimensions: [8], values: [1, 2, 3, 4, 5, 6, 7, 8])
    return w.serialized()
}

@Suite struct CorruptInputs {
    @Test func fixtureIsValid() throws {
        let bytes = smallFixture()
        let f = try GGUFFile(bytes: bytes)
        #expect(f.tensors.count == 2)
        let norm = try f.tensor("norm.weight")
        #expect(norm.offset + norm.byteCount == bytes.count)
    }

    @Test func everyPrefixThrowsATypedError() {
        let bytes = smallFixture()
        var failures: [Int] = []
        for n in 0..<bytes.count {
            do {
                _ = try GGUFFile(bytes: Array(bytes[0..<n]))
                failures.append(n)
            } catch {
                switch error {
                case .truncated(let offset, let needed, let fileSize, _):
                    if fileSize != n || offset > n || offset + needed <= n { failures.append(n) }
                case .tensorOutOfBounds(_, let offset, let count, let fileSize):
                    if fileSize != n || offset + count <= n { failures.append(n) }
                default:
                    failures.append(n)
                }
            }
        }
        #expect(failures.isEmpty, "prefix lengths that did not give a truncation error: \(failures)")
    }

    @Test func truncationNamesWhatAndWhere() {
        let bytes = smallFixture()
        #expect(parseError([]) == .truncated(offset: 0, needed: 4, fileSize: 0, what: "the magic number"))
        #expect(parseError(Array(bytes[0..<6])) == .truncated(offset: 4, needed: 4, fileSize: 6, what: "the version"))
        #expect(parseError(Array(bytes[0..<12])) == .truncated(offset: 8, needed: 8, fileSize: 12, what: "the tensor count"))
        // Cut inside the first key ("general.architecture", 20 bytes at offset 32).
        guard case .truncated(32, 20, 40, let what) = parseError(Array(bytes[0..<40])) else {
            Issue.record("unexpected \(String(describing: parseError(Array(bytes[0..<40]))))"); return
        }
        #expect(what.contains("key of metadata entry #0"))
    }

    @Test func randomCorruptionNeverCrashes() {
        let bytes = smallFixture()
        var rng = SplitMix64(seed: 0x5EED)
        var parsed = 0, rejected = 0
        for _ in 0..<3000 {
            var m = bytes
            for _ in 0..<Int(rng.next() % 4 + 1) {
                let i = Int(rng.next() % UInt64(m.count))
                m[i] = rng.next() % 3 == 0 ? 0xFF : UInt8(truncatingIfNeeded: rng.next())
            }
            if let f = try? GGUFFile(bytes: m) {
                parsed += 1
                for t in f.tensors where t.type.isDequantizable { _ = try? f.dequantized(t) }
            } else {
                rejected += 1
            }
        }
        #expect(parsed + rejected == 3000)
        #expect(rejected > 0)
    }

    @Test func badMagic() {
        let b = Bytes()
        b.raw(Array("GGUX".utf8)).u32(3).u64(0).u64(0)
        #expect(parseError(b.data) == .badMagic(found: 0x5855_4747))
        #expect(parseError(Array("GGML\u{3}\0\0\0".utf8)) == .badMagic(found: 0x4C4D_4747))
    }

    @Test(arguments: [UInt32(0), 1, 4, 99, UInt32.max])
    func unsupportedVersion(version: UInt32) {
        let b = Bytes()
        b.header(version: version)
        #expect(parseError(b.data) == .unsupportedVersion(version))
    }

    @Test(arguments: [UInt32(13), 255, UInt32.max])
    func unknownValueType(raw: UInt32) {
        let b = Bytes()
        b.header(kvs: 1).str("some.key").u32(raw).u64(0)
        #expect(parseError(b.data) == .unknownValueType(raw: raw, key: "some.key"))
        let a = Bytes()
        a.header(kvs: 1).str("arr").u32(9).u32(raw).u64(1).u64(0)
        #expect(parseError(a.data) == .unknownValueType(raw: raw, key: "arr"))
    }

    @Test(arguments: [UInt32(4), 5, 31, 36, 42, 1000])
    func unknownTensorType(raw: UInt32) {
        var w = GGUFWriter()
        w.addTensor(name: "weird", dimensions: [32], rawType: raw, data: [UInt8](repeating: 0, count: 32))
        #expect(parseError(w.serialized()) == .unknownTensorType(raw: raw, tensor: "weird"))
    }

    @Test func tensorOffsetBeyondEOF() {
        let b = Bytes()
        b.header(tensors: 1).tensorInfo("t", dims: [8], type: 0, offset: 1 << 20)
        b.pad(to: 32)
        let dataStart = b.data.count
        b.raw([UInt8](repeating: 0, count: 32))
        #expect(parseError(b.data) == .tensorOutOfBounds(name: "t", offset: dataStart + (1 << 20), byteCount: 32, fileSize: b.data.count))
        // Offset so large that data start + offset overflows.
        let c = Bytes()
        c.header(tensors: 1).tensorInfo("t", dims: [8], type: 0, offset: UInt64.max - 31)
        c.pad(to: 32)
        guard case .tensorOutOfBounds(name: "t", _, 32, _) = parseError(c.data) else {
            Issue.record("got \(String(describing: parseError(c.data)))"); return
        }
    }

    @Test func tensorDataPartlyBeyondEOF() {
        var w = GGUFWriter()
        w.addTensor(name: "t", dimensions: [16], type: .f32, data: [UInt8](repeating: 0, count: 32))  // needs 64
        let bytes = w.serialized()
        #expect(parseError(bytes) == .tensorOutOfBounds(name: "t", offset: bytes.count - 32, byteCount: 64, fileSize: bytes.count))
    }

    @Test(arguments: [UInt64(1) << 62, UInt64.max, UInt64(Int.max), 1_000_000])
    func absurdArrayCount(count: UInt64) {
        for elementType: UInt32 in [0, 8, 9, 12] {
            let b = Bytes()
            b.header(kvs: 1).str("arr").u32(9).u32(elementType).u64(count).u64(0)
            guard case .truncated(let offset, _, let size, let what) = parseError(b.data) else {
                Issue.record("got \(String(describing: parseError(b.data)))"); continue
            }
            #expect(offset == b.data.count - 8 && size == b.data.count)
            #expect(what.contains("arr"))
        }
    }

    @Test(arguments: [UInt64(1) << 40, UInt64.max, UInt64(Int.max), 100])
    func absurdStringLength(length: UInt64) {
        let key = Bytes()
        key.header(kvs: 1).u64(length).raw(Array("abc".utf8))
        guard case .truncated(32, _, key.data.count, let w1) = parseError(key.data) else {
            Issue.record("got \(String(describing: parseError(key.data)))"); return
        }
        #expect(w1.contains("key of metadata entry #0"))
        let value = Bytes()
        value.header(kvs: 1).str("k").u32(8).u64(length).raw([1, 2, 3])
        guard case .truncated(_, _, _, let w2) = parseError(value.data) else {
            Issue.record("got \(String(describing: parseError(value.data)))"); return
        }
        #expect(w2.contains("'k'"))
        let name = Bytes()
        name.header(tensors: 1).u64(length).raw([0x61])
        guard case .truncated(_, _, _, let w3) = parseError(name.data) else {
            Issue.record("got \(String(describing: parseError(name.data)))"); return
        }
        #expect(w3.contains("tensor #0"))
    }

    @Test(arguments: [UInt64(1) << 40, UInt64.max, 2])
    func absurdTopLevelCounts(count: UInt64) {
        let k = Bytes()
        k.header(tensors: 0, kvs: count)
        guard case .truncated = parseError(k.data) else { Issue.record("kv count \(count)"); return }
        let t = Bytes()
        t.header(tensors: count, kvs: 0)
        guard case .truncated = parseError(t.data) else { Issue.record("tensor count \(count)"); return }
    }

    @Test(arguments: [UInt32(0), 5, 64, UInt32.max])
    func badDimensionCount(nDims: UInt32) {
        let b = Bytes()
        b.header(tensors: 1).str("t").u32(nDims)
        for _ in 0..<min(nDims, 5) { b.u64(2) }
        b.u32(0).u64(0)
        b.pad(to: 32)
        b.raw([UInt8](repeating: 0, count: 256))
        guard case .badTensorShape(name: "t", _) = parseError(b.data) else {
            Issue.record("got \(String(describing: parseError(b.data)))"); return
        }
    }

    @Test(arguments: [
        [UInt64(0)], [4, 0], [UInt64.max], [UInt64(Int.max) + 1], [1 << 40, 1 << 40], [1 << 31, 1 << 31, 1 << 31],
    ])
    func badDimensions(dims: [UInt64]) {
        let b = Bytes()
        b.header(tensors: 1).tensorInfo("t", dims: dims, type: 0, offset: 0)
        b.pad(to: 32)
        b.raw([UInt8](repeating: 0, count: 64))
        guard case .badTensorShape(name: "t", _) = parseError(b.data) else {
            Issue.record("got \(String(describing: parseError(b.data)))"); return
        }
    }

    @Test func rowLengthNotAMultipleOfTheBlockSize() {
        var w = GGUFWriter()
        w.addTensor(name: "q", dimensions: [33, 2], type: .q8_0, data: [UInt8](repeating: 0, count: 136))
        guard case .badTensorShape(name: "q", let reason) = parseError(w.serialized()) else {
            Issue.record("got \(String(describing: parseError(w.serialized())))"); return
        }
        #expect(reason.contains("33"))
    }

    @Test func misalignedOffset() {
        let b = Bytes()
        b.header(tensors: 1).tensorInfo("t", dims: [4], type: 0, offset: 4)
        b.pad(to: 32)
        b.raw([UInt8](repeating: 0, count: 64))
        #expect(parseError(b.data) == .badAlignment(tensor: "t", offset: 4, alignment: 32))
    }

    @Test func overlappingTensors() {
        let b = Bytes()
        b.header(tensors: 2).tensorInfo("a", dims: [16], type: 0, offset: 0).tensorInfo("b", dims: [4], type: 0, offset: 32)
        b.pad(to: 32)
        b.raw([UInt8](repeating: 0, count: 96))
        #expect(parseError(b.data) == .overlappingTensors("a", "b"))
    }

    @Test func duplicates() {
        let k = Bytes()
        k.header(kvs: 2).str("k").u32(0).u8(1).str("k").u32(0).u8(2)
        #expect(parseError(k.data) == .duplicateKey("k"))
        var w = GGUFWriter()
        w.addTensor(name: "t", dimensions: [1], values: [1])
        w.addTensor(name: "t", dimensions: [1], values: [2])
        #expect(parseError(w.serialized()) == .duplicateTensor("t"))
    }

    @Test func invalidUTF8() {
        let key = Bytes()
        key.header(kvs: 1).u64(2).raw([0xC3, 0x28]).u32(0).u8(0)
        #expect(parseError(key.data) == .invalidUTF8(offset: 24))
        let value = Bytes()
        value.header(kvs: 1).str("k").u32(8).u64(3).raw([0x61, 0xFF, 0x62])
        #expect(parseError(value.data) == .invalidUTF8(offset: 24 + 9 + 4))
        let name = Bytes()
        name.header(tensors: 1).u64(1).raw([0x80]).u32(1).u64(1).u32(0).u64(0)
        #expect(parseError(name.data) == .invalidUTF8(offset: 24))
    }

    @Test func arraysNestedTooDeep() {
        let b = Bytes()
        b.header(kvs: 1).str("deep").u32(9)
        for _ in 0..<100_000 { b.u32(9).u64(1) }
        b.u32(0).u64(0)
        guard case .invalidValue(key: "deep", _, _) = parseError(b.data) else {
            Issue.record("got \(String(describing: parseError(b.data)))"); return
        }
    }

    @Test(arguments: [GGUFValue.uint32(0), .uint32(3), .uint32(48), .int32(-32), .string("32"), .float32(32)])
    func badGeneralAlignment(value: GGUFValue) {
        var w = GGUFWriter()
        w.set("general.alignment", value)
        let e = parseError(w.serialized())
        switch e {
        case .invalidValue(key: "general.alignment", _, _), .typeMismatch(key: "general.alignment", _, _): break
        default: Issue.record("got \(String(describing: e))")
        }
    }
}

/// Deterministic PRNG for the fuzz test.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
