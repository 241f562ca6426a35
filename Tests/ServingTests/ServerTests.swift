import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Hummingbird
import NIOCore
import Runtime
import Server
import Serving
import Testing

let serverModelPath: String? = {
    let path = ProcessInfo.processInfo.environment["MESHINFER_MODEL"] ?? ModelStore().defaultModelPath
    return FileManager.default.fileExists(atPath: path) ? path : nil
}()

/// The HTTP routes of `meshinfer serve`, on a live server in this process, on the default model:
/// every endpoint, the OpenAI error shapes and statuses, and greedy output against llama.cpp's.
@Suite(.enabled(if: serverModelPath != nil, "default model absent (scripts/test.sh fetches it)"), .serialized)
struct ServerTests {
    static let model: LoadedModel = try! LoadedModel(path: serverModelPath!, format: .f32, threads: 2)
    static let loop: ServeLoop = {
        let l = ServeLoop(engine: model.engine, tokenizer: model.tokenizer,
                          limits: .init(maxBatch: 4, maxQueue: 8, kvPositions: 8 * 512, context: 512, stepTokens: 64), metrics: ServeMetrics())
        l.start()
        return l
    }()

    /// A response: status, headers and body.
    struct Reply {
        var status: Int
        var headers: [AnyHashable: Any]
        var body: Data
        var object: [String: Any] { (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:] }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// A client of a live server on an ephemeral port.
    struct Client {
        let base: URL
        func get(_ path: String, headers: [String: String] = [:]) async throws -> Reply { try await send("GET", path, nil, headers) }
        func post(_ path: String, _ body: String, headers: [String: String] = [:]) async throws -> Reply { try await send("POST", path, body, headers) }
        func send(_ method: String, _ path: String, _ body: String?, _ headers: [String: String]) async throws -> Reply {
            var request = URLRequest(url: base.appendingPathComponent(path))
            request.httpMethod = method
            request.httpBody = body.map { Data($0.utf8) }
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
            let (data, response) = try await URLSession.shared.data(for: request)
            let http = response as! HTTPURLResponse
            return Reply(status: http.statusCode, headers: http.allHeaderFields, body: data)
        }
    }

    final class Port: @unchecked Sendable {
        let lock = NSLock()
        var value: Int?
    }

    func withServer(apiKey: String? = nil, loaded: Bool = true, maxBody: Int = 1 << 16, _ test: (Client) async throws -> Void) async throws {
        var options = ServeOptions()
        options.apiKey = apiKey
        options.servedModelName = "smol"
        options.maxBodyBytes = maxBody
        let slot = ModelSlot()
        if loaded { slot.set(Self.loop) }
        let port = Port()
        let app = Application(router: OpenAIServer(options: options, slot: slot, metrics: Self.loop.metrics).router(),
                              configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in port.lock.withLock { port.value = channel.localAddress?.port } })
        let server = Task { try await app.run() }
        defer { server.cancel() }
        // A hang bound, not a timing: the tests run side by side on 2 cores, and long synchronous
        // tests (real-model perplexity) can hold the task pool's threads for tens of seconds.
        let deadline = Date().addingTimeInterval(300)
        while port.lock.withLock({ port.value }) == nil && Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        let p = try #require(port.lock.withLock { port.value }, "the server did not start")
        try await test(Client(base: URL(string: "http://127.0.0.1:\(p)")!))
    }

    @Test func healthModelsAndLoading() async throws {
        try await withServer { client in
            let health = try await client.get("health")
            #expect(health.status == 200 && health.object["status"] as? String == "ok")
            let models = try await client.get("v1/models").object
            #expect(((models["data"] as? [[String: Any]])?.first?["id"]) as? String == "smol")
        }
        try await withServer(loaded: false) { client in
            let health = try await client.get("health"), completion = try await client.post("v1/completions", #"{"prompt":"hi"}"#)
            #expect(health.status == 503 && completion.status == 503)
        }
    }

    /// Greedy f32 text from the server equals llama.cpp's exact-f32 continuation of the
    /// reference prompt (up to its first near-tie), the prompt sent as token ids.
    @Test func greedyCompletionEqualsLlamaCpp() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let data = try Data(contentsOf: root.deletingLastPathComponent().appendingPathComponent("shared/reference/smollm2-135m-reference.json"))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let prompt = try #require((json["prompts"] as? [[String: Any]])?.first { $0["id"] as? String == "english" })
        let ref = try #require(((prompt["references"] as? [String: Any])?["F32_exact"]) as? [String: Any])
        let expected = try #require(ref["generated_ids"] as? [Int])
        let steps = try #require(ref["top5_every_step"] as? [[[Double]]])
        let nearTie = steps.firstIndex { $0[0][1] - $0[1][1] < 0.05 } ?? expected.count
        let ids = try #require(prompt["prompt_token_ids"] as? [Int])
        try await withServer { client in
            let body = #"{"prompt": \#(ids), "max_tokens": \#(expected.count), "temperature": 0}"#
            let r = try await client.post("v1/completions", body)
            #expect(r.status == 200)
            let text = ((r.object["choices"] as? [[String: Any]])?.first?["text"]) as? String ?? ""
            let want = try Self.model.tokenizer.decode(Array(expected.prefix(nearTie)))
            #expect(text.hasPrefix(want), "got \(text.debugDescription), llama.cpp \(want.debugDescription)")
            #expect(nearTie >= 8)
        }
    }

