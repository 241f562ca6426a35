import Testing
import GGUF

/// Every block below is built byte by byte with known scales and quants; expected
/// floats are computed by hand from the format definition.
@Suite struct Dequantization {
    @Test func halfConversionSpotValues() {
        #expect(halfToFloat(0x0000) == 0)
        #expect(halfToFloat(0x8000).sign == .minus && halfToFloat(0x8000) == 0)
        #expect(halfToFloat(0x3C00) == 1)
        #expect(halfToFloat(0xC000) == -2)
        #expect(halfToFloat(0x3555) == 0.333251953125)
        #expect(halfToFloat(0x7BFF) == 65504)
        #expect(halfToFloat(0x0001) == 0x1p-24)          // smallest subnormal
        #expect(halfToFloat(0x03FF) == 1023 * 0x1p-24)   // largest subnormal
        #expect(halfToFloat(0x0400) == 0x1p-14)          // smallest normal
        #expect(halfToFloat(0x7C00) == .infinity)
        #expect(halfToFloat(0xFC00) == -.infinity)
        #expect(halfToFloat(0x7E00).isNaN)
        #expect(bfloat16ToFloat(0x3F80) == 1)
        #expect(bfloat16ToFloat(0xC040) == -3)
        #expect(bfloat16ToFloat(0x3EAB) == Float(bitPattern: 0x3EAB_0000))
        #expect(bfloat16ToFloat(0x7F80) == .infinity)
    }

    #if !(os(macOS) && arch(x86_64))
    @Test func halfConversionMatchesFloat16ForAllBitPatterns() {
        var mismatches = 0
        for bits in 0...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let got = halfToFloat(bits)
            if expected.isNaN ? !got.isNaN : expected.bitPattern != got.bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }
    #endif

    @Test func f32() throws {
        var bytes: [UInt8] = [0]  // misaligned start on purpose
        for v: Float in [1.5, -0.0, 3e38, -7] { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        var out = [Float](repeating: .nan, count: 4)
        try bytes.withUnsafeBytes { raw in
            try dequantize(.f32, from: raw.baseAddress! + 1, count: 4, into: &out)
        }
        #expect(out == [1.5, 0, 3e38, -7])
    }

    @Test func f16() throws {
        let bytes: [UInt8] = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x34, 0xFF, 0x7B, 0x01, 0x00]
        let expected: [Float] = [1, -2, 0.25, 65504, 0x1p-24]
        #expect(try dequantizeBytes(.f16, bytes, count: 5) == expected)
    }

    @Test func bf16() throws {
        let bytes: [UInt8] = [0x80, 0x3F, 0x40, 0xC0, 0x00, 0x00, 0x49, 0x40]
        let expected: [Float] = [1, -3, 0, 3.140625]
        #expect(try dequantizeBytes(.bf16, bytes, count: 4) == expected)
    }

    @Test func q8_0() throws {
        // d = 0.5; q[j] = 8j - 128 (int8) → x[j] = (8j - 128) * 0.5 = 4j - 64.
        // Second block: d = -2, q = 0, 1, -1, 2, -2, ... → x = q * -2.
        var bytes = le16(Half.half)
        for j in 0..<32 { bytes.append(UInt8(bitPattern: Int8(8 * j - 128))) }
        bytes += le16(0xC000)
        var q2: [Int8] = []
        for j in 0..<32 {
            let v: Int = j % 2 == 0 ? -(j / 2) : (j + 1) / 2
            q2.append(Int8(v))
        }
        bytes += q2.map { UInt8(bitPattern: $0) }
        #expect(bytes.count == 2 * GGMLType.q8_0.blockBytes)
        let out = try dequantizeBytes(.q8_0, bytes, count: 64)
        #expect(out[0] == -64)
        #expect(out[16] == 0)
        #expect(out[31] == 60)
        let first: [Float] = (0..<32).map { (j: Int) -> Float in Float(4 * j - 64) }
        #expect(Array(out[0..<32]) == first)
        let start: [Float] = [0, -2, 2, -4]
        #expect(Array(out[32..<36]) == start)
        let second: [Float] = q2.map { (q: Int8) -> Float in Float(q) * -2 }
        #expect(Array(out[32..<64]) == second)
    }

