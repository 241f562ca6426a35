import CKernels
import Collectives
import Foundation
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
struct MeshBatch: Codable {
    struct Entry: Codable {
        let sequence: Int       // stable id; its home device is sequence % n
        let start: Int          // first new position
        let tokens: [Int]
        let logitsFrom: Int?    // nil: only the last token's logits
    }
    let entries: [Entry]
}

/// A device's KV caches, per sequence id.
final class DeviceCaches: @unchecked Sendable {
    var caches: [Int: KVCache] = [:]
    func cache(_ sequence: Int, config: ModelConfig, kvDimension: Int, limit: Int) -> KVCache {
        if let c = caches[sequence] { return c }
        let c = KVCache(config: config, kvDimension: kvDimension, limit: limit)
        caches[sequence] = c
        return c
    }
}

/// The per-device program of one forward pass under a phase layout (Pope et al. §3, Fig. 2
/// and 5): the same code runs on every device of the mesh, talking only through `comm`.
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

    var n: Int { mesh.deviceCount }
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

    // MARK: collectives on activations

    /// All-gather along columns: (R, c) → (R, K·c), member pieces side by side.
    func gatherColumns(_ x: Matrix, _ axes: AxisSet, _ label: String) throws -> Matrix {
        let K = mesh.size(axes)
        if K == 1 { return x }
        let all = try comm.allGather(x.values, over: axes, label: label)
        let R = x.rows, c = x.columns
        let out = Matrix(uninitializedRows: R, columns: K * c)
        all.withUnsafeBufferPointer { a in
            for m in 0..<K {
                for r in 0..<R { (out.row(r) + m * c).update(from: a.baseAddress! + m * R * c + r * c, count: c) }
            }
        }
        return out
    }

    /// Reduce-scatter along columns: partial sums (R, C) → (R, C/K), member i keeping column chunk i.
    func reduceScatterColumns(_ x: Matrix, _ axes: AxisSet, _ label: String) throws -> Matrix {
        let K = mesh.size(axes)
        if K == 1 { return x }
        let R = x.rows, C = x.columns, c = C / K
        precondition(C % K == 0)
        var chunked = [Float](repeating: 0, count: R * C)
        chunked.withUnsafeMutableBufferPointer { d in
            for m in 0..<K {
                for r in 0..<R { (d.baseAddress! + m * R * c + r * c).update(from: x.row(r) + m * c, count: c) }
            }
        }
        return Matrix(rows: R, columns: c, values: try comm.reduceScatter(chunked, over: axes, label: label))
    }

    /// All-gather along rows: (R, c) per member → (K·R, c).
    func gatherRows(_ x: Matrix, _ axes: AxisSet, _ label: String) throws -> Matrix {
        let K = mesh.size(axes)
        if K == 1 { return x }
        return Matrix(rows: K * x.rows, columns: x.columns, values: try comm.allGather(x.values, over: axes, label: label))
    }

    // MARK: ops

    /// RMSNorm of an E-sharded residual: each device sums the squares of its columns, the sums
    /// are all-reduced over the axes E is split over (a B·L-element collective), then each
    /// device scales its own columns.
    func norm(_ x: Matrix, _ weight: [Float], axes: AxisSet) throws -> Matrix {
        var sums = (0..<x.rows).map { Float(mi_sum_squares(x.row($0), Int32(x.columns))) }   // (B·L)
        if mesh.size(axes) > 1 { sums = try comm.allReduce(sums, over: axes, label: "norm") }
        let chunk = mesh.index(of: rank, within: axes) * x.columns
        let out = Matrix(uninitializedRows: x.rows, columns: x.columns)   // (B·L, E/|axes|)
        weight.withUnsafeBufferPointer { w in
            for r in 0..<x.rows {
                mi_rms_scale(x.row(r), w.baseAddress! + chunk, Int32(x.columns), Double(sums[r]), Int32(config.modelDimension),
                             config.normEpsilon, out.row(r))
            }
        }
        return out
    }

    enum Role { case input, output }

    /// The matrix this device multiplies by: its shard, or in weight-gathered layouts (§3.2.3)
    /// the shards of its weight-gather group all-gathered as stored (int8 codes, file blocks or
    /// f32) and joined: input-role shards (rows F_yz, columns E_x) tile rows by i_yz and columns
    /// by i_x; output-role shards the other way round.
    func linear(for w: LinearWeight, _ role: Role, _ label: String) throws -> LinearWeight {
        let axes = ffn.weightGatherAxes
        if mesh.size(axes) == 1 { return w }
        let members = mesh.group(of: rank, over: axes)
        let words = w.wireWords
        let all = try comm.allGather(words, over: axes, label: label + ".weights")
        let (xs, yzs) = ffn.weightGatherGrid(rank: rank, mesh: mesh)
        let (rowKeys, colKeys) = role == .input ? (yzs, xs) : (xs, yzs)
        var grid = [[LinearWeight?]](repeating: Array(repeating: nil, count: colKeys.count), count: rowKeys.count)
        all.withUnsafeBufferPointer { a in
            for (m, member) in members.enumerated() {
                let (x, yz) = (mesh.coordinates(of: member)[0], mesh.yzIndex(of: member))
                let (rk, ck) = role == .input ? (yz, x) : (x, yz)
                let tile = w.sameShape(wireWords: UnsafeBufferPointer(rebasing: a[(m * words.count)..<((m + 1) * words.count)]))
                grid[rowKeys.firstIndex(of: rk)!][colKeys.firstIndex(of: ck)!] = tile
            }
        }
        return try LinearWeight.joining(grid.map { $0.map { $0! } })
    }

    /// All-gather the layer input over the layout's input axes, then multiply by each weight.
    /// With overlap (looped collective einsum, §3.5), the rows are cut into chunks and the
    /// all-gather of chunk i+1 runs while chunk i is multiplied.
    func gatherThenMultiply(_ h: Matrix, _ weights: [LinearWeight], _ label: String) throws -> [Matrix] {
        let ws = try weights.map { try linear(for: $0, .input, label) }
        let axes = ffn.inputGatherAxes
        guard overlap, mesh.size(axes) > 1, h.rows >= 2 * minimumChunkRows else {
            let hg = try gatherColumns(h, axes, label)
            return ws.map { $0.apply(hg, threads: threads) }
        }
        let chunks = rowChunks(h.rows)
        let gathered = Pipeline(count: chunks.count)
        for (i, r) in chunks.enumerated() {
            let part = h.selectingRows(Array(r))
            gathered.submit(i) { try gatherColumns(part, axes, label) }
        }
        var pieces: [[Matrix]] = Array(repeating: [], count: ws.count)
        for i in chunks.indices {
            let hg = try gathered.result(i)
            for (j, w) in ws.enumerated() { pieces[j].append(w.apply(hg, threads: threads)) }
        }
        return pieces.map(stackRows)
    }

    /// Σ xᵢ · Wᵢᵀ (the layer's output matmuls), then reduce-scatter over the layout's output
    /// axes. With overlap, row chunk i is reduce-scattered while chunk i+1 is multiplied.
    func multiplyThenReduce(_ pairs: [(Matrix, LinearWeight)], _ label: String) throws -> Matrix {
        let ws = try pairs.map { try linear(for: $0.1, .output, label) }
        let rows = pairs[0].0.rows
        func compute(_ r: Range<Int>) -> Matrix {
            let outs = zip(pairs, ws).map { p, w in w.apply(r == 0..<rows ? p.0 : p.0.selectingRows(Array(r)), threads: threads) }
            return outs.dropFirst().reduce(outs[0]) { add($0, $1) }
        }
        let axes = ffn.outputReduceAxes
        guard overlap, mesh.size(axes) > 1, rows >= 2 * minimumChunkRows else { return try reduceScatterColumns(compute(0..<rows), axes, label) }
        let chunks = rowChunks(rows)
        let reduced = Pipeline(count: chunks.count)
        for (i, r) in chunks.enumerated() {
            let partial = compute(r)
            reduced.submit(i) { try reduceScatterColumns(partial, axes, label) }
        }
        return stackRows(try chunks.indices.map { try reduced.result($0) })
    }

    /// Fewer rows than this per chunk and chunking costs more than it hides: each chunk reads
    /// the whole weight again, so decode steps (a few rows) are never chunked.
    var minimumChunkRows: Int { 16 }

    /// Row ranges for the overlapped pipeline: up to 4 chunks of at least `minimumChunkRows`.
    func rowChunks(_ rows: Int) -> [Range<Int>] {
        let c = max(1, min(4, rows / minimumChunkRows))
        return (0..<c).map { (rows * $0 / c)..<(rows * ($0 + 1) / c) }
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

    func add(_ a: Matrix, _ b: Matrix) -> Matrix { a.adding(b) }

    // MARK: the layer

    /// Between W_in and W_out: swiglu per hidden block.
    func feedForwardCore(_ gu: Matrix) throws -> Matrix {
        let fb = config.feedForwardDimension / n
        let blocksHere = gu.columns / (2 * fb)
        let act = Matrix(rows: gu.rows, columns: blocksHere * fb)
        for r in 0..<gu.rows {
            for b in 0..<blocksHere {
                mi_swiglu(gu.row(r) + b * 2 * fb, gu.row(r) + b * 2 * fb + fb, Int32(fb), act.row(r) + b * fb)
            }
        }
        return act
    }

    /// Between W_qkv and W_o: attention over heads or over batch on this device's columns.
    func attentionCore(_ l: Int, _ qkv: Matrix, rows: [RowInfo], batch: MeshBatch) throws -> Matrix {
        let owned = ffn.ownedBlocks(rank: rank, mesh: mesh)
        switch layout.attention {
        case .shardedOverHeads: return headAttention(l, qkv, owned: owned, rows: rows)
        case .shardedOverBatch: return try batchAttention(l, qkv, owned: owned, rows: rows, batch: batch)
        }
    }

    /// 2D layout: one reduce-scatter over x for several tensors of partial sums. Each tensor's
    /// columns are X chunks (chunk i for member i); they travel interleaved in one buffer.
    func scatterHidden(_ parts: [Matrix], _ label: String) throws -> [Matrix] {
        guard ffn == .weightStationary2D, mesh.x > 1 else { return parts }
        let X = mesh.x
        let widths = parts.map { $0.columns / X }
        let fused = Matrix(uninitializedRows: parts[0].rows, columns: widths.reduce(0, +) * X)
        for r in 0..<fused.rows {
            var at = 0
            for i in 0..<X {
                for (p, w) in zip(parts, widths) { (fused.row(r) + at).update(from: p.row(r) + i * w, count: w); at += w }
            }
        }
        let mine = try reduceScatterColumns(fused, .x, label)
        var offset = 0
        return widths.map { w in defer { offset += w }; return mine.columns(offset, w) }
    }

    /// 2D layout: one all-gather over x for several tensors, each returned with its members'
    /// pieces side by side.
    func gatherHidden(_ parts: [Matrix], _ label: String) throws -> [Matrix] {
        guard ffn == .weightStationary2D, mesh.x > 1 else { return parts }
        let X = mesh.x
        let widths = parts.map(\.columns)
        let total = widths.reduce(0, +)
        let fused = Matrix(uninitializedRows: parts[0].rows, columns: total)
        for r in 0..<fused.rows {
            var at = 0
            for (p, w) in zip(parts, widths) { (fused.row(r) + at).update(from: p.row(r), count: w); at += w }
        }
        let all = try gatherColumns(fused, .x, label)   // (R, X·total): member i's [p0 | p1 | …]
        var offset = 0
        return widths.map { w in
            defer { offset += w }
            let out = Matrix(uninitializedRows: all.rows, columns: X * w)
            for r in 0..<all.rows {
                for i in 0..<X { (out.row(r) + i * w).update(from: all.row(r) + i * total + offset, count: w) }
            }
            return out
        }
    }

    /// Heads layout (Fig. 5a): every block here holds whole heads; the KV cache keeps this
    /// device's blocks' KV heads (replicated ones included) for its sequences.
    func headAttention(_ l: Int, _ qkv: Matrix, owned: [Int], rows: [RowInfo]) -> Matrix {
        let Q = config.headDimension
        let slots = owned.map { blocks.qkv[$0] }
        let kvPerBlock = slots.map { $0.filter { if case .key = $0 { true } else { false } }.count }
        let qPerBlock = slots.map { $0.filter { if case .query = $0 { true } else { false } }.count }
        let kvDim = kvPerBlock.reduce(0, +) * Q
        let out = Matrix(rows: qkv.rows, columns: qPerBlock.reduce(0, +) * Q)
        let rope = RopeTable(config: config, positions: rows.map(\.position))
        let blockWidth = slots[0].count * Q
        for (r, info) in rows.enumerated() where !info.isPadding {
            let row = qkv.row(r)
            for i in 0..<(slots.count * slots[0].count) {
                if case .value = slots[i / slots[0].count][i % slots[0].count] { continue }
                rope.apply(row + i * Q, row: r)
            }
            let cache = caches.cache(info.sequence, config: config, kvDimension: kvDim, limit: limit)
            cache.reserve(info.position + 1)
            var kvAt = 0
            for (b, _) in slots.enumerated() {
                let base = row + b * blockWidth
                let k = kvPerBlock[b] * Q
                cache.key(layer: l, position: info.position).advanced(by: kvAt).update(from: base + qPerBlock[b] * Q, count: k)
                cache.value(layer: l, position: info.position).advanced(by: kvAt).update(from: base + qPerBlock[b] * Q + k, count: k)
                kvAt += k
            }
        }
        threads.parallelFor(rows.count) { range in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: limit + 1)
            defer { scratch.deallocate() }
            for r in range where !rows[r].isPadding {
                let info = rows[r]
                let cache = caches.caches[info.sequence]!
                var kvAt = 0, qAt = 0
                for b in 0..<slots.count {
                    mi_attention_row(qkv.row(r) + b * blockWidth, Int32(qPerBlock[b]), Int32(kvPerBlock[b]), Int32(Q),
                                     cache.key(layer: l, position: 0) + kvAt, cache.value(layer: l, position: 0) + kvAt,
                                     Int64(kvDim), Int32(info.position + 1), 1 / Float(Q).squareRoot(), scratch,
                                     out.row(r) + qAt)
                    kvAt += kvPerBlock[b] * Q
                    qAt += qPerBlock[b] * Q
                }
            }
        }
        return out
    }

    /// Batch layout (Fig. 5b): all-to-all over the hidden axes so each device holds every head
    /// of the sequences it is home to, attend locally (KV cache `B_xyz L Q`), all-to-all back.
    func batchAttention(_ l: Int, _ qkv: Matrix, owned: [Int], rows: [RowInfo], batch: MeshBatch) throws -> Matrix {
        let axes = ffn.hiddenAxes
        let K = mesh.size(axes)
        let Q = config.headDimension, H = config.heads, KV = config.kvHeads
        let members = mesh.group(of: rank, over: axes)
        let me = mesh.index(of: rank, within: axes)
        // Which member attends each local row, and each member's chunk of rows (padded).
        func member(_ info: RowInfo) -> Int { mesh.index(of: home(info.sequence), within: axes) }
        var chunks = [[Int]](repeating: [], count: K)   // local row indices per member
        for (r, info) in rows.enumerated() where !info.isPadding { chunks[member(info)].append(r) }
        let chunkRows = placement.chunkRows(batch.entries.map { ($0.sequence, $0.tokens.count) })
        let width = qkv.columns
        var send = [Float](repeating: 0, count: K * chunkRows * width)
        for j in 0..<K {
            for (i, r) in chunks[j].enumerated() {
                for c in 0..<width { send[(j * chunkRows + i) * width + c] = qkv[r, c] }
            }
        }
        let received = K > 1 ? try comm.allToAll(send, over: axes, label: "attention.all_to_all") : send
        // Assemble my rows with every block: member i sent its owned blocks' columns.
        let slotCount = blocks.qkv[0].count
        var columnOf: [HeadSlot: Int] = [:]
        for (i, m) in members.enumerated() {
            for (b, f) in ffn.ownedBlocks(rank: m, mesh: mesh).enumerated() {
                for (s, slot) in blocks.qkv[f].enumerated() where columnOf[slot] == nil && slot != .padding {
                    columnOf[slot] = (i * owned.count * slotCount + b * slotCount + s) * Q
                }
            }
        }
        let fullWidth = K * width
        let mine = chunks[me].map { rows[$0] }
        let full = Matrix(rows: mine.count, columns: (H + 2 * KV) * Q)   // natural q | k | v
        for t in 0..<mine.count {
            for slot in columnOf.keys {
                let src = columnOf[slot]!
                let i = src / (width), within = src % width
                let dst: Int
                switch slot {
                case let .query(h): dst = h * Q
                case let .key(g): dst = (H + g) * Q
                case let .value(g): dst = (H + KV + g) * Q
                case .padding: continue
                }
                _ = fullWidth
                for q in 0..<Q { full[t, dst + q] = received[(i * chunkRows + t) * width + within + q] }
            }
        }
        let attended = causalAttention(
            full, heads: H, kvHeads: KV, headDimension: Q, rope: RopeTable(config: config, positions: mine.map(\.position)),
            caches: mine.map { caches.cache($0.sequence, config: config, kvDimension: KV * Q, limit: limit) },
            positions: mine.map(\.position), layer: l, threads: threads)
        // Back: member j gets my rows' attention output for the W_o input columns it holds.
        let outSlots = blocks.attentionOutput[0].count
        let outWidth = owned.count * outSlots * Q
        var back = [Float](repeating: 0, count: K * chunkRows * outWidth)
        for (j, m) in members.enumerated() {
            let blocksOfJ = ffn.ownedBlocks(rank: m, mesh: mesh)
            for t in 0..<mine.count {
                var at = 0
                for f in blocksOfJ {
                    for slot in blocks.attentionOutput[f] {
                        if case let .query(h) = slot {
                            for q in 0..<Q { back[(j * chunkRows + t) * outWidth + at + q] = attended[t, h * Q + q] }
                        }
                        at += Q
                    }
                }
            }
        }
        let returned = K > 1 ? try comm.allToAll(back, over: axes, label: "attention.all_to_all") : back
        let out = Matrix(rows: rows.count, columns: outWidth)
        for j in 0..<K {
            for (i, r) in chunks[j].enumerated() {
                (out.row(r)).update(from: returned.withUnsafeBufferPointer { $0.baseAddress! } + (j * chunkRows + i) * outWidth,
                                    count: outWidth)
            }
        }
        return out
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
        for (r, info) in rows.enumerated() where !info.isPadding {
            let token = tokenOf[info.sequence]![info.position - startOf[info.sequence]!]
            try embedded.withUnsafeMutableBufferPointer { try weights.embedding.readRows("token_embd.weight", token..<(token + 1), into: $0.baseAddress!) }
            for c in 0..<width { x[r, c] = embedded[start + c] }
        }
        let run = LayerRun(program: self, rows: rows, batch: batch)
        for l in 0..<config.layers { x = try shardedLayer(run, block: config.block, layer: l, x) }

        // Logit rows: gather them whole on every device, then a vocabulary-sharded unembedding.
        var wanted: [Int] = []
        for (r, info) in rows.enumerated() where !info.isPadding {
            let e = batch.entries.first { $0.sequence == info.sequence }!
            let index = info.position - e.start
            if index >= (e.logitsFrom ?? (e.tokens.count - 1)) { wanted.append(r) }
        }
        let perGroup = maxLogitRows(batch)
        var hidden = x.selectingRows(wanted + Array(repeating: wanted.first ?? 0, count: perGroup - wanted.count))
        hidden = try gatherColumns(hidden, ffn.residualAxes, "output")
        hidden = try gatherRows(hidden, ffn.batchAxes, "output")
        let normed = Matrix(rows: hidden.rows, columns: E)
        weights.outputNorm.withUnsafeBufferPointer { w in
            for r in 0..<hidden.rows { mi_rmsnorm(hidden.row(r), w.baseAddress!, Int32(E), config.normEpsilon, normed.row(r)) }
        }
        let logits = try gatherColumns(weights.output.apply(normed, threads: threads), .xyz, "output")
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

/// The executing interpreter of the sharded layer program: one device, one forward pass.
struct LayerRun: ShardedLayerInterpreter {
    let program: DeviceProgram
    let rows: [RowInfo]
    let batch: MeshBatch

    func weights(_ l: Int) -> DeviceLayer { program.weights.layers(oneDimensional: program.ffn.storesOneDimensional)[l] }

    func matrix(_ m: LayerMatrix, _ l: Int) -> LinearWeight {
        let w = weights(l)
        switch m {
        case .qkv: return w.qkv
        case .attentionOutput: return w.attentionOutput
        case .gateUp: return w.gateUp
        case .down: return w.down
        }
    }

    func norm(_ x: Matrix, feedForward: Bool, layer: Int) throws -> Matrix {
        let w = weights(layer)
        return try program.norm(x, feedForward ? w.feedForwardNorm! : w.attentionNorm, axes: program.ffn.residualAxes)
    }

    func gatherThenMultiply(_ h: Matrix, _ matrices: [LayerMatrix], layer: Int, label: String) throws -> [Matrix] {
        try program.gatherThenMultiply(h, matrices.map { matrix($0, layer) }, label)
    }

    func attentionCore(_ qkv: Matrix, layer: Int) throws -> Matrix {
        try program.attentionCore(layer, qkv, rows: rows, batch: batch)
    }

    func feedForwardCore(_ gateUp: Matrix) throws -> Matrix { try program.feedForwardCore(gateUp) }

    func scatterHidden(_ values: [Matrix], label: String) throws -> [Matrix] { try program.scatterHidden(values, label) }

    func gatherHidden(_ values: [Matrix], label: String) throws -> [Matrix] { try program.gatherHidden(values, label) }

    func multiplyThenReduce(_ pairs: [(Matrix, LayerMatrix)], layer: Int, label: String) throws -> Matrix {
        try program.multiplyThenReduce(pairs.map { ($0.0, matrix($0.1, layer)) }, label)
    }

    func add(_ a: Matrix, _ b: Matrix) -> Matrix { program.add(a, b) }
}
