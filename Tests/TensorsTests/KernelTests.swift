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

    /// 8-bit: per-(channel, group) Q8_0 weight blocks and per-block int8 activations. Each
    /// operand's rounding error is at most half a step (max|w|/127 for weights in [-1, 1],
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

    /// One Q8_0 block of 32 values, quantized here as the format defines it: d = max|x|/127
    /// rounded to f16 first, q = x/d (that d) rounded half away from zero, clamped to ±127; an
    /// all-zero block (or one whose d rounds to 0) has d = 0 and zero codes.
    static func naiveQ8_0(_ x: ArraySlice<Float>) -> (d: Float16, q: [Int8]) {
        let amax = x.reduce(Float(0)) { max($0, abs($1)) }
        let d = Float16(amax / 127)
        let q = x.map { v -> Int8 in
            guard d > 0 else { return 0 }
            return Int8(min(127, max(-127, (v / Float(d)).rounded())))
        }
        return (d, q)
    }

    /// Activations as the kernels quantize them (symmetric per 32, nearest-even codes): the
    /// codes and each block's f32 scale.
    static func naiveActivations(_ x: ArraySlice<Float>) -> (d: Float, q: [Int8]) {
        let amax = x.reduce(Float(0)) { max($0, abs($1)) }
        let inv = amax > 0 ? 127 / amax : 0
        return (amax / 127, x.map { Int8(($0 * inv).rounded(.toNearestOrEven)) })
    }

    /// Σ over 32-blocks of d_w·d_x·(integer dot of the codes), for weight rows `w` and
    /// activation rows `x` of `K` (a multiple of 32) given as naive Q8_0 and activation blocks;
    /// also Σ of the blocks' magnitudes, for a rounding tolerance.
    static func naiveBlockProduct(_ x: [Float], _ w: [Float], M: Int, N: Int, K: Int) -> (y: [Double], scale: [Double]) {
        let wq = (0..<N).map { n in stride(from: 0, to: K, by: 32).map { naiveQ8_0(w[(n * K + $0)..<(n * K + $0 + 32)]) } }
        let xq = (0..<M).map { m in stride(from: 0, to: K, by: 32).map { naiveActivations(x[(m * K + $0)..<(m * K + $0 + 32)]) } }
        var y = [Double](repeating: 0, count: M * N), scale = y
        for m in 0..<M {
            for n in 0..<N {
                for (a, b) in zip(xq[m], wq[n]) {
                    let dot = zip(a.q, b.q).reduce(0) { $0 + Int($1.0) * Int($1.1) }
                    let term = Double(a.d) * Double(Float(b.d)) * Double(dot)
                    y[m * N + n] += term
                    scale[m * N + n] += abs(term)
                }
            }
        }
        return (y, scale)
    }

    /// The load-time quantizer against the definition, byte for byte: blocks whose scales span
    /// f16's normal and subnormal range (d rounding to nearest even, ties included), all-zero
    /// and underflowing blocks, and codes exactly halfway between two integers.
    @Test func q8_0QuantizerMatchesTheDefinition() {
        var r = Rng(s: 5)
        var blocks: [[Float]] = []
        for i in 0..<400 {   // random values at scales 2^-30 ... 2^20
            let scale = Float(pow(2.0, Double(i % 51 - 30))) * (1 + abs(r.next()))
            blocks.append((0..<32).map { _ in r.next() * scale })
        }
        blocks.append([Float](repeating: 0, count: 32))
        blocks.append((0..<32).map { Float($0 % 3 - 1) * 1e-9 })   // d underflows f16: zero codes
        // Codes at exact halves: d = 2^-7 (exact in f16), max 127·d, values (k + 1/2)·d.
        let halves: [Float] = (0..<31).map { k -> Float in Float(k - 15) / 128 + 1.0 / 256 }
        blocks.append([Float(127.0 / 128)] + halves)
        // max|x|/127 exactly halfway between two f16 values (normal and subnormal, even and odd
        // lower neighbour): d must round to the even one, and the codes follow that d.
        for bits: UInt16 in [0x3C00, 0x3C01, 0x2001, 0x2002, 0x0001, 0x0002, 0x0155, 0x03FF] {
            let lo = Float(Float16(bitPattern: bits)), hi = Float(Float16(bitPattern: bits + 1))
            let amax = (lo + hi) / 2 * 127
            #expect(amax / 127 == (lo + hi) / 2, "the tie is exact in f32")
            blocks.append([amax, -amax / 3] + (0..<30).map { _ in r.next() * amax })
        }
        let K = 32 * 5, N = (blocks.count + 4) / 5
        blocks += Array(repeating: [Float](repeating: 0.25, count: 32), count: N * 5 - blocks.count)
        let x = blocks.flatMap { $0 }
        let rowBytes = (K / 32) * 34 + 7   // rows 7 bytes further apart than their blocks
        var out = [UInt8](repeating: 0xAA, count: N * rowBytes)
        mi_quantize_q8_0(x, Int64(K), Int32(N), Int32(K), &out, Int64(rowBytes))
        for n in 0..<N {
            for b in 0..<(K / 32) {
                let at = n * rowBytes + b * 34
                let (d, q) = Self.naiveQ8_0(x[(n * K + b * 32)..<(n * K + b * 32 + 32)])
                let stored = UInt16(out[at]) | UInt16(out[at + 1]) << 8
                #expect(stored == d.bitPattern, "row \(n) block \(b): d \(Float16(bitPattern: stored)) expected \(d)")
                #expect(out[(at + 2)..<(at + 34)].map { Int8(bitPattern: $0) } == q, "row \(n) block \(b)")
            }
            #expect(out[(n * rowBytes + 170)..<((n + 1) * rowBytes)].allSatisfy { $0 == 0xAA }, "nothing written between rows")
        }
    }

    /// int8 weights (Q8_0 quantized on load, repacked, the blocks32 kernel) against the naive
    /// block product of the same quantization: N not a multiple of 16 (zero rows pad the last
    /// panel), K not a multiple of 32 (zero columns pad the last block), 1 to 13 activation
    /// rows; only float summation order differs.
    @Test(arguments: [(1, 37, 100), (2, 37, 100), (9, 37, 100), (4, 16, 64), (13, 50, 576)])
    func int8MatchesNaiveBlockProduct(_ shape: (Int, Int, Int)) {
        let (M, N, K) = shape
        let Kp = (K + 31) / 32 * 32
        var r = Rng(s: 13)
        let x = (0..<(M * K)).map { _ in r.next() * 3 }
        let w = (0..<(N * K)).map { i in r.next() * Float(1 + i % 7) / 7 }
        let weight = LinearWeight(values: w, outputs: N, inputs: K, format: .int8)
        #expect(weight.kind == .q8_0 && weight.format == .int8)
        #expect(weight.storedShape == ((N + 15) / 16 * 16, Kp) && weight.byteCount == (N + 15) / 16 * 16 * Kp / 32 * 34)
        let y = weight.apply(Matrix(rows: M, columns: K, values: x), threads: WorkSplitter(threads: 2))
        func pad(_ v: [Float], _ rows: Int) -> [Float] { (0..<rows).flatMap { v[($0 * K)..<($0 * K + K)] + [Float](repeating: 0, count: Kp - K) } }
        let (expected, scale) = Self.naiveBlockProduct(pad(x, M), pad(w, N), M: M, N: N, K: Kp)
        for i in 0..<(M * N) {
            #expect(abs(Double(y.data[i]) - expected[i]) <= 1e-5 * scale[i] + 1e-6, "output \(i): \(y.data[i]) vs \(expected[i])")
        }
    }

    /// A shard of an f32 tensor loaded as int8 (rows with zero rows between; columns starting
    /// and ending inside 32-input blocks, then zero columns: 72 logical inputs) equals the naive
    /// block product over its stored window: the covering blocks of the source row (columns it
    /// does not own fed zeros) and a zero block; zero rows give exact zeros.
    @Test(arguments: [1, 6])
    func int8ShardMatchesNaiveOverItsWindow(_ M: Int) throws {
        let (N, K) = (37, 96)
        var r = Rng(s: 17)
        let values = (0..<(N * K)).map { _ in r.next() }
        let spec = ShardSpec(rows: [.tensor("w", 3..<20), .zeros(5), .tensor("w", 30..<37)], columns: [.source(8..<70), .zeros(10)])
        let shard = try LinearWeight(source: try ShardTests.file(values, N, K), spec: spec, format: .int8)
        #expect(shard.kind == .q8_0 && shard.format == .int8 && shard.inputs == 72 && shard.storedShape == (32, 128))
        let x = (0..<(M * 72)).map { _ in r.next() }
        let y = shard.apply(Matrix(rows: M, columns: 72, values: x), threads: WorkSplitter(threads: 1))
        // The window: source columns 0..<96 (whole blocks), then 32 zero columns.
        let sources: [Int?] = Array(3..<20) + [nil, nil, nil, nil, nil] + Array(30..<37)
        var wWindow: [Float] = []
        for row in sources {
            wWindow += row.map { Array(values[($0 * K)..<($0 * K + K)]) } ?? [Float](repeating: 0, count: K)
            wWindow += [Float](repeating: 0, count: 32)
        }
        var xWindow: [Float] = []
        for m in 0..<M {
            xWindow += [Float](repeating: 0, count: 8)
            xWindow += x[(m * 72)..<(m * 72 + 62)]
            xWindow += [Float](repeating: 0, count: 128 - 70)
        }
        let (expected, scale) = Self.naiveBlockProduct(xWindow, wWindow, M: M, N: sources.count, K: 128)
        for m in 0..<M {
            for (j, row) in sources.enumerated() {
                let i = m * sources.count + j
                if row == nil { #expect(y.data[i] == 0) }
                #expect(abs(Double(y.data[i]) - expected[i]) <= 1e-5 * scale[i] + 1e-6, "row \(m) output \(j)")
            }
        }
    }

    /// A row's outputs do not depend on how many rows are multiplied with it (the kernel's tile
    /// shapes change with M: decode's 1-2 rows × 4 panels, 4 rows × 2 panels), bitwise, on one
    /// thread and two.
    @Test(arguments: [1, 2])
    func int8RowsAreBatchInvariant(_ threads: Int) {
        let (N, K, rows) = (100, 576, 9)
        var r = Rng(s: 23)
        let w = (0..<(N * K)).map { _ in r.next() }
        let x = (0..<(rows * K)).map { _ in r.next() }
        let weight = LinearWeight(values: w, outputs: N, inputs: K, format: .int8)
        let all = weight.apply(Matrix(rows: rows, columns: K, values: x), threads: WorkSplitter(threads: threads))
        for M in 1..<rows {
            let some = weight.apply(Matrix(rows: M, columns: K, values: Array(x[..<(M * K)])), threads: WorkSplitter(threads: threads))
            for m in 0..<M { #expect(some.rowArray(m) == all.rowArray(m), "\(M) rows: row \(m)") }
        }
        let last = weight.apply(Matrix(rows: 1, columns: K, values: Array(x[((rows - 1) * K)...])), threads: WorkSplitter(threads: threads))
        #expect(last.rowArray(0) == all.rowArray(rows - 1))
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

    /// The norm's sum of squares (16 double partial sums with AVX-512, a scalar tail) against one
    /// sequential double sum, over tail lengths and the model widths: the products are exact in
    /// double, so only the order of the adds differs — within 1e-14 relative.
    @Test(arguments: [1, 15, 16, 17, 37, 256, 576, 640, 1000])
    func sumOfSquaresMatchesASequentialSum(n: Int) {
        var r = Rng(s: UInt64(n) &+ 7)
        let x = (0..<n).map { i in i % 11 == 0 ? r.next() * 300 : r.next() * 2 }
        let want = x.reduce(0.0) { $0 + Double($1) * Double($1) }
        let got = mi_sum_squares(x, Int32(n))
        #expect(abs(got - want) <= 1e-14 * want, "n \(n): \(got) vs \(want)")
    }

    /// RoPE of one head, both pairings (GGML's normal (2i, 2i+1) and NeoX (i, i + half)), over
    /// vector widths and tails: each rotated pair against the rotation in double precision of
    /// the same f32 inputs, within 2 f32 ulps of |a·c| + |b·s| (one product rounded, one fused).
    @Test(arguments: [1, 7, 8, 9, 16, 17, 32, 40, 128])
    func ropeMatchesDoublePrecision(half: Int) {
        for neox in [false, true] {
            var r = Rng(s: UInt64(half) &+ (neox ? 100 : 0))
            let x = (0..<(2 * half)).map { _ in r.next() * 4 }
            let cs = (0..<half).flatMap { i -> [Float] in
                let theta = Double(37 + i) * 0.37
                return [Float(Foundation.cos(theta)), Float(Foundation.sin(theta))]
            }
            var got = x
            mi_rope(&got, cs, Int32(half), neox ? 1 : 0)
            for i in 0..<half {
                let (ia, ib) = neox ? (i, i + half) : (2 * i, 2 * i + 1)
                let a = Double(x[ia]), b = Double(x[ib]), c = Double(cs[2 * i]), s = Double(cs[2 * i + 1])
                let ulps = 2 * Double(Float.ulpOfOne)
                #expect(abs(Double(got[ia]) - (a * c - b * s)) <= ulps * (abs(a * c) + abs(b * s)), "half \(half) neox \(neox) pair \(i)")
                #expect(abs(Double(got[ib]) - (a * s + b * c)) <= ulps * (abs(a * s) + abs(b * c)), "half \(half) neox \(neox) pair \(i)")
            }
        }
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

    /// A KV cache's layout for the kernels (CKernels.h): positions in tiles of 16, every KV
    /// head's keys and values per tile. `compact`: one layer's tiles back to back; otherwise odd
    /// strides with room between heads, tiles and chunks (other layers' tiles).
    struct CacheStrides {
        let head: Int, tile: Int, chunk: Int
        init(KV: Int, Q: Int, compact: Bool) {
            head = 2 * 16 * Q + (compact ? 0 : 32)
            tile = KV * head + (compact ? 0 : 64)
            chunk = Int(MI_KV_CHUNK) / 16 * tile * (compact ? 1 : 2) + (compact ? 0 : 96)
        }
        /// Elements spanning `count` positions.
        func elements(count: Int) -> Int { (count + Int(MI_KV_CHUNK) - 1) / Int(MI_KV_CHUNK) * chunk }
    }

    /// Positions 0..<count of KV heads' keys and values (f32, (count, KV, Q) each) written into
    /// an f16 cache with `strides` by the kernels' writer, NaN everywhere else.
    static func f16Cache(_ k: [Float], _ v: [Float], KV: Int, Q: Int, count: Int, _ strides: CacheStrides) -> [UInt16] {
        var cache = [UInt16](repeating: 0x7E00, count: strides.elements(count: count))
        cache.withUnsafeMutableBufferPointer { c in
            for j in 0..<count {
                for g in 0..<KV {
                    mi_kv_write_f16(Array(k[((j * KV + g) * Q)...].prefix(Q)), Array(v[((j * KV + g) * Q)...].prefix(Q)), Int32(Q),
                                    c.baseAddress! + g * strides.head, Int64(strides.tile), Int64(strides.chunk), Int32(j))
                }
            }
        }
        return cache
    }

    /// The same into a q8 cache: codes (odd codes everywhere else) and scales (NaN elsewhere).
    static func q8Cache(_ k: [Float], _ v: [Float], KV: Int, Q: Int, count: Int, _ strides: CacheStrides) -> ([Int8], [Float]) {
        var codes = [Int8](repeating: 77, count: strides.elements(count: count))
        var scales = [Float](repeating: .nan, count: codes.count / 32)
        codes.withUnsafeMutableBufferPointer { c in
            scales.withUnsafeMutableBufferPointer { sc in
                for j in 0..<count {
                    for g in 0..<KV {
                        mi_kv_write_q8(Array(k[((j * KV + g) * Q)...].prefix(Q)), Array(v[((j * KV + g) * Q)...].prefix(Q)), Int32(Q),
                                       c.baseAddress! + g * strides.head, sc.baseAddress! + g * strides.head / 32, Int64(strides.tile),
                                       Int64(strides.chunk), Int32(j))
                    }
                }
            }
        }
        return (codes, scales)
    }

    /// The writers put each element where CKernels.h says (what `calibrate` and KVCache rely
    /// on): f16 keys transposed in their tile, values in rows; q8 key codes in pairs of
    /// elements, value codes in rows, scales at the codes' offset / 32 (block b of position p at
    /// b·16 + p%16), for a position past the first chunk.
    @Test func kvWritersFollowTheLayout() {
        let KV = 2, Q = 64, p = 300, g = 1, C = Int(MI_KV_CHUNK)
        let strides = CacheStrides(KV: KV, Q: Q, compact: false)
        var r = Rng(s: 17)
        let k = (0..<Q).map { _ in r.next() }, v = (0..<Q).map { _ in r.next() }
        let tile = p / C * strides.chunk + p % C / 16 * strides.tile + g * strides.head, row = p % 16
        var f16 = [UInt16](repeating: 0, count: strides.elements(count: p + 1))
        f16.withUnsafeMutableBufferPointer { mi_kv_write_f16(k, v, Int32(Q), $0.baseAddress! + g * strides.head, Int64(strides.tile), Int64(strides.chunk), Int32(p)) }
        for d in 0..<Q {
            #expect(f16[tile + 16 * d + row] == Float16(k[d]).bitPattern, "key \(d)")
            #expect(f16[tile + 16 * Q + row * Q + d] == Float16(v[d]).bitPattern, "value \(d)")
        }
        var codes = [Int8](repeating: 0, count: f16.count), scales = [Float](repeating: 0, count: f16.count / 32)
        codes.withUnsafeMutableBufferPointer { c in
            scales.withUnsafeMutableBufferPointer { sc in
                mi_kv_write_q8(k, v, Int32(Q), c.baseAddress! + g * strides.head, sc.baseAddress! + g * strides.head / 32,
                               Int64(strides.tile), Int64(strides.chunk), Int32(p))
            }
        }
        var kc = [Int8](repeating: 0, count: Q), vc = kc, ks = [Float](repeating: 0, count: Q / 32), vs = ks
        mi_f32_to_kv_q8(k, &kc, &ks, Int32(Q))
        mi_f32_to_kv_q8(v, &vc, &vs, Int32(Q))
        for d in 0..<Q {
            #expect(codes[tile + d / 2 * 32 + row * 2 + d % 2] == kc[d], "key code \(d)")
            #expect(codes[tile + 16 * Q + row * Q + d] == vc[d], "value code \(d)")
        }
        for b in 0..<(Q / 32) {
            #expect(scales[tile / 32 + b * 16 + row] == ks[b])
            #expect(scales[(tile + 16 * Q) / 32 + b * 16 + row] == vs[b])
        }
    }

    /// Softmax attention of one row over an f16 cache against the definition in double
    /// precision (over the cache's f16 values): head sizes of both models (64, 256) and others
    /// (40: the portable path), groups of 1 to 12 query heads per KV head, position counts below, at and beyond a tile
    /// of 16 (tails included) and across a chunk of the cache (MI_KV_CHUNK), from position 0
    /// and from a later first position (a sliding window); within 1e-5 absolute. Compact and
    /// spread-out layouts (NaN between), read as a prompt's rows or as a decode row's (`cold`),
    /// give the same bits.
    @Test(arguments: [(4, 2, 16, 5), (9, 3, 64, 1), (9, 3, 64, 16), (9, 3, 64, 17), (9, 3, 64, 100), (6, 3, 64, 33), (8, 2, 64, 20),
                     (4, 1, 64, 47), (3, 3, 64, 18), (4, 1, 256, 40), (4, 1, 256, 3), (2, 1, 48, 33), (9, 3, 64, 300), (4, 1, 256, 270),
                     (12, 1, 64, 40), (5, 1, 64, 21), (32, 4, 128, 70), (12, 2, 64, 30), (2, 1, 40, 20)])
    func attentionRowMatchesNaiveSoftmax(_ shape: (Int, Int, Int, Int)) {
        let (H, KV, Q, count) = shape
        var r = Rng(s: 11)
        let q = (0..<(H * Q)).map { _ in r.next() }
        let k = (0..<(count * KV * Q)).map { _ in r.next() }   // (count, KV, Q)
        let v = (0..<(count * KV * Q)).map { _ in r.next() }
        let compact = CacheStrides(KV: KV, Q: Q, compact: true), spread = CacheStrides(KV: KV, Q: Q, compact: false)
        let a = Self.f16Cache(k, v, KV: KV, Q: Q, count: count, compact), b = Self.f16Cache(k, v, KV: KV, Q: Q, count: count, spread)
        let scale = 1 / Float(Q).squareRoot()
        for first in Set([0, count / 3]) {
            var scratch = [Float](repeating: 0, count: count)
            var out = [Float](repeating: 0, count: H * Q)
            mi_attention_row(q, Int32(H), Int32(KV), Int32(Q), a, Int64(compact.head), Int64(compact.tile), Int64(compact.chunk),
                             Int32(first), Int32(count - first), scale, &scratch, &out, 0)
            for h in 0..<H {
                let g = h / (H / KV)
                func f16(_ x: Float) -> Double { Double(Float(Float16(x))) }
                let s = (first..<count).map { j in (0..<Q).reduce(0.0) { $0 + Double(q[h * Q + $1]) * f16(k[(j * KV + g) * Q + $1]) } * Double(scale) }
                let e = s.map { Foundation.exp($0 - s.max()!) }
                let p = e.map { $0 / e.reduce(0, +) }
                for d in 0..<Q {
                    let expected = (first..<count).reduce(0.0) { $0 + p[$1 - first] * f16(v[($1 * KV + g) * Q + d]) }
                    #expect(abs(Double(out[h * Q + d]) - expected) < 1e-5, "first \(first) head \(h) column \(d)")
                }
            }
            for cold: Int32 in [0, 1] {
                var outSpread = [Float](repeating: 0, count: H * Q)
                mi_attention_row(q, Int32(H), Int32(KV), Int32(Q), b, Int64(spread.head), Int64(spread.tile), Int64(spread.chunk),
                                 Int32(first), Int32(count - first), scale, &scratch, &outSpread, cold)
                #expect(outSpread == out, "first \(first) cold \(cold)")
            }
        }
    }

    /// The 8-bit cache's rows: per 32 elements, scale absmax / 127 (0 for an all-zero block) and
    /// codes x · (1 / scale) rounded to nearest even, as Q8_0 quantizes, for both models' head
    /// sizes.
    @Test(arguments: [32, 64, 256])
    func kvQ8RowsQuantizeAsQ8_0(_ n: Int) {
        var r = Rng(s: 3)
        var x = (0..<n).map { _ in r.next() * 4 }
        if n >= 64 { for i in 32..<64 { x[i] = 0 } }   // an all-zero block
        var codes = [Int8](repeating: 0, count: n), scales = [Float](repeating: -1, count: n / 32)
        mi_f32_to_kv_q8(x, &codes, &scales, Int32(n))
        for b in 0..<(n / 32) {
            let block = x[(32 * b)..<(32 * b + 32)]
            let d = block.map(abs).max()! / 127
            #expect(scales[b] == d)
            for i in block.indices {
                let expected = d == 0 ? 0 : Int8((x[i] * (1 / d)).rounded(.toNearestOrEven))
                #expect(codes[i] == expected, "element \(i)")
            }
        }
    }

    /// Softmax attention of one row over an 8-bit cache against its definition in double
    /// precision: keys and values dequantized (code × its block's scale), each query head as
    /// 16-bit codes per 32 (scale absmax / 32767, rounded to nearest even) — the shapes of the
    /// f16 test whose heads are a multiple of 32, and heads of 288 (the portable path), within
    /// 1e-5; compact and spread-out layouts (odd codes and NaN scales between), prompt and
    /// decode (`cold`) rows give the same bits.
    @Test(arguments: [(9, 3, 64, 1), (9, 3, 64, 16), (9, 3, 64, 17), (9, 3, 64, 100), (6, 3, 64, 33), (8, 2, 64, 20),
                     (4, 1, 64, 47), (4, 1, 256, 40), (4, 1, 256, 3), (2, 1, 96, 33), (2, 1, 288, 9), (9, 3, 64, 300),
                     (4, 1, 256, 270), (12, 1, 64, 40), (5, 1, 64, 21), (32, 4, 128, 70), (12, 2, 64, 30)])
    func attentionRowQ8MatchesNaiveSoftmax(_ shape: (Int, Int, Int, Int)) {
        let (H, KV, Q, count) = shape
        var r = Rng(s: 13)
        let q = (0..<(H * Q)).map { _ in r.next() }
        let kf = (0..<(count * KV * Q)).map { _ in r.next() }, vf = (0..<(count * KV * Q)).map { _ in r.next() }   // (count, KV, Q)
        // What the cache holds, dequantized, and the quantized queries (rows of Q, per 32 a scale).
        func dequantized(_ x: [Float]) -> [Double] {
            var codes = [Int8](repeating: 0, count: x.count), scales = [Float](repeating: 0, count: x.count / 32)
            mi_f32_to_kv_q8(x, &codes, &scales, Int32(x.count))
            return codes.indices.map { Double(codes[$0]) * Double(scales[$0 / 32]) }
        }
        let k = dequantized(kf), v = dequantized(vf)
        let qq = stride(from: 0, to: q.count, by: 32).flatMap { b -> [Double] in
            let block = q[b..<(b + 32)], d = block.map(abs).max()! / 32767
            return block.map { d > 0 ? Double(($0 * (1 / d)).rounded(.toNearestOrEven)) * Double(d) : 0 }
        }
        let compact = CacheStrides(KV: KV, Q: Q, compact: true), spread = CacheStrides(KV: KV, Q: Q, compact: false)
        let a = Self.q8Cache(kf, vf, KV: KV, Q: Q, count: count, compact), b = Self.q8Cache(kf, vf, KV: KV, Q: Q, count: count, spread)
        let scale = 1 / Float(Q).squareRoot()
        for first in Set([0, count / 3]) {
            var scratch = [Float](repeating: 0, count: count)
            var out = [Float](repeating: 0, count: H * Q)
            mi_attention_row_q8(q, Int32(H), Int32(KV), Int32(Q), a.0, a.1, Int64(compact.head), Int64(compact.tile), Int64(compact.chunk),
                                Int32(first), Int32(count - first), scale, &scratch, &out, 0)
            for h in 0..<H {
                let g = h / (H / KV)
                let s = (first..<count).map { j in (0..<Q).reduce(0.0) { $0 + qq[h * Q + $1] * k[(j * KV + g) * Q + $1] } * Double(scale) }
                let e = s.map { Foundation.exp($0 - s.max()!) }
                let p = e.map { $0 / e.reduce(0, +) }
                for d in 0..<Q {
                    let expected = (first..<count).reduce(0.0) { $0 + p[$1 - first] * v[($1 * KV + g) * Q + d] }
                    #expect(abs(Double(out[h * Q + d]) - expected) < 1e-5, "first \(first) head \(h) column \(d)")
                }
            }
            for cold: Int32 in [0, 1] {
                var outSpread = [Float](repeating: 0, count: H * Q)
                mi_attention_row_q8(q, Int32(H), Int32(KV), Int32(Q), b.0, b.1, Int64(spread.head), Int64(spread.tile), Int64(spread.chunk),
                                    Int32(first), Int32(count - first), scale, &scratch, &outSpread, cold)
                #expect(outSpread == out, "first \(first) cold \(cold)")
            }
        }
    }

    /// The cache's f32 → f16 rounding: nearest, ties to even, as Swift's Float16(x) rounds —
    /// every length's vector body and scalar tail, normals, subnormals, overflow and zeros.
    @Test func f16ConversionRoundsAsFloat16() {
        var r = Rng(s: 5)
        var x = (0..<37).map { _ in r.next() * 3 }
        x += [0, -0.0, 65504, 65520, 1e6, -1e6, 6e-8, 3e-8, 2.98e-8, 1e-5, -1e-5, 1.00048828125, 1.000732421875]
        for n in [1, 15, 16, 17, x.count] {
            var out = [UInt16](repeating: 0, count: n)
            mi_f32_to_f16(x, &out, Int32(n))
            #expect(out == x[0..<n].map { Float16($0).bitPattern })
        }
    }
}

import Foundation
