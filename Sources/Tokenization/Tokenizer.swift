/// Byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) following llama.cpp's
/// behaviour: special-token partitioning, the pre-tokenizer selected by
/// `tokenizer.ggml.pre`, GPT-2 byte encoding and rank-ordered merges.
///
/// Immutable after `init`, hence `Sendable`; `encode`/`decode` keep all state on the stack.
public final class Tokenizer: Sendable {
    /// Texts whose tokens end generation (llama.cpp's end-of-generation list).
    public static let endOfGenerationTexts: Set<String> = [
        "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>",
        "<EOT>", "_<EOT>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
        "<|return|>", "<|call|>",
    ]

    public let vocabulary: Vocabulary
    public let preTokenizerKind: PreTokenizerKind
    public let endOfGenerationTokenIDs: Set<Int>
    public let chatTemplate: ChatTemplate

    /// Effective type of each token (end-of-generation texts typed normal are promoted to
    /// control, as llama.cpp does).
    private let types: [TokenType]
    private let tokenToID: [String: Int]
    private let merges: BPEMerges
    private let preTokenizer: PreTokenizer
    /// Special tokens matched inside text, longest text first: (utf8, id, needsParseSpecial).
    private let specials: [(bytes: [UInt8], id: Int, controlOrUnknown: Bool)]
    /// Decoded bytes of every token, concatenated; token i is pieceData[pieceStart[i]..<pieceStart[i+1]].
    private let pieceData: [UInt8]
    private let pieceStart: [Int]
    /// llama.cpp skips merging when the whole word is a token (llama-3 style vocabularies).
    private let ignoreMerges: Bool

    public var vocabularySize: Int { vocabulary.tokens.count }
    public var bosTokenID: Int? { vocabulary.bosTokenID }
    public var eosTokenID: Int? { vocabulary.eosTokenID }

