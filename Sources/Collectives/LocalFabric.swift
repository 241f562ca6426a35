import Foundation
import Partitioning

/// Rendezvous state of one group (keyed by its member list). Guarded by `FabricCore.condition`.
final class GroupState: @unchecked Sendable {
    let members: [Int]
    /// Completed rounds. A member waiting in round g is released when this becomes g + 1.
    var generation = 0
    var arrived = 0
    var buffers: [[Float]]
    var kinds: [CollectiveKind?]
    /// Buffers of the last completed round. Safe to keep just one: round g + 1 cannot complete
    /// before every member (including the slowest reader of round g) has deposited into it.
    var snapshot: [[Float]] = []
    var snapshotKinds: [CollectiveKind?] = []
    /// Set when a member's wait exceeded the timeout; the group stays failed.
    var timedOut = false

    init(members: [Int]) {
        self.members = members
        buffers = Array(repeating: [], count: members.count)
        kinds = Array(repeating: nil, count: members.count)
    }
}

/// Shared state of a `LocalFabric`: one lock/condition, the abort flag and every group.
final class FabricCore: @unchecked Sendable {
    let mesh: Mesh
    let timeout: Double
    let condition = NSCondition()
    private(set) var abortReason: String?
    /// groups[axes.rawValue][rank] — the state shared by the members of rank's group over axes.
    /// Immutable after init (the GroupState objects themselves are guarded by `condition`).
    let groups: [[GroupState]]

    init(mesh: Mesh, timeout: Double) {
        self.mesh = mesh
        self.timeout = timeout
        var table: [[GroupState]] = []
        for axes in AxisSet.allSubsets {
            var byMembers: [[Int]: GroupState] = [:]
            var row: [GroupState] = []
            for rank in 0..<mesh.deviceCount {
                let members = mesh.group(of: rank, over: axes)
                if let g = byMembers[members] {
                    row.append(g)
                } else {
                    let g = GroupState(members: members)
                    byMembers[members] = g
                    row.append(g)
                }
            }
            table.append(row)
        }
        groups = table
    }

    func abort(reason: String) {
        condition.lock()
        if abortReason == nil { abortReason = reason }
        condition.broadcast()
        condition.unlock()
    }

    /// Deposits `data` as member `index` of `group`, waits until every member has deposited,
    /// and returns all members' buffers in group order.
    func exchange(_ data: [Float], kind: CollectiveKind, group: GroupState, index: Int) throws(CollectiveError) -> [[Float]] {
        condition.lock()
        defer { condition.unlock() }
        if group.timedOut { throw .timeout(seconds: timeout) }
        if let reason = abortReason { throw .aborted(reason: reason) }

        group.buffers[index] = data
        group.kinds[index] = kind
        group.arrived += 1
        let k = group.members.count
        if group.arrived == k {
            group.snapshot = group.buffers
            group.snapshotKinds = group.kinds
            for i in 0..<k {
                group.buffers[i] = []
                group.kinds[i] = nil
            }
            group.arrived = 0
            group.generation += 1
            condition.broadcast()
        } else {
            let round = group.generation
            let deadline = Date(timeIntervalSinceNow: timeout)
            while group.generation == round {
                if group.timedOut { throw .timeout(seconds: timeout) }
                if let reason = abortReason { throw .aborted(reason: reason) }
                if !condition.wait(until: deadline), group.generation == round {
                    group.timedOut = true
                    condition.broadcast()
                    throw .timeout(seconds: timeout)
                }
            }
        }
        let kinds = group.snapshotKinds
        if kinds.contains(where: { $0 != kind }) {
            let names = kinds.map { $0?.rawValue ?? "?" }
            throw .aborted(reason: "group \(group.members) called different collectives in one round: \(names)")
        }
        return group.snapshot
    }
}

/// The in-process transport: one fabric shared by the device threads of a mesh.
///
/// Protocol (the same one an MPI transport implements): every collective is one rendezvous of
/// its group — each member deposits its buffer, waits until all K members have deposited, then
/// computes its own result from all K buffers (sums in member order 0..<K). Waits give up after
/// `timeout` seconds (`.timeout`) and observe the mesh-wide abort flag (`.aborted`).
public final class LocalFabric: Sendable {
    public let mesh: Mesh
    /// Seconds a member waits for its peers before the group fails with `.timeout`.
    public let timeout: Double
    let core: FabricCore
    private let communicators: [LocalCommunicator]

    public init(mesh: Mesh, timeout: Double = 60) {
        self.mesh = mesh
        self.timeout = timeout
        let core = FabricCore(mesh: mesh, timeout: timeout)
        self.core = core
        communicators = (0..<mesh.deviceCount).map { LocalCommunicator(core: core, rank: $0) }
    }

    /// The communicator of one device (the same object on every call for a given rank);
    /// call its collectives from that device's thread only.
    public func communicator(rank: Int) -> LocalCommunicator {
        precondition(rank >= 0 && rank < mesh.deviceCount, "rank \(rank) outside mesh \(mesh)")
        return communicators[rank]
    }

