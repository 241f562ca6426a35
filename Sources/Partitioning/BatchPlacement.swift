/// Where the sequences of a batch live on a mesh — one rule shared by the runtime and the
/// cost model's tracer. Sequence s is homed on device s mod n (under batch-sharded attention
/// its KV cache lives there); its rows sit on the devices whose batch-axes index matches its
/// home's; every device pads its rows to the largest group's (equal sizes for collectives).
public struct BatchPlacement: Sendable {
    public let mesh: Mesh
    public let layout: FeedForwardLayout

    public init(mesh: Mesh, layout: FeedForwardLayout) {
        self.mesh = mesh
        self.layout = layout
    }

    public func home(_ sequence: Int) -> Int { sequence % mesh.deviceCount }

    /// The batch-axes group holding a sequence's rows.
    public func group(ofSequence sequence: Int) -> Int { mesh.index(of: home(sequence), within: layout.batchAxes) }

    /// Rows per device after padding, for (sequence id, new tokens) pairs.
    public func paddedRows(_ tokens: [(sequence: Int, count: Int)]) -> Int {
        var counts = [Int](repeating: 0, count: mesh.size(layout.batchAxes))
        for t in tokens { counts[group(ofSequence: t.sequence)] += t.count }
        return counts.max() ?? 0
    }

    /// Rows any device sends any member in the batch-attention all-to-all (padded to this).
    public func chunkRows(_ tokens: [(sequence: Int, count: Int)]) -> Int {
        var counts: [Int: Int] = [:]
        for t in tokens { counts[home(t.sequence), default: 0] += t.count }
        return counts.values.max() ?? 0
    }
}
