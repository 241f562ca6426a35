import Partitioning
import Tensors
import Transformer

extension DeviceProgram {
    /// The matrix this device multiplies by: its stored shard, or in weight-gathered layouts
    /// (§3.2.3) the shards of its weight-gather group all-gathered as stored (blocks, the file's
    /// or int8's Q8_0, or f32 panels) and joined. W_in-role shards (rows F_yz, columns E_x) tile rows by
    /// i_yz and columns by i_x; W_out-role shards the other way round.
    func weight(_ use: WeightUse, _ site: CollectiveSite) throws -> LinearWeight {
        let layer = weights.layers(oneDimensional: use.storage == .oneDimensional)[use.layer]
        let shard: LinearWeight = switch use.matrix {
        case .qkv: layer.qkv
        case .attentionOutput: layer.attentionOutput
        case .gateUp: layer.gateUp
        case .down: layer.down
        }
        let axes = use.gatheredOver
        if mesh.size(axes) == 1 { return shard }
        let tally = LinearWeight.CopyTally()
        let matrix = try timed("weight_gather") { try gathered(shard, use, site, tally) }
        // The bytes its copies read and wrote, tallied where each is made (the all-gather itself
        // is timed as a collective).
        profile?.add("weight_gather", seconds: 0, bytes: Double(tally.bytes), calls: 0)
        return matrix
    }

    private func gathered(_ shard: LinearWeight, _ use: WeightUse, _ site: CollectiveSite, _ tally: LinearWeight.CopyTally) throws -> LinearWeight {
        let axes = use.gatheredOver
        let members = mesh.group(of: rank, over: axes)
        let words = shard.wireWords(tally: tally)
        let all = try collective(.allGather, words, axes, site)
        let (xs, yzs) = ffn.weightGatherGrid(rank: rank, mesh: mesh)
        let (rowKeys, columnKeys) = use.matrix.isInput ? (yzs, xs) : (xs, yzs)
        var grid = [[LinearWeight?]](repeating: Array(repeating: nil, count: columnKeys.count), count: rowKeys.count)
        all.withUnsafeBufferPointer { a in
            for (m, member) in members.enumerated() {
                let (x, yz) = (mesh.coordinates(of: member)[0], mesh.yzIndex(of: member))
                let (rowKey, columnKey) = use.matrix.isInput ? (yz, x) : (x, yz)
                let tile = shard.sameShape(wireWords: UnsafeBufferPointer(rebasing: a[(m * words.count)..<((m + 1) * words.count)]),
                                           inputSegments: weights.inputSegments[member]![use.matrix]!, tally: tally)
                grid[rowKeys.firstIndex(of: rowKey)!][columnKeys.firstIndex(of: columnKey)!] = tile
            }
        }
        return try LinearWeight.joining(grid.map { $0.map { $0! } }, tally: tally)
    }
}
