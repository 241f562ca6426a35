import Foundation
import CKernels
import Collectives
import Partitioning
import Tensors
import Transformer

/// One row of a device's activations: a token of a sequence, or padding (so that every
/// member of a collective passes equally many rows, as the paper pads).
struct RowInfo: Equatable {
    var sequence: Int   // -1 = padding
    var position: Int
    var isPadding: Bool { sequence < 0 }
    static let padding = RowInfo(sequence: -1, position: 0)
}

/// The batch of one forward pass, as every device sees it: new tokens per sequence.
public struct MeshBatch: Codable, Equatable, Sendable {
    struct Entry: Codable, Equatable {
        let sequence: Int       // stable id; its home device is sequence % n
        let start: Int          // first new position
        let tokens: [Int]
        let logitsFrom: Int?    // nil: only the last token's logits
    }
    let entries: [Entry]
}

/// A device's KV caches, per sequence id.
/// The device is their one owner: passes look caches up (or make them) and sequences being
/// released drop them, from any thread, under its lock. A pass holds the caches of its own
/// sequences (which cannot be released while their batch runs) for the whole pass.
final class DeviceCaches: @unchecked Sendable {
    let type: KVCacheType
    private let lock = NSLock()
    private var caches: [Int: KVCache] = [:]

    init(type: KVCacheType) { self.type = type }

    /// The cache of each sequence, made on first use.
    func caches(_ sequences: [Int], config: ModelConfig, kvHeads: Int, limit: Int) -> [KVCache] {
        lock.withLock {
            sequences.map { s in
                if let c = caches[s] { return c }
                let c = KVCache(type: type, config: config, kvHeads: kvHeads, limit: limit)
                caches[s] = c
                return c
            }
        }
    }

    func release(_ sequences: [Int]) { lock.withLock { for s in sequences { caches[s] = nil } } }

    /// Sequence `to` starts with the first `positions` positions of `from` (when this device
    /// holds any of `from`; `to` is homed alike, so what it needs is here).
    func copyPrefix(_ positions: Int, from: Int, to: Int, limit: Int) {
        lock.withLock {
            guard let source = caches[from] else { return }
            caches[to] = source.copy(prefix: min(positions, source.capacity), limit: limit)
        }
    }

    /// Sequences holding a cache on this device.
    var sequences: Set<Int> { lock.withLock { Set(caches.keys) } }
}

/// One device's forward pass under a phase layout (Pope et al. §3, Fig. 2 and 5): embeds its
/// rows, runs `layerProgram` through the executing interpreter (`LayerRun`) for every layer,
/// and unembeds. The same code runs on every device of the mesh, talking only through `comm`;
/// a single device is a mesh of one. Its mechanics live beside it: activation collectives,
/// weight gathers, head and batch attention, overlap.
struct DeviceProgram {
    let config: ModelConfig
    let mesh: Mesh
    let rank: Int
    let layout: PhaseLayout
    let blocks: HiddenBlocks
    let weights: DeviceWeights
    let caches: DeviceCaches
    let comm: any Communicator
    let threads: WorkSplitter
    let limit: Int
    /// Overlap collectives with chunks of the adjacent matmul (§3.5).
    var overlap = false
    /// Where to record what this pass did (tests of trace == execution), or nil.
    var log: ExecutionLog? = nil
    /// Where to time this pass's ops per class (`bench --profile`), or nil.
    var profile: OpProfile? = nil

    var ffn: FeedForwardLayout { layout.feedForward }
    var placement: BatchPlacement { BatchPlacement(mesh: mesh, layout: ffn) }
    func home(_ sequence: Int) -> Int { placement.home(sequence) }

    // MARK: rows

    /// The rows this device holds: whole sequences whose home shares its batch-axes index.
    func localRows(_ batch: MeshBatch) -> [RowInfo] {
        let axes = ffn.batchAxes
        var rows: [RowInfo] = []
        for e in batch.entries where mesh.index(of: home(e.sequence), within: axes) == mesh.index(of: rank, within: axes) {
            for i in 0..<e.tokens.count { rows.append(RowInfo(sequence: e.sequence, position: e.start + i)) }
        }
        let padded = paddedRowCount(batch)
        return rows + Array(repeating: .padding, count: padded - rows.count)
    }

