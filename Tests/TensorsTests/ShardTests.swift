import Foundation
import GGUF
import Testing
@testable import Tensors

/// Weight shards in their execution format (no f32 copy, no re-quantization): a shard equals the
/// whole matrix restricted to its rows and columns, and joined shards (what a weight-gathered
/// layout all-gathers) equal the whole matrix — bitwise, in every format.
struct ShardTests {
    static let N = 40, K = 128

    /// One N × K matrix "w" in each source type: Q4_1 and Q8_0 blocks built from a pattern, and f32.
    static let file: GGUFFile = {
        var q4: [UInt8] = [], q8: [UInt8] = [], f32: [Float] = []
        for b in 0..<(N * K / 32) {
            for v in [Float16(0.01 + Float(b % 7) * 0.002), Float16(-0.05 - Float(b % 3) * 0.01)] {
                withUnsafeBytes(of: v.bitPattern) { q4 += $0 }
            }
            for i in 0..<16 { q4.append(UInt8((b * 7 + i * 3) & 0xFF)) }
            withUnsafeBytes(of: Float16(0.004 + Float(b % 5) * 0.001).bitPattern) { q8 += $0 }
            for i in 0..<32 { q8.append(UInt8(truncatingIfNeeded: (b * 11 + i * 29) % 255 - 127)) }
        }
        for i in 0..<(N * K) { f32.append(Float((i * 37) % 101) / 50 - 1) }
        var writer = GGUFWriter()
        for type in [GGMLType.q5_0, .q4_K, .q6_K] {
            writer.addTensor(name: type.name, dimensions: [type == .q5_0 ? K : KQ, N], type: type,
                             data: blocks(type, count: N * (type == .q5_0 ? K : KQ) / type.blockSize))
        }
        writer.addTensor(name: "q4_1", dimensions: [K, N], type: .q4_1, data: q4)
        writer.addTensor(name: "q8_0", dimensions: [K, N], type: .q8_0, data: q8)
        writer.addTensor(name: "f32", dimensions: [K, N], values: f32)
        return try! GGUFFile(bytes: writer.serialized())
    }()

    /// Inputs of the K-quant matrices (two 256-element super-blocks per row).
    static let KQ = 512

