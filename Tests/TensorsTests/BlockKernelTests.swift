import CKernels
import GGUF
import Foundation
import Testing

/// The in-place GGML block kernels against naive dot products over hand-dequantized blocks.
struct BlockKernelTests {
    /// Rows of a 32-element block format (N rows of K/32 blocks) repacked 16 to a panel (a
    /// partial last panel padded with zero rows), times M activation rows quantized to Q8
    /// blocks: y (M × N), the quantized activations, their scales and integer sums.
    static func repacked(_ type: Int, _ rows: [UInt8], N: Int, K: Int, blockBytes: Int, x: [Float], M: Int)
        -> (y: [Float], q: [Int8], d: [Float], sums: [Int32]) {
        let nb = K / 32, panels = (N + 15) / 16, padded = panels * 16, unit = 16 * blockBytes
        let bytes = rows + [UInt8](repeating: 0, count: (padded - N) * nb * blockBytes)
        var packed = [UInt8](repeating: 0, count: panels * nb * unit)
        bytes.withUnsafeBufferPointer { b in
            packed.withUnsafeMutableBufferPointer { p in
                for i in 0..<panels {
                    mi_pack_blocks32(Int32(type), b.baseAddress! + i * 16 * nb * blockBytes, Int64(nb * blockBytes), Int32(nb),
                                     p.baseAddress! + i * nb * unit)
                }
            }
        }
        var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * nb), s = d
        var start = [Int32](repeating: 0, count: M * nb)
        mi_quantize_q8_blocks(Int32(type), x, Int64(K), Int32(M), Int32(K), &q, &d, &s, &start)
        var full = [Float](repeating: 0, count: M * padded)
        mi_gemm_blocks32(Int32(type), q, d, s, start, Int32(M), Int32(K), packed, 0, Int32(padded), &full, Int64(padded))
        let sums = (0..<(M * nb)).map { b in (0..<32).reduce(Int32(0)) { $0 + Int32(q[b * 32 + $1]) } }
        let offset: Int32 = type == MI_Q4_1 ? 0 : type == MI_Q5_0 ? 16 : 128
        #expect(start == sums.map { -offset * $0 }, "each block's integer start is −offset·Σq")
        return ((0..<(M * N)).map { full[$0 / N * padded + $0 % N] }, q, d, sums)
    }

    /// Q4_1 rows built by hand (f16 d and m chosen exactly representable), repacked 16 rows to
    /// a panel (5 and 37 rows: a partial panel; 1 to 9 activation rows: every tile height),
    /// activations quantized to Q8 blocks: the error is only the activation rounding (≤ d_x/2
    /// per element).
    @Test(arguments: [(5, 1), (5, 3), (37, 6), (37, 9), (64, 1), (64, 2)])
    func q4_1MatchesHandDequantized(_ N: Int, _ M: Int) {
        let K = 64, nb = K / 32
        var bytes = [UInt8](repeating: 0, count: N * nb * 20)
        var dense = [Float](repeating: 0, count: N * K)
        for n in 0..<N {
            for b in 0..<nb {
                let at = (n * nb + b) * 20
                let d = Float16(0.125 * Float(b + 1)), m = Float16(-0.5 * Float(n))
                withUnsafeBytes(of: d.bitPattern) { bytes[at] = $0[0]; bytes[at + 1] = $0[1] }
                withUnsafeBytes(of: m.bitPattern) { bytes[at + 2] = $0[0]; bytes[at + 3] = $0[1] }
                for i in 0..<16 {
                    let lo = (n * 7 + i * 3 + b) % 16, hi = (n + i * 5 + 2 * b) % 16
                    bytes[at + 4 + i] = UInt8(lo | hi << 4)
                    dense[n * K + b * 32 + i] = Float(lo) * Float(d) + Float(m)
                    dense[n * K + b * 32 + 16 + i] = Float(hi) * Float(d) + Float(m)
                }
            }
        }
        let x = (0..<(M * K)).map { Float(($0 * 37) % 23) / 11 - 1 }
        let (y, _, dx, _) = Self.repacked(MI_Q4_1, bytes, N: N, K: K, blockBytes: 20, x: x, M: M)
        for m in 0..<M {
            for n in 0..<N {
                let exact = (0..<K).reduce(0.0) { $0 + Double(dense[n * K + $1]) * Double(x[m * K + $1]) }
                let bound = (0..<K).reduce(0.0) { $0 + abs(Double(dense[n * K + $1])) } * Double(dx.max()!) / 2 + 1e-4
                #expect(abs(Double(y[m * N + n]) - exact) <= bound)
            }
        }
    }

    /// Q8_0 rows by hand, repacked (3, 20 and 37 rows: partial panels), 1 to 5 activation rows.
    @Test(arguments: [(3, 2), (20, 1), (37, 5)])
    func q8_0MatchesHandDequantized(_ N: Int, _ M: Int) {
        let K = 96, nb = K / 32
        var bytes = [UInt8](repeating: 0, count: N * nb * 34)
        var dense = [Float](repeating: 0, count: N * K)
        for n in 0..<N {
            for b in 0..<nb {
                let at = (n * nb + b) * 34
                let d = Float16(0.0078125 * Float(n + 1))
                withUnsafeBytes(of: d.bitPattern) { bytes[at] = $0[0]; bytes[at + 1] = $0[1] }
                for i in 0..<32 {
                    let v = Int8(truncatingIfNeeded: (i * 29 + n * 13 + b * 7) % 255 - 127)
                    bytes[at + 2 + i] = UInt8(bitPattern: v)
                    dense[n * K + b * 32 + i] = Float(v) * Float(d)
                }
            }
        }
        let x = (0..<(M * K)).map { Float(($0 * 17) % 31) / 15 - 1 }
        let (y, _, dx, _) = Self.repacked(MI_Q8_0, bytes, N: N, K: K, blockBytes: 34, x: x, M: M)
        for m in 0..<M {
            for n in 0..<N {
                let exact = (0..<K).reduce(0.0) { $0 + Double(dense[n * K + $1]) * Double(x[m * K + $1]) }
                let bound = (0..<K).reduce(0.0) { $0 + abs(Double(dense[n * K + $1])) } * Double(dx.max()!) / 2 + 1e-4
                #expect(abs(Double(y[m * N + n]) - exact) <= bound)
            }
        }
    }

    /// Q5_0 rows built by hand (every fifth-bit pattern position used, f16 d exact): the kernel
    /// equals the integer dot of the unpacked weights with the quantized activations (only float
    /// summation order differs), and the dense product within the activation rounding.
    @Test(arguments: [(4, 1), (4, 4), (21, 9), (37, 5)])
    func q5_0MatchesHandDequantized(_ N: Int, _ M: Int) {
        let K = 128, nb = K / 32
        var bytes = [UInt8](repeating: 0, count: N * nb * 22)
        var ints = [Int](repeating: 0, count: N * K)   // q − 16
        var scales = [Float](repeating: 0, count: N * nb)
        for n in 0..<N {
            for b in 0..<nb {
                let at = (n * nb + b) * 22
                let d = Float16(0.015625 * Float(n + b + 1))
                scales[n * nb + b] = Float(d)
                withUnsafeBytes(of: d.bitPattern) { bytes[at] = $0[0]; bytes[at + 1] = $0[1] }
                let qh = UInt32(truncatingIfNeeded: (n * 0x9E37_79B9) ^ (b * 0x85EB_CA6B) ^ 0x5555_AAAA)
                withUnsafeBytes(of: qh.littleEndian) { for i in 0..<4 { bytes[at + 2 + i] = $0[i] } }
                for i in 0..<16 {
                    let lo = (n * 7 + i * 3 + b) % 16, hi = (n + i * 5 + 2 * b) % 16
                    bytes[at + 6 + i] = UInt8(lo | hi << 4)
                    ints[n * K + b * 32 + i] = lo + 16 * Int((qh >> i) & 1) - 16
                    ints[n * K + b * 32 + 16 + i] = hi + 16 * Int((qh >> (i + 16)) & 1) - 16
                }
            }
        }
        let x = (0..<(M * K)).map { Float(($0 * 37) % 29) / 13 - 1 }
        let (y, q, dx, _) = Self.repacked(MI_Q5_0, bytes, N: N, K: K, blockBytes: 22, x: x, M: M)
        for m in 0..<M {
            for n in 0..<N {
                var integer = 0.0, exact = 0.0, magnitude = 0.0
                for b in 0..<nb {
                    let dot = (0..<32).reduce(0) { $0 + ints[n * K + b * 32 + $1] * Int(q[m * K + b * 32 + $1]) }
                    integer += Double(scales[n * nb + b]) * Double(dx[m * nb + b]) * Double(dot)
                    for i in 0..<32 {
                        let w = Double(ints[n * K + b * 32 + i]) * Double(scales[n * nb + b])
                        exact += w * Double(x[m * K + b * 32 + i])
                        magnitude += abs(w)
                    }
                }
                #expect(abs(Double(y[m * N + n]) - integer) <= 1e-4 * max(1, abs(integer)), "m \(m) n \(n)")
                #expect(abs(Double(y[m * N + n]) - exact) <= magnitude * Double(dx.max()!) / 2 + 1e-4)
            }
        }
    }

    /// K-quant rows of pseudo-random bytes (every scale, min, nibble and high-bit pattern) with
    /// chosen f16 super-block scales, repacked 16 rows to a panel (5 and 37 rows: partial
    /// panels; 1 to 9 activation rows: every tile height; 128 rows: the eight-panel decode
    /// tile), against the GGUF reader's dequantization of the file's rows (checked against
    /// llama.cpp's f32 copy of the Gemma file in GemmaRealModelTests): the kernel equals the
    /// dequantized weights' dot with the Q8_K-quantized activations up to float rounding, and
    /// the dense product within the activation rounding.
    @Test(arguments: [(GGMLType.q4_K, 5, 1), (.q4_K, 37, 4), (.q4_K, 37, 6), (.q4_K, 5, 9), (.q4_K, 128, 1), (.q4_K, 64, 2),
                      (.q6_K, 5, 1), (.q6_K, 37, 4), (.q6_K, 37, 6), (.q6_K, 5, 9), (.q6_K, 128, 1), (.q6_K, 64, 2)])
    func kQuantsMatchDequantized(_ type: GGMLType, _ N: Int, _ M: Int) throws {
        let K = 512, nb = K / 256, size = type.blockBytes
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(size)
        var bytes = (0..<(N * nb * size)).map { _ -> UInt8 in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        for blk in 0..<(N * nb) {
            let at = blk * size
            let d = Float16(0.001 * Float(blk % 7 + 1)), dmin = Float16(0.0005 * Float(blk % 5 + 1))
            let dOffset = type == .q4_K ? 0 : 208
            withUnsafeBytes(of: d.bitPattern) { bytes[at + dOffset] = $0[0]; bytes[at + dOffset + 1] = $0[1] }
            if type == .q4_K { withUnsafeBytes(of: dmin.bitPattern) { bytes[at + 2] = $0[0]; bytes[at + 3] = $0[1] } }
        }
        var dense = [Float](repeating: 0, count: N * K)
        try bytes.withUnsafeBytes { b in try dense.withUnsafeMutableBufferPointer { try dequantize(type, from: b.baseAddress!, count: N * K, into: $0.baseAddress!) } }
        let x = (0..<(M * K)).map { i -> Float in
            let spike: Float = i % 97 == 0 ? 3 : 0   // a few large values, so blocks' scales differ
            return Float((i * 37) % 29) / 13 - 1 + spike
        }
        var q = [Int8](repeating: 0, count: M * K), dx = [Float](repeating: 0, count: M * nb), sums = [Int32](repeating: 0, count: M * K / 16)
        mi_quantize_q8_K(x, Int64(K), Int32(M), Int32(K), &q, &dx, &sums)
        for g in 0..<(M * K / 16) { #expect(sums[g] == (0..<16).reduce(Int32(0)) { $0 + Int32(q[g * 16 + $1]) }) }
        // Panels of 16 rows (zero rows after the last), each nb units.
        let id = Int32(type == .q4_K ? MI_Q4_K : MI_Q6_K), unit = Int(mi_kquant_unit_bytes(id))
        let panels = (N + 15) / 16, padded = panels * 16
        let rows = bytes + [UInt8](repeating: 0, count: (padded - N) * nb * size)
        var packed = [UInt8](repeating: 0, count: panels * nb * unit)
        rows.withUnsafeBufferPointer { r in
            packed.withUnsafeMutableBufferPointer { p in
                for i in 0..<panels {
                    mi_pack_kquant(id, r.baseAddress! + i * 16 * nb * size, Int64(nb * size), Int32(nb), p.baseAddress! + i * nb * unit)
                }
            }
        }
        var full = [Float](repeating: .nan, count: M * padded)
        mi_gemm_kquant(id, q, dx, sums, Int32(M), Int32(K), packed, 0, Int32(padded), &full, Int64(padded))
        for m in 0..<M {
            for n in 0..<N {
                var quantized = 0.0, exact = 0.0, magnitude = 0.0
                for k in 0..<K {
                    let w = Double(dense[n * K + k])
                    quantized += w * Double(q[m * K + k]) * Double(dx[m * nb + k / 256])
                    exact += w * Double(x[m * K + k])
                    magnitude += abs(w)
                }
                let y = Double(full[m * padded + n])
                #expect(abs(y - quantized) <= 1e-5 * magnitude * Double(dx.max()!) * 127, "\(type) m \(m) n \(n)")
                #expect(abs(y - exact) <= magnitude * Double(dx.max()!) / 2 + 1e-4)
            }
            for n in N..<padded { #expect(full[m * padded + n] == 0, "padding row \(n)") }
        }
        // One activation row alone gives bitwise the same outputs as inside the batch (the
        // server's batch invariance).
        if M > 1 {
            var alone = [Float](repeating: .nan, count: padded)
            let last = M - 1
            Array(q[(last * K)...]).withUnsafeBufferPointer { ql in
                mi_gemm_kquant(id, ql.baseAddress!, Array(dx[(last * nb)...]), Array(sums[(last * K / 16)...]), 1, Int32(K), packed, 0,
                               Int32(padded), &alone, Int64(padded))
            }
            #expect(alone == Array(full[(last * padded)..<(M * padded)]))
        }
    }
}
