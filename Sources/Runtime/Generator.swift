import Foundation
import Tokenization

public struct GenerationRequest: Sendable {
    public var promptTokens: [Int]
    public var maxTokens: Int = 128
    public var sampling = SamplingParameters()
    public var stopStrings: [String] = []
    public var ignoreEOS = false
    /// Record the k highest raw logits at every generated position (0 = off).
    public var topLogits = 0
    public init(promptTokens: [Int]) { self.promptTokens = promptTokens }
}

public struct TokenLogit: Sendable, Codable, Equatable {
    public var id: Int
    public var logit: Float
}

public struct GenerationResult: Sendable {
    public var promptTokenIDs: [Int]
    public var tokenIDs: [Int] = []
    public var text = ""
    public var topLogits: [[TokenLogit]] = []
    /// "stop" (end-of-generation token or stop string) or "length" (max tokens).
    public var finishReason = "length"
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
}

/// Prompt → tokens → text for a batch of requests, streaming each request's text as it
/// becomes final (never part of a UTF-8 character, never a prefix of a stop string).
public final class Generator<Sequence: SequenceState>: @unchecked Sendable {
    public let engine: any ForwardEngine<Sequence>
    public let tokenizer: Tokenizer

    public init(engine: any ForwardEngine<Sequence>, tokenizer: Tokenizer) {
        self.engine = engine
        self.tokenizer = tokenizer
    }

    /// Generates for all requests as one batch. `caches[i]` (optional) continues a sequence;
    /// the request's prompt tokens are appended to it. `onText(i, chunk)` streams output.
    public func generate(_ requests: [GenerationRequest], caches: [Sequence]? = nil,
                         onText: (Int, String) -> Void = { _, _ in }) throws -> [GenerationResult] {
        let caches = caches ?? requests.map { _ in engine.makeCache() }
        precondition(caches.count == requests.count)
        var results = requests.map { GenerationResult(promptTokenIDs: $0.promptTokens) }
        var completions = requests.map { Completion($0, tokenizer: tokenizer) }
        var active = Array(requests.indices).filter { requests[$0].maxTokens > 0 }
        var pending = requests.map(\.promptTokens)   // tokens to feed next, per request
        var firstStep = true
        while !active.isEmpty {
            let start = Date()
            let logits = try engine.forward(active.map { SequenceInput(cache: caches[$0], tokens: pending[$0]) })
            let elapsed = Date().timeIntervalSince(start)
            var stillActive: [Int] = []
            for (slot, i) in active.enumerated() {
                if firstStep { results[i].prefillSeconds = elapsed } else { results[i].decodeSeconds += elapsed }
                let chunk = try completions[i].accept(UnsafeBufferPointer(start: logits[slot].row(0), count: logits[slot].columns))
                if !chunk.isEmpty { onText(i, chunk) }
                if completions[i].finishReason == nil {
                    pending[i] = [completions[i].tokenIDs.last!]
                    stillActive.append(i)
                }
            }
            active = stillActive
            firstStep = false
        }
        for i in requests.indices {
            results[i].tokenIDs = completions[i].tokenIDs
            results[i].topLogits = completions[i].topLogits
            results[i].text = completions[i].text
            results[i].finishReason = completions[i].finishReason ?? "length"
        }
        return results
    }
}

/// One sequence's generation, token by token: sampling with its history, end-of-generation
/// tokens, stop strings, `maxTokens`, and the text that is final (never part of a UTF-8
/// character or a possible stop string). Shared by `Generator` and the server's step loop.
public struct Completion: Sendable {
    public let request: GenerationRequest
    private var sampler: Sampler
    private var history: [Int]
    private var stream: StreamState
    private let endOfGeneration: Set<Int>
    public private(set) var tokenIDs: [Int] = []
    /// The k highest raw logits at every generated position (`request.topLogits`).
    public private(set) var topLogits: [[TokenLogit]] = []
    /// Each generated token's log-probability and the `logprobs` most likely alternatives'.
    public private(set) var logprobs: [TokenLogprobs] = []
    /// "stop" (end of generation or a stop string) or "length"; nil while generating.
    public private(set) var finishReason: String?
    /// Alternatives to record per position for `logprobs` (nil: none).
    public var logprobAlternatives: Int?

