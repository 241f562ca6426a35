import Runtime
import Serving
import Testing

/// The continuous-batching scheduler as a pure state machine: events in, actions out, checked
/// by hand on small cases and against a mock engine on random traffic.
struct SchedulerTests {
    typealias S = Scheduler
    static func limits(maxBatch: Int = 4, maxQueue: Int = 8, kv: Int = 1000, context: Int = 200, step: Int = 8) -> S.Limits {
        S.Limits(maxBatch: maxBatch, maxQueue: maxQueue, kvPositions: kv, context: context, stepTokens: step)
    }
    static func steps(_ actions: [S.Action]) -> [S.Step] { actions.compactMap { if case let .run(s) = $0 { s } else { nil } } }

    /// A 20-token prompt with an 8-token step budget: chunks 0..<8, 8..<16, 16..<20, then decodes.
    @Test func longPromptIsPrefilledInChunks() {
        var s = S(limits: Self.limits())
        #expect(Self.steps(s.handle(.arrived(.init(id: 1, promptTokens: 20, maxTokens: 3)))) == [S.Step(work: [(1, .prefill(from: 0, to: 8))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .prefill(from: 8, to: 16))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .prefill(from: 16, to: 20))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode)])])
        #expect(s.handle(.stepFinished(finished: [1])) == [.release(1)])
        #expect(s.running.isEmpty && s.inFlight == nil)
    }

