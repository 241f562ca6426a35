/// One Q-wide column group of the fused attention projection.
public enum HeadSlot: Hashable, Sendable {
    case query(Int)
    case key(Int)
    case value(Int)
    case padding
}

public enum LayoutError: Error, Equatable, CustomStringConvertible {
    /// A dimension that does not split into the mesh's devices; `meshSizes` are the device
    /// counts (up to 64) that split every dimension the layout needs.
    case indivisible(what: String, size: Int, parts: Int, meshSizes: [Int])
    case incompatibleKVPlacement(prefill: String, decode: String)
    /// A weight-gathered layout joins shards as stored, so every member's shard must cover the
    /// same whole blocks of the weight format.
    case shardInsideBlock(layout: String, columns: Int, block: Int, format: String)

    public var description: String {
        switch self {
        case let .indivisible(what, size, parts, sizes):
            "\(what) (\(size)) does not divide into \(parts) shards; meshes of "
                + sizes.map(String.init).joined(separator: ", ") + " devices split this model"
        case let .shardInsideBlock(layout, columns, block, format):
            "layout \(layout) all-gathers weight shards as stored, but a shard of \(columns) columns (E/x, heads or a hidden block) does not fall on the \(block)-input blocks of \(format) weights, so its group's members store different widths; use --weights f32, another layout, or a mesh whose x splits E into multiples of \(block)"
        case let .incompatibleKVPlacement(p, d):
            "prefill layout \(p) and decode layout \(d) place the KV cache on different devices; use the same attention layout (and, for heads, the same feed-forward layout) in both phases"
        }
    }
}

/// How the hidden columns of a layer's matmul pairs are split into n = X·Y·Z blocks, one per
/// device after the 2D layout's reduce-scatter (block f = i_yz·X + i_x). FFN: block f is
/// gate and up rows [f·F/n, (f+1)·F/n). Attention: for attention over heads every block
/// holds whole heads — its query heads, then the KV heads they read, then those KV heads'
/// values — with heads padded as the paper pads them (§3.3: PaLM 540B's 48 heads to 64 over
/// 64 chips): the KV heads are padded to a multiple of n (or, on more devices than KV heads,
/// to a divisor of n, each KV head then replicated on n/K' devices that split its query
/// heads, the paper's head-sharded multiquery layout), and each KV head's group of query
/// heads to a multiple of the devices sharing it. Padding slots hold zero weights, so they
/// add work but never change a result. For attention over the batch the blocks are an even
/// split of the natural q|k|v order (padded at the end), unless whole heads divide with no
/// padding (then the same whole-head blocks, KV projections replicated where KV heads are: a
/// known cost, ~13% of PaLM 540B's weights, that the cost model's calibration absorbs).
public struct HiddenBlocks: Sendable, Equatable {
    public let devices: Int
    /// Head slots of each block of the fused q|k|v projection (all blocks equally wide).
    public let qkv: [[HeadSlot]]
    /// Query-head slots of each block of W_o's input (attention output).
    public let attentionOutput: [[HeadSlot]]
    /// For whole-head blocks, the query slots and KV slots of each block (padding included):
    /// block f is `queries` query slots, `kv` key slots, `kv` value slots, query slot i
    /// reading KV slot i / (queries / kv).
    public let wholeHeads: (queries: Int, kv: Int)?
    /// For whole-head blocks, the query and KV heads after padding (the model's when none).
    public let paddedHeads: (queries: Int, kv: Int)?

    public static func == (a: HiddenBlocks, b: HiddenBlocks) -> Bool {
        a.devices == b.devices && a.qkv == b.qkv && a.attentionOutput == b.attentionOutput
    }

