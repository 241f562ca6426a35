import Collectives
import Foundation
import Partitioning
import Tensors

/// What every rank of a process mesh loads alike, announced by rank 0 when it opens a session.
public struct SessionSpec: Codable, Equatable, Sendable {
    public var prefill: PhaseLayout
    public var decode: PhaseLayout
    public var weights: WeightFormat
    public var threads: Int
    public var kvCache: KVCacheType
    public init(prefill: PhaseLayout, decode: PhaseLayout, weights: WeightFormat, threads: Int, kvCache: KVCacheType = .f16) {
        self.prefill = prefill
        self.decode = decode
        self.weights = weights
        self.threads = threads
        self.kvCache = kvCache
    }
}

/// Everything rank 0 (the leader) tells the other ranks (the followers) of a process mesh, in
/// the order it happens: open a session, run its passes and reports, close it; open the next;
/// end the command. One broadcast over the control plane per message (JSON).
public enum ControlMessage: Codable, Equatable, Sendable {
    /// Load the model's shards with these layouts (every rank then reports whether it loaded).
    case open(SessionSpec)
    /// One forward pass of `batch`; first drop the caches of the sequences the leader released.
    case forward(MeshBatch, limit: Int, released: [Int])
    /// Sequence `to` starts as a copy of `from`'s first `positions` KV positions (a prompt
    /// prefilled once for several choices).
    case copyPrefix(positions: Int, from: Int, to: Int, limit: Int)
    /// All-gather the byte counters, or the weight formats and bytes, over the control plane.
    case reportTraffic
    case reportWeights
    case resetCounters
    /// The session is over (`failed`: the leader's run failed).
    case close(failed: Bool)
    /// The command is over: every rank exits, non-zero when `failed`.
    case end(failed: Bool)

    /// Rank 0: sends `self` to every rank.
    public func broadcast(over control: any MeshControl) throws {
        _ = try control.broadcast(Array(try JSONEncoder().encode(self)), root: 0, timeout: nil)
    }

    /// A follower: waits (as long as it takes: a chat user typing) for the leader's next message.
    public static func receive(over control: any MeshControl) throws -> ControlMessage {
        let bytes = try control.broadcast([], root: 0, timeout: 0)
        do { return try JSONDecoder().decode(ControlMessage.self, from: Data(bytes)) } catch {
            throw ControlError.malformed("\(error)")
        }
    }
}

public enum ControlError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    /// A message the protocol does not allow in the follower's state.
    case unexpected(message: String, state: String)
    public var description: String {
        switch self {
        case let .malformed(m): "malformed message from rank 0: \(m)"
        case let .unexpected(m, s): "rank 0 sent \(m) while this rank was \(s)"
        }
    }
}

/// A follower's side of the protocol, as a pure state machine: no I/O, no engine. It takes the
/// leader's messages and the outcome of opening a session, and says what to do next.
///
///     idle --open--> opening --opened(ok)--> serving --forward|copyPrefix|report…|reset--> serving
///       ^              |                        |
///       |<--opened(failed: every rank saw it)---+--close--> idle
///     idle | serving --end--> finished
public struct FollowerMachine: Equatable, Sendable {
    public enum State: String, Equatable, Sendable {
        case idle, opening, serving, finished
    }
    public enum Event: Equatable, Sendable {
        case received(ControlMessage)
        /// Whether every rank loaded its shards (a failed load is seen by every rank).
        case opened(Bool)
    }
    public enum Action: Equatable, Sendable {
        case open(SessionSpec)
        case forward(MeshBatch, limit: Int, released: [Int])
        case copyPrefix(positions: Int, from: Int, to: Int, limit: Int)
        case reportTraffic, reportWeights, resetCounters
        case close
        case exit(failed: Bool)
    }

    public private(set) var state: State = .idle
    public init() {}

    /// The next state, and the action to take (nil: nothing to do).
    public mutating func handle(_ event: Event) throws(ControlError) -> Action? {
        switch (state, event) {
        case let (.idle, .received(.open(spec))):
            state = .opening
            return .open(spec)
        case let (.opening, .opened(ok)):
            state = ok ? .serving : .idle
            return nil
        case let (.serving, .received(message)):
            switch message {
            case let .forward(batch, limit, released): return .forward(batch, limit: limit, released: released)
            case let .copyPrefix(positions, from, to, limit): return .copyPrefix(positions: positions, from: from, to: to, limit: limit)
            case .reportTraffic: return .reportTraffic
            case .reportWeights: return .reportWeights
            case .resetCounters: return .resetCounters
            case .close:
                state = .idle
                return .close
            case let .end(failed):
                state = .finished
                return .exit(failed: failed)
            case .open: throw .unexpected(message: "open", state: state.rawValue)
            }
        case let (.idle, .received(.end(failed))):
            state = .finished
            return .exit(failed: failed)
        case let (_, .received(message)):
            throw .unexpected(message: "\(message)".prefix { $0 != "(" }.description, state: state.rawValue)
        case (_, .opened):
            throw .unexpected(message: "a load report", state: state.rawValue)
        }
    }
}

extension ProcessMeshEngine {
    /// A follower (rank ≠ 0): runs the leader's sessions until it ends the command; returns
    /// whether the leader ended it failed. `open` loads a session's engine on this rank (it
    /// throws `ProcessMeshError.loadFailed` on every rank when any rank could not load). Errors
    /// of a pass (a collective timing out, say) and protocol errors are thrown.
    public static func follow(control: any MeshControl, open: (SessionSpec) throws -> ProcessMeshEngine) throws -> Bool {
        var machine = FollowerMachine()
        var engine: ProcessMeshEngine?
        while true {
            guard let action = try machine.handle(.received(try ControlMessage.receive(over: control))) else { continue }
            switch action {
            case let .open(spec):
                do {
                    engine = try open(spec)
                    _ = try machine.handle(.opened(true))
                } catch ProcessMeshError.loadFailed {
                    _ = try machine.handle(.opened(false))   // rank 0 names the ranks and reasons
                }
            case let .exit(failed):
                return failed
            case .close:
                engine = nil
            case .forward, .copyPrefix, .reportTraffic, .reportWeights, .resetCounters:
                guard let engine else { throw ControlError.unexpected(message: "\(action)", state: "without a session") }
                try engine.perform(action)
            }
        }
    }
}
