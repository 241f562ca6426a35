public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Renders conversations in the format a model's `tokenizer.chat_template` describes.
///
/// This is not a Jinja interpreter: the template source is recognised by its markers and
/// rendered by a built-in formatter.
/// - `"chatml"`: `<|im_start|>role\ncontent<|im_end|>\n`, generation prompt
///   `<|im_start|>assistant\n`. If the template inserts a literal default system message when
///   the conversation does not start with one (SmolLM, Qwen), that message is extracted from
///   the template and inserted the same way.
/// - `"llama3"`: `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (content trimmed).
/// - `"gemma"`: `<start_of_turn>role\ncontent<end_of_turn>\n`, assistant -> model, a system
///   message is prepended to the first user turn.
/// - `"plain"`: `role: content\n` lines, generation prompt `assistant:` (only via `init(kind:)`).
///
/// A missing or unrecognised template falls back to ChatML (llama.cpp's default) and sets
/// `isFallback`; `init(kind:...)` throws `TokenizerError.unsupportedChatTemplate` instead.
/// BOS is never written into the rendered text: `Tokenizer.encode` adds it when the
/// vocabulary asks for it.
public struct ChatTemplate: Sendable {
    public static let supportedKinds: [String] = ["chatml", "llama3", "gemma", "plain"]

    public let kind: String
    /// True when the template was missing or not recognised and ChatML is used instead.
    public let isFallback: Bool
    /// Inserted as a first system message when the conversation has none (chatml only).
    public let defaultSystemMessage: String?
    public let template: String?
    public let bosToken: String
    public let eosToken: String

    public init(template: String?, bosToken: String, eosToken: String) {
        self.template = template
        self.bosToken = bosToken
        self.eosToken = eosToken
        if let t = template, t.contains("<|im_start|>") {
            kind = "chatml"; isFallback = false
            defaultSystemMessage = ChatTemplate.literalDefaultSystem(in: t)
        } else if let t = template, t.contains("<|start_header_id|>") {
            kind = "llama3"; isFallback = false; defaultSystemMessage = nil
        } else if let t = template, t.contains("<start_of_turn>") {
            kind = "gemma"; isFallback = false; defaultSystemMessage = nil
        } else {
            kind = "chatml"; isFallback = true; defaultSystemMessage = nil
        }
    }

    /// A built-in format by name (see `supportedKinds`).
    public init(kind: String, bosToken: String = "", eosToken: String = "",
                defaultSystemMessage: String? = nil) throws(TokenizerError) {
        guard ChatTemplate.supportedKinds.contains(kind) else { throw .unsupportedChatTemplate(kind) }
        self.kind = kind
        self.isFallback = false
        self.defaultSystemMessage = defaultSystemMessage
        self.template = nil
        self.bosToken = bosToken
        self.eosToken = eosToken
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> String {
        var out = ""
        switch kind {
        case "llama3":
            for m in messages {
                out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + ChatTemplate.trim(m.content) + "<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        case "gemma":
            var system: String? = nil
            for m in messages {
                if m.role == "system" { system = (system.map { $0 + "\n\n" } ?? "") + ChatTemplate.trim(m.content); continue }
                let role = m.role == "assistant" ? "model" : m.role
                var content = ChatTemplate.trim(m.content)
                if let s = system, role == "user" { content = s + "\n\n" + content; system = nil }
                out += "<start_of_turn>" + role + "\n" + content + "<end_of_turn>\n"
            }
            if addGenerationPrompt { out += "<start_of_turn>model\n" }
        case "plain":
            if let d = defaultSystemMessage, messages.first?.role != "system" { out += "system: " + d + "\n" }
            for m in messages { out += m.role + ": " + m.content + "\n" }
            if addGenerationPrompt { out += "assistant:" }
        default: // chatml
            if let d = defaultSystemMessage, !messages.isEmpty, messages[0].role != "system" {
                out += "<|im_start|>system\n" + d + "<|im_end|>\n"
            }
            for m in messages { out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n" }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        }
        return out
    }

    /// The literal text of `<|im_start|>system\n...<|im_end|>` in a template, when it is a
    /// plain string (no Jinja expressions inside).
    static func literalDefaultSystem(in template: String) -> String? {
        for opener in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
            guard let r = template.firstRange(of: opener),
                  let e = template[r.upperBound...].firstRange(of: "<|im_end|>")
            else { continue }
            let body = String(template[r.upperBound..<e.lowerBound])
            if body.isEmpty || body.contains("{") || body.contains("}") || body.contains("'") || body.contains("\"") { continue }
            return opener.hasSuffix("\\n") ? body.replacingEscapedNewlines() : body
        }
        return nil
    }

    static func trim(_ s: String) -> String {
        var scalars = Substring(s).unicodeScalars[...]
        while let f = scalars.first, f.properties.isWhitespace { scalars.removeFirst() }
        while let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() }
        return String(String.UnicodeScalarView(scalars))
    }
}

extension String {
    fileprivate func replacingEscapedNewlines() -> String {
        var out = ""
        var it = makeIterator()
        while let c = it.next() {
            if c == "\\" {
                guard let d = it.next() else { out.append(c); break }
                out.append(d == "n" ? "\n" : d == "t" ? "\t" : d)
            } else {
                out.append(c)
            }
        }
        return out
    }
}