    public init(heads H: Int, kvHeads K: Int, devices n: Int, attention: AttentionLayout) {
        devices = n
        let whole = Self.wholeHeadBlocks(heads: H, kvHeads: K, devices: n)
        if attention == .shardedOverHeads || whole.padded == 0 {
            qkv = whole.blocks.map { $0.queries + $0.keys + $0.keys.map { if case let .key(g) = $0 { .value(g) } else { .padding } } }
            attentionOutput = whole.blocks.map(\.queries)
            wholeHeads = (whole.blocks[0].queries.count, whole.blocks[0].keys.count)
            paddedHeads = (H + whole.padded, whole.kv)
        } else {
            func split(_ slots: [HeadSlot]) -> [[HeadSlot]] {
                let width = (slots.count + n - 1) / n
                let padded = slots + Array(repeating: .padding, count: width * n - slots.count)
                return (0..<n).map { Array(padded[($0 * width)..<(($0 + 1) * width)]) }
            }
            qkv = split((0..<H).map { .query($0) } + (0..<K).map { .key($0) } + (0..<K).map { .value($0) })
            attentionOutput = split((0..<H).map { .query($0) })
            wholeHeads = nil
            paddedHeads = nil
        }
    }

    /// Whole-head blocks (query slots, key slots), how many padding query slots they hold, and
    /// the KV heads after padding.
    static func wholeHeadBlocks(heads H: Int, kvHeads K: Int, devices n: Int) -> (blocks: [(queries: [HeadSlot], keys: [HeadSlot])], padded: Int, kv: Int) {
        let G = H / K
        // K' KV heads (padded), each shared by d devices that split its G' query slots.
        let paddedK = K >= n ? (K + n - 1) / n * n : (K...n).first { n % $0 == 0 }!
        let d = max(1, n / paddedK)
        let paddedG = (G + d - 1) / d * d
        let groupsPerBlock = max(1, paddedK / n), queriesPerDevice = paddedG / d
        func query(_ g: Int, _ j: Int) -> HeadSlot { g < K && j < G ? .query(g * G + j) : .padding }
        let blocks = (0..<n).map { f -> (queries: [HeadSlot], keys: [HeadSlot]) in
            let groups = d == 1 ? Array((f * groupsPerBlock)..<((f + 1) * groupsPerBlock)) : [f / d]
            let part = d == 1 ? 0..<paddedG : ((f % d) * queriesPerDevice)..<((f % d + 1) * queriesPerDevice)
            return (groups.flatMap { g in part.map { query(g, $0) } }, groups.map { $0 < K ? .key($0) : .padding })
        }
        return (blocks, paddedK * paddedG - H, paddedK)
    }
}

extension FeedForwardLayout {
    /// The hidden blocks device `rank` holds between W_in and W_out, in the order its local
    /// columns are laid out.
    public func ownedBlocks(rank: Int, mesh: Mesh) -> [Int] {
        let X = mesh.x
        let ix = mesh.coordinates(of: rank)[0], iyz = mesh.yzIndex(of: rank)
        switch self {
        case .weightStationary1D: return [rank]
        case .weightStationary2D: return [iyz * X + ix]
        case .weightGatheredX, .weightGatheredXY, .weightGatheredXYZ:
            return weightGatherGrid(rank: rank, mesh: mesh).yzs.flatMap { v in (0..<X).map { v * X + $0 } }
        }
    }

    /// The blocks device `rank` stores (before any gather): 1D `F_xyz` → [rank]; 2D `F_yz` → the
    /// X blocks of its i_yz.
    public func storedBlocks(rank: Int, mesh: Mesh) -> [Int] {
        if storesOneDimensional { return [rank] }
        let iyz = mesh.yzIndex(of: rank)
        return (0..<mesh.x).map { iyz * mesh.x + $0 }
    }
}

extension FeedForwardLayout {
    /// How a device's weight all-gather group tiles the gathered matrix: the distinct x
    /// indices (E_x column blocks of input-role shards) and yz indices (F_yz row blocks), in
    /// ascending order. One rule for the runtime's gather and the tracer's shapes.
    public func weightGatherGrid(rank: Int, mesh: Mesh) -> (xs: [Int], yzs: [Int]) {
        let members = mesh.group(of: rank, over: weightGatherAxes)
        let xs = Set(members.map { mesh.coordinates(of: $0)[0] }).sorted()
        let yzs = Set(members.map { mesh.yzIndex(of: $0) }).sorted()
        return (xs, yzs)
    }
}

extension Mesh {
    /// i_y·Z + i_z: a rank's index over the y and z axes.
    public func yzIndex(of rank: Int) -> Int { let c = coordinates(of: rank); return c[1] * z + c[2] }
}
