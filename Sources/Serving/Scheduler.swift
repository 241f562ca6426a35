/// Iteration-level scheduling for `meshinfer serve` (continuous batching), as a pure state
/// machine: it is told what happens — a request arrives, a client goes away, a step finished —
/// and answers with what to do: run the next step, release a sequence, reject a request. It
/// runs no model and reads no clock; the server loop does both. (Issue 11; Pope et al. §1, §4:
/// the batch size is the run-time latency/throughput trade.)
///
/// One step runs at a time. A step decodes one token for every running sequence that has
/// finished its prompt (all of them: at most `maxBatch`), then spends what is left of the
/// step's token budget (at least one token) on prefill chunks of admitted sequences, oldest
/// first — so a long prompt is prefilled over several steps and never stalls the running
/// streams. A waiting request is admitted (joins the next step) when
/// fewer than `maxBatch` sequences run and the KV budget can hold its prompt plus its
/// `maxTokens`: reserved up front, so a running sequence never runs out of KV memory.
///
/// Limits, and what happens at each:
/// - a request needing more positions than `context` or than the whole KV budget: rejected at
///   arrival (`.tooLong`) — it could never run;
/// - `maxQueue` requests already waiting: rejected at arrival (`.queueFull`; HTTP 429);
/// - `maxBatch` sequences running, or the KV budget reserved: the request waits. Admission is
///   first come, first served (the oldest waiting request blocks those behind it), so every
///   waiting request is admitted once the ones ahead of it finish: none waits forever.
/// - a cancelled request frees its sequence at the next step boundary: at once when queued or
///   between steps, after the step in flight when it is part of it.
/// - the prefix cache (KV of finished sequences, kept for reuse) counts against the KV budget
///   but gives way: when only it keeps the oldest waiting request out, the scheduler asks for
///   enough of it to be evicted (`.evictPrefixes`), and admits once told what it holds now.
/// - `latencyTarget` (with a `price` for steps: the calibrated cost model): a waiting request
///   is admitted only while the predicted decode step of the running batch with it stays
///   within the target, and a step's prefill chunks are cut to what keeps the predicted step
///   within it — recomputed every step from the current contexts, since KV reads grow with
///   them (§2, §4). When nothing runs, the oldest request is admitted whatever its prediction,
///   and a step always feeds at least `minimumChunk` prompt tokens: a target too tight slows
///   requests, it never stops them.
public struct Scheduler: Sendable {
    public typealias RequestID = Int
    /// Predicted seconds of a step of `sequences` sequences feeding `tokens` tokens in all,
    /// attending on average to `context` positions (cached + new).
    public typealias Price = @Sendable (_ sequences: Int, _ tokens: Int, _ context: Int) -> Double

    public struct Limits: Sendable, Equatable {
        /// Sequences running at once (the decode batch).
        public var maxBatch: Int
        /// Requests waiting to be admitted.
        public var maxQueue: Int
        /// KV positions the running sequences may reserve in all.
        public var kvPositions: Int
        /// Positions of one sequence (prompt + generated).
        public var context: Int
        /// Tokens one step may feed: one per decoding sequence, the rest prefill chunks.
        public var stepTokens: Int
        /// Seconds a step may take by the scheduler's `price` (the inter-token latency of the
        /// running streams), or nil: no target.
        public var latencyTarget: Double?
        /// A sequence's KV is held in whole chunks of this many positions (the engine's cache
        /// layout): the budget counts its positions rounded up to them.
        public var kvChunk: Int
        public init(maxBatch: Int, maxQueue: Int, kvPositions: Int, context: Int, stepTokens: Int, latencyTarget: Double? = nil,
                    kvChunk: Int = 1) {
            self.maxBatch = max(1, maxBatch)
            self.maxQueue = max(0, maxQueue)
            self.kvPositions = kvPositions
            self.context = context
            self.stepTokens = max(1, stepTokens)
            self.latencyTarget = latencyTarget
            self.kvChunk = max(1, kvChunk)
        }

