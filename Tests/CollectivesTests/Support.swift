import Foundation
import Partitioning
@testable import Collectives

/// Device r's input for a test step: a deterministic, non-integer function of (r, step, j)
/// so that summation order matters bitwise.
func input(rank r: Int, step: Int, count n: Int) -> [Float] {
    (0..<n).map { j in Float(r * 1000 + step * 37 + j) * 0.173 + Float(j % 3) * 1e-3 - Float(r) * 0.61 }
}

/// The sequential reference result of `kind` for `rank`, from every device's input.
func reference(_ kind: CollectiveKind, mesh: Mesh, axes: AxisSet, rank: Int, inputs: [[Float]]) -> [Float] {
    let members = mesh.group(of: rank, over: axes)
    let k = members.count
    let i = mesh.index(of: rank, within: axes)
    let n = inputs[rank].count
    func sum() -> [Float] {
        var acc = inputs[members[0]]
        for m in members.dropFirst() { for j in 0..<n { acc[j] += inputs[m][j] } }
        return acc
    }
    switch kind {
    case .allGather:
        return members.flatMap { inputs[$0] }
    case .reduceScatter:
        let c = n / k
        return Array(sum()[(i * c)..<((i + 1) * c)])
    case .allReduce:
        return sum()
    case .allToAll:
        let c = n / k
        return members.flatMap { Array(inputs[$0][(i * c)..<((i + 1) * c)]) }
    }
}

func bytes(_ kind: CollectiveKind, n: Int, k: Int) -> Int {
    guard k > 1 else { return 0 }
    switch kind {
    case .allGather: return 4 * n * (k - 1)
    case .reduceScatter, .allToAll: return 4 * (n / k) * (k - 1)
    case .allReduce: return 2 * 4 * n * (k - 1) / k
    }
}

func call(_ comm: any Communicator, _ kind: CollectiveKind, _ data: [Float], _ axes: AxisSet, _ site: CollectiveSite)
    throws(CollectiveError) -> [Float]
{
    switch kind {
    case .allGather: try comm.allGather(data, over: axes, site: site)
    case .reduceScatter: try comm.reduceScatter(data, over: axes, site: site)
    case .allReduce: try comm.allReduce(data, over: axes, site: site)
    case .allToAll: try comm.allToAll(data, over: axes, site: site)
    }
}

/// Thread-safe box for collecting values from device threads.
final class Box<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: T
    init(_ value: T) { storage = value }
    var value: T { lock.withLock { storage } }
    func update(_ f: (inout T) -> Void) { lock.withLock { f(&storage) } }
}

struct Boom: Error, Equatable {}

let testMeshes: [Mesh] = [
    Mesh(x: 1), Mesh(x: 2), Mesh(x: 4), Mesh(x: 2, y: 2), Mesh(x: 1, y: 2, z: 2), Mesh(x: 2, y: 2, z: 2),
]