    public init(_ request: GenerationRequest, tokenizer: Tokenizer) {
        self.request = request
        sampler = Sampler(request.sampling)
        history = request.promptTokens
        stream = StreamState(tokenizer: tokenizer, stops: request.stopStrings)
        endOfGeneration = tokenizer.endOfGenerationTokenIDs
        if request.maxTokens <= 0 { finishReason = "length" }
    }

    /// Everything decoded so far (cut at a stop string once hit).
    public var text: String { stream.text }

    /// Samples the next token from the logits of the last fed position; returns the text that
    /// became final (the rest of it too, when this token ends the sequence).
    public mutating func accept(_ row: UnsafeBufferPointer<Float>) throws -> String {
        precondition(finishReason == nil, "accept after the sequence finished")
        if request.topLogits > 0 {
            topLogits.append(Runtime.topLogits(row, k: request.topLogits).map { TokenLogit(id: $0.id, logit: $0.logit) })
        }
        let token = sampler.sample(row, history: history)
        if let k = logprobAlternatives { logprobs.append(TokenLogprobs(row, token: token, alternatives: k)) }
        history.append(token)
        tokenIDs.append(token)
        var chunk = ""
        if endOfGeneration.contains(token) && !request.ignoreEOS {
            finishReason = "stop"
        } else {
            let (text, hitStop) = try stream.append(token)
            chunk = text
            if hitStop { finishReason = "stop" }
        }
        if finishReason == nil && tokenIDs.count >= request.maxTokens { finishReason = "length" }
        if finishReason != nil { chunk += stream.finish() }
        return chunk
    }
}

/// A sampled token's log-probability under the raw logits (log-softmax), and the most likely
/// tokens' (OpenAI `logprobs`).
public struct TokenLogprobs: Sendable, Equatable {
    public var token: Int
    public var logprob: Float
    public var top: [(id: Int, logprob: Float)]
    public static func == (a: TokenLogprobs, b: TokenLogprobs) -> Bool {
        a.token == b.token && a.logprob == b.logprob && a.top.map(\.id) == b.top.map(\.id) && a.top.map(\.logprob) == b.top.map(\.logprob)
    }

    init(_ row: UnsafeBufferPointer<Float>, token: Int, alternatives k: Int) {
        var m = -Float.infinity
        for v in row { m = max(m, v) }
        var sum = 0.0
        for v in row { sum += Double(expf(v - m)) }
        let logZ = m + Float(log(sum))
        self.token = token
        logprob = row[token] - logZ
        top = k > 0 ? Runtime.topLogits(row, k: k).map { ($0.id, $0.logit - logZ) } : []
    }
}

/// Incremental detokenization with stop strings: text is released only when it can no
/// longer become part of a stop string.
struct StreamState: Sendable {
    var decoder: StreamingDecoder
    let stops: [String]
    private(set) var text = ""   // everything decoded (cut at a stop string once hit)
    private var released = 0     // characters of `text` already handed out
    private var stopped = false

    init(tokenizer: Tokenizer, stops: [String]) {
        decoder = StreamingDecoder(tokenizer: tokenizer)
        self.stops = stops.filter { !$0.isEmpty }
    }

    /// Returns the newly final text and whether a stop string was hit.
    mutating func append(_ token: Int) throws -> (String, Bool) {
        text += try decoder.append(token)
        for s in stops {
            if let r = text.range(of: s) {
                text = String(text[..<r.lowerBound])
                stopped = true
                return (release(upTo: text.count), true)
            }
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        var hold = 0
        for s in stops {
            for n in stride(from: min(s.count - 1, text.count), to: 0, by: -1)
            where text.hasSuffix(String(s.prefix(n))) {
                hold = max(hold, n)
                break
            }
        }
        return (release(upTo: text.count - hold), false)
    }

    mutating func finish() -> String {
        if !stopped { text += decoder.finish() }
        return release(upTo: text.count)
    }

    private mutating func release(upTo end: Int) -> String {
        guard end > released else { return "" }
        let chunk = String(text.dropFirst(released).prefix(end - released))
        released = end
        return chunk
    }
}
