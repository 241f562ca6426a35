/// The tokenizer description a GGUF file carries in its `tokenizer.ggml.*` keys.
///
/// This is plain data; `Tokenizer.init` validates it and throws `TokenizerError` when it is
/// inconsistent.
public struct Vocabulary: Sendable {
    /// Token texts, indexed by id. For byte-level BPE ("gpt2") normal tokens are stored in the
    /// GPT-2 byte-to-unicode form (`"Ġcapital"`); for SentencePiece ("llama") a space is written
    /// '▁' (U+2581) and byte-fallback tokens are `<0xNN>`. Control/user-defined tokens are raw text.
    public var tokens: [String]
    /// `tokenizer.ggml.token_type` (see `TokenType`). Empty means "all normal".
    public var tokenTypes: [Int]
    /// `"left right"` pairs, lowest index = highest merge priority (byte-level BPE only).
    public var merges: [String]
    /// `tokenizer.ggml.scores`, indexed by id; empty when absent. SentencePiece merges the pair
    /// whose merged token scores highest, so it needs one score per token.
    public var scores: [Float]
    public var bosTokenID: Int?
    public var eosTokenID: Int?
    public var eotTokenID: Int?
    public var unknownTokenID: Int?
    public var paddingTokenID: Int?
    public var addBOS: Bool
    public var addEOS: Bool
    /// `tokenizer.ggml.add_space_prefix`; nil when absent, which for SentencePiece means true
    /// (llama.cpp's default). Byte-level BPE never adds a space prefix.
    public var addSpacePrefix: Bool?
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    public var model: String
    /// `tokenizer.ggml.pre` (see `PreTokenizerKind`).
    public var preTokenizer: String
    /// `tokenizer.chat_template` (Jinja source), if any.
    public var chatTemplate: String?

    public init(tokens: [String], tokenTypes: [Int] = [], merges: [String] = [], scores: [Float] = [],
                bosTokenID: Int? = nil, eosTokenID: Int? = nil, eotTokenID: Int? = nil,
                unknownTokenID: Int? = nil, paddingTokenID: Int? = nil,
                addBOS: Bool = false, addEOS: Bool = false, addSpacePrefix: Bool? = nil,
                model: String = "gpt2", preTokenizer: String = "default",
                chatTemplate: String? = nil) {
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.merges = merges
        self.scores = scores
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.eotTokenID = eotTokenID
        self.unknownTokenID = unknownTokenID
        self.paddingTokenID = paddingTokenID
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.addSpacePrefix = addSpacePrefix
        self.model = model
        self.preTokenizer = preTokenizer
        self.chatTemplate = chatTemplate
    }
}

/// Values of `tokenizer.ggml.token_type`.
public enum TokenType: Int, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

public enum TokenizerError: Error, Equatable, CustomStringConvertible, Sendable {
    /// `tokenizer.ggml.model` is neither "gpt2" nor "llama".
    case unsupportedModel(String)
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not implement.
    case unsupportedPreTokenizer(String)
    case emptyVocabulary
    /// A merge that is not two non-empty parts separated by a space.
    case malformedMerge(index: Int, text: String)
    case tokenTypeCountMismatch(tokens: Int, types: Int)
    /// A token type outside 0...6.
    case invalidTokenType(index: Int, type: Int)
    /// A token id outside the vocabulary (decode, pieceBytes, streaming).
    case invalidTokenID(Int)
    /// A special-token id (bos/eos/eot/unk/pad) outside the vocabulary.
    case badSpecialTokenID(name: String, id: Int)
    /// SentencePiece needs exactly one score per token (`tokenizer.ggml.scores`).
    case scoreCountMismatch(tokens: Int, scores: Int)
    /// SentencePiece byte fallback: no `<0xNN>` token for this byte and no unknown token to use instead.
    case missingByteToken(UInt8)
    /// A SentencePiece token typed BYTE whose text is not `<0xNN>`.
    case malformedByteToken(index: Int, text: String)
    /// `ChatTemplate(kind:...)` with a kind this module cannot render.
    case unsupportedChatTemplate(String)

    public var description: String {
        switch self {
        case .unsupportedModel(let m):
            return "unsupported tokenizer model '\(m)' (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
        case .unsupportedPreTokenizer(let p): return "unsupported pre-tokenizer '\(p)'"
        case .emptyVocabulary: return "the vocabulary has no tokens"
        case .malformedMerge(let i, let t): return "merge #\(i) '\(t)' is not of the form 'left right'"
        case .tokenTypeCountMismatch(let t, let ty): return "\(t) tokens but \(ty) token types"
        case .invalidTokenType(let i, let t): return "token #\(i) has invalid type \(t)"
        case .invalidTokenID(let id): return "token id \(id) is outside the vocabulary"
        case .badSpecialTokenID(let n, let id): return "special token \(n) id \(id) is outside the vocabulary"
        case .unsupportedChatTemplate(let k): return "unsupported chat template '\(k)'"
        case .scoreCountMismatch(let t, let s): return "\(t) tokens but \(s) scores (SentencePiece needs one per token)"
        case .missingByteToken(let b):
            let hex = String(b, radix: 16, uppercase: true)
            return "no byte-fallback token <0x\(hex.count == 1 ? "0" + hex : hex)> and no unknown token"
        case .malformedByteToken(let i, let t): return "byte token #\(i) '\(t)' is not of the form <0xNN>"
        }
    }
}
