import Foundation
import Partitioning
import Tensors

/// The looped collective einsum (Pope et al. §3.5) as an option of the executing interpreter:
/// the rows of an all-gather followed by a matmul, or of a matmul (sum) followed by a
/// reduce-scatter, are cut into chunks, and the collective of one chunk runs while the next is
/// multiplied. Results are the same rows in the same order; only the timing differs.
extension DeviceProgram {
    /// Fewer rows than this per chunk and chunking costs more than it hides: each chunk reads
    /// the whole weight again, so decode steps (a few rows) are never chunked.
    var minimumChunkRows: Int { 16 }

    func overlaps(rows: Int, _ axes: AxisSet) -> Bool { overlap && mesh.size(axes) > 1 && rows >= 2 * minimumChunkRows }

    /// Row ranges for the pipeline: up to 4 chunks of at least `minimumChunkRows`.
    func rowChunks(_ rows: Int) -> [Range<Int>] {
        let c = max(1, min(4, rows / minimumChunkRows))
        return (0..<c).map { (rows * $0 / c)..<(rows * ($0 + 1) / c) }
    }

    /// All-gather `h`'s columns chunk by chunk while multiplying the gathered chunks; returns the
    /// product and the whole gathered input (for a second matmul on the same input).
    func gatherWhileMultiplying(_ h: Matrix, _ axes: AxisSet, _ site: CollectiveSite, _ w: LinearWeight) throws -> (Matrix, gathered: Matrix) {
        let chunks = rowChunks(h.rows)
        let gathered = Pipeline(count: chunks.count)
        for (i, r) in chunks.enumerated() {
            let part = h.selectingRows(Array(r))
            gathered.submit(i) { try gatherColumns([part], axes, site)[0] }
        }
        var inputs: [Matrix] = [], products: [Matrix] = []
        for i in chunks.indices {
            let hg = try gathered.result(i)
            inputs.append(hg)
            products.append(multiply(hg, w))
        }
        return (stackRows(products), stackRows(inputs))
    }

    /// Σ xᵢ · Wᵢᵀ chunk by chunk, reduce-scattering each chunk while the next is multiplied.
    func multiplyWhileReducing(_ pairs: [(Matrix, LinearWeight)], _ axes: AxisSet, _ site: CollectiveSite) throws -> Matrix {
        let chunks = rowChunks(pairs[0].0.rows)
        let reduced = Pipeline(count: chunks.count)
        for (i, r) in chunks.enumerated() {
            let partial = sumOfProducts(pairs.map { ($0.0.selectingRows(Array(r)), $0.1) })
            reduced.submit(i) { try reduceScatterColumns([partial], axes, site)[0] }
        }
        return stackRows(try chunks.indices.map { try reduced.result($0) })
    }

    func stackRows(_ parts: [Matrix]) -> Matrix {
        let out = Matrix(uninitializedRows: parts.reduce(0) { $0 + $1.rows }, columns: parts[0].columns)
        var at = 0
        for p in parts {
            out.row(at).update(from: p.data, count: p.rows * p.columns)
            at += p.rows
        }
        return out
    }
}

/// Runs a device's collectives in order on a background thread while the device computes
/// (the in-flight half of a looped collective einsum). Collectives stay in program order, one
/// at a time, so the SPMD contract of the communicator holds.
final class Pipeline: @unchecked Sendable {
    private let queue = DispatchQueue(label: "meshinfer.pipeline")
    private var results: [Result<Matrix, Error>?]
    private let done: [DispatchSemaphore]
    private let lock = NSLock()

    init(count: Int) {
        results = Array(repeating: nil, count: count)
        done = (0..<count).map { _ in DispatchSemaphore(value: 0) }
    }

    func submit(_ i: Int, _ body: @escaping () throws -> Matrix) {
        let work = UncheckedSendable(body)
        queue.async {
            let r = Result { try work.value() }
            self.lock.withLock { self.results[i] = r }
            self.done[i].signal()
        }
    }

    func result(_ i: Int) throws -> Matrix {
        done[i].wait()
        return try lock.withLock { results[i]! }.get()
    }
}

