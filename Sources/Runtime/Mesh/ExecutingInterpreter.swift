import CKernels
import Collectives
import Foundation
import Partitioning
import Tensors
import Transformer

/// An activation between primitives of the executing interpreter. With overlap (§3.5), an
/// all-gather is left pending until the matmul it feeds, and matmul products until the sum or
/// reduce-scatter they feed, so that the pair can be pipelined; any other primitive runs them.
enum DeviceValue {
    case ready(Matrix)
    case gathering(PendingGather)
    case products([(Matrix, LinearWeight)])
}

/// An all-gather not yet run: the first matmul that reads it runs it chunk by chunk and keeps
/// the gathered input for any other matmul on the same input (the parallel block's two).
final class PendingGather {
    let local: Matrix
    let axes: AxisSet
    let site: CollectiveSite
    var gathered: Matrix?
    init(_ local: Matrix, _ axes: AxisSet, _ site: CollectiveSite) {
        self.local = local
        self.axes = axes
        self.site = site
    }
}

/// The executing interpreter of the layer program: one device, one forward pass. It only does
/// tensor mechanics; which collective runs over which axes is the program's.
struct LayerRun: LayerInterpreter {
    typealias Value = DeviceValue
    let program: DeviceProgram
    let rows: [RowInfo]                    // this device's rows (padding included)
    /// RoPE angles of `rows`, and for batch-sharded attention who attends which row: the same
    /// in every layer, so worked out once per pass.
    let rope: RopeTable
    let exchange: DeviceProgram.BatchExchange

    init(program: DeviceProgram, rows: [RowInfo], batch: MeshBatch) {
        self.program = program
        self.rows = rows
        rope = RopeTable(config: program.config, positions: rows.map(\.position))
        exchange = program.batchExchange(rows: rows, batch: batch)
    }

    var config: ModelConfig { program.config }

    /// Runs whatever is pending and returns the matrix.
    func force(_ v: DeviceValue) throws -> Matrix {
        switch v {
        case let .ready(m): return m
        case let .gathering(p):
            if let g = p.gathered { return g }
            let g = try program.gatherColumns([p.local], p.axes, p.site)[0]
            p.gathered = g
            return g
        case let .products(pairs):
            return program.sumOfProducts(pairs)
        }
    }

    func allGather(_ values: [DeviceValue], over axes: AxisSet, at site: CollectiveSite) throws -> [DeviceValue] {
        if program.mesh.size(axes) == 1 { return values }
        if values.count == 1, case let .ready(m) = values[0], program.overlaps(rows: m.rows, axes) {
            return [.gathering(PendingGather(m, axes, site))]
        }
        return try program.gatherColumns(values.map(force), axes, site).map { .ready($0) }
    }

    func reduceScatter(_ values: [DeviceValue], over axes: AxisSet, at site: CollectiveSite) throws -> [DeviceValue] {
        if program.mesh.size(axes) == 1 { return values }
        if values.count == 1, case let .products(pairs) = values[0], program.overlaps(rows: pairs[0].0.rows, axes) {
            return [.ready(try program.multiplyWhileReducing(pairs, axes, site))]
        }
        return try program.reduceScatterColumns(values.map(force), axes, site).map { .ready($0) }
    }

    func allToAll(_ value: DeviceValue, over axes: AxisSet, _ exchange: AttentionExchange, at site: CollectiveSite) throws -> DeviceValue {
        let value = try force(value)
        return try program.timed("collectives") { try exchangeRows(value, exchange, site) }
    }

    private func exchangeRows(_ value: Matrix, _ exchange: AttentionExchange, _ site: CollectiveSite) throws -> DeviceValue {
        switch exchange {
        case .toBatch: return .ready(try program.toBatch(value, self.exchange, site))
        case .fromBatch: return .ready(try program.fromBatch(value, rows: rows, self.exchange, site))
        }
    }

    func matmul(_ x: DeviceValue, _ use: WeightUse, at site: CollectiveSite) throws -> DeviceValue {
        let w = try program.weight(use, site)
        switch x {
        case let .gathering(p) where p.gathered == nil:
            let (product, gathered) = try program.gatherWhileMultiplying(p.local, p.axes, p.site, w)
            p.gathered = gathered
            return .ready(product)
        case let .ready(m) where program.overlap:
            return .products([(m, w)])
        default:
            return .ready(program.multiply(try force(x), w))
        }
    }

