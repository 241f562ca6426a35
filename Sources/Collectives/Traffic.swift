import Foundation
import Partitioning

/// Bytes one device sent and received, per collective kind, axis set and site.
public struct TrafficCounter: Sendable, Equatable, Codable {
    public struct Key: Hashable, Sendable, Codable {
        public var kind: CollectiveKind
        public var axes: AxisSet
        public var site: CollectiveSite
        public init(kind: CollectiveKind, axes: AxisSet, site: CollectiveSite) {
            self.kind = kind
            self.axes = axes
            self.site = site
        }
    }

    /// Bytes sent, per key.
    public private(set) var sent: [Key: Int] = [:]
    /// Bytes received, per key.
    public private(set) var received: [Key: Int] = [:]
    /// Number of calls, per key (calls with K == 1 count as calls that moved 0 bytes).
    public private(set) var calls: [Key: Int] = [:]

    public init() {}

    public mutating func record(kind: CollectiveKind, axes: AxisSet, site: CollectiveSite, sent: Int, received: Int) {
        let key = Key(kind: kind, axes: axes, site: site)
        self.sent[key, default: 0] += sent
        self.received[key, default: 0] += received
        self.calls[key, default: 0] += 1
    }

    private static func sum(_ d: [Key: Int], _ kind: CollectiveKind?, _ axes: AxisSet?, _ site: CollectiveSite?, _ part: CollectiveSite.Part?) -> Int {
        var total = 0
        for (key, v) in d
        where (kind == nil || key.kind == kind!) && (axes == nil || key.axes == axes!) && (site == nil || key.site == site!)
            && (part == nil || key.site.part == part!) {
            total += v
        }
        return total
    }

    /// Sum of bytes sent over the keys matching every non-nil filter.
    public func sentBytes(kind: CollectiveKind? = nil, axes: AxisSet? = nil, site: CollectiveSite? = nil,
                          part: CollectiveSite.Part? = nil) -> Int {
        Self.sum(sent, kind, axes, site, part)
    }

    /// Sum of bytes received over the keys matching every non-nil filter.
    public func receivedBytes(kind: CollectiveKind? = nil, axes: AxisSet? = nil, site: CollectiveSite? = nil,
                          part: CollectiveSite.Part? = nil) -> Int {
        Self.sum(received, kind, axes, site, part)
    }

    /// Number of calls over the keys matching every non-nil filter.
    public func callCount(kind: CollectiveKind? = nil, axes: AxisSet? = nil, site: CollectiveSite? = nil,
                          part: CollectiveSite.Part? = nil) -> Int {
        Self.sum(calls, kind, axes, site, part)
    }

    public mutating func reset() { self = TrafficCounter() }

    public static func + (a: Self, b: Self) -> Self {
        var r = a
        r.sent.merge(b.sent, uniquingKeysWith: +)
        r.received.merge(b.received, uniquingKeysWith: +)
        r.calls.merge(b.calls, uniquingKeysWith: +)
        return r
    }
}

/// A device's byte counter as a transport keeps it: written by the device's thread as its
/// collectives complete, readable from any thread. Records the direct-exchange bytes of
/// `collectiveBytes` (see `Communicator`), so every transport counts alike.
/// (NSLock rather than Synchronization.Mutex: the package still supports macOS 14.)
public final class TrafficRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var counter = TrafficCounter()

    public init() {}

    public var traffic: TrafficCounter { lock.withLock { counter } }

    public func reset() { lock.withLock { counter.reset() } }

    /// One call of `kind` with `count` elements per member over a group of `groupSize`.
    public func record(_ kind: CollectiveKind, _ axes: AxisSet, _ site: CollectiveSite, count: Int, groupSize: Int) {
        let bytes = collectiveBytes(kind, count: count, groupSize: groupSize)
        lock.withLock { counter.record(kind: kind, axes: axes, site: site, sent: bytes, received: bytes) }
    }
}
