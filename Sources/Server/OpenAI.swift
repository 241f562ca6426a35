import Foundation
import Runtime

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with its status.
public struct OpenAIError: Error, Sendable, Equatable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public static func badRequest(_ message: String, param: String? = nil) -> OpenAIError {
        OpenAIError(status: 400, message: message, type: "invalid_request_error", param: param, code: nil)
    }

    public var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
    }
}

/// A request body's fields, read with the checks OpenAI's API makes: a wrong type or an
/// out-of-range value is a 400 naming the field; unknown fields are ignored; features this
/// server does not have are a 400 saying so.
struct Fields {
    let body: [String: Any]

    init(_ data: Data) throws(OpenAIError) {
        guard let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else {
            throw .badRequest("the request body is not valid JSON")
        }
        guard let body = object as? [String: Any] else { throw .badRequest("the request body must be a JSON object") }
        self.body = body
    }

    func has(_ key: String) -> Bool { body[key] != nil && !(body[key] is NSNull) }

    func string(_ key: String) throws(OpenAIError) -> String? {
        guard has(key) else { return nil }
        guard let s = body[key] as? String else { throw .badRequest("'\(key)' must be a string", param: key) }
        return s
    }

    func bool(_ key: String) throws(OpenAIError) -> Bool? {
        guard has(key) else { return nil }
        guard let n = body[key] as? NSNumber, isBoolean(n) else {
            throw .badRequest("'\(key)' must be a boolean", param: key)
        }
        return n.boolValue
    }

    func number(_ key: String, in range: ClosedRange<Double>) throws(OpenAIError) -> Double? {
        guard has(key) else { return nil }
        guard let n = body[key] as? NSNumber, !isBoolean(n), n.doubleValue.isFinite else {
            throw .badRequest("'\(key)' must be a number", param: key)
        }
        guard range.contains(n.doubleValue) else {
            throw .badRequest("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(n.doubleValue)", param: key)
        }
        return n.doubleValue
    }

    func integer(_ key: String, in range: ClosedRange<Int>) throws(OpenAIError) -> Int? {
        guard has(key) else { return nil }
        guard let n = body[key] as? NSNumber, !isBoolean(n), let i = Int(exactly: n.doubleValue) else {
            throw .badRequest("'\(key)' must be an integer", param: key)
        }
        guard range.contains(i) else { throw .badRequest("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(i)", param: key) }
        return i
    }

    /// `stop`: a string or a list of up to 4 strings.
    func stops() throws(OpenAIError) -> [String] {
        guard has("stop") else { return [] }
        if let s = body["stop"] as? String { return [s] }
        guard let list = body["stop"] as? [Any], let strings = list as? [String] else {
            throw .badRequest("'stop' must be a string or a list of strings", param: "stop")
        }
        guard strings.count <= 4 else { throw .badRequest("'stop' takes at most 4 sequences", param: "stop") }
        return strings
    }
}

/// What a chat or completion request asks for, checked.
struct GenerationSettings {
    var sampling = SamplingParameters()
    var maxTokens: Int?
    var stops: [String] = []
    var stream = false
    var includeUsage = false
    var n = 1
    /// Alternatives per position when logprobs are asked for (nil: no logprobs).
    var logprobs: Int?

