/// One Q-wide column group of the fused attention projection.
public enum HeadSlot: Hashable, Sendable {
    case query(Int)
    case key(Int)
    case value(Int)
    case padding
}

public enum LayoutError: Error, Equatable, CustomStringConvertible {
    case indivisible(what: String, size: Int, parts: Int)
    case headsDoNotDivide(heads: Int, kvHeads: Int, devices: Int)
    case incompatibleKVPlacement(prefill: String, decode: String)
    /// A weight-gathered layout joins shards as stored, so every member's shard must cover the
    /// same whole blocks of the weight format.
    case shardInsideBlock(layout: String, columns: Int, block: Int, format: String)

    public var description: String {
        switch self {
        case let .indivisible(what, size, parts):
            "\(what) (\(size)) does not divide into \(parts) shards; it divides into "
                + (1...64).filter { size % $0 == 0 }.map(String.init).joined(separator: ", ") + " (use a mesh of that many devices)"
        case let .headsDoNotDivide(h, k, n):
            "attention sharded over heads needs the \(h) query heads to split evenly over \(n) devices and the \(k) KV heads to split over them or be replicated evenly (K % n == 0 or n % K == 0); use --attention batch"
        case let .shardInsideBlock(layout, columns, block, format):
            "layout \(layout) all-gathers weight shards as stored, but a shard of \(columns) columns (E/x, a head or a hidden block) does not fall on the \(block)-input blocks of \(format) weights; use --weights f32, or a mesh whose x splits E into multiples of \(block)"
        case let .incompatibleKVPlacement(p, d):
            "prefill layout \(p) and decode layout \(d) place the KV cache on different devices; use the same attention layout (and, for heads, the same feed-forward layout) in both phases"
        }
    }
}

/// How the hidden columns of a layer's matmul pairs are split into n = X·Y·Z blocks, one per
/// device after the 2D layout's reduce-scatter (block f = i_yz·X + i_x). FFN: block f is
/// gate and up rows [f·F/n, (f+1)·F/n). Attention: block f holds whole heads when the heads
/// divide (query heads [f·H/n, …) with their KV heads, replicated when n > K, as the paper's
/// head-sharded multiquery layout does), else an even split of the natural q|k|v order.
public struct HiddenBlocks: Sendable, Equatable {
    public let devices: Int
    /// Head slots of each block of the fused q|k|v projection (all blocks equally wide).
    public let qkv: [[HeadSlot]]
    /// Query-head slots of each block of W_o's input (attention output).
    public let attentionOutput: [[HeadSlot]]
    /// Whether every block holds whole heads (head-sharded attention possible).
    public let headAligned: Bool

    public init(heads H: Int, kvHeads K: Int, devices n: Int) {
        devices = n
        let group = H / K
        if H % n == 0 && (K % n == 0 || (n % K == 0 && group % (H / n) == 0)) {
            headAligned = true
            let perBlock = H / n
            qkv = (0..<n).map { f in
                let q = (f * perBlock)..<((f + 1) * perBlock)
                let kv = K % n == 0 ? Array((f * K / n)..<((f + 1) * K / n)) : [q.lowerBound / group]
                return q.map { .query($0) } + kv.map { .key($0) } + kv.map { .value($0) }
            }
            attentionOutput = (0..<n).map { f in ((f * perBlock)..<((f + 1) * perBlock)).map { .query($0) } }
        } else {
            headAligned = false
            func split(_ slots: [HeadSlot]) -> [[HeadSlot]] {
                let width = (slots.count + n - 1) / n
                let padded = slots + Array(repeating: .padding, count: width * n - slots.count)
                return (0..<n).map { Array(padded[($0 * width)..<(($0 + 1) * width)]) }
            }
            qkv = split((0..<H).map { .query($0) } + (0..<K).map { .key($0) } + (0..<K).map { .value($0) })
            attentionOutput = split((0..<H).map { .query($0) })
        }
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
