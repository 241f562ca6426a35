import CKernels
import Foundation

/// A row-major f32 matrix that owns its memory: the activations passed between ops.
/// `rows` is usually tokens (B·L flattened), `columns` a model dimension.
public final class Matrix: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    public let data: UnsafeMutablePointer<Float>  // (rows, columns)

    /// A zero-filled matrix.
    public convenience init(rows: Int, columns: Int) {
        self.init(uninitializedRows: rows, columns: columns)
        data.initialize(repeating: 0, count: max(1, rows * columns))
    }

    /// A matrix whose elements the caller writes, every one, before reading any (a GEMM output,
    /// a copy): skips zero-filling, which for per-op activation buffers costs as much as a copy.
    public init(uninitializedRows rows: Int, columns: Int) {
        precondition(rows >= 0 && columns >= 0)
        self.rows = rows
        self.columns = columns
        data = .allocate(capacity: max(1, rows * columns))
    }

    public convenience init(rows: Int, columns: Int, values: [Float]) {
        precondition(values.count == rows * columns)
        self.init(uninitializedRows: rows, columns: columns)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { data.deallocate() }

    public func row(_ r: Int) -> UnsafeMutablePointer<Float> { data + r * columns }

    public subscript(r: Int, c: Int) -> Float {
        get { data[r * columns + c] }
        set { data[r * columns + c] = newValue }
    }

    public func rowArray(_ r: Int) -> [Float] { Array(UnsafeBufferPointer(start: row(r), count: columns)) }
    public var values: [Float] { Array(UnsafeBufferPointer(start: data, count: rows * columns)) }

    /// Columns [start, start + count) of every row, as a new matrix.
    public func columns(_ start: Int, _ count: Int) -> Matrix {
        precondition(start >= 0 && start + count <= columns)
        let out = Matrix(uninitializedRows: rows, columns: count)
        for r in 0..<rows { out.row(r).update(from: row(r) + start, count: count) }
        return out
    }

    /// Elementwise sum with a matrix of the same shape.
    public func adding(_ other: Matrix, threads: WorkSplitter = WorkSplitter(threads: 1)) -> Matrix {
        precondition(rows == other.rows && columns == other.columns)
        let out = Matrix(uninitializedRows: rows, columns: columns)
        threads.parallelRows(rows, columns: columns) { r in
            for i in (r.lowerBound * columns)..<(r.upperBound * columns) { out.data[i] = data[i] + other.data[i] }
        }
        return out
    }

    /// The given rows, as a new matrix.
    public func selectingRows(_ indices: [Int]) -> Matrix {
        let out = Matrix(uninitializedRows: indices.count, columns: columns)
        for (i, r) in indices.enumerated() { out.row(i).update(from: row(r), count: columns) }
        return out
    }
}

/// Splits `count` units of work over threads. One thread runs inline (no dispatch cost).
public struct WorkSplitter: Sendable {
    public let threads: Int
    public init(threads: Int) { self.threads = max(1, threads) }

    /// Calls `body(range)` over disjoint ranges covering 0..<count, each range a multiple of
    /// `granule` long except the last.
    public func parallelFor(_ count: Int, granule: Int = 1, _ body: (Range<Int>) -> Void) {
        let units = (count + granule - 1) / granule
        let parts = min(threads, units)
        if parts <= 1 { if count > 0 { body(0..<count) }; return }
        withoutActuallyEscaping(body) { body in
            // The ranges are disjoint; callers write only their own part of shared buffers.
            let job = PoolJob { p in
                let lo = units * p / parts * granule
                let hi = min(count, units * (p + 1) / parts * granule)
                if lo < hi { body(lo..<hi) }
            }
            withExtendedLifetime(job) {
                mi_pool_run(Int32(parts), { ctx, p in Unmanaged<PoolJob>.fromOpaque(ctx!).takeUnretainedValue().run(Int(p)) },
                            Unmanaged.passUnretained(job).toOpaque())
            }
        }
    }
}

extension WorkSplitter {
    /// `parallelFor` over the rows of an elementwise op on a rows × columns matrix: split
    /// between the threads only when there are at least 64 Ki elements (a prompt's rows; a
    /// decode step's few rows take less time than handing them to another thread). Each row's
    /// arithmetic is the same either way.
    public func parallelRows(_ rows: Int, columns: Int, _ body: (Range<Int>) -> Void) {
        (rows * columns >= 1 << 16 ? self : WorkSplitter(threads: 1)).parallelFor(rows, body)
    }

    /// Calls `body(range)` over disjoint ranges covering 0..<count, one per thread, cut where
    /// the running sum of `cost(i)` crosses each thread's equal share: for work whose items
    /// differ in size (causal attention: a row at position p attends p + 1 positions, so equal
    /// row counts would leave one thread three times another's work over a prompt).
    public func parallelFor(_ count: Int, cost: (Int) -> Int, _ body: (Range<Int>) -> Void) {
        let parts = min(threads, count)
        if parts <= 1 { if count > 0 { body(0..<count) }; return }
        var prefix = [0]   // prefix[i]: the cost of items 0..<i
        prefix.reserveCapacity(count + 1)
        for i in 0..<count { prefix.append(prefix[i] + max(1, cost(i))) }
        let total = prefix[count]
        // Part p ends at the first item whose running cost reaches p + 1 shares.
        var bounds = [0]
        for p in 1..<parts {
            let share = total * p / parts
            var lo = bounds[p - 1], hi = count
            while lo < hi { let mid = (lo + hi) / 2; if prefix[mid] < share { lo = mid + 1 } else { hi = mid } }
            bounds.append(lo)
        }
        bounds.append(count)
        WorkSplitter(threads: parts).parallelFor(parts) { range in
            for p in range where bounds[p] < bounds[p + 1] { body(bounds[p]..<bounds[p + 1]) }
        }
    }
}

/// One `parallelFor` call's parts, handed to the C worker pool (CKernels `mi_pool_run`).
private final class PoolJob {
    let run: (Int) -> Void
    init(_ run: @escaping (Int) -> Void) { self.run = run }
}

/// Hands a value to other threads whose accesses are disjoint or ordered by construction.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