        /// The KV budget a sequence of `positions` positions takes: whole chunks.
        public func footprint(_ positions: Int) -> Int { (positions + kvChunk - 1) / kvChunk * kvChunk }
    }

    public struct Request: Sendable, Equatable {
        public var id: RequestID
        public var promptTokens: Int
        public var maxTokens: Int
        /// Leading prompt tokens whose KV comes from the prefix cache (not prefilled again).
        public var cachedTokens: Int
        /// Another choice of the same request (`n > 1`), with the same prompt, that arrived
        /// before this one: its prefill is shared — this sequence waits for it and starts from
        /// a copy of its KV (all of the prompt but the last token, which it feeds itself).
        public var sharesPrefillWith: RequestID?
        public init(id: RequestID, promptTokens: Int, maxTokens: Int, cachedTokens: Int = 0, sharesPrefillWith: RequestID? = nil) {
            self.id = id
            self.promptTokens = promptTokens
            self.maxTokens = maxTokens
            self.cachedTokens = cachedTokens
            self.sharesPrefillWith = sharesPrefillWith
        }
        /// Positions reserved for it: the prompt and every token it may generate.
        var positions: Int { promptTokens + maxTokens }
    }

    public enum Event: Sendable, Equatable {
        case arrived(Request)
        case cancelled(RequestID)
        /// The step in flight is done; `finished` are the sequences that ended in it (end of
        /// generation, a stop string, or their last token).
        case stepFinished(finished: Set<RequestID>)
        /// KV positions the prefix cache (finished sequences kept for reuse) holds now.
        case prefixCacheHolds(Int)
    }

    public enum Rejection: String, Sendable, Equatable {
        case queueFull, tooLong
    }

    /// One sequence's part of a step: prompt tokens [from, to) to prefill (the step's logits
    /// for it are those of token to − 1, used only when to == promptTokens), or one decode token.
    public enum Work: Sendable, Equatable {
        case prefill(from: Int, to: Int)
        case decode
        var tokens: Int { if case let .prefill(a, b) = self { b - a } else { 1 } }
    }

    public struct Step: Sendable, Equatable {
        public var work: [(id: RequestID, work: Work)]
        /// What `price` predicts for it (nil without a price).
        public var predictedSeconds: Double?
        public init(work: [(id: RequestID, work: Work)], predictedSeconds: Double? = nil) {
            self.work = work
            self.predictedSeconds = predictedSeconds
        }
        public var tokens: Int { work.reduce(0) { $0 + $1.work.tokens } }
        public var decodes: Int { work.filter { $0.work == .decode }.count }
        public static func == (a: Step, b: Step) -> Bool { a.work.map(\.id) == b.work.map(\.id) && a.work.map(\.work) == b.work.map(\.work) }
    }

    public enum Action: Sendable, Equatable {
        /// Free at least this many positions of the prefix cache (least recently used first),
        /// then report what it holds: the oldest waiting request fits only without them.
        case evictPrefixes(atLeast: Int)
        case reject(RequestID, Rejection)
        /// Forget the sequence and free its KV (finished, or cancelled).
        case release(RequestID)
        /// Sequence `to` starts as a copy of the first `positions` KV positions of `from`
        /// (a shared prefill); it then prefills its prompt from there.
        case copyPrefix(from: RequestID, to: RequestID, positions: Int)
        case run(Step)
    }

    /// Where each known request is.
    public enum Phase: Sendable, Equatable {
        case waiting
        /// Admitted; `prefilled` prompt tokens are in its KV cache.
        case prefilling(prefilled: Int)
        case decoding
    }

    public let limits: Limits
    public private(set) var waiting: [Request] = []
    /// Admitted sequences, in admission order.
    public private(set) var running: [(request: Request, phase: Phase)] = []
    /// The step in flight, if any.
    public private(set) var inFlight: Step?
    /// Requests cancelled while part of the step in flight: released when it finishes.
    private var cancelledInFlight: Set<RequestID> = []
    /// KV positions held by the prefix cache: they count against the budget, but give way.
    public private(set) var prefixPositions = 0
    private var evictionAsked = false
    /// Positions in each admitted sequence's KV cache (its context before the next step).
    private var contexts: [RequestID: Int] = [:]
    public let price: Price?