    /// Marks the whole mesh failed (see `Communicator.abort(reason:)`).
    public func abort(reason: String) { core.abort(reason: reason) }
}

/// One device's endpoint on a `LocalFabric`.
public final class LocalCommunicator: Communicator {
    let core: FabricCore
    public let rank: Int
    private let recorder = TrafficRecorder()
    /// Per axis-subset (by rawValue): the shared group state and this rank's index in it.
    private let groups: [(state: GroupState, index: Int)]

    init(core: FabricCore, rank: Int) {
        self.core = core
        self.rank = rank
        groups = AxisSet.allSubsets.map { axes in
            (core.groups[axes.rawValue][rank], core.mesh.index(of: rank, within: axes))
        }
    }

    public var mesh: Mesh { core.mesh }
    public var traffic: TrafficCounter { recorder.traffic }
    public func resetTraffic() { recorder.reset() }
    public func abort(reason: String) { core.abort(reason: reason) }

    /// Runs one rendezvous, validates counts and records the call's traffic; returns
    /// (buffers, my index), or nil for K == 1.
    private func exchange(_ data: [Float], _ kind: CollectiveKind, _ axes: AxisSet, _ site: CollectiveSite, divisible: Bool)
        throws(CollectiveError) -> (buffers: [[Float]], index: Int)?
    {
        let (group, index) = groups[axes.rawValue & 7]
        let k = group.members.count
        if k == 1 {
            if let reason = core.abortReasonLocked() { throw .aborted(reason: reason) }
            recorder.record(kind, axes, site, count: data.count, groupSize: 1)
            return nil
        }
        let buffers = try core.exchange(data, kind: kind, group: group, index: index)
        let n = data.count
        if buffers.contains(where: { $0.count != n }) {
            throw .sizeMismatch(kind: kind, axes: axes.description, counts: buffers.map(\.count))
        }
        if divisible, n % k != 0 { throw .indivisible(kind: kind, count: n, parts: k) }
        recorder.record(kind, axes, site, count: n, groupSize: k)
        return (buffers, index)
    }

    public func allGather(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        guard let (buffers, _) = try exchange(data, .allGather, axes, site, divisible: false) else { return data }
        var out: [Float] = []
        out.reserveCapacity(data.count * buffers.count)
        for b in buffers { out.append(contentsOf: b) }
        return out
    }

    public func reduceScatter(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        guard let (buffers, index) = try exchange(data, .reduceScatter, axes, site, divisible: true) else { return data }
        let chunk = data.count / buffers.count
        return sumInOrder(buffers, from: index * chunk, count: chunk)
    }

    public func allReduce(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        guard let (buffers, _) = try exchange(data, .allReduce, axes, site, divisible: false) else { return data }
        return sumInOrder(buffers, from: 0, count: data.count)
    }

    public func allToAll(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        guard let (buffers, index) = try exchange(data, .allToAll, axes, site, divisible: true) else { return data }
        let chunk = data.count / buffers.count
        var out: [Float] = []
        out.reserveCapacity(data.count)
        for b in buffers { out.append(contentsOf: b[(index * chunk)..<((index + 1) * chunk)]) }
        return out
    }
}

/// out[j] = ((b0[s+j] + b1[s+j]) + b2[s+j]) + … — member order, so identical on every member.
func sumInOrder(_ buffers: [[Float]], from start: Int, count: Int) -> [Float] {
    var out = Array(buffers[0][start..<(start + count)])
    out.withUnsafeMutableBufferPointer { o in
        for m in 1..<buffers.count {
            buffers[m].withUnsafeBufferPointer { b in
                for j in 0..<count { o[j] += b[start + j] }
            }
        }
    }
    return out
}

extension FabricCore {
    func abortReasonLocked() -> String? {
        condition.lock()
        defer { condition.unlock() }
        return abortReason
    }
}

/// The in-process control plane: byte messages between the device threads of a fabric, so the
/// MPI leader/follower protocol runs (and is tested) without `mpirun`. Use a fabric of its own
/// (its bytes travel as collectives and would count in a data fabric's traffic). Bytes travel
/// one per Float (exact for 0…255); waits end at the fabric's timeout whatever `timeout` says.
extension LocalCommunicator: MeshControl {
    public var size: Int { mesh.deviceCount }

    public func allGather(_ message: [UInt8], timeout: Double?) throws -> [[UInt8]] {
        let site = CollectiveSite(.measurement, .data)
        let lengths = try allGather([Float(message.count)], over: .xyz, site: site).map { Int($0) }
        let longest = lengths.max() ?? 0
        let all = try allGather(message.map(Float.init) + Array(repeating: 0, count: longest - message.count), over: .xyz, site: site)
        return lengths.enumerated().map { r, count in all[(r * longest)..<(r * longest + count)].map { UInt8($0) } }
    }

    public func broadcast(_ message: [UInt8], root: Int, timeout: Double?) throws -> [UInt8] {
        try allGather(rank == root ? message : [], timeout: timeout)[root]
    }
}
