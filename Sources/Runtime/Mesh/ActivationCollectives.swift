import Collectives
import Partitioning
import Tensors

/// The activation collectives of the layer program on real tensors: how a device's columns (or
/// rows) are laid out in the buffers a communicator moves. A group of one device is an identity
/// that calls no collective.
extension DeviceProgram {
    /// All-gather along columns, one collective for several tensors: each (R, cᵢ) comes back as
    /// (R, K·cᵢ) with the members' pieces side by side, in member order.
    func gatherColumns(_ parts: [Matrix], _ axes: AxisSet, _ site: CollectiveSite) throws -> [Matrix] {
        let K = mesh.size(axes)
        if K == 1 { return parts }
        let R = parts[0].rows
        let widths = parts.map(\.columns)
        let total = widths.reduce(0, +)
        let fused = Matrix(uninitializedRows: R, columns: total)   // (R, Σcᵢ): this device's [p0 | p1 | …]
        for r in 0..<R {
            var at = 0
            for (p, w) in zip(parts, widths) { (fused.row(r) + at).update(from: p.row(r), count: w); at += w }
        }
        let all = try collective(.allGather, fused.values, axes, site)   // K × (R, Σcᵢ)
        var offset = 0
        return all.withUnsafeBufferPointer { a in
            widths.map { w in
                defer { offset += w }
                let out = Matrix(uninitializedRows: R, columns: K * w)   // (R, K·cᵢ)
                for m in 0..<K {
                    for r in 0..<R { (out.row(r) + m * w).update(from: a.baseAddress! + (m * R + r) * total + offset, count: w) }
                }
                return out
            }
        }
    }

    /// Reduce-scatter of partial sums along columns, one collective for several tensors: each
    /// (R, Cᵢ) comes back as (R, Cᵢ/K), member i keeping column chunk i of every tensor. The
    /// tensors' chunks travel interleaved so that chunk i of all of them goes to member i.
    func reduceScatterColumns(_ parts: [Matrix], _ axes: AxisSet, _ site: CollectiveSite) throws -> [Matrix] {
        let K = mesh.size(axes)
        if K == 1 { return parts }
        let R = parts[0].rows
        let widths = parts.map { $0.columns / K }
        precondition(parts.allSatisfy { $0.columns % K == 0 })
        let chunk = widths.reduce(0, +) * R
        var send = [Float](repeating: 0, count: K * chunk)   // K × (R, Σ Cᵢ/K)
        send.withUnsafeMutableBufferPointer { d in
            for m in 0..<K {
                for r in 0..<R {
                    var at = m * chunk + r * (chunk / R)
                    for (p, w) in zip(parts, widths) { (d.baseAddress! + at).update(from: p.row(r) + m * w, count: w); at += w }
                }
            }
        }
        let mine = Matrix(rows: R, columns: chunk / max(1, R), values: try collective(.reduceScatter, send, axes, site))
        var offset = 0
        return widths.map { w in defer { offset += w }; return mine.columns(offset, w) }
    }

    /// All-gather along rows: (R, c) per member → (K·R, c).
    func gatherRows(_ x: Matrix, _ axes: AxisSet, _ site: CollectiveSite) throws -> Matrix {
        let K = mesh.size(axes)
        if K == 1 { return x }
        return Matrix(rows: K * x.rows, columns: x.columns, values: try collective(.allGather, x.values, axes, site))
    }

    /// One collective through the communicator, entered in the execution log with the bytes the
    /// transport itself counted.
    func collective(_ kind: CollectiveKind, _ data: [Float], _ axes: AxisSet, _ site: CollectiveSite) throws -> [Float] {
        try timed("collectives", bytes: Double(data.count * 4)) { try loggedCollective(kind, data, axes, site) }
    }

    private func loggedCollective(_ kind: CollectiveKind, _ data: [Float], _ axes: AxisSet, _ site: CollectiveSite) throws -> [Float] {
        guard let log else { return try comm.collective(kind, data, over: axes, site: site) }
        let before = comm.traffic.sentBytes()
        let out = try comm.collective(kind, data, over: axes, site: site)
        log.append(.init(kind: kind, axes: axes, site: site, bytes: comm.traffic.sentBytes() - before))
        return out
    }
}
