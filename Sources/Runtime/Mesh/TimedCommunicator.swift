import Collectives
import Foundation
import Partitioning

/// Wraps a communicator and adds up the wall time spent inside collectives (for `bench`:
/// compute vs communication per step).
final class TimedCommunicator: Communicator, @unchecked Sendable {
    let inner: any Communicator
    private(set) var seconds = 0.0
    init(_ inner: any Communicator) { self.inner = inner }

    var mesh: Mesh { inner.mesh }
    var rank: Int { inner.rank }
    var traffic: TrafficCounter { inner.traffic }
    func resetTraffic() { inner.resetTraffic() }
    func abort(reason: String) { inner.abort(reason: reason) }

    private func timed(_ body: () throws(CollectiveError) -> [Float]) throws(CollectiveError) -> [Float] {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        return try body()
    }
    func allGather(_ d: [Float], over a: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        try timed { () throws(CollectiveError) in try inner.allGather(d, over: a, site: site) }
    }
    func reduceScatter(_ d: [Float], over a: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        try timed { () throws(CollectiveError) in try inner.reduceScatter(d, over: a, site: site) }
    }
    func allReduce(_ d: [Float], over a: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        try timed { () throws(CollectiveError) in try inner.allReduce(d, over: a, site: site) }
    }
    func allToAll(_ d: [Float], over a: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        try timed { () throws(CollectiveError) in try inner.allToAll(d, over: a, site: site) }
    }
}
