/// The tokenizer a GGUF file describes, following llama.cpp's behaviour. `tokenizer.ggml.model`
/// selects the algorithm:
/// - `"gpt2"`, byte-level BPE: the pre-tokenizer selected by `tokenizer.ggml.pre`, GPT-2 byte
///   encoding and rank-ordered merges (SmolLM, Llama 3, Qwen, ...);
/// - `"llama"`, SentencePiece ("SPM"): score-ordered merges of characters with `<0xNN>` byte
///   fallback (Llama 2, Gemma, ...), see `SentencePiece`.
/// Both share special-token partitioning, BOS/EOS, end-of-generation rules and decoding.
///
/// Immutable after `init`, hence `Sendable`; `encode`/`decode` keep all state on the stack.
public final class Tokenizer: Sendable {
    /// The algorithms `tokenizer.ggml.model` can name, by their GGUF name.
    public enum Model: String, Sendable {
        case bytePairEncoding = "gpt2"
        case sentencePiece = "llama"
    }

    /// Texts whose tokens end generation (llama.cpp's end-of-generation name list at commit
    /// 0c1e57098; see `endOfGeneration` for the exceptions it makes).
    public static let endOfGenerationTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    ]

    public let vocabulary: Vocabulary
    public let model: Model
    /// The byte-level BPE pre-tokenizer (nil for SentencePiece, which has none).
    public let preTokenizerKind: PreTokenizerKind?
    public let endOfGenerationTokenIDs: Set<Int>
    public let chatTemplate: ChatTemplate

    /// Effective type of each token (end-of-generation texts not typed control are promoted to
    /// control, as llama.cpp does).
    private let types: [TokenType]
    private let index: TokenIndex
    private let algorithm: Algorithm
    /// Special tokens matched inside text, longest text first: (utf8, id, needsParseSpecial).
    private let specials: [(bytes: [UInt8], id: Int, controlOrUnknown: Bool)]
    /// Decoded bytes of every token, concatenated; token i is pieceData[pieceStart[i]..<pieceStart[i+1]].
    private let pieceData: [UInt8]
    private let pieceStart: [Int]

    private enum Algorithm: Sendable {
        /// `ignoreMerges`: llama.cpp skips merging when the whole word is a token (llama-3 style vocabularies).
        case bytePairs(merges: BPEMerges, preTokenizer: PreTokenizer, ignoreMerges: Bool)
        case sentencePiece(SentencePiece)
    }

    public var vocabularySize: Int { vocabulary.tokens.count }
    public var bosTokenID: Int? { vocabulary.bosTokenID }
    public var eosTokenID: Int? { vocabulary.eosTokenID }

    public init(_ vocabulary: Vocabulary) throws(TokenizerError) {
        guard let model = Model(rawValue: vocabulary.model) else { throw .unsupportedModel(vocabulary.model) }
        var kind: PreTokenizerKind?
        if model == .bytePairEncoding {
            guard let k = PreTokenizerKind(ggmlName: vocabulary.preTokenizer) else {
                throw .unsupportedPreTokenizer(vocabulary.preTokenizer)
            }
            kind = k
        }
        let tokens = vocabulary.tokens
        let n = tokens.count
        guard n > 0 else { throw .emptyVocabulary }
        if !vocabulary.tokenTypes.isEmpty && vocabulary.tokenTypes.count != n {
            throw .tokenTypeCountMismatch(tokens: n, types: vocabulary.tokenTypes.count)
        }
        if model == .sentencePiece && vocabulary.scores.count != n {
            throw .scoreCountMismatch(tokens: n, scores: vocabulary.scores.count)
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

        let index = TokenIndex(tokens)   // last duplicate wins, as in llama.cpp
        let eog = Tokenizer.endOfGeneration(vocabulary, index, &types)

        switch model {
        case .bytePairEncoding:
            guard let kind else { throw .unsupportedPreTokenizer(vocabulary.preTokenizer) }   // checked above
            algorithm = .bytePairs(merges: try Tokenizer.mergeTable(vocabulary.merges, index),
                                   preTokenizer: PreTokenizer(kind: kind), ignoreMerges: kind == .llama3)
        case .sentencePiece:
            algorithm = .sentencePiece(try SentencePiece(
                index: index, scores: vocabulary.scores, unknownTokenID: vocabulary.unknownTokenID,
                addSpacePrefix: vocabulary.addSpacePrefix ?? true))
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
            switch (types[i], model) {
            case (.control, _), (.unknown, _), (.userDefined, _):
                pieceData.append(contentsOf: tokens[i].utf8)
            case (.byte, .sentencePiece):
                guard let b = SentencePiece.byteValue(ofTokenText: tokens[i]) else {
                    throw .malformedByteToken(index: i, text: tokens[i])
                }
                pieceData.append(b)
            case (_, .sentencePiece):
                SentencePiece.appendUnescaped(tokens[i], to: &pieceData)
            case (_, .bytePairEncoding):
                ByteEncoding.decode(tokens[i], into: &pieceData)
            }
            pieceStart.append(pieceData.count)
        }

        self.vocabulary = vocabulary
        self.model = model
        self.preTokenizerKind = kind
        self.types = types
        self.index = index
        self.specials = specials
        self.pieceData = pieceData
        self.pieceStart = pieceStart
        self.endOfGenerationTokenIDs = eog
        let text: (Int?) -> String = { id in id.map { tokens[$0] } ?? "" }
        // A file without a template whose vocabulary has Gemma's turn tokens (Gemma 3 270M):
        // Gemma's turn format (llama.cpp would fall back to another format here).
        let gemmaTurns = vocabulary.chatTemplate == nil && vocabulary.tokens.contains("<start_of_turn>")
            && vocabulary.tokens.contains("<end_of_turn>")
        self.chatTemplate = (gemmaTurns ? try? ChatTemplate(kind: "gemma", bosToken: text(vocabulary.bosTokenID),
                                                              eosToken: text(vocabulary.eosTokenID)) : nil)
            ?? ChatTemplate(template: vocabulary.chatTemplate, bosToken: text(vocabulary.bosTokenID), eosToken: text(vocabulary.eosTokenID))
    }

    /// llama.cpp's end-of-generation set: the eos and eot ids, and every token whose text is in
    /// `endOfGenerationTexts`. Such a token not typed control (or unknown) becomes control, as
    /// llama.cpp overrides its type ("control-looking token ... was not control-type"): it is then
    /// only matched in text with parseSpecial, and `skipSpecial` drops it. Afterwards llama.cpp
    /// undoes two names for the vocabularies where they are ordinary text:
    /// - `<|end|>` when `<|call|>` or `<|calls|>`, and `<|return|>` or `<|flush|>`, are also
    ///   end-of-generation (gpt-oss, solar-open): not EOG, typed user-defined;
    /// - `</s>` when `<|tool_response>` or `<|plamo:eos|>` is (Gemma 4, PLaMo): not EOG, typed normal.
    ///   Gemma 3 has neither, so its `</s>` (an HTML strike-through tag) stays EOG and control.
    private static func endOfGeneration(_ vocabulary: Vocabulary, _ index: TokenIndex,
                                        _ types: inout [TokenType]) -> Set<Int> {
        var eog = Set<Int>()
        if let e = vocabulary.eosTokenID { eog.insert(e) }
        if let e = vocabulary.eotTokenID { eog.insert(e) }
        for text in endOfGenerationTexts {
            guard let id = index.id(text) else { continue }
            eog.insert(id)
            if types[id] != .control && types[id] != .unknown { types[id] = .control }
        }
        var eogByText: [String: Int] = [:]
        for id in eog.sorted() { eogByText[vocabulary.tokens[id]] = id }   // the larger id wins, as in llama.cpp
        let has = { (text: String) in eogByText[text] != nil }
        if let end = eogByText["<|end|>"],
           (has("<|return|>") || has("<|flush|>")) && (has("<|call|>") || has("<|calls|>")) {
            eog.remove(end)
            types[end] = .userDefined
        }
        if let s = eogByText["</s>"], has("<|tool_response>") || has("<|plamo:eos|>") {
            eog.remove(s)
            types[s] = .normal
        }
        return eog
    }

    /// Byte-level BPE merge table over token ids. Merges naming a non-token, or whose result is
    /// not a token, can never fire on byte-level input that round-trips, so they are skipped.
    private static func mergeTable(_ merges: [String], _ index: TokenIndex) throws(TokenizerError) -> BPEMerges {
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, merge) in merges.enumerated() {
            let scalars = merge.unicodeScalars
            // The separator is the first space after the first scalar.
            guard !scalars.isEmpty,
                  let sep = scalars[scalars.index(after: scalars.startIndex)...].firstIndex(of: " ")
            else { throw .malformedMerge(index: rank, text: merge) }
            let left = String(scalars[..<sep])
            let right = String(scalars[scalars.index(after: sep)...])
            guard !right.isEmpty else { throw .malformedMerge(index: rank, text: merge) }
            guard let a = index.id(left), let b = index.id(right), let m = index.id(left + right) else { continue }
            let key = BPEMerges.key(Int32(a), Int32(b))
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(m) }
        }
        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = index.id(ByteEncoding.encoded(UInt8(b))) { byteTokens[b] = Int32(id) }
        }
        return BPEMerges(table: table, byteTokens: byteTokens)
    }

    // MARK: Queries

    public func isControl(_ id: Int) -> Bool {
        id >= 0 && id < types.count && types[id] == .control
    }

    /// The effective type of a token (nil when out of range).
    public func tokenType(_ id: Int) -> TokenType? {
        id >= 0 && id < types.count ? types[id] : nil
    }

    /// The id of the token with exactly this (vocabulary-form) text, compared byte for byte.
    public func tokenID(forText text: String) -> Int? { index.id(text) }

    /// The bytes a token stands for: for normal tokens the GPT-2-decoded bytes (BPE) or the text
    /// with '▁' as ' ' (SentencePiece); the byte of a SentencePiece `<0xNN>` token; the raw text
    /// of control, unknown and user-defined tokens.
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

    /// Merges of one already pre-tokenized word, bypassing special tokens and the pre-tokenizer
    /// (SentencePiece: the word's spaces are escaped, no space prefix is added).
    /// `longWordAlgorithm` forces BPE's heap-based merge loop used for words over 64 bytes
    /// (exposed so tests can check both loops agree; SentencePiece has only one loop).
    public func _bpe(_ word: String, longWordAlgorithm: Bool = false) -> [Int] {
        var out: [Int] = []
        var bytes = Array(word.utf8)
        switch algorithm {
        case .bytePairs(let merges, _, _):
            bytes.withUnsafeMutableBufferPointer { b in
                merges.encodeWord(UnsafeBufferPointer(b), into: &out, heapThreshold: longWordAlgorithm ? 1 : 64)
            }
        case .sentencePiece(let spm):
            spm.encode(bytes[...], spacePrefix: false, into: &out)
        }
        return out
    }

    /// The words the pre-tokenizer splits raw text into (no special-token handling, no BPE).
    /// SentencePiece has no pre-tokenizer: the text is one word.
    public func preTokenize(_ text: String) -> [String] {
        guard case .bytePairs(_, let preTokenizer, _) = algorithm else { return text.isEmpty ? [] : [text] }
        let scalars = Array(text.unicodeScalars)
        return preTokenizer.split(scalars).map { String(String.UnicodeScalarView(scalars[$0])) }
    }

    /// Tokenizes `text`.
    /// - addSpecial: prepend BOS / append EOS as `Vocabulary.addBOS` / `addEOS` say.
    /// - parseSpecial: control (and unknown-typed) token texts in `text` become their ids.
    ///   User-defined tokens are always matched, as in llama.cpp.
    /// The text between special tokens is then encoded by the vocabulary's algorithm.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addSpecial && vocabulary.addBOS, let bos = vocabulary.bosTokenID { out.append(bos) }
        var bytes = Array(text.utf8)
        out.reserveCapacity(bytes.count / 3 + 2)
        let fragments = partition(bytes, parseSpecial: parseSpecial)
        switch algorithm {
        case .bytePairs(let merges, let preTokenizer, let ignoreMerges):
            bytes.withUnsafeMutableBufferPointer { buf in
                let ro = UnsafeBufferPointer(buf)
                for f in fragments {
                    if f.id >= 0 {
                        out.append(f.id)
                    } else {
                        encodeText(ro, f.range, merges, preTokenizer, ignoreMerges, into: &out)
                    }
                }
            }
        case .sentencePiece(let spm):
            // The space prefix goes before text at the start or right after a special token.
            var afterSpecial = true
            for f in fragments {
                if f.id >= 0 {
                    out.append(f.id)
                    afterSpecial = true
                } else {
                    spm.encode(bytes[f.range], spacePrefix: spm.addSpacePrefix && afterSpecial, into: &out)
                    afterSpecial = false
                }
            }
        }
        if addSpecial && vocabulary.addEOS, let eos = vocabulary.eosTokenID { out.append(eos) }
        return out
    }

    private struct Fragment { var range: Range<Int>; var id: Int }   // id -1: raw text

    /// Splits the text on special-token occurrences, longest special first (llama.cpp order).
    /// A special is searched for only when each of its adjacent byte pairs occurs somewhere in
    /// the text; the others cannot occur. This matters with thousands of specials (Gemma has
    /// 6,414, mostly `<unusedN>`).
    private func partition(_ bytes: [UInt8], parseSpecial: Bool) -> [Fragment] {
        var fragments = [Fragment(range: 0..<bytes.count, id: -1)]
        if bytes.isEmpty { return [] }
        let present = BytePairSet(bytes)
        bytes.withUnsafeBufferPointer { b in
            for special in specials {
                if special.controlOrUnknown && !parseSpecial { continue }
                if !present.mayContain(special.bytes) { continue }
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
    private func encodeText(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ merges: BPEMerges,
                            _ preTokenizer: PreTokenizer, _ ignoreMerges: Bool, into out: inout [Int]) {
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
            if ignoreMerges, let id = index.id(ByteEncoding.encode(word)) {
                out.append(id)
                continue
            }
            merges.encodeWord(word, into: &out)
        }
    }
}

/// The bytes and adjacent byte pairs that occur in a text, as bit sets.
private struct BytePairSet {
    private var singles = [UInt64](repeating: 0, count: 4)
    private var pairs = [UInt64](repeating: 0, count: 1024)

    init(_ bytes: [UInt8]) {
        var previous = -1
        for byte in bytes {
            let x = Int(byte)
            singles[x >> 6] |= 1 << UInt64(x & 63)
            if previous >= 0 {
                let p = previous << 8 | x
                pairs[p >> 6] |= 1 << UInt64(p & 63)
            }
            previous = x
        }
    }

    /// False when `pattern` cannot occur in the text: one of its bytes (one-byte patterns) or
    /// adjacent pairs never does.
    func mayContain(_ pattern: [UInt8]) -> Bool {
        if pattern.count == 1 {
            let x = Int(pattern[0])
            return singles[x >> 6] & (1 << UInt64(x & 63)) != 0
        }
        for i in 1..<pattern.count {
            let p = Int(pattern[i - 1]) << 8 | Int(pattern[i])
            if pairs[p >> 6] & (1 << UInt64(p & 63)) == 0 { return false }
        }
        return true
    }
}