    /// Rows per device after padding: the largest batch-axes group.
    func paddedRowCount(_ batch: MeshBatch) -> Int { placement.paddedRows(batch.entries.map { ($0.sequence, $0.tokens.count) }) }

    // MARK: kernels

    /// RMSNorm of an E-sharded residual: each device sums the squares of its columns, the sums
    /// are all-reduced over the axes E is split over (a B·L-element collective), then each
    /// device scales its own columns.
    func norm(_ x: Matrix, _ weight: [Float], axes: AxisSet, _ site: CollectiveSite) throws -> Matrix {
        try timed("norms", bytes: Double(x.rows * x.columns * 8)) { try normUntimed(x, weight, axes: axes, site) }
    }

    private func normUntimed(_ x: Matrix, _ weight: [Float], axes: AxisSet, _ site: CollectiveSite) throws -> Matrix {
        var sums = [Float](repeating: 0, count: x.rows)   // (B·L)
        sums.withUnsafeMutableBufferPointer { s in
            let s = UncheckedSendable(s)
            threads.parallelRows(x.rows, columns: x.columns) { rows in
                for r in rows { s.value[r] = Float(mi_sum_squares(x.row(r), Int32(x.columns))) }
            }
        }
        if mesh.size(axes) > 1 { sums = try collective(.allReduce, sums, axes, site) }
        let chunk = mesh.index(of: rank, within: axes) * x.columns
        let out = Matrix(uninitializedRows: x.rows, columns: x.columns)   // (B·L, E/|axes|)
        weight.withUnsafeBufferPointer { w in
            threads.parallelRows(x.rows, columns: x.columns) { rows in
                for r in rows {
                    mi_rms_scale(x.row(r), w.baseAddress! + chunk, Int32(x.columns), Double(sums[r]), Int32(config.modelDimension),
                                 config.normEpsilon, out.row(r))
                }
            }
        }
        return out
    }

    /// x · Wᵀ, entered in the execution log with the shapes the kernel runs over.
    func multiply(_ x: Matrix, _ w: LinearWeight) -> Matrix {
        log?.matmul(rows: x.rows, w)
        // Reads the weight once and the input, writes the output.
        return timed("matmul " + w.label, bytes: Double(w.byteCount + 4 * x.rows * (w.inputs + w.outputs))) {
            w.apply(x, threads: threads, profile: profile)
        }
    }

    /// Runs `body`, charged to op class `op` when this pass is profiled.
    @inline(__always)
    func timed<T>(_ op: @autoclosure () -> String, bytes: @autoclosure () -> Double = 0, _ body: () throws -> T) rethrows -> T {
        guard let profile else { return try body() }   // the name and bytes are not even built
        return try profile.measure(op(), bytes: bytes(), body)
    }

    /// Σ xᵢ · Wᵢᵀ (the parallel block's two W_out products, or one).
    func sumOfProducts(_ pairs: [(Matrix, LinearWeight)]) -> Matrix {
        pairs.dropFirst().reduce(multiply(pairs[0].0, pairs[0].1)) { $0.adding(multiply($1.0, $1.1)) }
    }

    /// The per-head prep of query and key heads in `layer`: its QK norms (if any) and RoPE.
    func headPrep(layer: Int, rope: RopeTable) -> HeadPrep {
        let w = weights.layers(oneDimensional: ffn.storesOneDimensional)[layer]
        return HeadPrep(rope: rope, layer: layer, queryNorm: w.queryNorm, keyNorm: w.keyNorm, epsilon: config.normEpsilon)
    }

    // MARK: the whole pass

