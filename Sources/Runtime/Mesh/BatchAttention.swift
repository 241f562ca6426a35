import Partitioning
import Tensors

/// Batch-sharded attention (Pope et al. §3.3, Fig. 5b): an all-to-all over the hidden axes
/// gives each device every head of the sequences it is home to; it attends with their whole KV
/// cache (`B_xyz L K Q`), and a second all-to-all returns the output to the devices holding
/// W_o's columns.
extension DeviceProgram {
    /// Who attends which local row: each member's local row indices (the rows of sequences homed
    /// on it), the padded rows per member, and the rows homed here, in the order they arrive.
    struct BatchExchange {
        let axes: AxisSet
        let chunks: [[Int]]      // per member of the group over `axes`: local row indices
        let chunkRows: Int       // rows any device sends any member (padded to this)
        let mine: [RowInfo]      // rows attended here
        let rope: RopeTable      // RoPE angles of `mine`
    }

    func batchExchange(rows: [RowInfo], batch: MeshBatch) -> BatchExchange {
        let axes = ffn.hiddenAxes
        var chunks = [[Int]](repeating: [], count: mesh.size(axes))
        for (r, info) in rows.enumerated() where !info.isPadding {
            chunks[mesh.index(of: home(info.sequence), within: axes)].append(r)
        }
        let mine = chunks[mesh.index(of: rank, within: axes)].map { rows[$0] }
        return BatchExchange(axes: axes, chunks: chunks,
                             chunkRows: placement.chunkRows(batch.entries.map { ($0.sequence, $0.tokens.count) }),
                             mine: mine, rope: RopeTable(config: config, positions: mine.map(\.position)))
    }

    /// q|k|v of the owned head blocks (rows, owned slots · Q) → every head of the home rows in
    /// natural order (mine, (H + 2K)·Q).
    func toBatch(_ qkv: Matrix, _ x: BatchExchange, _ site: CollectiveSite) throws -> Matrix {
        let K = mesh.size(x.axes)
        let Q = config.headDimension, H = config.heads, KV = config.kvHeads
        let width = qkv.columns
        var send = [Float](repeating: 0, count: K * x.chunkRows * width)   // K × (chunkRows, width)
        for j in 0..<K {
            for (i, r) in x.chunks[j].enumerated() {
                for c in 0..<width { send[(j * x.chunkRows + i) * width + c] = qkv[r, c] }
            }
        }
        let received = K > 1 ? try collective(.allToAll, send, x.axes, site) : send
        // Member i sent its owned blocks' columns: find each head slot's column in its piece.
        let slotCount = blocks.qkv[0].count
        let members = mesh.group(of: rank, over: x.axes)
        let ownedCount = ffn.ownedBlocks(rank: rank, mesh: mesh).count
        var columnOf: [HeadSlot: Int] = [:]
        for (i, m) in members.enumerated() {
            for (b, f) in ffn.ownedBlocks(rank: m, mesh: mesh).enumerated() {
                for (s, slot) in blocks.qkv[f].enumerated() where columnOf[slot] == nil && slot != .padding {
                    columnOf[slot] = (i * ownedCount * slotCount + b * slotCount + s) * Q
                }
            }
        }
        let full = Matrix(rows: x.mine.count, columns: (H + 2 * KV) * Q)   // (mine, natural q | k | v)
        for (slot, src) in columnOf {
            let i = src / width, within = src % width
            let dst: Int
            switch slot {
            case let .query(h): dst = h * Q
            case let .key(g): dst = (H + g) * Q
            case let .value(g): dst = (H + KV + g) * Q
            case .padding: continue
            }
            for t in 0..<x.mine.count {
                for q in 0..<Q { full[t, dst + q] = received[(i * x.chunkRows + t) * width + within + q] }
            }
        }
        return full
    }

    /// Causal attention over every head of the home rows, with their sequences' whole caches.
    func batchAttention(_ l: Int, _ full: Matrix, _ x: BatchExchange) -> Matrix {
        let Q = config.headDimension, H = config.heads, KV = config.kvHeads
        logAttention(l, x.mine, queryHeads: H, kvHeads: KV)
        return causalAttention(
            full, heads: H, kvHeads: KV, headDimension: Q, prep: headPrep(layer: l, rope: x.rope), config: config,
            caches: caches.caches(x.mine.map(\.sequence), config: config, kvHeads: KV, limit: limit),
            positions: x.mine.map(\.position), layer: l, threads: threads)
    }

    /// The attention output of the home rows (mine, H·Q) → each local row's W_o input columns
    /// (rows, owned blocks' slots · Q).
    func fromBatch(_ attended: Matrix, rows: [RowInfo], _ x: BatchExchange, _ site: CollectiveSite) throws -> Matrix {
        let K = mesh.size(x.axes)
        let Q = config.headDimension
        let members = mesh.group(of: rank, over: x.axes)
        let outWidth = ffn.ownedBlocks(rank: rank, mesh: mesh).count * blocks.attentionOutput[0].count * Q
        var back = [Float](repeating: 0, count: K * x.chunkRows * outWidth)   // K × (chunkRows, outWidth)
        for (j, m) in members.enumerated() {
            for t in 0..<x.mine.count {
                var at = 0
                for f in ffn.ownedBlocks(rank: m, mesh: mesh) {
                    for slot in blocks.attentionOutput[f] {
                        if case let .query(h) = slot {
                            for q in 0..<Q { back[(j * x.chunkRows + t) * outWidth + at + q] = attended[t, h * Q + q] }
                        }
                        at += Q
                    }
                }
            }
        }
        let returned = K > 1 ? try collective(.allToAll, back, x.axes, site) : back
        let out = Matrix(rows: rows.count, columns: outWidth)   // (rows, outWidth)
        returned.withUnsafeBufferPointer { b in
            for j in 0..<K {
                for (i, r) in x.chunks[j].enumerated() {
                    out.row(r).update(from: b.baseAddress! + (j * x.chunkRows + i) * outWidth, count: outWidth)
                }
            }
        }
        return out
    }

    /// Enters one layer's attention in the execution log: Q·Kᵀ and P·V over each row's causal
    /// positions, and one read of each attended sequence's cached keys and values; the same
    /// KV bytes go to the profile's attention class.
    func logAttention(_ layer: Int, _ rows: [RowInfo], queryHeads: Int, kvHeads: Int) {
        guard log != nil || profile != nil else { return }
        let Q = Double(config.headDimension)
        var spans: [Int: (first: Int, end: Int)] = [:]   // sequence → cached positions read
        var flops = 0.0
        for r in rows where !r.isPadding {
            let first = config.firstAttended(layer: layer, position: r.position)
            flops += 4 * Double(r.position + 1 - first) * Double(queryHeads) * Q
            let s = spans[r.sequence] ?? (first, r.position + 1)
            spans[r.sequence] = (min(s.first, first), max(s.end, r.position + 1))
        }
        let kvBytes = spans.values.reduce(0.0) { $0 + 2 * Double($1.end - $1.first) * Double(kvHeads) * Q * caches.type.bytesPerElement }
        log?.attentionFLOPs += flops
        log?.kvBytes += kvBytes
        profile?.add("attention", seconds: 0, bytes: kvBytes, calls: 0)
    }
}