    @Test func q4_0() throws {
        // d = 2; byte j holds low nibble j (element j) and high nibble 15 - j (element 16 + j).
        // x = (q - 8) * 2.
        var bytes = le16(Half.two)
        for j in 0..<16 { bytes.append(UInt8(j) | UInt8(15 - j) << 4) }
        #expect(bytes.count == GGMLType.q4_0.blockBytes)
        let out = try dequantizeBytes(.q4_0, bytes, count: 32)
        let head: [Float] = [-16, -14, -12, -10]
        #expect(Array(out[0..<4]) == head)
        #expect(out[8] == 0)
        #expect(out[15] == 14)
        let mid: [Float] = [14, 12, 10, 8]
        #expect(Array(out[16..<20]) == mid)
        #expect(out[31] == -16)
        let lo: [Float] = (0..<16).map { (j: Int) -> Float in Float((j - 8) * 2) }
        let hi: [Float] = (0..<16).map { (j: Int) -> Float in Float((7 - j) * 2) }
        #expect(out == lo + hi)
    }

    @Test func q4_1() throws {
        // d = 0.25, m = -1; same nibble order as Q4_0. x = q * 0.25 - 1.
        // Second block: d = 1, m = 2, all bytes 0xA3 → low 3 → 5, high 10 → 12.
        var bytes = le16(Half.quarter) + le16(Half.minusOne)
        for j in 0..<16 { bytes.append(UInt8(j) | UInt8(15 - j) << 4) }
        bytes += le16(Half.one) + le16(Half.two) + [UInt8](repeating: 0xA3, count: 16)
        #expect(bytes.count == 2 * GGMLType.q4_1.blockBytes)
        let out = try dequantizeBytes(.q4_1, bytes, count: 64)
        #expect(out[0] == -1)
        #expect(out[4] == 0)
        #expect(out[15] == 2.75)
        #expect(out[16] == 2.75)
        #expect(out[31] == -1)
        let lo: [Float] = (0..<16).map { (j: Int) -> Float in Float(j) * 0.25 - 1 }
        let hi: [Float] = (0..<16).map { (j: Int) -> Float in Float(15 - j) * 0.25 - 1 }
        #expect(Array(out[0..<32]) == lo + hi)
        #expect(Array(out[32..<48]) == [Float](repeating: 5, count: 16))
        #expect(Array(out[48..<64]) == [Float](repeating: 12, count: 16))
    }

    @Test func q5_0AndQ5_1() throws {
        // Nibbles as in Q4_0 (byte j: low j, high 15 - j); qh = 0xF0F0_00FF: fifth bit set for
        // elements 0..<8 (low half) and for high-half elements 16 + j with j in 4..<8 and 12..<16.
        let qh: UInt32 = 0xF0F0_00FF
        var body: [UInt8] = withUnsafeBytes(of: qh.littleEndian) { Array($0) }
        for j in 0..<16 { body.append(UInt8(j) | UInt8(15 - j) << 4) }
        func fifth(_ e: Int) -> Int { Int(qh >> e) & 1 }   // bit e of qh belongs to element e
        let q: [Int] = (0..<16).map { $0 + 16 * fifth($0) } + (0..<16).map { 15 - $0 + 16 * fifth($0 + 16) }
        // Q5_0, d = 2: x = (q - 16) * 2.
        let q5_0 = le16(Half.two) + body
        #expect(q5_0.count == GGMLType.q5_0.blockBytes)
        let a = try dequantizeBytes(.q5_0, q5_0, count: 32)
        #expect(a == q.map { Float(($0 - 16) * 2) })
        #expect(a[0] == 0 && a[8] == -16 && a[31] == 0 && a[20] == 22)
        // Q5_1, d = 0.25, m = -1: x = q * 0.25 - 1.
        let q5_1 = le16(Half.quarter) + le16(Half.minusOne) + body
        #expect(q5_1.count == GGMLType.q5_1.blockBytes)
        let b = try dequantizeBytes(.q5_1, q5_1, count: 32)
        #expect(b == q.map { Float($0) * 0.25 - 1 })
        #expect(b[7] == 4.75 && b[31] == 3)
    }

