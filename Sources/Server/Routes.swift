import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Runtime
import ServiceLifecycle
import Tokenization

/// How `meshinfer serve` answers: its flags that are not the engine's.
public struct ServeOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var apiKey: String?
    public var servedModelName = "model"
    public var maxBodyBytes = 2 << 20
    public var shutdownTimeout = 10.0
    /// Seconds a stream may stay silent before it gets a `: ping` comment line.
    public var pingSeconds = 5.0
    public init() {}
}

/// The model once loaded: `/health` answers 503 until it is set, 200 after.
public final class ModelSlot: @unchecked Sendable {
    private let lock = NSLock()
    private var loop: ServeLoop?
    private var failure: String?
    public init() {}
    public func set(_ loop: ServeLoop) { lock.withLock { self.loop = loop } }
    /// The model cannot serve (it failed to load, or its mesh broke): 503 from now on.
    public func fail(_ message: String) { lock.withLock { failure = message } }
    var current: ServeLoop? { lock.withLock { failure == nil ? loop : nil } }
    var error: String? { lock.withLock { failure } }

    /// Shutting down: no new requests; running ones get up to `timeout` seconds, then end
    /// with finish reason "abort".
    public func drain(timeout: Double) async {
        guard let loop = current else { return }
        fail("the server is shutting down")   // /health and new requests: 503
        loop.refuseNew()
        let deadline = Date().addingTimeInterval(timeout)
        while loop.runningCount + loop.waitingCount > 0 && Date() < deadline { try? await Task.sleep(nanoseconds: 50_000_000) }
        loop.stop()
        // The step in flight ends first: after this only the caller talks to the engine (under
        // MPI, sends the control messages that end the session).
        _ = await Task.detached { loop.waitUntilStopped(timeout: 60) }.value
    }
}

/// OpenAI-compatible routes over the serving loop (issue 11; wire format after OpenAI's API, as
/// llama-server and vLLM serve it: ../shared/research/server.md).
public struct OpenAIServer: Sendable {
    public let options: ServeOptions
    public let slot: ModelSlot
    public let metrics: ServeMetrics
    let created = Int(Date().timeIntervalSince1970)