    /// Embeds this device's rows, runs every layer, and returns the logits of the requested
    /// rows of every sequence (gathered on every device), in batch order.
    func forward(_ batch: MeshBatch) throws -> [Matrix] {
        let rows = localRows(batch)
        let E = config.modelDimension
        let chunks = mesh.size(ffn.residualAxes)
        let width = E / chunks, start = mesh.index(of: rank, within: ffn.residualAxes) * width
        var tokenOf: [Int: [Int]] = [:]
        for e in batch.entries { tokenOf[e.sequence] = e.tokens }
        var x = Matrix(rows: rows.count, columns: width)
        let startOf = Dictionary(uniqueKeysWithValues: batch.entries.map { ($0.sequence, $0.start) })
        var embedded = [Float](repeating: 0, count: E)
        try timed("embedding", bytes: Double(rows.count * (E + width) * 4)) {
            for (r, info) in rows.enumerated() where !info.isPadding {
                let token = tokenOf[info.sequence]![info.position - startOf[info.sequence]!]
                try embedded.withUnsafeMutableBufferPointer { try weights.embedding.readRows("token_embd.weight", token..<(token + 1), into: $0.baseAddress!) }
                for c in 0..<width { x[r, c] = embedded[start + c] * config.embeddingScale }
            }
        }
        let run = LayerRun(program: self, rows: rows, batch: batch)
        var value = DeviceValue.ready(x)
        for l in 0..<config.layers { value = try layerProgram(run, layout, block: config.block, postNorms: config.postNorms, layer: l, value) }
        x = try run.force(value)

        // Logit rows: gather them whole on every device, then a vocabulary-sharded unembedding.
        var wanted: [Int] = []
        for (r, info) in rows.enumerated() where !info.isPadding {
            let e = batch.entries.first { $0.sequence == info.sequence }!
            let index = info.position - e.start
            if index >= (e.logitsFrom ?? (e.tokens.count - 1)) { wanted.append(r) }
        }
        let perGroup = maxLogitRows(batch)
        var hidden = x.selectingRows(wanted + Array(repeating: wanted.first ?? 0, count: perGroup - wanted.count))
        hidden = try gatherColumns([hidden], ffn.residualAxes, CollectiveSite(.unembedding, .logitRows))[0]
        hidden = try gatherRows(hidden, ffn.batchAxes, CollectiveSite(.unembedding, .logitRows))
        let normed = Matrix(rows: hidden.rows, columns: E)
        timed("norms", bytes: Double(hidden.rows * E * 8)) {
            weights.outputNorm.withUnsafeBufferPointer { w in
                for r in 0..<hidden.rows { mi_rmsnorm(hidden.row(r), w.baseAddress!, Int32(E), config.normEpsilon, normed.row(r)) }
            }
        }
        let logits = try gatherColumns([multiply(normed, weights.output)], .xyz, CollectiveSite(.unembedding, .logits))[0]
        // Map gathered rows back to sequences: group g's rows are its wanted rows, in order.
        var result: [Matrix] = []
        for e in batch.entries {
            let g = mesh.index(of: home(e.sequence), within: ffn.batchAxes)
            var before = 0
            for other in batch.entries where other.sequence != e.sequence && mesh.index(of: home(other.sequence), within: ffn.batchAxes) == g {
                if batch.entries.firstIndex(where: { $0.sequence == other.sequence })! < batch.entries.firstIndex(where: { $0.sequence == e.sequence })! {
                    before += logitCount(other)
                }
            }
            let picked = (0..<logitCount(e)).map { g * perGroup + before + $0 }
            result.append(logits.selectingRows(picked).columns(0, config.vocabularySize))
        }
        return result
    }

    func logitCount(_ e: MeshBatch.Entry) -> Int { e.tokens.isEmpty ? 0 : e.tokens.count - min(e.logitsFrom ?? (e.tokens.count - 1), e.tokens.count - 1) }

    func maxLogitRows(_ batch: MeshBatch) -> Int {
        var counts = [Int](repeating: 0, count: mesh.size(ffn.batchAxes))
        for e in batch.entries { counts[mesh.index(of: home(e.sequence), within: ffn.batchAxes)] += logitCount(e) }
        return counts.max() ?? 0
    }
}
