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
        writer.addTensor(name: "q4_1", dimensions: [K, N], type: .q4_1, data: q4)
        writer.addTensor(name: "q8_0", dimensions: [K, N], type: .q8_0, data: q8)
        writer.addTensor(name: "f32", dimensions: [K, N], values: f32)
        return try! GGUFFile(bytes: writer.serialized())
    }()

    struct Case: CustomTestStringConvertible, Sendable {
        let tensor: String
        let format: WeightFormat
        let kind: StorageKind
        var testDescription: String { "\(tensor) as \(format)" }
    }
    static let cases = [
        Case(tensor: "q4_1", format: .native, kind: .q4_1), Case(tensor: "q8_0", format: .native, kind: .q8_0),
        Case(tensor: "q4_1", format: .int8, kind: .int8), Case(tensor: "f32", format: .int8, kind: .int8),
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
        #expect(shard.outputs == 29 && shard.inputs == 104)
        let M = 3
        let x = Self.input(M, 104)
        // The same inputs at their columns of the whole matrix, zeros elsewhere.
        let full = Matrix(rows: M, columns: Self.K)
        for r in 0..<M {
            for j in 0..<64 { full[r, 16 + j] = x[r, j] }
            for j in 0..<32 { full[r, 96 + j] = x[r, 72 + j] }
        }
        let expected = whole.apply(full, threads: WorkSplitter(threads: 1))
        let got = shard.apply(x, threads: WorkSplitter(threads: 1))
        let rows = Array(8..<24) + [nil, nil, nil] + Array(30..<40)
        for r in 0..<M {
            for (j, source) in rows.enumerated() {
                #expect(got[r, j] == (source.map { expected[r, $0] } ?? 0), "row \(r) output \(j)")
            }
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
                return t.wireWords.withUnsafeBufferPointer { t.sameShape(wireWords: $0, inputSegments: t.inputSegments) }
            }
        }
        let joined = try LinearWeight.joining(tiles)
        #expect(joined.kind == c.kind && joined.outputs == Self.N && joined.inputs == Self.K)
        let x = Self.input(5, Self.K)
        #expect(joined.apply(x, threads: WorkSplitter(threads: 2)).values == whole.apply(x, threads: WorkSplitter(threads: 2)).values)
    }

    @Test func shardsOfDifferentFormatsAreNotJoined() throws {
        let spec = ShardSpec(rows: [.tensor("f32", 0..<16)], columns: [.source(0..<64)])
        let a = try LinearWeight(source: Self.file, spec: spec, format: .f32)
        let b = try LinearWeight(source: Self.file, spec: spec, format: .int8)
        #expect(throws: WeightError.self) { try LinearWeight.joining([[a, b]]) }
        #expect(throws: WeightError.emptyWeight) { try LinearWeight(source: Self.file, spec: ShardSpec(rows: [], columns: [.source(0..<64)]), format: .f32) }
    }

    /// Stored bytes per weight: f32 4, int8 1.25 (a 32-input group's codes plus an f32 scale and
    /// minimum), native the file's own blocks (Q4_1 20 and Q8_0 34 bytes per 32).
    @Test(arguments: cases)
    func storedBytesAreTheFormats(_ c: Case) throws {
        let w = try LinearWeight(source: Self.file, spec: ShardSpec(rows: [.tensor(c.tensor, 0..<32)], columns: [.source(0..<Self.K)]),
                                 format: c.format)
        let perWeight: Double = switch c.kind { case .f32: 4; case .int8: 1.25; case .q4_1: 20.0 / 32; case .q8_0: 34.0 / 32; case .q5_0: 22.0 / 32 }
        #expect(Double(w.byteCount) == perWeight * 32 * Double(Self.K))
    }
}