    func norm(_ x: DeviceValue, _ weight: NormWeight, sumsOver axes: AxisSet, at site: CollectiveSite) throws -> DeviceValue {
        let layer = program.weights.layers(oneDimensional: program.ffn.storesOneDimensional)
        let w = switch weight {
        case let .attention(l): layer[l].attentionNorm
        case let .feedForward(l): layer[l].feedForwardNorm!
        case let .attentionOutput(l): layer[l].attentionOutputNorm!
        case let .feedForwardOutput(l): layer[l].feedForwardOutputNorm!
        }
        return .ready(try program.norm(force(x), w, axes: axes, site))
    }

    /// Timed as "attention"; its KV bytes are entered where the attention is counted
    /// (`logAttention`).
    func attention(_ qkv: DeviceValue, layer: Int, _ layout: AttentionLayout, headsOver: AxisSet) throws -> DeviceValue {
        let qkv = try force(qkv)
        return .ready(program.timed("attention") {
            switch layout {
            case .shardedOverHeads:
                program.headAttention(layer, qkv, owned: program.ffn.ownedBlocks(rank: program.rank, mesh: program.mesh), rows: rows,
                                      prep: program.headPrep(layer: layer, rope: rope))
            case .shardedOverBatch:
                program.batchAttention(layer, qkv, exchange)
            }
        })
    }

    /// The gated activation per hidden block (SwiGLU, or GeGLU with tanh-approximated GELU):
    /// each block's columns are its gate rows, then its up rows.
    func activation(_ gateUp: DeviceValue) throws -> DeviceValue {
        let gu = try force(gateUp)   // (rows, blocks · 2·F/n)
        return .ready(program.timed("activation", bytes: Double(gu.rows * gu.columns * 6)) { gated(gu) })
    }

    private func gated(_ gu: Matrix) -> Matrix {
        let fb = config.feedForwardDimension / program.mesh.deviceCount
        let blocksHere = gu.columns / (2 * fb)
        let act = Matrix(uninitializedRows: gu.rows, columns: blocksHere * fb)   // (rows, blocks · F/n)
        let activation = config.activation
        program.threads.parallelRows(gu.rows, columns: gu.columns) { rows in
            for r in rows {
                for b in 0..<blocksHere {
                    let gate = gu.row(r) + b * 2 * fb, up = gate + fb, out = act.row(r) + b * fb
                    switch activation {
                    case .silu: mi_swiglu(gate, up, Int32(fb), out)
                    case .geluTanh: mi_geglu(gate, up, Int32(fb), out)
                    }
                }
            }
        }
        return act
    }

    func add(_ a: DeviceValue, _ b: DeviceValue) throws -> DeviceValue {
        if case let .products(p) = a, case let .products(q) = b { return .products(p + q) }
        let (x, y) = (try force(a), try force(b))
        return .ready(program.timed("residual_add", bytes: Double(x.rows * x.columns * 12)) { x.adding(y, threads: program.threads) })
    }
}

/// What a device's executing interpreter did in one pass, counted where it happened: the
/// collectives in program order with the bytes the transport counted, and the matmul and
/// attention work from the shapes handed to the kernels. Tests compare it with the trace.
final class ExecutionLog: @unchecked Sendable {
    struct Collective: Equatable, CustomStringConvertible {
        var kind: CollectiveKind
        var axes: AxisSet
        var site: CollectiveSite
        var bytes: Int
        var description: String { "\(kind.rawValue)(\(axes)) \(site) \(bytes) B" }
    }
    private let lock = NSLock()
    private var _collectives: [Collective] = []
    private(set) var matmulFLOPs = 0.0
    private(set) var weightBytes = 0.0
    var attentionFLOPs = 0.0
    var kvBytes = 0.0

    var collectives: [Collective] { lock.withLock { _collectives } }

    func append(_ c: Collective) { lock.withLock { _collectives.append(c) } }

    func matmul(rows: Int, _ w: LinearWeight) {
        let (n, k) = w.storedShape
        lock.withLock {
            matmulFLOPs += 2 * Double(rows) * Double(n) * Double(k)
            weightBytes += Double(w.byteCount)
        }
    }
}
