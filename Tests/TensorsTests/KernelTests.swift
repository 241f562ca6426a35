import CKernels
import Testing
@testable import Tensors

/// Kernels against naive loops written here, each with its own tolerance.
struct KernelTests {
    struct Rng {
        var s: UInt64
        mutating func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
    }

    static func naive(_ x: [Float], _ w: [Float], M: Int, N: Int, K: Int) -> [Float] {
        var y = [Float](repeating: 0, count: M * N)
        for m in 0..<M {
            for n in 0..<N {
                var a = 0.0
                for k in 0..<K { a += Double(x[m * K + k]) * Double(w[n * K + k]) }
                y[m * N + n] = Float(a)
            }
        }
        return y
    }

    /// Shapes cover 1 row (decode), tails of the 6-row tile and of the 32-column panel pair,
    /// and N not a multiple of 16 (padding).
    @Test(arguments: [(1, 16, 64), (3, 48, 128), (7, 100, 192), (13, 64, 576)], [1, 2])
    func f32GemmMatchesNaive(_ shape: (Int, Int, Int), _ threads: Int) {
        let (M, N, K) = shape
        var r = Rng(s: 42)
        let x = (0..<(M * K)).map { _ in r.next() }
        let w = (0..<(N * K)).map { _ in r.next() }
        let y = LinearWeight(values: w, outputs: N, inputs: K, format: .f32)
            .apply(Matrix(rows: M, columns: K, values: x), threads: WorkSplitter(threads: threads))
        let expected = Self.naive(x, w, M: M, N: N, K: K)
        #expect(y.columns == N)
        for i in 0..<(M * N) { #expect(abs(y.data[i] - expected[i]) < 1e-4 * Float(K).squareRoot()) }
    }

    /// 8-bit: per-(channel, group) affine weight codes and per-block int8 activations. Each
    /// operand's rounding error is at most half a step (range/255 for weights in [-1, 1],
    /// 1/127 for activations), so |Δ| ≤ K·(1/255 + 1/254)... checked at a quarter of that
    /// worst case since the errors are independent and cancel.
    @Test(arguments: [(1, 16, 64), (5, 48, 128), (8, 100, 576)])
    func int8GemmMatchesNaiveWithinQuantizationError(_ shape: (Int, Int, Int)) {
        let (M, N, K) = shape
        var r = Rng(s: 7)
        let x = (0..<(M * K)).map { _ in r.next() }
        let w = (0..<(N * K)).map { _ in r.next() }
        let weight = LinearWeight(values: w, outputs: N, inputs: K, format: .int8)
        #expect(weight.format == .int8)
        let y = weight.apply(Matrix(rows: M, columns: K, values: x), threads: WorkSplitter(threads: 2))
        let expected = Self.naive(x, w, M: M, N: N, K: K)
        let bound = Float(K) * (1.0 / 255 + 1.0 / 254) / 4 + 1e-3
        var worst: Float = 0
        for i in 0..<(M * N) { worst = max(worst, abs(y.data[i] - expected[i])) }
        #expect(worst < bound, "worst \(worst) bound \(bound)")
        #expect(worst > 0, "8-bit must differ from f32 somewhere (else the path is not quantized)")
    }

    /// The exact sum the kernel computes, re-derived from the packed block (codes, then f32
    /// scales and mins): per group, scale·s_x·Σ u·q + min·s_x·Σ q.
    @Test func int8MatchesScalarArithmeticOnPackedCodes() {
        let M = 2, N = 32, K = 128, G = int8Group, groups = K / G
        let blockBytes = G * 16 + 128
        var r = Rng(s: 3)
        let x = (0..<(M * K)).map { _ in r.next() }
        let w = (0..<(N * K)).map { _ in r.next() }
        var packed = [UInt8](repeating: 0, count: Int(mi_int8_packed_bytes(Int32(N), Int32(K))))
        #expect(packed.count == N * K + N * groups * 8)
        mi_pack_int8(w, Int64(K), Int32(N), Int32(K), &packed)
        var q = [Int8](repeating: 0, count: M * K)
        var xs = [Float](repeating: 0, count: M * groups)
        var sums = [Int32](repeating: 0, count: M * groups)
        mi_quantize_activations(x, Int64(K), Int32(M), Int32(K), Int32(G), &q, &xs, &sums)
        var y = [Float](repeating: 0, count: M * N)
        mi_gemm_int8(q, xs, sums, Int32(M), Int32(K), packed, 0, Int32(N), &y, Int64(N))
        func float(_ at: Int) -> Double { Double(packed[at..<(at + 4)].withUnsafeBytes { $0.loadUnaligned(as: Float.self) }) }
        for m in 0..<M {
            for n in 0..<N {
                var acc = 0.0
                for b in 0..<groups {
                    let block = ((n / 16) * groups + b) * blockBytes
                    let scale = float(block + G * 16 + (n % 16) * 4), minimum = float(block + G * 16 + 64 + (n % 16) * 4)
                    var s = 0, qs = 0
                    for kk in 0..<G {
                        let u = Int(packed[block + ((kk / 4) * 16 + n % 16) * 4 + kk % 4])
                        s += u * Int(q[m * K + b * G + kk])
                        qs += Int(q[m * K + b * G + kk])
                        // The code reproduces the weight within half a step.
                        #expect(abs(scale * Double(u) + minimum - Double(w[n * K + b * G + kk])) <= scale * 0.5 + 2e-3)
                    }
                    #expect(qs == Int(sums[m * groups + b]))
                    acc += Double(s) * scale * Double(xs[m * groups + b]) + minimum * Double(xs[m * groups + b]) * Double(qs)
                }
                #expect(abs(Double(y[m * N + n]) - acc) < 1e-4 * max(1, abs(acc)))
            }
        }
    }

    @Test func rmsnormAndSwiglu() {
        let x: [Float] = [1, -2, 3, -4]
        let w: [Float] = [1, 0.5, 2, 1]
        var out = [Float](repeating: 0, count: 4)
        mi_rmsnorm(x, w, 4, 1e-5, &out)
        let rms = ((1 + 4 + 9 + 16) / 4 + 1e-5 as Float).squareRoot()
        for i in 0..<4 { #expect(abs(out[i] - x[i] / rms * w[i]) < 1e-6) }
        let g: [Float] = [-3, 0, 0.5, 4], u: [Float] = [1, 2, -1, 0.5]
        mi_swiglu(g, u, 4, &out)
        for i in 0..<4 { #expect(abs(out[i] - g[i] / (1 + Foundation.exp(-g[i])) * u[i]) < 1e-6) }
    }

    /// The vector SwiGLU and GeGLU (a polynomial e^x) against the functions in double precision,
    /// over every tail length and the range activations reach: within 2e-6 relative (a few f32
    /// ulps) plus 3e-7 · |a| where a is the exponent (−g, or −2u for GELU): rounding the
    /// exponent to f32 moves e^a by that much, whatever the kernel; 1e-30 absolute where the
    /// value underflows.
    @Test(arguments: [1, 15, 16, 17, 37, 1000])
    func gatedActivationsMatchDoublePrecision(n: Int) {
        var r = Rng(s: UInt64(n))
        let gate = (0..<n).map { i in i % 7 == 0 ? r.next() * 60 : r.next() * 8 }
        let up = (0..<n).map { _ in r.next() * 3 }
        var out = [Float](repeating: 0, count: n)
        mi_swiglu(gate, up, Int32(n), &out)
        for i in 0..<n {
            let g = Double(gate[i]), want = g / (1 + Foundation.exp(-g)) * Double(up[i])
            #expect(abs(Double(out[i]) - want) <= (2e-6 + 3e-7 * abs(g)) * abs(want) + 1e-30, "silu(\(g)) · \(up[i])")
        }
        mi_geglu(gate, up, Int32(n), &out)
        for i in 0..<n {
            let g = Double(gate[i])
            // x/2 · (1 + tanh u) = x / (1 + e^−2u): the form that does not cancel where tanh u ≈ −1.
            let u = (2 / Double.pi).squareRoot() * (g + 0.044715 * g * g * g)
            let want = g / (1 + Foundation.exp(-2 * u)) * Double(up[i])
            #expect(abs(Double(out[i]) - want) <= (2e-6 + 3e-7 * abs(2 * u)) * abs(want) + 1e-30, "gelu(\(g)) · \(up[i])")
        }
    }

    /// Activation quantization (both block sizes) is exactly the scalar definition: scale
    /// amax/127, codes rounded to nearest-even, integer sums per block (per 16 for Q8_K).
    @Test func activationQuantizationIsTheScalarDefinition() {
        let M = 3, K = 512
        var r = Rng(s: 11)
        let x = (0..<(M * K)).map { i in i % 97 == 0 ? 0 : r.next() * Float(1 + i % 5) }
        func expected(block: Int, sumEvery: Int) -> ([Int8], [Float], [Int32]) {
            var q: [Int8] = [], d: [Float] = [], sums: [Int32] = []
            for m in 0..<M {
                for b in 0..<(K / block) {
                    let xb = x[(m * K + b * block)..<(m * K + (b + 1) * block)]
                    let amax = xb.reduce(Float(0)) { max($0, abs($1)) }
                    let inv = amax > 0 ? 127 / amax : 0
                    let codes = xb.map { Int8(($0 * inv).rounded(.toNearestOrEven)) }
                    q += codes
                    d.append(amax / 127)
                    for g in stride(from: 0, to: block, by: sumEvery) { sums.append(codes[g..<(g + sumEvery)].reduce(Int32(0)) { $0 + Int32($1) }) }
                }
            }
            return (q, d, sums)
        }
        var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * K / 32), sums = [Int32](repeating: 0, count: M * K / 16)
        mi_quantize_activations(x, Int64(K), Int32(M), Int32(K), 32, &q, &d, &sums)
        let e32 = expected(block: 32, sumEvery: 32)
        #expect(q == e32.0)
        #expect(d == e32.1)
        #expect(Array(sums[0..<(M * K / 32)]) == e32.2)
        mi_quantize_q8_K(x, Int64(K), Int32(M), Int32(K), &q, &d, &sums)
        let eK = expected(block: 256, sumEvery: 16)
        #expect(q == eK.0)
        #expect(Array(d[0..<(M * K / 256)]) == eK.1)
        #expect(sums == eK.2)
    }

    /// Softmax attention of one row against the definition in double precision: head sizes
    /// of both models (64, 256) and others, groups of 1 to 4 query heads per KV head, position counts below, at and
    /// beyond the 16-position blocks (tails included); within 1e-5 absolute.
    @Test(arguments: [(4, 2, 16, 5), (9, 3, 64, 1), (9, 3, 64, 16), (9, 3, 64, 17), (9, 3, 64, 100), (6, 3, 64, 33), (8, 2, 64, 20),
                     (4, 1, 64, 47), (3, 3, 64, 18), (4, 1, 256, 40), (4, 1, 256, 3), (2, 1, 48, 33)])
    func attentionRowMatchesNaiveSoftmax(_ shape: (Int, Int, Int, Int)) {
        let (H, KV, Q, count) = shape
        var r = Rng(s: 11)
        let q = (0..<(H * Q)).map { _ in r.next() }
        let k = (0..<(count * KV * Q)).map { _ in r.next() }
        let v = (0..<(count * KV * Q)).map { _ in r.next() }
        var scratch = [Float](repeating: 0, count: count * H / KV)
        var out = [Float](repeating: 0, count: H * Q)
        let scale = 1 / Float(Q).squareRoot()
        mi_attention_row(q, Int32(H), Int32(KV), Int32(Q), k, v, Int64(KV * Q), Int32(count), scale, &scratch, &out)
        for h in 0..<H {
            let g = h / (H / KV)
            let s = (0..<count).map { j in (0..<Q).reduce(0.0) { $0 + Double(q[h * Q + $1]) * Double(k[j * KV * Q + g * Q + $1]) } * Double(scale) }
            let e = s.map { Foundation.exp($0 - s.max()!) }
            let p = e.map { $0 / e.reduce(0, +) }
            for d in 0..<Q {
                let expected = (0..<count).reduce(0.0) { $0 + p[$1] * Double(v[$1 * KV * Q + g * Q + d]) }
                #expect(abs(Double(out[h * Q + d]) - expected) < 1e-5, "head \(h) column \(d)")
            }
        }
    }
}

import Foundation
