import Partitioning

/// The four collectives of Pope et al. 2022 (§1, Fig. A.1).
public enum CollectiveKind: String, Sendable, CaseIterable, Codable {
    case allGather = "all_gather"
    case reduceScatter = "reduce_scatter"
    case allReduce = "all_reduce"
    case allToAll = "all_to_all"
}

public enum CollectiveError: Error, Equatable, CustomStringConvertible {
    /// Another device failed (or someone called `abort(reason:)`); everyone stops instead of hanging.
    case aborted(reason: String)
    /// A peer never arrived: the barrier wait exceeded the fabric's timeout. Every member waiting
    /// in that round throws it, and the group stays failed afterwards.
    case timeout(seconds: Double)
    /// Members of one group passed different element counts (`counts` in group order).
    case sizeMismatch(kind: CollectiveKind, axes: String, counts: [Int])
    /// A reduce-scatter / all-to-all element count is not divisible by the group size.
    case indivisible(kind: CollectiveKind, count: Int, parts: Int)

    public var description: String {
        switch self {
        case let .aborted(reason): "collective aborted: \(reason)"
        case let .timeout(seconds): "collective timed out: a peer did not arrive within \(seconds) s"
        case let .sizeMismatch(kind, axes, counts):
            "\(kind.rawValue) over '\(axes)': members passed different element counts \(counts)"
        case let .indivisible(kind, count, parts):
            "\(kind.rawValue): \(count) elements cannot be split into \(parts) equal parts"
        }
    }
}

/// The collectives one device can call (Pope et al. §1 / Fig. A.1).
///
/// `axes` selects the group: the devices that differ from this one only along those axes,
/// ordered by `Mesh.index(of:within:)`. Group size K = `mesh.size(axes)`; K == 1 (or `axes`
/// empty) makes each op a local copy that moves no bytes. `site` tags the traffic
/// (e.g. "ffn", "attention") for accounting only.
///
/// All members of a group must call the same collective with the same element count, in the
/// same program order (SPMD). Groups over different axes are independent.
///
/// Byte accounting models the *direct* algorithm (every member exchanges with every other
/// member), giving the (K−1)/K factors of §4.3. With n = `data.count` and 4 bytes per Float,
/// per device and per call (nothing when K == 1):
/// - allGather:     sent = received = 4·n·(K−1)          (output K·n; = output·(K−1)/K)
/// - reduceScatter: sent = received = 4·(n/K)·(K−1)      (= input·(K−1)/K)
/// - allReduce:     sent = received = 2·4·n·(K−1)/K      (reduce-scatter then all-gather;
///                  integer arithmetic, rounded down; n need not be divisible by K)
/// - allToAll:      sent = received = 4·(n/K)·(K−1)
/// Reductions sum in fixed member order, so every member gets bitwise-identical results.
public protocol Communicator: AnyObject, Sendable {
    var mesh: Mesh { get }
    var rank: Int { get }
    var traffic: TrafficCounter { get }
    func resetTraffic()
    /// Concatenation of every member's buffer in group order (all members pass the same count).
    func allGather(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float]
    /// Elementwise sum over the group, split into K equal chunks; member i returns chunk i.
    func reduceScatter(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float]
    /// Elementwise sum over the group, returned to every member.
    func allReduce(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float]
    /// `data` is K equal chunks; chunk j goes to member j. Returns the K chunks received, in member order.
    func allToAll(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float]
    /// Marks the whole mesh failed: every device blocked in (or later entering) a collective throws `.aborted`.
    func abort(reason: String)
}

extension Communicator {
    /// The collective of the given kind (for code that iterates over kinds: checks, calibration).
    public func collective(_ kind: CollectiveKind, _ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        switch kind {
        case .allGather: try allGather(data, over: axes, site: site)
        case .reduceScatter: try reduceScatter(data, over: axes, site: site)
        case .allReduce: try allReduce(data, over: axes, site: site)
        case .allToAll: try allToAll(data, over: axes, site: site)
        }
    }
}

/// Bytes moved per device and call under the direct algorithm (see `Communicator`).
/// Returns 0 when K <= 1.
public func collectiveBytes(_ kind: CollectiveKind, count n: Int, groupSize k: Int) -> Int {
    guard k > 1 else { return 0 }
    switch kind {
    case .allGather: return 4 * n * (k - 1)
    case .reduceScatter, .allToAll: return 4 * (n / k) * (k - 1)
    case .allReduce: return 2 * 4 * n * (k - 1) / k
    }
}

/// The control plane of a mesh whose devices are separate processes: rank 0 (the leader) tells
/// the other ranks what to run next, and collects what they report. Messages are bytes.
public protocol MeshControl: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// `root`'s message, delivered to every rank (the others pass anything). `timeout` nil: the
    /// default; ≤ 0: wait forever (a follower idling until the leader's next command).
    func broadcast(_ message: [UInt8], root: Int, timeout: Double?) throws -> [UInt8]
    /// Every rank's message, in rank order, on every rank.
    func allGather(_ message: [UInt8], timeout: Double?) throws -> [[UInt8]]
}
