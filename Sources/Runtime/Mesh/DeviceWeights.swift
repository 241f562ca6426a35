import Partitioning
import Tensors
import Transformer

/// One device's slice of a matrix: f32 values (what a weight all-gather sends) and the same
/// values packed for the stationary matmul. (rows = outputs, columns = inputs)
final class ShardMatrix: @unchecked Sendable {
    let rows: Int
    let columns: Int
    let values: [Float]
    let packed: LinearWeight

    init(rows: Int, columns: Int, values: [Float], format: WeightFormat) {
        precondition(values.count == rows * columns)
        self.rows = rows
        self.columns = columns
        self.values = values
        packed = LinearWeight(values: values, outputs: rows, inputs: columns, format: format)
    }
}

/// One layer's shards on one device, in one stored layout.
struct DeviceLayer: @unchecked Sendable {
    let attentionNorm: [Float]     // (E)
    let feedForwardNorm: [Float]?  // (E)
    let qkv: ShardMatrix           // (stored qkv blocks, E_x or E)
    let attentionOutput: ShardMatrix  // (E_x or E, stored W_o input blocks)
    let gateUp: ShardMatrix        // (stored gate|up blocks, E_x or E)
    let down: ShardMatrix          // (E_x or E, stored F blocks)
}

/// The weights of one device of a mesh, loaded already sharded: each device reads only its
/// own rows (and columns) of every matrix (DESIGN.md: shard on load).
final class DeviceWeights: @unchecked Sendable {
    let rank: Int
    /// Layers in the 2D-family storage `E_x F_yz` (ws2d and all weight-gathered layouts)
    /// and/or the 1D storage `E F_xyz`; only those some phase uses are loaded.
    let twoD: [DeviceLayer]?
    let oneD: [DeviceLayer]?
    let outputNorm: [Float]
    /// Vocabulary rows [rank·V/n, …) of the unembedding (zero rows pad V to a multiple of n).
    let output: ShardMatrix
    let embedding: TensorSource

    /// One device's shards for the storages the two phases' layouts use. `native` weights are
    /// dequantized to f32 shards; int8 shards are quantized on load.
    convenience init(source: TensorSource, config: ModelConfig, mesh: Mesh, rank: Int, prefill: PhaseLayout,
                     decode: PhaseLayout, format: WeightFormat) throws {
        try self.init(source: source, config: config, mesh: mesh, rank: rank,
                      blocks: HiddenBlocks(heads: config.heads, kvHeads: config.kvHeads, devices: mesh.deviceCount),
                      storages: Set([prefill.feedForward.storesOneDimensional, decode.feedForward.storesOneDimensional]),
                      format: format == .native ? .f32 : format)
    }

    init(source: TensorSource, config: ModelConfig, mesh: Mesh, rank: Int, blocks: HiddenBlocks,
         storages: Set<Bool>, format: WeightFormat) throws {
        self.rank = rank
        embedding = source
        let n = mesh.deviceCount
        twoD = storages.contains(false)
            ? try (0..<config.layers).map { try DeviceWeights.layer(source, config, mesh, rank, blocks, $0, oneD: false, format) } : nil
        oneD = storages.contains(true)
            ? try (0..<config.layers).map { try DeviceWeights.layer(source, config, mesh, rank, blocks, $0, oneD: true, format) } : nil
        outputNorm = try source.vector("output_norm.weight")
        let V = config.vocabularySize, E = config.modelDimension
        let per = (V + n - 1) / n
        let lo = min(V, rank * per), hi = min(V, (rank + 1) * per)
        let outputName = (try? source.shape("output.weight")) != nil ? "output.weight" : "token_embd.weight"
        var values = try source.matrix(outputName, rows: lo..<hi, columns: 0..<E)
        values += Array(repeating: 0, count: (per - (hi - lo)) * E)
        output = ShardMatrix(rows: per, columns: E, values: values, format: format)
    }