    /// Reads the sampling fields both endpoints share; `chat` selects how `logprobs` is spelt.
    init(_ f: Fields, chat: Bool, vocabularySize: Int) throws(OpenAIError) {
        for unsupported in ["tools", "functions", "audio", "prediction"] where f.has(unsupported) {
            throw .badRequest("'\(unsupported)' is not supported by this server", param: unsupported)
        }
        if let choice = f.body["tool_choice"], !(choice is NSNull), (choice as? String) != "none" {
            throw .badRequest("'tool_choice' is not supported by this server", param: "tool_choice")
        }
        if f.has("response_format") {
            guard let format = f.body["response_format"] as? [String: Any], (format["type"] as? String) == "text" else {
                throw .badRequest("'response_format' other than {\"type\": \"text\"} is not supported by this server", param: "response_format")
            }
        }
        if let modalities = f.body["modalities"] as? [String], modalities != ["text"] {
            throw .badRequest("only the text modality is supported", param: "modalities")
        }
        if try f.bool("echo") == true { throw .badRequest("'echo' is not supported by this server", param: "echo") }
        if let bestOf = try f.integer("best_of", in: 0...1_000_000), bestOf > 1 {
            throw .badRequest("'best_of' greater than 1 is not supported by this server", param: "best_of")
        }
        _ = try f.string("user")
        if let t = try f.number("temperature", in: 0...2) { sampling.temperature = Float(t) }
        if let p = try f.number("top_p", in: 0...1) {
            guard p > 0 else { throw .badRequest("'top_p' must be greater than 0", param: "top_p") }
            sampling.topP = Float(p)
        }
        if let k = try f.integer("top_k", in: -1...Int(Int32.max)) { sampling.topK = max(0, k) }
        if let m = try f.number("min_p", in: 0...1) { sampling.minP = Float(m) }
        if let s = try f.integer("seed", in: Int.min...Int.max) { sampling.seed = UInt64(bitPattern: Int64(s)) }
        if let p = try f.number("presence_penalty", in: -2...2) { sampling.presencePenalty = Float(p) }
        if let p = try f.number("frequency_penalty", in: -2...2) { sampling.frequencyPenalty = Float(p) }
        if let p = try f.number("repetition_penalty", in: 0...100) {
            guard p > 0 else { throw .badRequest("'repetition_penalty' must be greater than 0", param: "repetition_penalty") }
            sampling.repetitionPenalty = Float(p)
        }
        if f.has("logit_bias") {
            guard let bias = f.body["logit_bias"] as? [String: Any] else {
                throw .badRequest("'logit_bias' must be an object of token ids to numbers", param: "logit_bias")
            }
            for (key, value) in bias {
                guard let id = Int(key), id >= 0, id < vocabularySize else {
                    throw .badRequest("'logit_bias' key '\(key)' is not a token id (0..<\(vocabularySize))", param: "logit_bias")
                }
                guard let n = value as? NSNumber, !isBoolean(n), (-100...100).contains(n.doubleValue) else {
                    throw .badRequest("'logit_bias' values must be numbers between -100 and 100", param: "logit_bias")
                }
                sampling.logitBias[id] = Float(n.doubleValue)
            }
        }
        let maxTokens = try f.integer("max_tokens", in: Int.min...Int.max)
        let maxCompletion = try f.integer("max_completion_tokens", in: Int.min...Int.max)
        if let m = maxCompletion ?? maxTokens {
            guard m >= 1 else { throw .badRequest("'max_tokens' must be at least 1, got \(m)", param: maxCompletion != nil ? "max_completion_tokens" : "max_tokens") }
            self.maxTokens = m
        }
        stops = try f.stops()
        stream = try f.bool("stream") ?? false
        if f.has("stream_options") {
            guard let options = f.body["stream_options"] as? [String: Any] else {
                throw .badRequest("'stream_options' must be an object", param: "stream_options")
            }
            guard stream else { throw .badRequest("'stream_options' is only allowed with 'stream': true", param: "stream_options") }
            includeUsage = (options["include_usage"] as? Bool) ?? false
        }
        n = try f.integer("n", in: Int.min...Int.max) ?? 1
        guard n >= 1 else { throw .badRequest("'n' must be at least 1, got \(n)", param: "n") }
        guard n <= 16 else { throw .badRequest("'n' must be at most 16, got \(n)", param: "n") }
        if chat {
            if try f.bool("logprobs") == true { logprobs = try f.integer("top_logprobs", in: 0...20) ?? 0 } else if f.has("top_logprobs") {
                throw .badRequest("'top_logprobs' needs 'logprobs': true", param: "top_logprobs")
            }
        } else {
            logprobs = try f.integer("logprobs", in: 0...5)
        }
    }
}

/// Whether a JSONSerialization number is a JSON boolean (booleans come as NSNumbers of `c`).
func isBoolean(_ n: NSNumber) -> Bool { n is Bool && String(cString: n.objCType) == "c" }