    public init(_ vocabulary: Vocabulary) throws(TokenizerError) {
        guard vocabulary.model == "gpt2" else { throw .unsupportedModel(vocabulary.model) }
        guard let kind = PreTokenizerKind(ggmlName: vocabulary.preTokenizer) else {
            throw .unsupportedPreTokenizer(vocabulary.preTokenizer)
        }
        let tokens = vocabulary.tokens
        let n = tokens.count
        guard n > 0 else { throw .emptyVocabulary }
        if !vocabulary.tokenTypes.isEmpty && vocabulary.tokenTypes.count != n {
            throw .tokenTypeCountMismatch(tokens: n, types: vocabulary.tokenTypes.count)
        }
        let specialIDs: [(String, Int?)] = [
            ("bos", vocabulary.bosTokenID), ("eos", vocabulary.eosTokenID), ("eot", vocabulary.eotTokenID),
            ("unk", vocabulary.unknownTokenID), ("pad", vocabulary.paddingTokenID),
        ]
        for (name, id) in specialIDs {
            if let id, id < 0 || id >= n { throw .badSpecialTokenID(name: name, id: id) }
        }

        var types = [TokenType](repeating: .normal, count: n)
        for (i, t) in vocabulary.tokenTypes.enumerated() {
            guard let type = TokenType(rawValue: t) else { throw .invalidTokenType(index: i, type: t) }
            types[i] = type
        }

        var tokenToID: [String: Int] = [:]
        tokenToID.reserveCapacity(n)
        for (i, t) in tokens.enumerated() { tokenToID[t] = i }   // last duplicate wins, as in llama.cpp

        var eog = Set<Int>()
        if let e = vocabulary.eosTokenID { eog.insert(e) }
        if let e = vocabulary.eotTokenID { eog.insert(e) }
        for text in Tokenizer.endOfGenerationTexts {
            guard let id = tokenToID[text] else { continue }
            eog.insert(id)
            if types[id] == .normal || types[id] == .undefined { types[id] = .control }
        }

        // Merge table over token ids. Merges naming a non-token, or whose result is not a
        // token, can never fire on byte-level input that round-trips, so they are skipped.
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(vocabulary.merges.count)
        for (rank, merge) in vocabulary.merges.enumerated() {
            let scalars = merge.unicodeScalars
            // The separator is the first space after the first scalar.
            guard !scalars.isEmpty,
                  let sep = scalars[scalars.index(after: scalars.startIndex)...].firstIndex(of: " ")
            else { throw .malformedMerge(index: rank, text: merge) }
            let left = String(scalars[..<sep])
            let right = String(scalars[scalars.index(after: sep)...])
            guard !right.isEmpty else { throw .malformedMerge(index: rank, text: merge) }
            guard let a = tokenToID[left], let b = tokenToID[right], let m = tokenToID[left + right] else { continue }
            let key = BPEMerges.key(Int32(a), Int32(b))
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(m) }
        }
        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = tokenToID[ByteEncoding.encoded(UInt8(b))] { byteTokens[b] = Int32(id) }
        }

        var specials: [(bytes: [UInt8], id: Int, controlOrUnknown: Bool)] = []
        for i in 0..<n {
            switch types[i] {
            case .control, .unknown, .userDefined:
                let bytes = Array(tokens[i].utf8)
                if !bytes.isEmpty { specials.append((bytes, i, types[i] != .userDefined)) }
            default: break
            }
        }
        specials.sort { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }

        var pieceData: [UInt8] = []
        var pieceStart: [Int] = [0]
        pieceStart.reserveCapacity(n + 1)
        for i in 0..<n {
            switch types[i] {
            case .control, .unknown, .userDefined:
                pieceData.append(contentsOf: tokens[i].utf8)
            case .normal, .undefined, .byte, .unused:
                ByteEncoding.decode(tokens[i], into: &pieceData)
            }
            pieceStart.append(pieceData.count)
        }

        self.vocabulary = vocabulary
        self.preTokenizerKind = kind
        self.preTokenizer = PreTokenizer(kind: kind)
        self.types = types
        self.tokenToID = tokenToID
        self.merges = BPEMerges(table: table, byteTokens: byteTokens)
        self.specials = specials
        self.pieceData = pieceData
        self.pieceStart = pieceStart
        self.endOfGenerationTokenIDs = eog
        self.ignoreMerges = kind == .llama3
        let text: (Int?) -> String = { id in id.map { tokens[$0] } ?? "" }
        self.chatTemplate = ChatTemplate(template: vocabulary.chatTemplate,
                                         bosToken: text(vocabulary.bosTokenID),
                                         eosToken: text(vocabulary.eosTokenID))
    }

    // MARK: Queries

    public func isControl(_ id: Int) -> Bool {
        id >= 0 && id < types.count && types[id] == .control
    }

    /// The effective type of a token (nil when out of range).
    public func tokenType(_ id: Int) -> TokenType? {
        id >= 0 && id < types.count ? types[id] : nil
    }

    /// The id of the token with exactly this (vocabulary-form) text.
    public func tokenID(forText text: String) -> Int? { tokenToID[text] }

    /// The bytes a token stands for: GPT-2-decoded bytes for normal tokens, the raw text for
    /// control, unknown and user-defined tokens.
    public func pieceBytes(_ id: Int) throws(TokenizerError) -> [UInt8] {
        guard id >= 0 && id < types.count else { throw .invalidTokenID(id) }
        return Array(pieceData[pieceStart[id]..<pieceStart[id + 1]])
    }

    /// Appends a token's bytes; control tokens contribute nothing when `skipSpecial`.
    func appendPiece(_ id: Int, skipSpecial: Bool, to out: inout [UInt8]) throws(TokenizerError) {
        guard id >= 0 && id < types.count else { throw .invalidTokenID(id) }
        if skipSpecial && types[id] == .control { return }
        out.append(contentsOf: pieceData[pieceStart[id]..<pieceStart[id + 1]])
    }

    // MARK: Decoding

    /// Concatenates the tokens' bytes; invalid UTF-8 becomes U+FFFD. With `skipSpecial`,
    /// control tokens are left out.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) throws(TokenizerError) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { try appendPiece(id, skipSpecial: skipSpecial, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Encoding

    /// BPE of one already pre-tokenized word, bypassing special tokens and the pre-tokenizer.
    /// `longWordAlgorithm` forces the heap-based merge loop used for words over 64 bytes
    /// (exposed so tests can check both loops agree).
    public func _bpe(_ word: String, longWordAlgorithm: Bool = false) -> [Int] {
        var out: [Int] = []
        var bytes = Array(word.utf8)
        bytes.withUnsafeMutableBufferPointer { b in
            merges.encodeWord(UnsafeBufferPointer(b), into: &out, heapThreshold: longWordAlgorithm ? 1 : 64)
        }
        return out
    }

    /// The words the pre-tokenizer splits raw text into (no special-token handling, no BPE).
    public func preTokenize(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        return preTokenizer.split(scalars).map { String(String.UnicodeScalarView(scalars[$0])) }
    }

    /// Tokenizes `text`.
    /// - addSpecial: prepend BOS / append EOS as `Vocabulary.addBOS` / `addEOS` say.
    /// - parseSpecial: control (and unknown-typed) token texts in `text` become their ids.
    ///   User-defined tokens are always matched, as in llama.cpp.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addSpecial && vocabulary.addBOS, let bos = vocabulary.bosTokenID { out.append(bos) }
        var bytes = Array(text.utf8)
        out.reserveCapacity(bytes.count / 3 + 2)
        let fragments = partition(bytes, parseSpecial: parseSpecial)
        bytes.withUnsafeMutableBufferPointer { buf in
            let ro = UnsafeBufferPointer(buf)
            for f in fragments {
                if f.id >= 0 { out.append(f.id) } else { encodeText(ro, f.range, into: &out) }
            }
        }
        if addSpecial && vocabulary.addEOS, let eos = vocabulary.eosTokenID { out.append(eos) }
        return out
    }

    private struct Fragment { var range: Range<Int>; var id: Int }   // id -1: raw text

    /// Splits the text on special-token occurrences, longest special first (llama.cpp order).
    private func partition(_ bytes: [UInt8], parseSpecial: Bool) -> [Fragment] {
        var fragments = [Fragment(range: 0..<bytes.count, id: -1)]
        if bytes.isEmpty { return [] }
        bytes.withUnsafeBufferPointer { b in
            for special in specials {
                if special.controlOrUnknown && !parseSpecial { continue }
                let pat = special.bytes
                let m = pat.count
                let first = pat[0]
                var next: [Fragment] = []
                var changed = false
                for f in fragments {
                    if f.id >= 0 || f.range.count < m { next.append(f); continue }
                    var start = f.range.lowerBound
                    var i = start
                    let last = f.range.upperBound - m
                    while i <= last {
                        if b[i] == first {
                            var k = 1
                            while k < m && b[i + k] == pat[k] { k += 1 }
                            if k == m {
                                if start < i { next.append(Fragment(range: start..<i, id: -1)) }
                                next.append(Fragment(range: i..<(i + m), id: special.id))
                                i += m; start = i; changed = true
                                continue
                            }
                        }
                        i += 1
                    }
                    if start < f.range.upperBound { next.append(Fragment(range: start..<f.range.upperBound, id: -1)) }
                }
                if changed { fragments = next }
            }
        }
        return fragments
    }

    /// Pre-tokenizes and BPE-encodes one raw-text fragment (valid UTF-8).
    private func encodeText(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into out: inout [Int]) {
        // Decode scalars, remembering where each starts.
        var scalars: [Unicode.Scalar] = []
        var offsets: [Int] = []
        scalars.reserveCapacity(range.count)
        offsets.reserveCapacity(range.count + 1)
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let b0 = UInt32(bytes[i])
            var v: UInt32
            var len: Int
            if b0 < 0x80 { v = b0; len = 1 }
            else if b0 < 0xE0 { v = b0 & 0x1F; len = 2 }
            else if b0 < 0xF0 { v = b0 & 0x0F; len = 3 }
            else { v = b0 & 0x07; len = 4 }
            len = min(len, end - i)
            for k in 1..<max(len, 1) { v = v << 6 | (UInt32(bytes[i + k]) & 0x3F) }
            offsets.append(i)
            scalars.append(Unicode.Scalar(v) ?? "\u{FFFD}")
            i += len
        }
        offsets.append(end)
        for piece in preTokenizer.split(scalars) {
            let lo = offsets[piece.lowerBound], hi = offsets[piece.upperBound]
            let word = UnsafeBufferPointer(rebasing: bytes[lo..<hi])
            if ignoreMerges, let id = tokenToID[ByteEncoding.encode(word)] {
                out.append(id)
                continue
            }
            merges.encodeWord(word, into: &out)
        }
    }
}