    public init(limits: Limits, price: Price? = nil) {
        self.limits = limits
        self.price = price
    }

    /// KV positions reserved by the running sequences.
    public var reservedPositions: Int { running.reduce(0) { $0 + limits.footprint($1.request.positions) } }

    public func phase(of id: RequestID) -> Phase? {
        if waiting.contains(where: { $0.id == id }) { return .waiting }
        return running.first { $0.request.id == id }?.phase
    }

    /// The next state, and what to do now (in order).
    public mutating func handle(_ event: Event) -> [Action] {
        var actions: [Action] = []
        switch event {
        case let .arrived(r):
            if r.positions > limits.context || limits.footprint(r.positions) > limits.kvPositions || r.promptTokens < 1 {
                return [.reject(r.id, .tooLong)]
            }
            if waiting.count >= limits.maxQueue && !(waiting.isEmpty && canAdmit(r) && decodeFitsTarget(adding: r)) {
                return [.reject(r.id, .queueFull)]
            }
            waiting.append(r)
        case let .cancelled(id):
            if let i = waiting.firstIndex(where: { $0.id == id }) {
                waiting.remove(at: i)
                actions.append(.release(id))
            } else if inFlight?.work.contains(where: { $0.id == id }) == true {
                cancelledInFlight.insert(id)
            } else if let i = running.firstIndex(where: { $0.request.id == id }) {
                running.remove(at: i)
                contexts[id] = nil
                actions.append(.release(id))
            }
        case let .stepFinished(finished):
            guard let step = inFlight else { return [] }
            inFlight = nil
            var ended: [RequestID] = []
            for (id, work) in step.work {
                guard let i = running.firstIndex(where: { $0.request.id == id }) else { continue }
                contexts[id, default: 0] += work.tokens
                if case let .prefill(_, to) = work {
                    running[i].phase = to == running[i].request.promptTokens ? .decoding : .prefilling(prefilled: to)
                }
                if finished.contains(id) || cancelledInFlight.contains(id) { ended.append(id) }
            }
            actions += sharePrefills()   // before a sequence that ended takes its KV away
            for id in ended {
                running.removeAll { $0.request.id == id }
                contexts[id] = nil
                actions.append(.release(id))
            }
            cancelledInFlight = []
        case let .prefixCacheHolds(positions):
            prefixPositions = positions
            evictionAsked = false
        }
        if inFlight == nil {
            let (step, evict, copies) = nextStep()
            if let evict { actions.append(evict) }
            actions += copies
            if let step {
                inFlight = step
                actions.append(.run(step))
            }
        }
        return actions
    }

    private func canAdmit(_ r: Request) -> Bool {
        running.count < limits.maxBatch && reservedPositions + limits.footprint(r.positions) + prefixPositions <= limits.kvPositions
    }

