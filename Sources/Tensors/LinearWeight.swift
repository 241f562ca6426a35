import CKernels
import GGUF

/// How a model's matrices are held in memory.
public enum WeightFormat: String, Sendable, CaseIterable, Codable {
    /// Execute the file's own block formats in place (Q4_1, Q8_0); other types fall back to f32.
    case native
    /// 8-bit weights quantized on load per output channel (Pope et al. §3.6), refined to one
    /// (scale, min) per channel and group of 32 inputs: a single scale per row adds more error
    /// than llama.cpp's own formats differ by, since the file's 4-bit blocks vary along a row.
    /// Activations are quantized to int8 in blocks of 32 so the matmul runs on VNNI.
    case int8
    /// Dequantized f32.
    case f32
}

/// A slice of rows of a GGUF tensor: the unit weights are loaded (and later sharded) in.
public struct TensorRows: Sendable {
    public var tensor: GGUFTensorInfo
    public var rows: Range<Int>
    public init(_ tensor: GGUFTensorInfo, rows: Range<Int>? = nil) {
        self.tensor = tensor
        self.rows = rows ?? 0..<tensor.rowCount
    }
}

public enum WeightError: Error, CustomStringConvertible, Equatable {
    case shapeMismatch(tensor: String, expected: Int, found: Int)
    case unsupported(tensor: String, type: String)
    case emptyWeight

    public var description: String {
        switch self {
        case let .shapeMismatch(t, e, f): "tensor \(t): row length \(f), expected \(e)"
        case let .unsupported(t, ty): "tensor \(t): type \(ty) cannot be loaded"
        case .emptyWeight: "a weight with no rows"
        }
    }
}

/// y = x · Wᵀ for W of shape (N outputs, K inputs), in one of several storage formats.
public final class LinearWeight: @unchecked Sendable {
    enum Storage {
        case f32(UnsafeMutablePointer<Float>)                             // packed panels
        case int8(UnsafeMutablePointer<UInt8>)                           // packed panels with block parameters
        case q4_1(UnsafeMutableRawPointer, rowBytes: Int)                 // file blocks, row-major
        case q8_0(UnsafeMutableRawPointer, rowBytes: Int)
    }

    public let outputs: Int  // N
    public let inputs: Int   // K
    let paddedOutputs: Int   // N rounded up to 16 (packed formats)
    let storage: Storage

    /// The format actually used (native falls back to f32 for types without an in-place kernel).
    public var format: WeightFormat {
        switch storage {
        case .f32: .f32
        case .int8: .int8
        case .q4_1, .q8_0: .native
        }
    }
    /// Bytes read from memory by one pass over the weight.
    public var byteCount: Int {
        switch storage {
        case .f32: paddedOutputs * inputs * 4
        case .int8: Int(mi_int8_packed_bytes(Int32(paddedOutputs), Int32(inputs)))
        case let .q4_1(_, rb), let .q8_0(_, rb): outputs * rb
        }
    }