    @Test func q5_K() throws {
        // Scales and mins packed as in the Q4_K test (d = 1, dmin = 0.5); nibbles as there;
        // qh[l] = 0b1010_0101 for even l, 0 for odd l: chunk c's low half takes
        // bit 2c, its high half bit 2c + 1.
        let scales: [Float] = [1, 2, 3, 4, 33, 40, 50, 63]
        let mins: [Float] = [0, 1, 2, 3, 34, 45, 60, 17]
        let packed: [UInt8] = [129, 130, 195, 196, 128, 129, 194, 67, 33, 216, 194, 31]
        let qh: [UInt8] = (0..<32).map { $0 % 2 == 0 ? 0b1010_0101 : 0 }
        var bytes = le16(Half.one) + le16(Half.half) + packed + qh
        for i in 0..<128 { bytes.append(UInt8(i % 16) | UInt8(15 - i % 16) << 4) }
        #expect(bytes.count == GGMLType.q5_K.blockBytes)
        let out = try dequantizeBytes(.q5_K, bytes, count: 256)
        var expected = [Float](repeating: 0, count: 256)
        for c in 0..<4 {
            for l in 0..<32 {
                let i = 32 * c + l
                let lowBit = Int(qh[l] >> (2 * c)) & 1, highBit = Int(qh[l] >> (2 * c + 1)) & 1
                expected[64 * c + l] = scales[2 * c] * Float(i % 16 + 16 * lowBit) - 0.5 * mins[2 * c]
                expected[64 * c + 32 + l] = scales[2 * c + 1] * Float(15 - i % 16 + 16 * highBit) - 0.5 * mins[2 * c + 1]
            }
        }
        #expect(out == expected)
        #expect(out[0] == 16 && out[64 + 32] == 58.5)   // element 0: q = 0 + 16; chunk 1 high half, l = 0: q = 15 (bit 3 clear), scale 4, min 3
    }

    @Test func q4_K() throws {
        // d = 1, dmin = 0.5. Sub-block scales 1,2,3,4,33,40,50,63 and mins 0,1,2,3,34,45,60,17,
        // packed by hand into 12 bytes:
        //  bytes 0-3: scale[j] low 6 bits | (scale[j+4] >> 4) << 6 → 1|2<<6, 2|2<<6, 3|3<<6, 4|3<<6
        //  bytes 4-7: min[j] low 6 bits | (min[j+4] >> 4) << 6    → 0|2<<6, 1|2<<6, 2|3<<6, 3|1<<6
        //  bytes 8-11: scale[j+4] & 15 | (min[j+4] & 15) << 4      → 1|2<<4, 8|13<<4, 2|12<<4, 15|1<<4
        let scales: [Float] = [1, 2, 3, 4, 33, 40, 50, 63]
        let mins: [Float] = [0, 1, 2, 3, 34, 45, 60, 17]
        let packed: [UInt8] = [129, 130, 195, 196, 128, 129, 194, 67, 33, 216, 194, 31]
        // qs byte i (0..<128): low nibble i % 16, high nibble 15 - i % 16. Chunk c = i / 32 covers
        // elements 64c..<64c+64: low nibbles → sub-block 2c, high nibbles → sub-block 2c+1.
        var bytes = le16(Half.one) + le16(Half.half) + packed
        for i in 0..<128 { bytes.append(UInt8(i % 16) | UInt8(15 - i % 16) << 4) }
        #expect(bytes.count == GGMLType.q4_K.blockBytes)
        let out = try dequantizeBytes(.q4_K, bytes, count: 256)

        var expected = [Float](repeating: 0, count: 256)
        for c in 0..<4 {
            for l in 0..<32 {
                let lo = Float(l % 16), hi = Float(15 - l % 16)
                expected[64 * c + l] = scales[2 * c] * lo - 0.5 * mins[2 * c]
                expected[64 * c + 32 + l] = scales[2 * c + 1] * hi - 0.5 * mins[2 * c + 1]
            }
        }
        #expect(out == expected)
        // Hand-evaluated spot values.
        #expect(out[0] == 0)           // 1*0 - 0.5*0
        #expect(out[1] == 1)           // 1*1 - 0
        #expect(out[32] == 29.5)       // 2*15 - 0.5*1
        #expect(out[69] == 14)         // 3*5 - 0.5*2
        #expect(out[131] == 82)        // 33*3 - 0.5*34
        #expect(out[163] == 457.5)     // 40*12 - 0.5*45
        #expect(out[192] == -30)       // 50*0 - 0.5*60
        #expect(out[224] == 936.5)     // 63*15 - 0.5*17
        #expect(out[255] == -8.5)      // 63*0 - 0.5*17
    }

