import Foundation
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
}

/// The serving loop: the continuous-batching `Scheduler` (a pure state machine) driven on one
/// thread that runs its steps through the engine — every running sequence decodes one token
/// per step, prompts are prefilled in chunks within the step's token budget — and hands each
/// request its text as it becomes final. HTTP handlers submit and cancel from any thread.
public final class ServeLoop: @unchecked Sendable {
    public let engine: any ForwardEngine<MeshSequence>
    public let tokenizer: Tokenizer
    public let limits: Scheduler.Limits
    public let metrics: ServeMetrics

    private struct Running {
        var job: Job
        var completion: Completion
        var cache: MeshSequence
        var continuation: AsyncStream<JobEvent>.Continuation
        var arrived: Date
        var firstToken: Date?
        var lastToken: Date?
    }

    private let condition = NSCondition()
    private var scheduler: Scheduler
    private var jobs: [Int: Running] = [:]
    private var pending: Scheduler.Step?
    private var nextID = 0
    private var stopping = false
    private var refusing = false
    private var thread: Thread?

    public init(engine: any ForwardEngine<MeshSequence>, tokenizer: Tokenizer, limits: Scheduler.Limits, metrics: ServeMetrics) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.limits = limits
        self.metrics = metrics
        scheduler = Scheduler(limits: limits)
    }

    public enum Refusal: Sendable, Equatable {
        /// `maxQueue` requests wait already (HTTP 429).
        case queueFull
        /// More positions than a sequence or the KV budget has: it could never run (400).
        case tooLong
        /// The server is shutting down (503).
        case shuttingDown
    }

    public enum Submission: Sendable {
        case accepted(id: Int, events: AsyncStream<JobEvent>)
        case rejected(Refusal)
    }

    /// Queues a job (or rejects it: the queue is full, or it could never fit).
    public func submit(_ job: Job) -> Submission {
        condition.lock()
        defer { condition.unlock() }
        if stopping || refusing { return .rejected(.shuttingDown) }
        let id = nextID
        nextID += 1
        let actions = scheduler.handle(.arrived(.init(id: id, promptTokens: job.prompt.count, maxTokens: job.generation.maxTokens)))
        if case let .reject(_, why)? = actions.first { return .rejected(why == .queueFull ? .queueFull : .tooLong) }
        let (stream, continuation) = AsyncStream<JobEvent>.makeStream()
        var completion = Completion(job.generation, tokenizer: tokenizer)
        completion.logprobAlternatives = job.logprobs
        jobs[id] = Running(job: job, completion: completion, cache: engine.makeCache(limit: limits.context), continuation: continuation,
                           arrived: Date())
        apply(actions)
        updateGauges()
        return .accepted(id: id, events: stream)
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
        for id in Array(jobs.keys) { apply(scheduler.handle(.cancelled(id))) }
        condition.broadcast()
        condition.unlock()
    }

    public var runningCount: Int { condition.withLock { scheduler.running.count } }
    public var waitingCount: Int { condition.withLock { scheduler.waiting.count } }

    // MARK: - the loop (its own thread)

    private func run() {
        while true {
            condition.lock()
            while pending == nil && !stopping { condition.wait() }
            guard let step = pending else { condition.unlock(); return }
            pending = nil
            // The step's inputs: prompt chunks, or the last sampled token.
            let inputs = step.work.map { id, work -> SequenceInput<MeshSequence> in
                let r = jobs[id]!
                switch work {
                case let .prefill(from, to): return SequenceInput(cache: r.cache, tokens: Array(r.job.prompt[from..<to]))
                case .decode: return SequenceInput(cache: r.cache, tokens: [r.completion.tokenIDs.last!])
                }
            }
            condition.unlock()

            let start = Date()
            let result = Result { try engine.forward(inputs) }
            let seconds = Date().timeIntervalSince(start)
            metrics.step(seconds: seconds, batch: step.work.count, decodes: step.decodes, tokens: step.tokens)

            condition.lock()
            var finished: Set<Int> = []
            switch result {
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
                if let r = jobs.removeValue(forKey: id) {
                    if r.completion.finishReason == nil {
                        r.continuation.yield(.done(finishReason: "abort", completionTokens: r.completion.tokenIDs.count))
                    }
                    r.continuation.finish()
                }
            case .reject:
                break   // only at arrival, answered by `submit`
            }
        }
    }

    private func updateGauges() {
        metrics.gauges(running: scheduler.running.count, waiting: scheduler.waiting.count,
                       kvUsage: Double(scheduler.reservedPositions) / Double(max(1, limits.kvPositions)))
    }
}