    /// Loads the concatenation of `parts` (each a range of rows of a file tensor) as one matrix.
    public init(file: GGUFFile, parts: [TensorRows], format: WeightFormat) throws {
        guard let first = parts.first else { throw WeightError.emptyWeight }
        let K = first.tensor.rowLength
        for p in parts where p.tensor.rowLength != K {
            throw WeightError.shapeMismatch(tensor: p.tensor.name, expected: K, found: p.tensor.rowLength)
        }
        let N = parts.reduce(0) { $0 + $1.rows.count }
        inputs = K
        outputs = N
        paddedOutputs = (N + 15) / 16 * 16

        let types = Set(parts.map(\.tensor.type))
        if format == .native, types.count == 1, let t = types.first, t == .q4_1 || t == .q8_0 {
            let rowBytes = first.tensor.rowBytes
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: N * rowBytes, alignment: 64)
            var at = 0
            for p in parts {
                let src = file.data(for: p.tensor).baseAddress! + p.rows.lowerBound * rowBytes
                (buffer + at * rowBytes).copyMemory(from: src, byteCount: p.rows.count * rowBytes)
                at += p.rows.count
            }
            storage = t == .q4_1 ? .q4_1(buffer, rowBytes: rowBytes) : .q8_0(buffer, rowBytes: rowBytes)
            return
        }
        // Dequantize to a padded f32 row-major staging buffer, then pack.
        let staging = UnsafeMutablePointer<Float>.allocate(capacity: paddedOutputs * K)
        defer { staging.deallocate() }
        staging.initialize(repeating: 0, count: paddedOutputs * K)
        var at = 0
        for p in parts {
            guard p.tensor.type.isDequantizable else {
                throw WeightError.unsupported(tensor: p.tensor.name, type: "\(p.tensor.type)")
            }
            try file.dequantizeRows(p.tensor, rows: p.rows, into: staging + at * K)
            at += p.rows.count
        }
        storage = LinearWeight.pack(staging, N: paddedOutputs, K: K, format: format)
    }

    /// A weight from f32 values (row-major N x K): tests and random-weight models.
    public init(values: [Float], outputs N: Int, inputs K: Int, format: WeightFormat) {
        precondition(values.count == N * K)
        inputs = K
        outputs = N
        paddedOutputs = (N + 15) / 16 * 16
        let staging = UnsafeMutablePointer<Float>.allocate(capacity: paddedOutputs * K)
        defer { staging.deallocate() }
        staging.initialize(repeating: 0, count: paddedOutputs * K)
        values.withUnsafeBufferPointer { staging.update(from: $0.baseAddress!, count: N * K) }
        storage = LinearWeight.pack(staging, N: paddedOutputs, K: K, format: format == .native ? .f32 : format)
    }

    private static func pack(_ w: UnsafeMutablePointer<Float>, N: Int, K: Int, format: WeightFormat) -> Storage {
        if format == .int8 && K % int8Group == 0 {
            let packed = UnsafeMutablePointer<UInt8>.allocate(capacity: Int(mi_int8_packed_bytes(Int32(N), Int32(K))))
            mi_pack_int8(w, Int64(K), Int32(N), Int32(K), packed)
            return .int8(packed)
        }
        let packed = UnsafeMutablePointer<Float>.allocate(capacity: N * K)
        mi_pack_f32(w, Int64(K), Int32(N), Int32(K), packed)
        return .f32(packed)
    }

    deinit {
        switch storage {
        case let .f32(p): p.deallocate()
        case let .int8(p): p.deallocate()
        case let .q4_1(p, _), let .q8_0(p, _): p.deallocate()
        }
    }

    /// y (M x N) = x (M x K) · Wᵀ.
    public func apply(_ x: Matrix, threads: WorkSplitter) -> Matrix {
        precondition(x.columns == inputs, "linear: input has \(x.columns) columns, weight expects \(inputs)")
        let M = x.rows, K = inputs
        // Every kernel stores (does not accumulate into) each output it computes.
        let y = Matrix(uninitializedRows: M, columns: paddedOutputs)
        if M == 0 { return y.columns(0, outputs) }
        // Waking threads costs more than a small matmul gains from them (decode on a small model).
        let threads = M * outputs * inputs >= 2_000_000 ? threads : WorkSplitter(threads: 1)
        switch storage {
        case let .f32(w):
            threads.parallelFor(paddedOutputs, granule: 32) { r in
                mi_gemm_f32(x.data, Int64(K), Int32(M), Int32(K), w, Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(paddedOutputs))
            }
        case let .int8(w):
            let q = UnsafeMutablePointer<Int8>.allocate(capacity: M * K)
            let xs = UnsafeMutablePointer<Float>.allocate(capacity: M * K / int8Group)
            let sums = UnsafeMutablePointer<Int32>.allocate(capacity: M * K / int8Group)
            defer { q.deallocate(); xs.deallocate(); sums.deallocate() }
            mi_quantize_activations(x.data, Int64(K), Int32(M), Int32(K), Int32(int8Group), q, xs, sums)
            let N = paddedOutputs
            threads.parallelFor(paddedOutputs, granule: 32) { r in
                mi_gemm_int8(q, xs, sums, Int32(M), Int32(K), w, Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(N))
            }
        case let .q4_1(w, rowBytes), let .q8_0(w, rowBytes):
            let isQ4 = if case .q4_1 = storage { true } else { false }
            let q = UnsafeMutablePointer<Int8>.allocate(capacity: M * K)
            let d = UnsafeMutablePointer<Float>.allocate(capacity: M * K / 32)
            let s = UnsafeMutablePointer<Float>.allocate(capacity: M * K / 32)
            defer { q.deallocate(); d.deallocate(); s.deallocate() }
            mi_quantize_q8_blocks(x.data, Int64(K), Int32(M), Int32(K), q, d, s)
            let wp = w.assumingMemoryBound(to: UInt8.self)
            threads.parallelFor(outputs, granule: 16) { r in
                if isQ4 {
                    mi_gemm_q4_1(q, d, s, Int32(M), Int32(K), wp, Int64(rowBytes), Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(paddedOutputs))
                } else {
                    mi_gemm_q8_0(q, d, s, Int32(M), Int32(K), wp, Int64(rowBytes), Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(paddedOutputs))
                }
            }
        }
        return paddedOutputs == outputs ? y : y.columns(0, outputs)
    }
}

/// Which SIMD path the kernels were built with: 2 = AVX-512 VNNI, 1 = AVX-512F, 0 = scalar.
public var simdLevel: Int { Int(mi_simd_level()) }

/// Inputs per int8 weight scale and per activation block.
public let int8Group = Int(mi_int8_group())