    /// Admits what fits (asking the prefix cache to give way when only it stands in the way),
    /// then plans: every decoding sequence one token, then prefill chunks in admission order
    /// within the step's token budget (and, with a latency target, within the target).
    private mutating func nextStep() -> (Step?, Action?, [Action]) {
        while let r = waiting.first, canAdmit(r), decodeFitsTarget(adding: r) {
            waiting.removeFirst()
            let start = min(r.cachedTokens, r.promptTokens - 1)
            running.append((r, .prefilling(prefilled: start)))
            contexts[r.id] = start
        }
        let copies = sharePrefills()
        var evict: Action?
        if let r = waiting.first, running.count < limits.maxBatch, prefixPositions > 0, !evictionAsked,
           reservedPositions + limits.footprint(r.positions) <= limits.kvPositions, decodeFitsTarget(adding: r) {
            evict = .evictPrefixes(atLeast: reservedPositions + limits.footprint(r.positions) + prefixPositions - limits.kvPositions)
            evictionAsked = true
        }
        let decodes: [(id: RequestID, work: Work)] = running.filter { $0.phase == .decoding }.map { ($0.request.id, .decode) }
        let budget = max(1, limits.stepTokens - decodes.count)
        /// Prefill chunks of `tokens` tokens in all, oldest admitted first.
        func chunks(_ tokens: Int) -> [(id: RequestID, work: Work)] {
            var left = tokens, work: [(id: RequestID, work: Work)] = []
            for s in running where left > 0 && s.request.sharesPrefillWith == nil {
                guard case let .prefilling(done) = s.phase else { continue }
                let chunk = min(left, s.request.promptTokens - done)
                work.append((s.request.id, .prefill(from: done, to: done + chunk)))
                left -= chunk
            }
            return work
        }
        var prefill = chunks(budget)
        if let target = limits.latencyTarget, !decodes.isEmpty, !prefill.isEmpty, let cost = predicted(decodes + prefill), cost > target {
            // The largest chunk total whose step stays within the target — at least a minimum
            // chunk, so that a prompt admitted before the contexts grew is not starved once the
            // decodes alone pass the target. (The search assumes the price grows with the chunk;
            // where a chunk reaches a new sequence it may not, and the search then settles on a
            // smaller chunk that is still within the target.)
            var (lo, hi) = (min(Self.minimumChunk, prefill.reduce(0) { $0 + $1.work.tokens }), prefill.reduce(0) { $0 + $1.work.tokens })
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if predicted(decodes + chunks(mid))! <= target { lo = mid } else { hi = mid - 1 }
            }
            prefill = chunks(lo)
        }
        let work = decodes + prefill
        return (work.isEmpty ? nil : Step(work: work, predictedSeconds: predicted(work)), evict, copies)
    }

    /// Admitted sequences waiting on another's prefill: once it holds all of their prompt but
    /// the last token, each starts from a copy of that KV; when it went away first (cancelled,
    /// or refused), they prefill on their own.
    private mutating func sharePrefills() -> [Action] {
        var copies: [Action] = []
        for i in running.indices {
            guard let leader = running[i].request.sharesPrefillWith else { continue }
            let shared = running[i].request.promptTokens - 1
            if let l = running.first(where: { $0.request.id == leader }) {
                if case let .prefilling(done) = l.phase, done < shared { continue }   // not there yet
                if case let .prefilling(done) = running[i].phase, done < shared {
                    copies.append(.copyPrefix(from: leader, to: running[i].request.id, positions: shared))
                    running[i].phase = .prefilling(prefilled: shared)
                    contexts[running[i].request.id] = shared
                }
            } else if waiting.contains(where: { $0.id == leader }) {
                continue
            }
            running[i].request.sharesPrefillWith = nil
        }
        return copies
    }

    /// Prompt tokens a step feeds at least under a latency target (when any prompt waits).
    public static let minimumChunk = 16

    /// What `price` predicts for a step of this work (nil without a price).
    private func predicted(_ work: [(id: RequestID, work: Work)]) -> Double? {
        guard let price, !work.isEmpty else { return nil }
        let tokens = work.reduce(0) { $0 + $1.work.tokens }
        let attended = work.reduce(0) { $0 + contexts[$1.id, default: 0] + $1.work.tokens }
        return price(work.count, tokens, attended / work.count)
    }

    /// With a latency target: whether the decode step of every running sequence and `r` (each
    /// at its context once its prompt is in) is predicted within it. Always when nothing runs.
    private func decodeFitsTarget(adding r: Request) -> Bool {
        guard let target = limits.latencyTarget, let price, !running.isEmpty else { return true }
        let contexts = running.map { max(self.contexts[$0.request.id, default: 0], $0.request.promptTokens) + 1 } + [r.promptTokens + 1]
        return price(contexts.count, contexts.count, contexts.reduce(0, +) / contexts.count) <= target
    }
}