    @Test func q6_K() throws {
        // Layout: ql[128], qh[64], scales[16] (int8), d (f16). d = 0.5.
        // Half h (elements 128h..<128h+128), l in 0..<32:
        //   element +l     : low  nibble of ql[64h + l]      | qh[32h + l] bits 0-1 << 4
        //   element +32+l  : low  nibble of ql[64h + 32 + l] | qh bits 2-3 << 4
        //   element +64+l  : high nibble of ql[64h + l]      | qh bits 4-5 << 4
        //   element +96+l  : high nibble of ql[64h + 32 + l] | qh bits 6-7 << 4
        // value = d * scale[element / 16] * (q - 32).
        var ql = [UInt8](repeating: 0x21, count: 32) + [UInt8](repeating: 0x87, count: 32)
            + [UInt8](repeating: 0x43, count: 32) + [UInt8](repeating: 0x65, count: 32)
        var qh = [UInt8](repeating: 0xE4, count: 32) + [UInt8](repeating: 0x1B, count: 32)
        ql[5] = 0x2F   // element 5: low nibble 15 → q = 15 → -17
        qh[40] = 0x00  // half 1, l = 8: every group loses its high bits
        let scales: [Int8] = [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8]
        let bytes = ql + qh + scales.map { UInt8(bitPattern: $0) } + le16(Half.half)
        #expect(bytes.count == GGMLType.q6_K.blockBytes)
        let out = try dequantizeBytes(.q6_K, bytes, count: 256)

        // Per 32-element group q - 32, worked out by hand:
        // half 0: g0 = 1|0<<4 = 1 → -31; g1 = 7|1<<4 = 23 → -9; g2 = 2|2<<4 = 34 → 2; g3 = 8|3<<4 = 56 → 24
        // half 1: g0 = 3|3<<4 = 51 → 19; g1 = 5|2<<4 = 37 → 5; g2 = 4|1<<4 = 20 → -12; g3 = 6|0 = 6 → -26
        let groupQ: [Float] = [-31, -9, 2, 24, 19, 5, -12, -26]
        var expected: [Float] = (0..<256).map { (e: Int) -> Float in 0.5 * Float(scales[e / 16]) * groupQ[e / 32] }
        expected[5] = 0.5 * 1 * -17
        expected[128 + 8] = 0.5 * 5 * (3 - 32)   // scale index 8
        expected[160 + 8] = 0.5 * 6 * (5 - 32)   // scale index 10
        expected[192 + 8] = 0.5 * 7 * (4 - 32)   // scale index 12
        expected[224 + 8] = 0.5 * 8 * (6 - 32)   // scale index 14 (g3 had no high bits anyway)
        #expect(out == expected)
        #expect(out[0] == -15.5)    // 0.5 * 1 * -31
        #expect(out[16] == 15.5)    // 0.5 * -1 * -31
        #expect(out[5] == -8.5)
        #expect(out[40] == -9)      // 0.5 * 2 * -9
        #expect(out[127] == -48)    // 0.5 * -4 * 24
        #expect(out[136] == -72.5)  // 0.5 * 5 * -29
        #expect(out[255] == 104)    // 0.5 * -8 * -26
    }

