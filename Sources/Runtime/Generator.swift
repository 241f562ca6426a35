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
        var states = requests.map { StreamState(tokenizer: tokenizer, stops: $0.stopStrings) }
        var samplers = requests.map { Sampler($0.sampling) }
        var history = requests.map(\.promptTokens)
        var active = Array(requests.indices).filter { requests[$0].maxTokens > 0 }
        let eog = tokenizer.endOfGenerationTokenIDs

        var pending = requests.map(\.promptTokens)   // tokens to feed next, per request
        var firstStep = true
        while !active.isEmpty {
            let start = Date()
            let logits = try engine.forward(active.map { SequenceInput(cache: caches[$0], tokens: pending[$0]) })
            let elapsed = Date().timeIntervalSince(start)
            var stillActive: [Int] = []
            for (slot, i) in active.enumerated() {
                if firstStep { results[i].prefillSeconds = elapsed } else { results[i].decodeSeconds += elapsed }
                let row = UnsafeBufferPointer(start: logits[slot].row(0), count: logits[slot].columns)
                if requests[i].topLogits > 0 {
                    results[i].topLogits.append(topLogits(row, k: requests[i].topLogits).map { TokenLogit(id: $0.id, logit: $0.logit) })
                }
                let token = samplers[i].sample(row, history: history[i])
                history[i].append(token)
                results[i].tokenIDs.append(token)
                var done = false
                if eog.contains(token) && !requests[i].ignoreEOS {
                    done = true
                    results[i].finishReason = "stop"
                } else {
                    let (chunk, hitStop) = try states[i].append(token)
                    if !chunk.isEmpty { onText(i, chunk) }
                    if hitStop { done = true; results[i].finishReason = "stop" }
                }
                if results[i].tokenIDs.count >= requests[i].maxTokens { done = true }
                if done {
                    let rest = states[i].finish()
                    if !rest.isEmpty { onText(i, rest) }
                    results[i].text = states[i].text
                } else {
                    pending[i] = [token]
                    stillActive.append(i)
                }
            }
            active = stillActive
            firstStep = false
        }
        for i in requests.indices where requests[i].maxTokens <= 0 { results[i].finishReason = "length" }
        return results
    }
}

/// Incremental detokenization with stop strings: text is released only when it can no
/// longer become part of a stop string.
struct StreamState {
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
