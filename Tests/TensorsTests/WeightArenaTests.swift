import Testing
@testable import Tensors

struct WeightArenaTests {
    /// Pieces are 64-byte aligned and disjoint, across chunks and for a piece larger than a chunk;
    /// weights carved from an arena multiply as weights allocated alone.
    @Test func piecesAreAlignedAndDisjoint() throws {
        let arena = WeightArena()
        let sizes = [1, 63, 64, 65, 1000, WeightArena.chunkBytes - 100, 3000, WeightArena.chunkBytes + 5, 17]
        let pieces = sizes.map { arena.allocate($0)! }
        for (i, (p, n)) in zip(pieces, sizes).enumerated() {
            #expect(Int(bitPattern: p) % 64 == 0)
            p.initializeMemory(as: UInt8.self, repeating: UInt8(i + 1), count: n)
        }
        for (i, (p, n)) in zip(pieces, sizes).enumerated() {
            let bytes = UnsafeRawBufferPointer(start: p, count: n)
            #expect(bytes.allSatisfy { $0 == UInt8(i + 1) }, "piece \(i) was overwritten")
        }
    }

    @Test(arguments: [WeightFormat.f32, .int8])
    func weightsFromAnArenaEqualWeightsAlone(_ format: WeightFormat) throws {
        let (N, K) = (40, 96)
        let values = (0..<(N * K)).map { Float(($0 * 37) % 101) / 50 - 1 }
        let file = try ShardTests.file(values, N, K)
        let spec = ShardSpec(rows: [.tensor("w", 0..<N)], columns: [.source(0..<K)])
        let alone = try LinearWeight(source: file, spec: spec, format: format)
        let carved = try LinearWeight(source: file, spec: spec, format: format, arena: WeightArena())
        let x = ShardTests.input(3, K)
        #expect(carved.apply(x, threads: WorkSplitter(threads: 1)).values == alone.apply(x, threads: WorkSplitter(threads: 1)).values)
    }
}
