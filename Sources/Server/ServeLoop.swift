import Foundation
import Logging
import Runtime
import Serving
import Tokenization

/// What a request asks the engine for: its prompt tokens and how to generate.
public struct Job: Sendable {
    public var prompt: [Int]
    public var generation: GenerationRequest
    /// Alternatives per position for `logprobs` (nil: none recorded).
    public var logprobs: Int?
    public init(prompt: [Int], generation: GenerationRequest, logprobs: Int? = nil) {
        self.prompt = prompt
        self.generation = generation
        self.logprobs = logprobs
    }
}

/// What the engine tells a request, in order: text as it becomes final, then `done` (or
/// `failed`).
public enum JobEvent: Sendable {
    case text(String, logprobs: [TokenLogprobs])
    /// The sequence ended: "stop", "length", or "abort" (cancelled, or the server stopping).
    case done(finishReason: String, completionTokens: Int)
    case failed(String)
    /// The server cannot go on (the device mesh failed: a rank is gone): 503.
    case unavailable(String)
}

/// The serving loop: the continuous-batching `Scheduler` (a pure state machine) driven on one
/// thread that runs its steps through the engine — every running sequence decodes one token
/// per step, prompts are prefilled in chunks within the step's token budget — and hands each
/// request its text as it becomes final. HTTP handlers submit and cancel from any thread.
public final class ServeLoop: @unchecked Sendable {
    public let engine: any MeshRunner
    public let tokenizer: Tokenizer
    public let limits: Scheduler.Limits
    public let metrics: ServeMetrics
    public var logger = Logger(label: "meshinfer.serve")
    /// Called once (on the loop thread) when a step fails for a reason that is not the
    /// request's (a collective failed: a rank of the mesh is gone): every request has been
    /// ended with the error, new ones are refused, and the loop has stopped.
    public var onFatal: (@Sendable (Error) -> Void)?

    private struct Running {
        var job: Job
        var completion: Completion
        var cache: MeshSequence
        var continuation: AsyncStream<JobEvent>.Continuation
        var arrived: Date
        var cachedTokens: Int
        var scheduled: Date?
        var firstToken: Date?
        var lastToken: Date?
    }

    /// A finished sequence kept for its KV: `tokens` are the positions its cache holds.
    private struct CachedPrefix {
        var tokens: [Int]
        var cache: MeshSequence
        var used: Int
    }
    /// The prefix cache (LRU within the KV budget, which it shares with running sequences).
    private var prefixes: [CachedPrefix] = []
    private var useClock = 0
    private var cachedPositions: Int { prefixes.reduce(0) { $0 + limits.footprint($1.tokens.count) } }

    /// The KV copy each job starts from (a cached prefix, another choice's prefill), made by the
    /// loop thread just before the first step that runs the job — so the copy is counted in the
    /// KV budget (the job is admitted), cannot race the job's release (a job in the step in
    /// flight is released after it), and every engine call (under MPI, every control message)
    /// comes from one thread.
    private var pendingCopies: [Int: (from: MeshSequence, positions: Int)] = [:]