    /// `count` blocks of `type` from a byte pattern, with small f16 scales (d, and Q4_K's dmin).
    static func blocks(_ type: GGMLType, count: Int) -> [UInt8] {
        var state: UInt64 = UInt64(type.rawValue) &* 0x9E37_79B9_7F4A_7C15
        var bytes = (0..<(count * type.blockBytes)).map { _ -> UInt8 in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        let scales = type == .q4_K ? [0, 2] : type == .q6_K ? [208] : [0]
        for b in 0..<count {
            for (i, at) in scales.enumerated() {
                withUnsafeBytes(of: Float16(0.002 * Float(b % 5 + 1 + i)).bitPattern) {
                    bytes[b * type.blockBytes + at] = $0[0]
                    bytes[b * type.blockBytes + at + 1] = $0[1]
                }
            }
        }
        return bytes
    }

    /// A file holding one f32 matrix "w" (N × K, row-major values).
    static func file(_ values: [Float], _ N: Int, _ K: Int) throws -> GGUFFile {
        var writer = GGUFWriter()
        writer.addTensor(name: "w", dimensions: [K, N], values: values)
        return try GGUFFile(bytes: writer.serialized())
    }

    struct Case: CustomTestStringConvertible, Sendable {
        let tensor: String
        let format: WeightFormat
        let kind: StorageKind
        var testDescription: String { "\(tensor) as \(format)" }
    }
    static let cases = [
        Case(tensor: "q4_1", format: .native, kind: .q4_1), Case(tensor: "q8_0", format: .native, kind: .q8_0),
        Case(tensor: "q4_1", format: .int8, kind: .q8_0), Case(tensor: "f32", format: .int8, kind: .q8_0),
        Case(tensor: "q8_0", format: .f32, kind: .f32), Case(tensor: "f32", format: .native, kind: .f32),
    ]

    static func input(_ M: Int, _ K: Int) -> Matrix {
        Matrix(rows: M, columns: K, values: (0..<(M * K)).map { Float(($0 * 53) % 97) / 48 - 1 })
    }

    /// Rows 8..<24, three zero rows, rows 30..<40; columns 16..<80 (inside blocks at both ends),
    /// eight zero columns, 96..<128.
    @Test(arguments: cases)
    func shardEqualsWholeOnItsRowsAndColumns(_ c: Case) throws {
        let whole = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(c.tensor, 0..<Self.N)], columns: [.source(0..<Self.K)]),
                                     format: c.format)
        let spec = ShardSpec(rows: [.tensor(c.tensor, 8..<24), .zeros(3), .tensor(c.tensor, 30..<40)],
                             columns: [.source(16..<80), .zeros(8), .source(96..<128)])
        let shard = try LinearWeight(source: Self.file, spec: spec, format: c.format)
        #expect(shard.kind == c.kind && whole.kind == c.kind)
        #expect(shard.format == whole.format && shard.format == (c.kind == .f32 ? .f32 : c.format))
        #expect(shard.outputs == 29 && shard.inputs == 104)
        Self.expectShardEqualsWhole(shard, whole, M: 3, inputs: 104, K: Self.K, pieces: [(0, 16, 64), (72, 96, 32)])
    }

    /// `shard` (rows 8..<24, three zero rows, 30..<40 of `whole`) times inputs placed in the
    /// whole matrix's columns as `pieces` say — (shard column, whole column, count), zeros
    /// elsewhere — equals `whole` on those rows, bitwise.
    static func expectShardEqualsWhole(_ shard: LinearWeight, _ whole: LinearWeight, M: Int, inputs: Int, K: Int,
                                       pieces: [(Int, Int, Int)]) {
        let x = input(M, inputs), full = Matrix(rows: M, columns: K)
        for r in 0..<M {
            for (from, to, count) in pieces { for j in 0..<count { full[r, to + j] = x[r, from + j] } }
        }
        let expected = whole.apply(full, threads: WorkSplitter(threads: 1))
        let got = shard.apply(x, threads: WorkSplitter(threads: 1))
        let rows = Array(8..<24) + [nil, nil, nil] + Array(30..<40)
        for r in 0..<M {
            for (j, source) in rows.enumerated() { #expect(got[r, j] == (source.map { expected[r, $0] } ?? 0), "row \(r) output \(j)") }
        }
    }

    /// A 2 × 2 grid of shards (24 + 16 rows, so the first tile row ends inside a 16-channel
    /// panel), each sent as its stored bytes and joined, multiplies exactly as the whole matrix.
    @Test(arguments: cases)
    func joinedShardsEqualWhole(_ c: Case) throws {
        let whole = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(c.tensor, 0..<Self.N)], columns: [.source(0..<Self.K)]),
                                     format: c.format)
        let tiles = try [0..<24, 24..<40].map { rows in
            try [0..<64, 64..<128].map { columns in
                let t = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(c.tensor, rows)], columns: [.source(columns)]),
                                         format: c.format)
                return t.wireWords().withUnsafeBufferPointer { t.sameShape(wireWords: $0, inputSegments: t.inputSegments) }
            }
        }
        let joined = try LinearWeight.joining(tiles)
        #expect(joined.kind == c.kind && joined.format == whole.format && joined.outputs == Self.N && joined.inputs == Self.K)
        let x = Self.input(5, Self.K)
        #expect(joined.apply(x, threads: WorkSplitter(threads: 2)).values == whole.apply(x, threads: WorkSplitter(threads: 2)).values)
    }

    @Test func shardsOfDifferentFormatsAreNotJoined() throws {
        let spec = ShardSpec(rows: [.tensor("f32", 0..<16)], columns: [.source(0..<64)])
        let a = try LinearWeight(source: Self.file, spec: spec, format: .f32)
        let b = try LinearWeight(source: Self.file, spec: spec, format: .int8)
        #expect(throws: WeightError.self) { try LinearWeight.joining([[a, b]]) }
        // A file's Q8_0 blocks and int8's quantized ones share a storage kind, not a format.
        let q8 = ShardSpec(rows: [.tensor("q8_0", 0..<16)], columns: [.source(0..<64)])
        let native = try LinearWeight(source: Self.file, spec: q8, format: .native)
        let int8 = try LinearWeight(source: Self.file, spec: q8, format: .int8)
        #expect(native.kind == .q8_0 && int8.kind == .q8_0 && native.format == .native && int8.format == .int8)
        #expect(throws: WeightError.self) { try LinearWeight.joining([[native, int8]]) }
        #expect(throws: WeightError.emptyWeight) { try LinearWeight(source: Self.file, spec: ShardSpec(rows: [], columns: [.source(0..<64)]), format: .f32) }
    }

    /// Stored bytes per weight: f32 4, native the file's own blocks (Q4_1 20 and Q8_0 34 bytes
    /// per 32, Q6_K 210 per 256; Q4_K 144 per 256 plus its 6-bit scales and mins unpacked to a
    /// byte each, 148), int8 Q8_0 blocks (34 bytes per 32: 32 codes and an f16 scale).
    @Test(arguments: cases)
    func storedBytesAreTheFormats(_ c: Case) throws {
        let w = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(c.tensor, 0..<32)], columns: [.source(0..<Self.K)]),
                                 format: c.format)
        let perWeight: Double = switch c.kind { case .f32: 4; case .q4_1: 20.0 / 32; case .q8_0: 34.0 / 32; case .q5_0: 22.0 / 32
                                     case .q4_K: 148.0 / 256; case .q6_K: 210.0 / 256 }
        #expect(Double(w.byteCount) == perWeight * 32 * Double(Self.K))
    }

    /// K-quant shards keep whole 256-input super-blocks: columns 16..<200 and 300..<512 (inside
    /// both blocks) with a zero piece between, rows with zero rows between, equal the whole
    /// matrix bitwise on its rows and columns (each block's activations are the same inputs
    /// with zeros elsewhere, in both); a 2 × 2 grid of them, sent as bytes and joined, equals
    /// the whole matrix.
    @Test(arguments: [GGMLType.q4_K, .q6_K])
    func kQuantShardsAndJoinsEqualWhole(_ type: GGMLType) throws {
        let name = type.name, K = Self.KQ
        let whole = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(name, 0..<Self.N)], columns: [.source(0..<K)]),
                                     format: .native)
        #expect(whole.kind.rawValue == type.name && whole.byteCount == (Self.N + 15) / 16 * 2 * whole.kind.unitBytes)
        let shard = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(name, 8..<24), .zeros(3), .tensor(name, 30..<40)],
                                                                         columns: [.source(16..<200), .zeros(8), .source(300..<512)]),
                                     format: .native)
        #expect(shard.kind == whole.kind && shard.storedShape.inputs == 3 * 256)
        Self.expectShardEqualsWhole(shard, whole, M: 5, inputs: 184 + 8 + 212, K: K, pieces: [(0, 16, 184), (192, 300, 212)])
        let tiles = try [0..<24, 24..<40].map { rows in
            try [0..<256, 256..<512].map { columns in
                let t = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(name, rows)], columns: [.source(columns)]), format: .native)
                return t.wireWords().withUnsafeBufferPointer { t.sameShape(wireWords: $0, inputSegments: t.inputSegments) }
            }
        }
        let joined = try LinearWeight.joining(tiles)
        let y = Self.input(3, K)
        #expect(joined.apply(y, threads: WorkSplitter(threads: 2)).values == whole.apply(y, threads: WorkSplitter(threads: 2)).values)
    }

    /// Rows of Q5_0 beside rows of Q8_0 (Gemma's q|k|v in 9 layers) run in place as Q8_0 blocks
    /// of the Q5_0 values: each output equals the Q5_0 matrix's and the Q8_0 matrix's own, bitwise.
    @Test func q5_0BesideQ8_0RunsInPlaceExactly() throws {
        let columns: [ShardSpec.Columns] = [.source(0..<Self.K)]
        let mixed = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor("q5_0", 0..<16), .tensor("q8_0", 8..<24)], columns: columns),
                                     format: .native)
        let q5 = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor("q5_0", 0..<16)], columns: columns), format: .native)
        let q8 = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor("q8_0", 8..<24)], columns: columns), format: .native)
        #expect(mixed.kind == .q8_0 && q5.kind == .q5_0)
        #expect(mixed.byteCount == 32 * Self.K / 32 * 34)
        let x = Self.input(4, Self.K)
        let (y, a, b) = (mixed.apply(x, threads: WorkSplitter(threads: 1)), q5.apply(x, threads: WorkSplitter(threads: 1)),
                         q8.apply(x, threads: WorkSplitter(threads: 1)))
        for r in 0..<4 {
            for j in 0..<16 { #expect(y[r, j] == a[r, j] && y[r, 16 + j] == b[r, j], "row \(r) output \(j)") }
        }
    }

    /// The stored format follows every tensor of the whole matrix: a shard of only zero rows of a
    /// Q4_1 matrix is stored as Q4_1, and the Q5_0 rows of a matrix that also holds Q8_0 rows as
    /// Q8_0 — as the other devices' shards of the same matrix are.
    @Test func formatFollowsTheWholeMatrix() throws {
        let zeros = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.zeros(16)], columns: [.source(0..<Self.K)], of: ["q4_1"]),
                                     format: .native)
        #expect(zeros.kind == .q4_1)
        #expect(zeros.apply(Self.input(2, Self.K), threads: WorkSplitter(threads: 1)).values.allSatisfy { $0 == 0 })
        let q5Only = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor("q5_0", 0..<16)], columns: [.source(0..<Self.K)],
                                                                          of: ["q5_0", "q8_0"]), format: .native)
        let q5 = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor("q5_0", 0..<16)], columns: [.source(0..<Self.K)]),
                                  format: .native)
        #expect(q5Only.kind == .q8_0 && q5.kind == .q5_0)
        let x = Self.input(3, Self.K)
        #expect(q5Only.apply(x, threads: WorkSplitter(threads: 1)).values == q5.apply(x, threads: WorkSplitter(threads: 1)).values)
    }
}