    /// The same prompt again reuses the first run's KV from the prefix cache (all but the last
    /// prompt token: that one is fed for its logits) and gives the same text at temperature 0.
    @Test func repeatedPromptComesFromThePrefixCache() async throws {
        try await withServer { client in
            let ids = Self.model.tokenizer.encode("The three primary colours are red, yellow and")
            let body = #"{"prompt": \#(ids), "max_tokens": 12, "temperature": 0}"#
            let first = try await client.post("v1/completions", body).object
            let second = try await client.post("v1/completions", body).object
            func cached(_ o: [String: Any]) -> Int? { ((o["usage"] as? [String: Any])?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int }
            func text(_ o: [String: Any]) -> String? { ((o["choices"] as? [[String: Any]])?.first?["text"]) as? String }
            #expect(cached(second) == ids.count - 1, "\(second)")
            #expect(text(first) != nil && text(first) == text(second))
        }
    }

    @Test func errorsHaveOpenAIShapeAndStatus() async throws {
        try await withServer { client in
            let cases: [(String, String, Int, String?)] = [
                ("/v1/chat/completions", "{bad", 400, nil),
                ("/v1/chat/completions", "[1]", 400, nil),
                ("/v1/chat/completions", #"{"messages":"hi"}"#, 400, "messages"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#, 400, "temperature"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#, 400, "max_tokens"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"n":0}"#, 400, "n"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#, 400, "response_format"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#, 400, "messages"),
                ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}"#, 400, "messages"),
                ("/v1/chat/completions", #"{"model":"other","messages":[{"role":"user","content":"hi"}]}"#, 404, "model"),
                ("/v1/completions", #"{"prompt":[1, 2, 999999]}"#, 400, "tokens"),
                ("/v1/completions", #"{"prompt":"hi","echo":true}"#, 400, "echo"),
                ("/v1/completions", #"{"prompt":"hi","logit_bias":{"abc":1}}"#, 400, "logit_bias"),
                ("/detokenize", #"{"tokens":[-1]}"#, 400, "tokens"),
                ("/nowhere", "{}", 404, nil),
            ]
            for (uri, body, status, param) in cases {
                let r = try await client.post(String(uri.dropFirst()), body)
                let error = r.object["error"] as? [String: Any]
                #expect(r.status == status, "\(uri) \(body): \(r.status)")
                #expect(error?["message"] is String && error?["type"] is String, "\(uri) \(body)")
                if let param { #expect(error?["param"] as? String == param, "\(uri) \(body): \(error ?? [:])") }
            }
        }
        try await withServer(maxBody: 2048) { client in
            let big = #"{"prompt":""# + String(repeating: "a", count: 10_000) + #""}"#
            let r = try await client.post("v1/completions", big)
            #expect(r.status == 413 && (r.object["error"] as? [String: Any])?["code"] as? String == "request_too_large")
        }
    }

    @Test func apiKeyGuardsAllButHealth() async throws {
        try await withServer(apiKey: "sekrit") { client in
            #expect(try await client.get("health").status == 200)
            let denied = try await client.get("v1/models")
            #expect(denied.status == 401 && (denied.object["error"] as? [String: Any])?["code"] as? String == "invalid_api_key")
            #expect(try await client.get("v1/models", headers: ["Authorization": "Bearer wrong"]).status == 401)
            #expect(try await client.get("v1/models", headers: ["Authorization": "Bearer sekrit"]).status == 200)
            #expect(try await client.get("v1/models", headers: ["X-Api-Key": "sekrit"]).status == 200)
        }
    }

    @Test func tokenizeRoundTripsAndStreamsEndWithDone() async throws {
        try await withServer { client in
            let t = try await client.post("tokenize", #"{"content":"Hello world","add_special":false}"#).object
            let tokens = try #require(t["tokens"] as? [Int])
            #expect(tokens == Self.model.tokenizer.encode("Hello world", addSpecial: false))
            let d = try await client.post("detokenize", #"{"tokens":\#(tokens)}"#).object
            #expect(d["content"] as? String == "Hello world")
            let r = try await client.post("v1/chat/completions",
                                          #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#)
            let events = r.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
            #expect((r.headers["Content-Type"] as? String) == "text/event-stream")
            #expect(events.last == "data: [DONE]")
            let objects = events.dropLast().compactMap { try? JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any] }
            let finishes = objects.flatMap { ($0["choices"] as? [[String: Any]] ?? []).compactMap { $0["finish_reason"] as? String } }
            #expect(finishes.count == 1)
            #expect(((objects.first?["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["role"] as? String == "assistant")
            let usage = objects.last?["usage"] as? [String: Any]
            #expect(usage?["completion_tokens"] as? Int == 5 && (objects.last?["choices"] as? [Any])?.isEmpty == true)
        }
    }
}