    private let condition = NSCondition()
    private var scheduler: Scheduler
    private var jobs: [Int: Running] = [:]
    private var pending: Scheduler.Step?
    private var nextID = 0
    private var stopping = false
    private var refusing = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// `price`: the cost model's prediction of a step (this host's calibration), for
    /// `limits.latencyTarget` and the predicted-step metric; nil without a calibration.
    public init(engine: any MeshRunner, tokenizer: Tokenizer, limits: Scheduler.Limits, metrics: ServeMetrics,
                price: Scheduler.Price? = nil) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.limits = limits
        self.metrics = metrics
        scheduler = Scheduler(limits: limits, price: price)
        mesh = engine.mesh.deviceCount > 1 ? engine : nil
    }
    /// The engine when it runs on more than one device (for the collective-seconds metric).
    private let mesh: (any MeshRunner)?

    public enum Refusal: Sendable, Equatable {
        /// `maxQueue` requests wait already (HTTP 429).
        case queueFull
        /// More positions than a sequence or the KV budget has: it could never run (400).
        case tooLong
        /// The server is shutting down (503).
        case shuttingDown
    }

    public enum Submission: Sendable {
        /// `cachedTokens`: leading prompt tokens whose KV came from the prefix cache.
        case accepted(id: Int, cachedTokens: Int, events: AsyncStream<JobEvent>)
        case rejected(Refusal)
    }

    /// Queues a job (or rejects it: the queue is full, or it could never fit).
    /// `sharesPrefillWith`: an accepted job with the same prompt (another choice of one request,
    /// `n > 1`) whose prefill this one shares: it starts from a copy of that job's KV.
    public func submit(_ job: Job, sharesPrefillWith source: Int? = nil) -> Submission {
        condition.lock()
        defer { condition.unlock() }
        if stopping || refusing { return .rejected(.shuttingDown) }
        let id = nextID
        nextID += 1
        let leader = source.flatMap { jobs[$0] }.flatMap { $0.job.prompt == job.prompt ? $0 : nil }
        // The cached sequence sharing the longest prefix with this prompt, if any (at least one
        // prompt token is still fed, so the step yields logits). When the prompt extends all of
        // it (a follow-up chat turn) it is taken out of the cache and continued; when they share
        // only a part (a system prompt, an earlier turn) the new sequence starts from a copy of
        // that part and the entry stays for others.
        var reused: CachedPrefix?
        var copied: (from: MeshSequence, positions: Int)?
        let shared = leader != nil ? [] : prefixes.map { commonPrefix($0.tokens, job.prompt) }
        if let best = shared.indices.max(by: { shared[$0] < shared[$1] }) {
            let c = min(shared[best], job.prompt.count - 1)
            let entryDevice = prefixes[best].cache.home(devices: devices)
            if c > 0 && c == prefixes[best].tokens.count {
                reused = prefixes.remove(at: best)
                apply(scheduler.handle(.prefixCacheHolds(cachedPositions)))
            } else if c > 0 && held(on: entryDevice) + limits.footprint(job.prompt.count + job.generation.maxTokens) <= limits.kvPositions / devices {
                // A copy lives beside its source: only while that device has room for it.
                useClock += 1
                prefixes[best].used = useClock
                copied = (prefixes[best].cache, c)
            }
        }
        let cached = reused?.tokens.count ?? copied?.positions ?? 0
        let actions = scheduler.handle(.arrived(.init(id: id, promptTokens: job.prompt.count, maxTokens: job.generation.maxTokens,
                                                      cachedTokens: cached, sharesPrefillWith: leader == nil ? nil : source)))
        if case let .reject(_, why)? = actions.first {
            if let reused { keep(reused.tokens, reused.cache) }
            return .rejected(why == .queueFull ? .queueFull : .tooLong)
        }
        let (stream, continuation) = AsyncStream<JobEvent>.makeStream()
        var completion = Completion(job.generation, tokenizer: tokenizer)
        completion.logprobAlternatives = job.logprobs
        // Homed with the KV it starts from (a cached prefix, or the choice whose prefill it
        // shares), else on the device with the most free KV.
        let home = (copied?.from ?? leader?.cache)?.home(devices: devices) ?? emptiestDevice()
        let cache = reused?.cache ?? engine.makeCache(limit: limits.context, home: home)
        if let copied { pendingCopies[id] = (copied.from, copied.positions) }
        jobs[id] = Running(job: job, completion: completion, cache: cache, continuation: continuation, arrived: Date(), cachedTokens: cached)
        apply(actions)
        updateGauges()
        return .accepted(id: id, cachedTokens: cached, events: stream)
    }

    /// Puts a sequence's KV into the prefix cache, evicting the least recently used entries so
    /// that running sequences' reservations and the cache stay within the KV budget.
    private func keep(_ tokens: [Int], _ cache: MeshSequence) {
        let footprint = limits.footprint(tokens.count)
        guard !tokens.isEmpty, footprint <= limits.kvPositions - scheduler.reservedPositions else { return }
        while cachedPositions + footprint > limits.kvPositions - scheduler.reservedPositions, !prefixes.isEmpty { evictOldest() }
        useClock += 1
        prefixes.append(CachedPrefix(tokens: tokens, cache: cache, used: useClock))
        apply(scheduler.handle(.prefixCacheHolds(cachedPositions)))
    }

    private var devices: Int { engine.mesh.deviceCount }

    /// The device whose homed sequences (running, and kept in the prefix cache) reserve the
    /// fewest KV positions. (Under batch-sharded attention a sequence's KV lives on its home.)
    private func emptiestDevice() -> Int {
        (0..<devices).min { held(on: $0) < held(on: $1) }!
    }

    /// KV positions reserved by the sequences homed on `device`.
    private func held(on device: Int) -> Int {
        jobs.values.filter { $0.cache.home(devices: devices) == device }.reduce(0) { $0 + limits.footprint($1.job.prompt.count + $1.job.generation.maxTokens) }
            + prefixes.filter { $0.cache.home(devices: devices) == device }.reduce(0) { $0 + limits.footprint($1.tokens.count) }
    }

    private func evictOldest() {
        guard let oldest = prefixes.indices.min(by: { prefixes[$0].used < prefixes[$1].used }) else { return }
        prefixes.remove(at: oldest)   // its device caches go with the sequence
    }

    /// The client went away: the sequence is freed at the next step boundary.
    public func cancel(_ id: Int) {
        condition.lock()
        defer { condition.unlock() }
        apply(scheduler.handle(.cancelled(id)))
        updateGauges()
    }

    public func start() {
        let t = Thread { [self] in run() }
        t.name = "meshinfer-serve-loop"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Shutting down: new requests are refused (503).
    public func refuseNew() { condition.withLock { refusing = true } }

    /// Ends every request (finish reason "abort") and stops the loop after the step in flight.
    public func stop() {
        condition.lock()
        stopping = true
        prefixes.removeAll()
        for id in Array(jobs.keys) { apply(scheduler.handle(.cancelled(id))) }
        condition.broadcast()
        condition.unlock()
    }

    /// Waits (up to `timeout` seconds) for the loop thread to finish its step in flight and
    /// return, after `stop()` or a fatal failure; whether it did.
    public func waitUntilStopped(timeout: Double) -> Bool {
        guard thread != nil else { return true }
        return finished.wait(timeout: .now() + timeout) == .success
    }

    public var runningCount: Int { condition.withLock { scheduler.running.count } }
    public var waitingCount: Int { condition.withLock { scheduler.waiting.count } }

    // MARK: - the loop (its own thread)

    private func run() {
        defer { finished.signal() }
        while true {
            condition.lock()
            while pending == nil && !stopping { condition.wait() }
            guard let step = pending else { condition.unlock(); return }
            pending = nil
            // The step's inputs: prompt chunks, or the last sampled token.
            let now = Date()
            var copies: [(from: MeshSequence, to: MeshSequence, positions: Int)] = []
            for (id, _) in step.work {
                if let c = pendingCopies.removeValue(forKey: id), let r = jobs[id] { copies.append((c.from, r.cache, c.positions)) }
                if jobs[id]?.scheduled == nil {
                    jobs[id]?.scheduled = now
                    metrics.queued(now.timeIntervalSince(jobs[id]!.arrived))
                }
            }
            let inputs = step.work.map { id, work -> SequenceInput<MeshSequence> in
                let r = jobs[id]!
                switch work {
                case let .prefill(from, to): return SequenceInput(cache: r.cache, tokens: Array(r.job.prompt[from..<to]))
                case .decode: return SequenceInput(cache: r.cache, tokens: [r.completion.tokenIDs.last!])
                }
            }
            condition.unlock()

            let start = Date(), communicated = mesh?.communicationSeconds ?? 0
            let result = Result {
                for c in copies { try engine.copyPrefix(c.positions, from: c.from, to: c.to) }
                return try engine.forward(inputs)
            }
            let seconds = Date().timeIntervalSince(start)
            metrics.step(seconds: seconds, predicted: step.predictedSeconds, batch: step.work.count,
                         collectiveSeconds: mesh.map { $0.communicationSeconds - communicated })

            condition.lock()
            var finished: Set<Int> = []
            switch result {
            case let .failure(error) where !(error is EngineError):
                // The mesh is broken: nothing can run any more.
                for r in jobs.values { r.continuation.yield(.unavailable("the device mesh failed: \(error)")) }
                stopping = true
                for id in Array(jobs.keys) { apply(scheduler.handle(.cancelled(id))) }
                apply(scheduler.handle(.stepFinished(finished: [])))
                condition.unlock()
                onFatal?(error)
                return
            case let .failure(error):
                for (id, _) in step.work {
                    jobs[id]?.continuation.yield(.failed("\(error)"))
                    finished.insert(id)
                }
            case let .success(logits):
                let now = Date()
                for (slot, (id, work)) in step.work.enumerated() {
                    guard var r = jobs[id] else { continue }
                    if case let .prefill(_, to) = work, to < r.job.prompt.count { continue }   // more prompt to come
                    do {
                        let before = r.completion.logprobs.count
                        let text = try r.completion.accept(UnsafeBufferPointer(start: logits[slot].row(0), count: logits[slot].columns))
                        let probs = Array(r.completion.logprobs[before...])
                        if !text.isEmpty || !probs.isEmpty { r.continuation.yield(.text(text, logprobs: probs)) }
                        if let last = r.lastToken { metrics.interToken(now.timeIntervalSince(last)) } else {
                            metrics.firstToken(now.timeIntervalSince(r.arrived))
                            r.firstToken = now
                        }
                        r.lastToken = now
                        metrics.generated(1)
                    } catch {
                        r.continuation.yield(.failed("\(error)"))
                        finished.insert(id)
                    }
                    if let reason = r.completion.finishReason {
                        r.continuation.yield(.done(finishReason: reason, completionTokens: r.completion.tokenIDs.count))
                        metrics.finished(prompt: r.job.prompt.count, seconds: now.timeIntervalSince(r.arrived), success: true)
                        finished.insert(id)
                    }
                    jobs[id] = r
                }
            }
            apply(scheduler.handle(.stepFinished(finished: finished)))
            updateGauges()
            condition.unlock()
        }
    }

    /// Under the lock: carries out the scheduler's actions.
    private func apply(_ actions: [Scheduler.Action]) {
        for action in actions {
            switch action {
            case let .run(step):
                pending = step
                condition.signal()
            case let .release(id):
                // A sequence released before it finished was cancelled (or the server stops).
                pendingCopies[id] = nil
                if let r = jobs.removeValue(forKey: id) {
                    if r.completion.finishReason == nil {
                        r.continuation.yield(.done(finishReason: "abort", completionTokens: r.completion.tokenIDs.count))
                    }
                    r.continuation.finish()
                    log(id, r)
                    // What its KV holds: the prompt and every generated token but the last.
                    if !stopping { keep(Array((r.job.prompt + r.completion.tokenIDs).prefix(r.cache.count)), r.cache) }
                }
            case let .evictPrefixes(atLeast: positions):
                let target = cachedPositions - positions
                while cachedPositions > max(0, target), !prefixes.isEmpty { evictOldest() }
                apply(scheduler.handle(.prefixCacheHolds(cachedPositions)))
            case let .copyPrefix(from, to, positions):
                guard let source = jobs[from] else { break }
                pendingCopies[to] = (source.cache, positions)
            case .reject:
                break   // only at arrival, answered by `submit`
            }
        }
    }

    /// One structured line per request.
    private func log(_ id: Int, _ r: Running) {
        func ms(_ from: Date, _ to: Date?) -> Logger.MetadataValue { to.map { "\(Int((($0.timeIntervalSince(from)) * 1000).rounded()))" } ?? "-" }
        logger.info("request", metadata: [
            "id": "\(id)", "prompt_tokens": "\(r.job.prompt.count)", "completion_tokens": "\(r.completion.tokenIDs.count)",
            "cached_tokens": "\(r.cachedTokens)", "queue_ms": ms(r.arrived, r.scheduled), "ttft_ms": ms(r.arrived, r.firstToken),
            "duration_ms": ms(r.arrived, Date()), "finish_reason": "\(r.completion.finishReason ?? "abort")",
            "status": "\(r.completion.finishReason == nil ? "cancelled" : "ok")",
        ])
    }

    private func commonPrefix(_ a: [Int], _ b: [Int]) -> Int {
        var n = 0
        while n < min(a.count, b.count) && a[n] == b[n] { n += 1 }
        return n
    }

    private func updateGauges() {
        metrics.gauges(running: scheduler.running.count, waiting: scheduler.waiting.count,
                       kvUsage: Double(scheduler.reservedPositions) / Double(max(1, limits.kvPositions)), cachedPositions: cachedPositions)
    }
}
