import CKernels
import Tensors

extension DeviceProgram {
    /// Heads layout (Fig. 5a): every block here holds whole heads; the KV cache keeps this
    /// device's blocks' KV heads (replicated ones included) for its sequences.
    func headAttention(_ l: Int, _ qkv: Matrix, owned: [Int], rows: [RowInfo], prep: HeadPrep) -> Matrix {
        let Q = config.headDimension
        // Each owned block: `queries` query slots, `kv` key slots, `kv` value slots (padding
        // slots included: zero weights, so zero rows, run like any head).
        let (queries, kv) = blocks.wholeHeads!
        let out = Matrix(rows: qkv.rows, columns: owned.count * queries * Q)
        logAttention(l, rows, queryHeads: owned.count * queries, kvHeads: owned.count * kv)
        let blockWidth = (queries + 2 * kv) * Q
        let live = rows.indices.filter { !rows[$0].isPadding }
        let liveCaches = caches.caches(live.map { rows[$0].sequence }, config: config, kvHeads: owned.count * kv, limit: limit)
        KVCache.reserve(liveCaches, live.map { rows[$0].position })
        var rowCaches = [KVCache?](repeating: nil, count: rows.count)
        for (r, c) in zip(live, liveCaches) { rowCaches[r] = c }
        // Row r's heads prepared (QK norm, RoPE) and its keys and values written at its position.
        func prepare(_ r: Int) {
            let row = qkv.row(r)
            let cache = rowCaches[r]!
            for b in 0..<owned.count {
                let base = row + b * blockWidth
                for h in 0..<queries { prep.query(base + h * Q, row: r) }
                for h in queries..<(queries + kv) { prep.key(base + h * Q, row: r) }
                cache.write(layer: l, position: rows[r].position, firstHead: b * kv, count: kv, keys: base + queries * Q,
                            values: base + (queries + kv) * Q)
            }
        }
        // A decode step (one row per sequence) reads each cache once, from memory, and a row's
        // prep, cache write and attention touch only its own sequence: they run as one parallel
        // pass. A prompt's rows attend to each other's positions: all are written first.
        let decode = Set(live.map { rows[$0].sequence }).count == live.count
        if !decode {
            threads.parallelRows(rows.count, columns: qkv.columns) { range in for r in range where !rows[r].isPadding { prepare(r) } }
        }
        let cold: Int32 = decode ? 1 : 0
        threads.parallelFor(rows.count, cost: { rows[$0].isPadding ? 0 : rows[$0].position + 1 - config.firstAttended(layer: l, position: rows[$0].position) }) { range in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: (limit + 1) * max(1, queries / max(1, kv)))
            defer { scratch.deallocate() }
            for r in range where !rows[r].isPadding {
                if decode { prepare(r) }
                let info = rows[r]
                let cache = rowCaches[r]!
                let first = config.firstAttended(layer: l, position: info.position)
                for b in 0..<owned.count {
                    cache.attend(qkv.row(r) + b * blockWidth, heads: queries, kvHeads: kv, layer: l, firstHead: b * kv, first: first,
                                 count: info.position + 1 - first, scale: 1 / Float(Q).squareRoot(), scratch: scratch,
                                 out: out.row(r) + b * queries * Q, cold: cold)
                }
            }
        }
        return out
    }

}