    @Test func multipleQ6KBlocksUseTheirOwnScale() throws {
        // Two blocks identical except d (0.5 then 2): the second must be exactly 4x the first.
        var block = [UInt8](repeating: 0x21, count: 128) + [UInt8](repeating: 0xE4, count: 64)
        block += [UInt8](repeating: 3, count: 16)
        let bytes = block + le16(Half.half) + block + le16(Half.two)
        let out = try dequantizeBytes(.q6_K, bytes, count: 512)
        for i in 0..<256 { #expect(out[256 + i] == 4 * out[i]) }
        #expect(out[0] == 0.5 * 3 * -31)
    }

    @Test(arguments: [GGMLType.q4_0, .q4_1, .q8_0, .q4_K, .q6_K])
    func countMustBeAMultipleOfTheBlockSize(type: GGMLType) {
        let bytes = [UInt8](repeating: 0, count: 1024)
        let e = gguferror { _ = try dequantizeBytes(type, bytes, count: type.blockSize + 1) }
        guard case .invalidRange = e else { Issue.record("got \(String(describing: e))"); return }
    }

    @Test(arguments: GGMLType.allCases.filter { !$0.isDequantizable })
    func unsupportedTypesThrow(type: GGMLType) {
        let bytes = [UInt8](repeating: 0, count: 1024)
        #expect(gguferror { _ = try dequantizeBytes(type, bytes, count: type.blockSize) } == .unsupportedTensorType(type))
    }

    @Test func requiredTypesAreDequantizable() {
        for t: GGMLType in [.f32, .f16, .bf16, .q4_0, .q4_1, .q8_0, .q4_K, .q6_K] { #expect(t.isDequantizable) }
    }

    @Test func typeTable() {
        #expect(GGMLType.f32.rawValue == 0 && GGMLType.bf16.rawValue == 30 && GGMLType.q6_K.rawValue == 14)
        #expect(GGMLType.q8_0.blockSize == 32 && GGMLType.q8_0.blockBytes == 34)
        #expect(GGMLType.q4_0.blockBytes == 18 && GGMLType.q4_1.blockBytes == 20)
        #expect(GGMLType.q4_K.blockSize == 256 && GGMLType.q4_K.blockBytes == 144)
        #expect(GGMLType.q6_K.blockSize == 256 && GGMLType.q6_K.blockBytes == 210)
        #expect(GGMLType.f16.blockSize == 1 && GGMLType.f16.blockBytes == 2)
        #expect(GGMLType(rawValue: 4) == nil && GGMLType(rawValue: 5) == nil)
    }

    @Test func tensorDequantizationThroughTheFile() throws {
        // A Q4_0 tensor of 2 rows x 64 columns: 4 blocks, each d = 1, all nibbles = row-block index.
        var data: [UInt8] = []
        for b in 0..<4 { data += le16(Half.one) + [UInt8](repeating: UInt8(b) | UInt8(b) << 4, count: 16) }
        var w = GGUFWriter()
        w.addTensor(name: "q", dimensions: [64, 2], type: .q4_0, data: data)
        w.addTensor(name: "k", dimensions: [256], type: .q2_K, data: [UInt8](repeating: 0, count: 84))
        let f = try GGUFFile(bytes: w.serialized())
        let t = try f.tensor("q")
        #expect(t.rowBytes == 36 && t.rowCount == 2 && t.rowLength == 64 && t.byteCount == 72)
        let all = try f.dequantized(t)
        let want: [Float] = (0..<4).flatMap { (b: Int) -> [Float] in [Float](repeating: Float(b - 8), count: 32) }
        #expect(all == want)
        var row = [Float](repeating: .nan, count: 64)
        try f.dequantizeRows(t, rows: 1..<2, into: &row)
        #expect(row == Array(all[64..<128]))
        try f.dequantizeRows(t, rows: 0..<0, into: &row)
        #expect(gguferror { try f.dequantizeRows(t, rows: 1..<3, into: &row) } != nil)
        #expect(gguferror { _ = try f.dequantized(f.tensor("k")) } == .unsupportedTensorType(.q2_K))
        // A hand-made tensor description that does not belong to this file.
        let foreign = GGUFTensorInfo(name: "x", dimensions: [64, 2], type: .q4_0, offset: f.fileSize - 10, byteCount: 72)
        #expect(gguferror { _ = try f.dequantized(foreign) } == .tensorOutOfBounds(name: "x", offset: f.fileSize - 10, byteCount: 72, fileSize: f.fileSize))
        let lying = GGUFTensorInfo(name: "y", dimensions: [64, 2], type: .q4_0, offset: 0, byteCount: 4)
        guard case .badTensorShape = gguferror({ _ = try f.dequantized(lying) }) else { Issue.record("expected badTensorShape"); return }
    }
}