    public init(options: ServeOptions, slot: ModelSlot, metrics: ServeMetrics) {
        self.options = options
        self.slot = slot
        self.metrics = metrics
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: ErrorMiddleware())
        router.add(middleware: AuthMiddleware(key: options.apiKey))
        router.get("health") { _, _ in
            _ = try ready()   // 503 while loading, or when loading failed
            return jsonResponse(["status": "ok"])
        }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: metrics.text())))
        }
        router.get("v1/models") { _, _ in
            jsonResponse(["object": "list", "data": [["id": options.servedModelName, "object": "model", "created": created, "owned_by": "meshinfer"]]])
        }
        router.post("tokenize") { request, _ in
            let loop = try ready()
            let f = try await fields(request)
            guard let text = try f.string("content") ?? f.string("prompt") else { throw OpenAIError.badRequest("'content' is required", param: "content") }
            let special = try f.bool("add_special") ?? true
            let tokens = loop.tokenizer.encode(text, addSpecial: special)
            if try f.bool("with_pieces") == true {
                return jsonResponse(["tokens": tokens.map { ["id": $0, "piece": String(decoding: (try? loop.tokenizer.pieceBytes($0)) ?? [], as: UTF8.self)] as [String: Any] }])
            }
            return jsonResponse(["tokens": tokens])
        }
        router.post("detokenize") { request, _ in
            let loop = try ready()
            let f = try await fields(request)
            guard let tokens = f.body["tokens"] as? [Any], let ids = tokens as? [Int] else {
                throw OpenAIError.badRequest("'tokens' must be a list of token ids", param: "tokens")
            }
            try checkTokens(ids, loop)
            return jsonResponse(["content": try loop.tokenizer.decode(ids)])
        }
        router.post("v1/chat/completions") { request, _ in try await complete(request, chat: true) }
        router.post("v1/completions") { request, _ in try await complete(request, chat: false) }
        return router
    }

    // MARK: - completions

    func complete(_ request: Request, chat: Bool) async throws -> Response {
        let loop = try ready()
        let f = try await fields(request)
        if let model = try f.string("model"), model != options.servedModelName {
            throw OpenAIError(status: 404, message: "the model '\(model)' does not exist; this server serves '\(options.servedModelName)'",
                              type: "invalid_request_error", param: "model", code: "model_not_found")
        }
        let settings = try GenerationSettings(f, chat: chat, vocabularySize: loop.engine.config.vocabularySize)
        let prompts = chat ? [try chatPrompt(f, loop)] : try completionPrompts(f, loop)
        // Tokens each prompt may generate: as asked, else the rest of the context (chat) or 16.
        let maxTokens = prompts.map { settings.maxTokens ?? (chat ? loop.limits.context - $0.count : 16) }
        for (p, maxTokens) in zip(prompts, maxTokens) {
            guard !p.isEmpty else { throw OpenAIError.badRequest("the prompt is empty", param: chat ? "messages" : "prompt") }
            if p.count + maxTokens > loop.limits.context {
                throw OpenAIError.badRequest("this model's context is \(loop.limits.context) tokens; the prompt has \(p.count) and up to \(maxTokens) more were asked for",
                                             param: chat ? "messages" : "prompt")
            }
        }
        // One sequence per (prompt, choice), the choices of a prompt sharing its prefill; every job
        // is accepted before the response starts.
        var submitted: [(index: Int, prompt: Int, id: Int, events: AsyncStream<JobEvent>)] = []
        var cachedByPrompt = [Int](repeating: 0, count: prompts.count)
        for (p, prompt) in prompts.enumerated() {
            var first: Int?   // the first choice: the others share its prefill
            for c in 0..<settings.n {
                var g = GenerationRequest(promptTokens: prompt)
                g.sampling = settings.sampling
                g.sampling.seed &+= UInt64(c)
                g.maxTokens = maxTokens[p]
                g.stopStrings = settings.stops
                switch loop.submit(Job(prompt: prompt, generation: g, logprobs: settings.logprobs), sharesPrefillWith: first) {
                case let .accepted(id, cached, events):
                    first = first ?? id
                    submitted.append((submitted.count, p, id, events))
                    cachedByPrompt[p] = max(cachedByPrompt[p], cached)
                case let .rejected(why):
                    for s in submitted { loop.cancel(s.id) }
                    switch why {
                    case .queueFull:
                        throw OpenAIError(status: 429, message: "the server's queue is full; retry later", type: "rate_limit_error", param: nil, code: "queue_full")
                    case .tooLong:
                        throw OpenAIError.badRequest("the request needs more KV memory than this server has (--kv-memory)", param: nil)
                    case .shuttingDown:
                        throw OpenAIError(status: 503, message: "the server is shutting down", type: "unavailable_error", param: nil, code: nil)
                    }
                }
            }
        }
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let created = Int(Date().timeIntervalSince1970)
        let promptTokens = prompts.reduce(0) { $0 + $1.count }
        let cachedTokens = cachedByPrompt.reduce(0, +)
        let object = chat ? "chat.completion" : "text_completion"
        let model = options.servedModelName
        let tokenizer = loop.tokenizer

        @Sendable func logprobsJSON(_ probs: [TokenLogprobs]) -> Any {
            if chat {
                return ["content": probs.map { p -> [String: Any] in
                    ["token": piece(p.token, tokenizer), "logprob": Double(p.logprob), "bytes": bytes(p.token, tokenizer),
                     "top_logprobs": p.top.map { ["token": piece($0.id, tokenizer), "logprob": Double($0.logprob), "bytes": bytes($0.id, tokenizer)] as [String: Any] }]
                }]
            }
            return ["tokens": probs.map { piece($0.token, tokenizer) }, "token_logprobs": probs.map { Double($0.logprob) },
                    "top_logprobs": probs.map { p in Dictionary(p.top.map { (piece($0.id, tokenizer), Double($0.logprob)) }, uniquingKeysWith: max) },
                    "text_offset": [Int]()]
        }

        if !settings.stream {
            // Collect every choice; a client gone before the end frees nothing early here (the
            // body has not started), as with llama-server's non-streaming requests.
            var choices: [[String: Any]] = []
            var completionTokens = 0
            for s in submitted {
                var text = "", probs: [TokenLogprobs] = [], reason = "length"
                for await event in s.events {
                    switch event {
                    case let .text(t, p): text += t; probs += p
                    case let .done(r, n): reason = r; completionTokens += n
                    case let .failed(message): throw OpenAIError(status: 500, message: message, type: "server_error", param: nil, code: nil)
                    case let .unavailable(message):
                        throw OpenAIError(status: 503, message: message, type: "unavailable_error", param: nil, code: nil)
                    }
                }
                var choice: [String: Any] = ["index": s.index, "finish_reason": reason, "logprobs": settings.logprobs == nil ? NSNull() : logprobsJSON(probs)]
                if chat { choice["message"] = ["role": "assistant", "content": text] } else { choice["text"] = text }
                choices.append(choice)
            }
            return jsonResponse(["id": id, "object": object, "created": created, "model": model, "choices": choices,
                         "usage": usage(promptTokens, completionTokens, cached: cachedTokens)])
        }

        let chunkObject = chat ? "chat.completion.chunk" : "text_completion"
        let streams = submitted
        let includeUsage = settings.includeUsage, wantsLogprobs = settings.logprobs != nil
        let pingSeconds = options.pingSeconds
        let body = ResponseBody { writer in
            var completionTokens = 0
            func send(_ object: [String: Any]) async throws {
                let data = try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
                try await writer.write(ByteBuffer(string: "data: " + String(decoding: data, as: UTF8.self) + "\n\n"))
            }
            func chunk(_ index: Int, _ delta: [String: Any], text: String, finish: String?, probs: [TokenLogprobs]) -> [String: Any] {
                var choice: [String: Any] = ["index": index, "finish_reason": finish ?? NSNull(),
                                             "logprobs": wantsLogprobs && !probs.isEmpty ? logprobsJSON(probs) : NSNull()]
                if chat { choice["delta"] = delta } else { choice["text"] = text }
                return ["id": id, "object": chunkObject, "created": created, "model": model, "choices": [choice]]
            }
            // Every choice's events as they come (choices interleave, each in the batch), and a
            // tick every `pingSeconds`: a quiet stream (queued, or a long prefill) gets a
            // `: ping` comment — and a client gone is noticed when it cannot be written to.
            let items = MergedEvents(streams.map { ($0.index, $0.events) }, tick: pingSeconds)
            defer { items.cancel() }
            var lastWrite = Date()
            do {
                if chat {
                    for s in streams { try await send(chunk(s.index, ["role": "assistant", "content": ""], text: "", finish: nil, probs: [])) }
                }
                for await item in items.stream {
                    switch item {
                    case .tick:
                        guard Date().timeIntervalSince(lastWrite) >= pingSeconds * 0.9 else { continue }
                        try await writer.write(ByteBuffer(string: ": ping\n\n"))
                    case let .event(index, .text(t, p)):
                        try await send(chunk(index, ["content": t], text: t, finish: nil, probs: p))
                    case let .event(index, .done(reason, n)):
                        completionTokens += n
                        try await send(chunk(index, [:], text: "", finish: reason, probs: []))
                    case let .event(_, .failed(message)):
                        try await send(["error": ["message": message, "type": "server_error", "param": NSNull(), "code": NSNull()]])
                    case let .event(_, .unavailable(message)):
                        try await send(["error": ["message": message, "type": "unavailable_error", "param": NSNull(), "code": NSNull()]])
                    }
                    lastWrite = Date()
                }
                if includeUsage {
                    try await send(["id": id, "object": chunkObject, "created": created, "model": model, "choices": [[String: Any]](),
                                    "usage": usage(promptTokens, completionTokens, cached: cachedTokens)])
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // The client went away (a write failed): free its sequences at the next step.
                for s in streams { loop.cancel(s.id) }
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    func usage(_ prompt: Int, _ completion: Int, cached: Int) -> [String: Any] {
        ["prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
         "prompt_tokens_details": ["cached_tokens": cached]]
    }

    /// The chat template applied to `messages` (system / user / assistant; content a string or
    /// a list of text parts).
    func chatPrompt(_ f: Fields, _ loop: ServeLoop) throws -> [Int] {
        guard let list = f.body["messages"] as? [Any], !list.isEmpty else {
            throw OpenAIError.badRequest("'messages' must be a non-empty list", param: "messages")
        }
        var messages: [ChatMessage] = []
        for (i, item) in list.enumerated() {
            guard let m = item as? [String: Any], let role = m["role"] as? String else {
                throw OpenAIError.badRequest("messages[\(i)] must be an object with a 'role'", param: "messages")
            }
            guard ["system", "user", "assistant", "developer"].contains(role) else {
                throw OpenAIError.badRequest("messages[\(i)].role '\(role)' is not supported (system, user, assistant)", param: "messages")
            }
            var content = ""
            if let s = m["content"] as? String {
                content = s
            } else if let parts = m["content"] as? [Any] {
                for part in parts {
                    guard let p = part as? [String: Any], let type = p["type"] as? String else {
                        throw OpenAIError.badRequest("messages[\(i)].content parts must be objects with a 'type'", param: "messages")
                    }
                    guard type == "text", let text = p["text"] as? String else {
                        throw OpenAIError.badRequest("messages[\(i)]: content of type '\(type)' is not supported (text only)", param: "messages")
                    }
                    content += text
                }
            } else if !(m["content"] is NSNull && role == "assistant") {
                throw OpenAIError.badRequest("messages[\(i)].content must be a string or a list of text parts", param: "messages")
            }
            messages.append(ChatMessage(role: role == "developer" ? "system" : role, content: content))
        }
        return loop.tokenizer.encode(loop.tokenizer.chatTemplate.render(messages, addGenerationPrompt: true))
    }

    /// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
    func completionPrompts(_ f: Fields, _ loop: ServeLoop) throws -> [[Int]] {
        guard f.has("prompt") else { throw OpenAIError.badRequest("'prompt' is required", param: "prompt") }
        let value = f.body["prompt"]!
        if let s = value as? String { return [loop.tokenizer.encode(s)] }
        guard let list = value as? [Any], !list.isEmpty else {
            throw OpenAIError.badRequest("'prompt' must be a string, a list of strings or a list of token ids", param: "prompt")
        }
        if let strings = list as? [String] { return strings.map { loop.tokenizer.encode($0) } }
        if list.allSatisfy({ isInteger($0) }) {
            let ids = list.map { ($0 as! NSNumber).intValue }
            try checkTokens(ids, loop)
            return [ids]
        }
        if let lists = list as? [[Any]], lists.allSatisfy({ $0.allSatisfy(isInteger) }) {
            let all = lists.map { $0.map { ($0 as! NSNumber).intValue } }
            for ids in all { try checkTokens(ids, loop) }
            return all
        }
        throw OpenAIError.badRequest("'prompt' must be a string, a list of strings or a list of token ids", param: "prompt")
    }

    func checkTokens(_ ids: [Int], _ loop: ServeLoop) throws {
        let V = loop.engine.config.vocabularySize
        if let bad = ids.first(where: { $0 < 0 || $0 >= V }) {
            throw OpenAIError.badRequest("token id \(bad) is outside the vocabulary (0..<\(V))", param: "tokens")
        }
    }

    func ready() throws -> ServeLoop {
        guard let loop = slot.current else {
            throw OpenAIError(status: 503, message: slot.error ?? "the model is loading; retry shortly",
                              type: "unavailable_error", param: nil, code: nil)
        }
        return loop
    }

    func fields(_ request: Request) async throws -> Fields {
        var request = request
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: options.maxBodyBytes) } catch is NIOTooManyBytesError {
            throw OpenAIError(status: 413, message: "the request body is larger than \(options.maxBodyBytes) bytes", type: "invalid_request_error",
                              param: nil, code: "request_too_large")
        }
        return try Fields(Data(buffer.readableBytesView))
    }
}

/// The events of a response's choices merged into one stream, with a `tick` every `tick`
/// seconds; it ends when every choice's events have.
final class MergedEvents: Sendable {
    enum Item: Sendable {
        case event(Int, JobEvent)
        case tick
    }
    let stream: AsyncStream<Item>
    private let tasks: [Task<Void, Never>]

    init(_ choices: [(index: Int, events: AsyncStream<JobEvent>)], tick: Double) {
        let (stream, sink) = AsyncStream<Item>.makeStream()
        self.stream = stream
        let feeders = choices.map { choice in
            Task { for await e in choice.events { sink.yield(.event(choice.index, e)) } }
        }
        let ticker = Task {
            while (try? await Task.sleep(nanoseconds: UInt64(tick * 1e9))) != nil { sink.yield(.tick) }
        }
        let closer = Task {
            for f in feeders { await f.value }
            ticker.cancel()
            sink.finish()
        }
        tasks = feeders + [ticker, closer]
    }

    /// Stops ticking and forwarding (the response is over, or its client gone).
    func cancel() { for t in tasks { t.cancel() } }
}

private func isInteger(_ v: Any) -> Bool {
    guard let n = v as? NSNumber, !isBoolean(n) else { return false }
    return Int(exactly: n.doubleValue) != nil
}

private func piece(_ id: Int, _ t: Tokenizer) -> String { (try? t.decode([id])) ?? "" }
private func bytes(_ id: Int, _ t: Tokenizer) -> [Int] { ((try? t.pieceBytes(id)) ?? []).map(Int.init) }

func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

extension OpenAIError {
    var response: Response {
        var r = jsonResponse(json, status: HTTPResponse.Status(code: status))
        if status == 429 { r.headers[HTTPField.Name("Retry-After")!] = "1" }
        return r
    }
}

/// Every error becomes OpenAI's error JSON: ours with their status, the router's (an unknown
/// route) as 404, anything else as 500 — which a client error never is.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as OpenAIError {
            return e.response
        } catch let e as HTTPError {
            let status = Int(e.status.code)
            let message = status == 404 ? "no route \(request.method) \(request.uri.path)" : (e.body ?? e.status.reasonPhrase)
            return OpenAIError(status: status, message: message, type: status == 404 ? "not_found_error" : "invalid_request_error",
                               param: nil, code: nil).response
        } catch {
            context.logger.error("internal error: \(error)")
            return OpenAIError(status: 500, message: "internal error: \(error)", type: "server_error", param: nil, code: nil).response
        }
    }
}

/// `--api-key`: `Authorization: Bearer KEY` (or `X-Api-Key: KEY`) on every route but `/health`.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let key: String?
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let key, request.uri.path != "/health" else { return try await next(request, context) }
        let bearer = request.headers[.authorization].map { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : $0 }
        let given = bearer ?? request.headers[HTTPField.Name("X-Api-Key")!]
        guard given == key else {
            throw OpenAIError(status: 401, message: "invalid or missing API key (Authorization: Bearer KEY)", type: "authentication_error",
                              param: nil, code: "invalid_api_key")
        }
        return try await next(request, context)
    }
}