    func layers(oneDimensional: Bool) -> [DeviceLayer] { (oneDimensional ? oneD : twoD)! }

    /// Rows of the W_in-role matrices for the stored blocks, columns E_x (2D) or E (1D).
    private static func layer(_ s: TensorSource, _ c: ModelConfig, _ mesh: Mesh, _ rank: Int, _ blocks: HiddenBlocks,
                              _ l: Int, oneD: Bool, _ format: WeightFormat) throws -> DeviceLayer {
        let E = c.modelDimension, F = c.feedForwardDimension, Q = c.headDimension, n = mesh.deviceCount
        let layout: FeedForwardLayout = oneD ? .weightStationary1D : .weightStationary2D
        let stored = layout.storedBlocks(rank: rank, mesh: mesh)
        let ix = mesh.coordinates(of: rank)[0]
        let eRange = oneD ? 0..<E : (ix * E / mesh.x)..<((ix + 1) * E / mesh.x)
        let p = "blk.\(l)."

        // W_qkv rows: the head slots of each stored block.
        var qkv: [Float] = []
        for f in stored {
            for slot in blocks.qkv[f] {
                switch slot {
                case let .query(h): qkv += try s.matrix(p + "attn_q.weight", rows: (h * Q)..<((h + 1) * Q), columns: eRange)
                case let .key(g): qkv += try s.matrix(p + "attn_k.weight", rows: (g * Q)..<((g + 1) * Q), columns: eRange)
                case let .value(g): qkv += try s.matrix(p + "attn_v.weight", rows: (g * Q)..<((g + 1) * Q), columns: eRange)
                case .padding: qkv += [Float](repeating: 0, count: Q * eRange.count)
                }
            }
        }
        // W_gate | W_up rows of each stored block.
        var gateUp: [Float] = []
        let fb = F / n
        for f in stored {
            gateUp += try s.matrix(p + "ffn_gate.weight", rows: (f * fb)..<((f + 1) * fb), columns: eRange)
            gateUp += try s.matrix(p + "ffn_up.weight", rows: (f * fb)..<((f + 1) * fb), columns: eRange)
        }
        // W_o and W_down: rows E_x (or E), columns the stored blocks.
        let o = try s.matrix(p + "attn_output.weight", rows: eRange, columns: 0..<(c.heads * Q))
        let down = try s.matrix(p + "ffn_down.weight", rows: eRange, columns: 0..<F)
        var oCols: [Int?] = []   // source column per local column (nil = padding)
        for f in stored {
            for slot in blocks.attentionOutput[f] {
                if case let .query(h) = slot { oCols += (0..<Q).map { h * Q + $0 } } else { oCols += Array(repeating: nil, count: Q) }
            }
        }
        let downCols = stored.flatMap { f in (f * fb)..<((f + 1) * fb) }
        func select(_ m: [Float], width: Int, _ cols: [Int?]) -> [Float] {
            var out = [Float](repeating: 0, count: eRange.count * cols.count)
            for r in 0..<eRange.count {
                for (j, src) in cols.enumerated() { if let src { out[r * cols.count + j] = m[r * width + src] } }
            }
            return out
        }
        let qkvRows = stored.count * blocks.qkv[0].count * Q
        return DeviceLayer(
            attentionNorm: try s.vector(p + "attn_norm.weight"),
            feedForwardNorm: c.block == .serial ? try s.vector(p + "ffn_norm.weight") : nil,
            qkv: ShardMatrix(rows: qkvRows, columns: eRange.count, values: qkv, format: format),
            attentionOutput: ShardMatrix(rows: eRange.count, columns: oCols.count,
                                         values: select(o, width: c.heads * Q, oCols), format: format),
            gateUp: ShardMatrix(rows: stored.count * 2 * fb, columns: eRange.count, values: gateUp, format: format),
            down: ShardMatrix(rows: eRange.count, columns: downCols.count,
                              values: select(down, width: F, downCols.map { $0 }), format: format))
    }
}