    /// A request arriving while another decodes joins at the next step; the running stream
    /// decodes every step while the newcomer's prompt is chunked into what the budget leaves.
    @Test func newcomerJoinsWithoutStallingTheRunningStream() {
        var s = S(limits: Self.limits(step: 8))
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 4, maxTokens: 10)))
        _ = s.handle(.stepFinished(finished: []))            // 1 prefilled; step 2 decodes it
        #expect(s.handle(.arrived(.init(id: 2, promptTokens: 15, maxTokens: 2))) == [])   // a step is in flight
        let next = Self.steps(s.handle(.stepFinished(finished: [])))
        #expect(next == [S.Step(work: [(1, .decode), (2, .prefill(from: 0, to: 7))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode), (2, .prefill(from: 7, to: 14))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode), (2, .prefill(from: 14, to: 15))])])
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode), (2, .decode)])])
    }

    /// `maxBatch` running: the next request waits, and is admitted when one finishes.
    @Test func maxBatchHoldsAndThenAdmits() {
        var s = S(limits: Self.limits(maxBatch: 2, step: 64))
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 2, maxTokens: 5)))
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 2, maxTokens: 5)))
        _ = s.handle(.arrived(.init(id: 3, promptTokens: 2, maxTokens: 5)))
        #expect(s.phase(of: 3) == .waiting)
        let step = Self.steps(s.handle(.stepFinished(finished: [])))   // 1 done prefilling; 2 prefills now
        #expect(step.first?.work.map(\.id) == [1, 2])
        #expect(s.phase(of: 3) == .waiting)
        let after = s.handle(.stepFinished(finished: [1]))
        #expect(after.first == .release(1))
        #expect(Self.steps(after).first?.work.map(\.id) == [2, 3])
    }

    /// The KV budget is reserved up front (prompt + max tokens): a request that does not fit
    /// waits until another releases; one that could never fit is rejected at arrival.
    @Test func kvBudgetMakesRequestsWaitNeverOverflow() {
        var s = S(limits: Self.limits(kv: 100, step: 64))
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 30, maxTokens: 30)))
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 30, maxTokens: 30)))
        #expect(s.phase(of: 2) == .waiting && s.reservedPositions == 60)
        #expect(s.handle(.arrived(.init(id: 3, promptTokens: 90, maxTokens: 20))) == [.reject(3, .tooLong)])
        let after = s.handle(.stepFinished(finished: [1]))
        #expect(after.first == .release(1) && s.phase(of: 2) == .prefilling(prefilled: 0))
    }

    /// KV held in whole chunks (the engine's cache: 256 positions): the budget counts each
    /// sequence's positions rounded up to them. Budget 600: two 100-position requests (256
    /// each) run, a third waits for one to finish (counted by positions all three would fit);
    /// a request of 550 positions (768) is rejected at arrival, though 550 ≤ 600.
    @Test func kvBudgetCountsWholeChunks() {
        var limits = Self.limits(kv: 600, context: 2000, step: 64)
        limits.kvChunk = 256
        var s = S(limits: limits)
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 60, maxTokens: 40)))
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 60, maxTokens: 40)))
        _ = s.handle(.arrived(.init(id: 3, promptTokens: 60, maxTokens: 40)))
        _ = s.handle(.stepFinished(finished: []))   // 1 prefilled; 2 admitted beside it
        #expect(s.reservedPositions == 512 && s.phase(of: 3) == .waiting)
        let after = s.handle(.stepFinished(finished: [1]))
        #expect(after.first == .release(1) && s.phase(of: 3) != .waiting && s.reservedPositions == 512)
        #expect(s.handle(.arrived(.init(id: 4, promptTokens: 500, maxTokens: 50))) == [.reject(4, .tooLong)])
        #expect(limits.footprint(550) == 768 && limits.footprint(256) == 256 && limits.footprint(0) == 0)
    }

    @Test func fullQueueAndOverlongRequestsAreRejected() {
        var s = S(limits: Self.limits(maxBatch: 1, maxQueue: 1, context: 50))
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 5, maxTokens: 5)))   // runs
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 5, maxTokens: 5)))   // waits
        #expect(s.handle(.arrived(.init(id: 3, promptTokens: 5, maxTokens: 5))) == [.reject(3, .queueFull)])
        #expect(s.handle(.arrived(.init(id: 4, promptTokens: 40, maxTokens: 20))) == [.reject(4, .tooLong)])
        #expect(s.handle(.arrived(.init(id: 5, promptTokens: 0, maxTokens: 1))) == [.reject(5, .tooLong)])
    }

    /// Cancellation frees the sequence at the next step boundary in every phase: queued (at
    /// once), between prefill chunks and while decoding (after the step in flight, and it is
    /// in no later step).
    @Test func cancellationAtEveryPhase() {
        var s = S(limits: Self.limits(maxBatch: 2, step: 8))
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 20, maxTokens: 5)))  // chunked prefill
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 2, maxTokens: 5)))
        _ = s.handle(.arrived(.init(id: 3, promptTokens: 2, maxTokens: 5)))   // queued (max batch 2)
        #expect(s.handle(.cancelled(3)) == [.release(3)])
        #expect(s.phase(of: 3) == nil)
        // 1 is mid-prefill and in the step in flight: released when the step finishes.
        #expect(s.handle(.cancelled(1)) == [])
        let after = s.handle(.stepFinished(finished: []))
        #expect(after.first == .release(1))
        #expect(Self.steps(after).allSatisfy { !$0.work.contains { $0.id == 1 } })
        // 2 decoding, cancelled during its step.
        _ = s.handle(.stepFinished(finished: []))
        #expect(s.phase(of: 2) == .decoding)
        #expect(s.handle(.cancelled(2)) == [])
        #expect(s.handle(.stepFinished(finished: [])) == [.release(2)])
        #expect(s.running.isEmpty && s.inFlight == nil)
        #expect(s.handle(.cancelled(42)) == [])   // unknown or already gone: nothing
    }

    /// The prefix cache counts against the KV budget but gives way: a request that fits only
    /// without some of it asks for exactly that much to be evicted, and is admitted once told;
    /// its cached prompt tokens are not prefilled again.
    @Test func prefixCacheGivesWayAndCachedTokensSkipPrefill() {
        var s = S(limits: Self.limits(kv: 100, step: 64))
        #expect(s.handle(.prefixCacheHolds(70)) == [])
        #expect(s.handle(.arrived(.init(id: 1, promptTokens: 20, maxTokens: 20, cachedTokens: 12))) == [.evictPrefixes(atLeast: 10)])
        #expect(s.phase(of: 1) == .waiting)
        #expect(Self.steps(s.handle(.prefixCacheHolds(60))) == [S.Step(work: [(1, .prefill(from: 12, to: 20))])])
        // A whole prompt cached still feeds its last token (the step must yield logits).
        var t = S(limits: Self.limits())
        #expect(Self.steps(t.handle(.arrived(.init(id: 2, promptTokens: 5, maxTokens: 3, cachedTokens: 5)))) == [S.Step(work: [(2, .prefill(from: 4, to: 5))])])
    }

    /// `n = 3`: the prompt is prefilled once; when it is in (all of it but the last token),
    /// the other choices start from copies of that KV and each feeds the last token itself.
    /// A choice whose source is cancelled before that prefills on its own.
    @Test func choicesSharePrefill() {
        var s = S(limits: Self.limits(step: 8))
        #expect(Self.steps(s.handle(.arrived(.init(id: 1, promptTokens: 12, maxTokens: 4)))) == [S.Step(work: [(1, .prefill(from: 0, to: 8))])])
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 12, maxTokens: 4, sharesPrefillWith: 1)))
        _ = s.handle(.arrived(.init(id: 3, promptTokens: 12, maxTokens: 4, sharesPrefillWith: 1)))
        // 2 and 3 are admitted but wait: the step prefills only 1.
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .prefill(from: 8, to: 12))])])
        let after = s.handle(.stepFinished(finished: []))
        #expect(after.filter { if case .copyPrefix = $0 { true } else { false } }
                == [.copyPrefix(from: 1, to: 2, positions: 11), .copyPrefix(from: 1, to: 3, positions: 11)])
        #expect(Self.steps(after) == [S.Step(work: [(1, .decode), (2, .prefill(from: 11, to: 12)), (3, .prefill(from: 11, to: 12))])])
        // The source cancelled while still prefilling: the other choice prefills on its own.
        var t = S(limits: Self.limits(step: 8))
        _ = t.handle(.arrived(.init(id: 1, promptTokens: 12, maxTokens: 4)))
        _ = t.handle(.arrived(.init(id: 2, promptTokens: 12, maxTokens: 4, sharesPrefillWith: 1)))
        _ = t.handle(.cancelled(1))
        let alone = t.handle(.stepFinished(finished: []))
        #expect(alone.first == .release(1) && Self.steps(alone) == [S.Step(work: [(2, .prefill(from: 0, to: 8))])])
    }

    /// A mock cost model, simple enough to work out by hand: 10 ms per step, 2 ms per sequence,
    /// 0.1 ms per token, 0.01 ms per sequence per attended position.
    static let price: S.Price = { sequences, tokens, context in
        0.010 + 0.002 * Double(sequences) + 0.0001 * Double(tokens) + 0.00001 * Double(sequences * context)
    }

    /// With a latency target the prefill chunk beside a decoding stream is cut to what keeps
    /// the predicted step within it: one decode at context 10 and a 100-token prompt, 20 ms:
    /// price(2, 1 + p, ⌊(11 + p) / 2⌋) ≤ 0.02 holds up to p = 52 (19.92 ms) and not at 53 (20.04).
    @Test func latencyTargetCutsPrefillChunks() throws {
        var limits = Self.limits(maxBatch: 8, step: 64)
        limits.latencyTarget = 0.020
        var s = S(limits: limits, price: Self.price)
        _ = s.handle(.arrived(.init(id: 1, promptTokens: 9, maxTokens: 50)))
        #expect(Self.steps(s.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode)])])
        _ = s.handle(.arrived(.init(id: 2, promptTokens: 100, maxTokens: 20)))
        let step = try #require(Self.steps(s.handle(.stepFinished(finished: []))).first)
        #expect(step == S.Step(work: [(1, .decode), (2, .prefill(from: 0, to: 52))]))
        #expect(abs(step.predictedSeconds! - 0.01992) < 1e-9)
        // Without a target the whole budget goes to the prompt.
        var free = S(limits: Self.limits(maxBatch: 8, step: 64), price: Self.price)
        _ = free.handle(.arrived(.init(id: 1, promptTokens: 9, maxTokens: 50)))
        _ = free.handle(.stepFinished(finished: []))
        _ = free.handle(.arrived(.init(id: 2, promptTokens: 100, maxTokens: 20)))
        #expect(Self.steps(free.handle(.stepFinished(finished: []))) == [S.Step(work: [(1, .decode), (2, .prefill(from: 0, to: 63))])])
    }

    /// With a latency target the decode batch is capped where the predicted decode step would
    /// pass it: 9-token prompts decode at context 10, price(s, s, 10) = 0.01 + 0.0022·s, so
    /// four fit in 20 ms and a fifth (21 ms) waits — though `maxBatch` is 8 — until one ends.
    /// The cap is recomputed from the current contexts: as they grow it admits fewer.
    @Test func latencyTargetCapsTheDecodeBatch() {
        var limits = Self.limits(maxBatch: 8, step: 64)
        limits.latencyTarget = 0.020
        var s = S(limits: limits, price: Self.price)
        for id in 1...6 { _ = s.handle(.arrived(.init(id: id, promptTokens: 9, maxTokens: 100))) }
        while s.running.contains(where: { $0.phase != .decoding }) { _ = s.handle(.stepFinished(finished: [])) }
        #expect(s.running.map(\.request.id) == [1, 2, 3, 4] && s.waiting.map(\.id) == [5, 6])
        let next = s.handle(.stepFinished(finished: [1]))
        #expect(next.first == .release(1) && s.running.map(\.request.id) == [2, 3, 4, 5])
        // Decode until the contexts make 4 sequences too slow (price(4, 4, c) > 0.02 once
        // c > 40): when one ends then, the waiting request stays out.
        for _ in 0..<60 { _ = s.handle(.stepFinished(finished: [])) }
        _ = s.handle(.stepFinished(finished: [2]))
        #expect(s.running.map(\.request.id) == [3, 4, 5] && s.waiting.map(\.id) == [6])
        // Alone, a request is admitted whatever its prediction (none waits forever).
        var tight = S(limits: { var l = Self.limits(); l.latencyTarget = 0.001; return l }(), price: Self.price)
        #expect(Self.steps(tight.handle(.arrived(.init(id: 1, promptTokens: 20, maxTokens: 5)))).count == 1)
    }

    /// Random traffic against a mock engine that ends each sequence after its max tokens (or a
    /// cancellation): at every step the limits hold, each sequence's chunks cover its prompt in
    /// order before it decodes, it decodes exactly max tokens unless cancelled, and every
    /// accepted request is released exactly once. Nothing waits forever.
    @Test(arguments: [1, 2, 3, 4, 5])
    func randomTrafficKeepsEveryInvariant(_ seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var limits = Self.limits(maxBatch: 1 + Int(rng.next() % 6), maxQueue: 3 + Int(rng.next() % 8), kv: 150 + Int(rng.next() % 200),
                                 context: 120, step: 4 + Int(rng.next() % 30))
        if seed % 2 == 0 { limits.latencyTarget = 0.02 }   // even seeds: under a latency target too
        var s = S(limits: limits, price: Self.price)
        var prefilled: [Int: Int] = [:], decoded: [Int: Int] = [:], released: [Int: Int] = [:]
        var requests: [Int: S.Request] = [:], cancelled: Set<Int> = [], rejected: Set<Int> = []
        var nextID = 0, steps = 0
        func apply(_ actions: [S.Action]) {
            for a in actions {
                switch a {
                case let .reject(id, _): rejected.insert(id)
                case let .release(id): released[id, default: 0] += 1
                case .evictPrefixes: Issue.record("an eviction asked for with no prefix cache")
                case let .copyPrefix(from, to, positions):
                    #expect(requests[to]!.sharesPrefillWith == from && positions == requests[to]!.promptTokens - 1)
                    #expect(prefilled[from, default: 0] >= positions && prefilled[to, default: 0] == 0)
                    prefilled[to] = positions
                case let .run(step):
                    #expect(step.decodes <= limits.maxBatch)
                    #expect(step.tokens <= max(limits.stepTokens, step.decodes + 1))
                    #expect(s.reservedPositions <= limits.kvPositions && s.running.count <= limits.maxBatch)
                    #expect(s.waiting.count <= limits.maxQueue)
                    // Within the target, unless the decodes alone pass it (then the minimum chunk).
                    if let target = limits.latencyTarget, step.decodes > 0, step.tokens - step.decodes > S.minimumChunk {
                        #expect(step.predictedSeconds! <= target)
                    }
                    for (id, w) in step.work {
                        switch w {
                        case let .prefill(from, to):
                            #expect(from == prefilled[id, default: 0] && to > from && to <= requests[id]!.promptTokens)
                            prefilled[id] = to
                        case .decode:
                            #expect(prefilled[id] == requests[id]!.promptTokens)
                            decoded[id, default: 0] += 1
                        }
                    }
                }
            }
        }
        while steps < 100_000 {
            // Arrivals and cancellations between steps.
            if nextID < 300 && rng.next() % 3 == 0 {
                var r = S.Request(id: nextID, promptTokens: Int(rng.next() % 60), maxTokens: 1 + Int(rng.next() % 40))
                if let last = requests[nextID - 1], rng.next() % 3 == 0 {   // another choice of the last request
                    r.promptTokens = last.promptTokens
                    r.sharesPrefillWith = last.id
                }
                requests[r.id] = r
                nextID += 1
                apply(s.handle(.arrived(r)))
            }
            if nextID > 0 && rng.next() % 7 == 0, case let id = Int(rng.next() % UInt64(nextID)), !rejected.contains(id) {
                cancelled.insert(id)
                apply(s.handle(.cancelled(id)))
            }
            guard let step = s.inFlight else {
                if nextID >= 300 { break }
                continue
            }
            steps += 1
            // The mock engine: a sequence finishes when it has decoded its max tokens.
            let finished = Set(step.work.compactMap { id, w in w == .decode && decoded[id, default: 0] == requests[id]!.maxTokens ? id : nil })
            apply(s.handle(.stepFinished(finished: finished)))
        }
        #expect(s.inFlight == nil && s.running.isEmpty && s.waiting.isEmpty, "stuck after \(steps) steps")
        for (id, r) in requests where !rejected.contains(id) {
            #expect(released[id] == 1, "request \(id) released \(released[id] ?? 0) times")
            if !cancelled.contains(id) { #expect(decoded[id] == r.maxTokens, "request \(id)") }
        }
        #expect(rejected.count < requests.count)
    }
}
