import CKernels
import Tensors

extension DeviceProgram {
    /// Heads layout (Fig. 5a): every block here holds whole heads; the KV cache keeps this
    /// device's blocks' KV heads (replicated ones included) for its sequences.
    func headAttention(_ l: Int, _ qkv: Matrix, owned: [Int], rows: [RowInfo], rope: RopeTable) -> Matrix {
        let Q = config.headDimension
        let slots = owned.map { blocks.qkv[$0] }
        let kvPerBlock = slots.map { $0.filter { if case .key = $0 { true } else { false } }.count }
        let qPerBlock = slots.map { $0.filter { if case .query = $0 { true } else { false } }.count }
        let kvDim = kvPerBlock.reduce(0, +) * Q
        let out = Matrix(rows: qkv.rows, columns: qPerBlock.reduce(0, +) * Q)
        logAttention(rows, queryHeads: qPerBlock.reduce(0, +), kvHeads: kvPerBlock.reduce(0, +))
        let blockWidth = slots[0].count * Q
        let live = rows.filter { !$0.isPadding }
        KVCache.reserve(live.map { caches.cache($0.sequence, config: config, kvDimension: kvDim, limit: limit) }, live.map(\.position))
        for (r, info) in rows.enumerated() where !info.isPadding {
            let row = qkv.row(r)
            for i in 0..<(slots.count * slots[0].count) {
                if case .value = slots[i / slots[0].count][i % slots[0].count] { continue }
                rope.apply(row + i * Q, row: r)
            }
            let cache = caches.caches[info.sequence]!
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

}
