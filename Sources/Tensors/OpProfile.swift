import CKernels
import Foundation

/// Where one device's forward passes spend their time, per op class, timed where the ops run
/// (`meshinfer bench --profile`), with the bytes each class moves. Timings are exclusive: an op
/// timed inside another (the activation quantization inside a matmul, the all-reduce inside a
/// norm) is taken out of the outer one, and so is the time the caller spends handing parts to
/// the worker pool and waiting for them ("thread hand-offs"). One profile belongs to one
/// device's thread of execution; it is not shared between threads.
public final class OpProfile: @unchecked Sendable {
    public struct Entry: Sendable, Equatable {
        public var seconds = 0.0
        /// Bytes read and written by the op's calls (weights, KV cache, activations).
        public var bytes = 0.0
        public var calls = 0
        public init() {}
    }

    public private(set) var entries: [String: Entry] = [:]
    /// Nanoseconds already attributed by timings running inside the current one.
    private var inner: UInt64 = 0
    /// Pool hand-off nanoseconds already attributed by timings inside the current one.
    private var innerHandoff: UInt64 = 0

    public init() {}

    /// The hand-off class's name.
    public static let handoff = "thread_handoff"

    /// Runs `body`, charging its time (less what nested timings and pool hand-offs took) and
    /// `bytes` to `op`.
    @inline(__always)
    public func measure<T>(_ op: String, bytes: Double = 0, _ body: () throws -> T) rethrows -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        let handoffStart = mi_pool_handoff_ns(), innerStart = inner, innerHandoffStart = innerHandoff
        defer {
            let elapsed = DispatchTime.now().uptimeNanoseconds - start
            let handoff = mi_pool_handoff_ns() - handoffStart
            let ownHandoff = handoff - (innerHandoff - innerHandoffStart)
            let own = elapsed - (inner - innerStart) - ownHandoff
            add(op, seconds: Double(own) / 1e9, bytes: bytes)
            if ownHandoff > 0 { add(Self.handoff, seconds: Double(ownHandoff) / 1e9, bytes: 0, calls: 0) }
            inner = innerStart + elapsed
            innerHandoff = innerHandoffStart + handoff
        }
        return try body()
    }

    public func add(_ op: String, seconds: Double, bytes: Double, calls: Int = 1) {
        entries[op, default: Entry()].seconds += seconds
        entries[op, default: Entry()].bytes += bytes
        entries[op, default: Entry()].calls += calls
    }

    /// Seconds over every class.
    public var totalSeconds: Double { entries.values.reduce(0) { $0 + $1.seconds } }

    public func reset() {
        entries = [:]
        inner = 0
        innerHandoff = 0
    }
}
