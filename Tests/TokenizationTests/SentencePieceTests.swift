import Testing
import Tokenization

/// A small SentencePiece vocabulary: 0 <unk> (unknown), 1 <s> (control, bos), 2 </s> (control, eos),
/// then the 256 byte tokens <0x00>..<0xFF> (ids 3...258), then `pieces` (ids from 259), each with
/// its score and type (1 normal, 3 control, 4 user-defined, ...).
func spmVocabulary(_ pieces: [(text: String, score: Float, type: Int)], byteTokens: Bool = true,
                   unknown: Bool = true, addSpacePrefix: Bool? = false, addBOS: Bool = false,
                   addEOS: Bool = false) -> Vocabulary {
    var tokens = ["<unk>", "<s>", "</s>"]
    var types = [2, 3, 3]
    var scores: [Float] = [0, 0, 0]
    for b in 0..<256 {
        let hex = String(b, radix: 16, uppercase: true)
        tokens.append(byteTokens ? "<0x\(hex.count == 1 ? "0" + hex : hex)>" : "<notbyte\(b)>")
        types.append(byteTokens ? 6 : 1)
        scores.append(0)
    }
    for p in pieces {
        tokens.append(p.text); types.append(p.type); scores.append(p.score)
    }
    return Vocabulary(tokens: tokens, tokenTypes: types, scores: scores,
                      bosTokenID: 1, eosTokenID: 2, unknownTokenID: unknown ? 0 : nil,
                      addBOS: addBOS, addEOS: addEOS, addSpacePrefix: addSpacePrefix, model: "llama")
}

/// Id of byte `b`'s `<0xNN>` token in `spmVocabulary`.
func byteID(_ b: UInt8) -> Int { 3 + Int(b) }

/// Unit tests of the SentencePiece path on hand-made vocabularies (no model file needed).
struct SentencePieceTests {
    // 259 a, 260 b, 261 c, 262 ab, 263 bc, 264 abc, 265 ▁, 266 ▁a, 267 aa.
    func abc(ab: Float, bc: Float, abcScore: Float? = nil) -> [(text: String, score: Float, type: Int)] {
        var p: [(text: String, score: Float, type: Int)] = [
            ("a", -1, 1), ("b", -1, 1), ("c", -1, 1), ("ab", ab, 1), ("bc", bc, 1),
        ]
        if let abcScore { p.append(("abc", abcScore, 1)) }
        return p
    }

    @Test func mergesByHighestScore() throws {
        let abFirst = try Tokenizer(spmVocabulary(abc(ab: -2, bc: -3)))
        #expect(abFirst.model == .sentencePiece)
        #expect(abFirst.encode("abc") == [262, 261])
        let bcFirst = try Tokenizer(spmVocabulary(abc(ab: -3, bc: -2)))
        #expect(bcFirst.encode("abc") == [259, 263])
        // The id order does not matter, only the score.
        let chained = try Tokenizer(spmVocabulary(abc(ab: -3, bc: -2, abcScore: -10)))
        #expect(chained.encode("abc") == [264])
        #expect(chained.encode("abcab") == [264, 262])
        // A merged text must be a token: "ca" is not, so "cab" stays c + ab.
        #expect(chained.encode("cab") == [261, 262])
    }

    @Test func equalScoresMergeLeftmostFirst() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1), ("aa", -2, 1)]))
        #expect(t.encode("aaa") == [260, 259])
        #expect(t.encode("aaaa") == [260, 260])
        #expect(t.encode("aaaaa") == [260, 260, 259])
        let long = String(repeating: "a", count: 201)
        #expect(t.encode(long) == [Int](repeating: 260, count: 100) + [259])
        #expect(t._bpe("aaa") == [260, 259])
    }

    @Test func byteFallbackForMissingCharacters() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1)]))
        #expect(t.encode("🦙") == [0xF0, 0x9F, 0xA6, 0x99].map(byteID))
        #expect(t.encode("a🦙a") == [259] + [0xF0, 0x9F, 0xA6, 0x99].map(byteID) + [259])
        #expect(t.encode("x") == [byteID(0x78)])
        #expect(t.encode("\u{0}") == [byteID(0)])
        // The literal text of a byte token is not that token.
        #expect(t.encode("<0x41>") == Array("<0x41>".utf8).map(byteID))
        #expect(try t.decode(t.encode("a🦙é\u{0}x")) == "a🦙é\u{0}x")
        #expect(try t.pieceBytes(byteID(0xF0)) == [0xF0])
    }

    @Test func spacesAreEscapedAndPrefixedOnlyWhenAsked() throws {
        let pieces: [(text: String, score: Float, type: Int)] = [("a", -1, 1), ("b", -1, 1), ("▁", -1, 1), ("▁a", -2, 1)]
        let plain = try Tokenizer(spmVocabulary(pieces, addSpacePrefix: false))
        #expect(plain.encode("a") == [259])
        #expect(plain.encode("b a") == [260, 262])
        #expect(plain.encode(" a") == [262])
        #expect(plain.encode("a  ") == [259, 261, 261])
        #expect(try plain.decode([260, 262, 261]) == "b a ")
        #expect(try plain.pieceBytes(262) == Array(" a".utf8))
        let prefixed = try Tokenizer(spmVocabulary(pieces, addSpacePrefix: true))
        #expect(prefixed.encode("a") == [262])
        #expect(prefixed.encode("a a") == [262, 262])
        // After a special token the next text is prefixed again; not in the middle.
        #expect(prefixed.encode("a<s>a") == [262, 1, 262])
        // Absent add_space_prefix means true for SentencePiece (llama.cpp's default).
        let absent = try Tokenizer(spmVocabulary(pieces, addSpacePrefix: nil))
        #expect(absent.vocabulary.addSpacePrefix == nil)
        #expect(absent.encode("a") == [262])
    }

    @Test func userDefinedTokensSplitFirstControlTokensOnlyWhenParsed() throws {
        // 259 a, 260 "  " user-defined, 261 "<b>" user-defined, 262 "<ctl>" control, 263 "<b" normal.
        let v = spmVocabulary([("a", -1, 1), ("  ", -1000, 4), ("<b>", -1000, 4), ("<ctl>", -1000, 3), ("<b", -1, 1)])
        let t = try Tokenizer(v)
        #expect(t.encode("a  a", parseSpecial: false) == [259, 260, 259])
        #expect(t.encode("<b>a", parseSpecial: false) == [261, 259])
        #expect(t.encode("a<ctl>", parseSpecial: true) == [259, 262])
        #expect(t.encode("a<ctl>", parseSpecial: false) == [259] + Array("<ctl>".utf8).map(byteID))
        #expect(t.encode("<s>", parseSpecial: true) == [1])
        #expect(!t.encode("<s>", parseSpecial: false).contains(1))
        // Longest special first: "    " is two "  " runs, and "<b>" wins over the normal "<b".
        #expect(t.encode("    ", parseSpecial: false) == [260, 260])
        // Decoding: user-defined verbatim, control text unless skipped.
        #expect(try t.decode([261, 259, 262, 260]) == "<b>a<ctl>  ")
        #expect(try t.decode([261, 259, 262, 260], skipSpecial: true) == "<b>a  ")
        // With add_space_prefix, a user-defined token counts as special: the text after it is prefixed.
        let p = try Tokenizer(spmVocabulary([("a", -1, 1), ("  ", -1000, 4), ("▁a", -2, 1)], addSpacePrefix: true))
        #expect(p.encode("a  a", parseSpecial: false) == [261, 260, 261])
    }

    @Test func bosAndEosFollowTheVocabulary() throws {
        let pieces: [(text: String, score: Float, type: Int)] = [("a", -1, 1)]
        let bos = try Tokenizer(spmVocabulary(pieces, addBOS: true))
        #expect(bos.encode("a") == [1, 259])
        #expect(bos.encode("a", addSpecial: false) == [259])
        #expect(bos.encode("") == [1])
        #expect(bos.encode("<s>a") == [1, 1, 259])   // llama.cpp also gives two BOS here
        let both = try Tokenizer(spmVocabulary(pieces, addBOS: true, addEOS: true))
        #expect(both.encode("a") == [1, 259, 2])
        #expect(both.endOfGenerationTokenIDs == [2])
        let none = try Tokenizer(spmVocabulary(pieces))
        #expect(none.encode("a") == [259])
    }

    @Test func endOfGenerationNames() throws {
        // A user-defined "</s>" and "<end_of_turn>" are EOG by name and become control
        // (the helper's own id-2 "</s>" is renamed so the texts are unique).
        var v = spmVocabulary([("</s>", -1000, 4), ("<end_of_turn>", -1000, 4), ("a", -1, 1)])
        v.tokens[2] = "[END]"
        let t = try Tokenizer(v)
        #expect(t.endOfGenerationTokenIDs == [2, 259, 260])
        #expect(t.isControl(259) && t.isControl(260) && t.tokenType(261) == .normal)
        #expect(t.encode("</s>") == [259])
        #expect(!t.encode("</s>", parseSpecial: false).contains(259))
        // Where "<|tool_response>" is EOG too (Gemma 4), llama.cpp keeps "</s>" as normal text.
        v = spmVocabulary([("<|tool_response>", -1000, 3), ("</s>", -1000, 4)])
        v.tokens[2] = "[END]"
        let g4 = try Tokenizer(v)
        #expect(g4.endOfGenerationTokenIDs == [2, 259])
        #expect(g4.tokenType(260) == .normal)
        // gpt-oss style: "<|end|>" is not EOG when "<|return|>" and "<|call|>" are.
        let oss = try Tokenizer(spmVocabulary([("<|return|>", 0, 3), ("<|call|>", 0, 3), ("<|end|>", 0, 3)]))
        #expect(oss.endOfGenerationTokenIDs == [2, 259, 260])
        #expect(oss.tokenType(261) == .userDefined)
    }

    @Test func lookupsAreByteExact() throws {
        // Precomposed and decomposed é are different tokens; Swift String equality would merge them.
        let t = try Tokenizer(spmVocabulary([("\u{E9}", -1, 1), ("e", -1, 1), ("\u{301}", -1, 1), ("e\u{301}", -2, 1)]))
        #expect(t.tokenID(forText: "\u{E9}") == 259)
        #expect(t.tokenID(forText: "e\u{301}") == 262)
        #expect(t.encode("\u{E9}") == [259])
        #expect(t.encode("e\u{301}") == [262])
    }

    @Test func streamingHoldsBackByteFallbackCharacters() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1)]))
        let ids = t.encode("a🦙é")
        #expect(ids == [259] + [0xF0, 0x9F, 0xA6, 0x99, 0xC3, 0xA9].map(byteID))
        var d = StreamingDecoder(tokenizer: t)
        var chunks: [String] = []
        for id in ids { chunks.append(try d.append(id)) }
        #expect(chunks == ["a", "", "", "", "🦙", "", "é"])
        #expect(d.finish() == "")
        // A character cut short at the end is flushed as U+FFFD, a stray continuation byte at once.
        var e = StreamingDecoder(tokenizer: t)
        #expect(try e.append(byteID(0xE2)) == "" && e.pendingByteCount == 1)
        #expect(try e.append(byteID(0x96)) == "" && e.pendingByteCount == 2)
        #expect(e.finish() == "\u{FFFD}")
        var f = StreamingDecoder(tokenizer: t)
        #expect(try f.append(byteID(0x80)) == "\u{FFFD}")
        #expect(try f.append(259) == "a")
    }

    @Test func randomTextRoundTrips() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1), ("ab", -2, 1), ("▁", -3, 1), ("▁a", -4, 1), ("é", -5, 1)]))
        var rng = SystemRandomNumberGenerator()
        let alphabet: [String] = ["a", "b", " ", "é", "e\u{301}", "🦙", "東", "\n", "\u{0}", "<", "0x41>"]
        for _ in 0..<300 {
            var s = ""
            for _ in 0..<Int.random(in: 0...30, using: &rng) { s += alphabet.randomElement(using: &rng)! }
            let ids = t.encode(s, parseSpecial: false)
            #expect(try t.decode(ids).utf8.elementsEqual(s.utf8), "\(s.debugDescription)")
        }
    }

    // MARK: Corrupt input

    @Test func corruptVocabulariesThrowTypedErrors() {
        var v = spmVocabulary([("a", -1, 1)])
        v.scores.removeLast()
        #expect(tokenizerError { try Tokenizer(v) } == .scoreCountMismatch(tokens: 260, scores: 259))
        v.scores = []
        #expect(tokenizerError { try Tokenizer(v) } == .scoreCountMismatch(tokens: 260, scores: 0))

        // No byte tokens and no unknown token: some byte could not be encoded.
        v = spmVocabulary([("a", -1, 1)], byteTokens: false, unknown: false)
        #expect(tokenizerError { try Tokenizer(v) } == .missingByteToken(0))
        #expect(TokenizerError.missingByteToken(0xA).description.contains("<0x0A>"))

        v = spmVocabulary([("a", -1, 1)]); v.tokens[3 + 0x41] = "<0xZZ>"
        #expect(tokenizerError { try Tokenizer(v) } == .malformedByteToken(index: 3 + 0x41, text: "<0xZZ>"))
        v = spmVocabulary([("a", -1, 1)]); v.tokens[3] = "A"
        #expect(tokenizerError { try Tokenizer(v) } == .malformedByteToken(index: 3, text: "A"))

        v = spmVocabulary([]); v.tokenTypes[5] = 99
        #expect(tokenizerError { try Tokenizer(v) } == .invalidTokenType(index: 5, type: 99))
        v = spmVocabulary([]); v.unknownTokenID = -3
        #expect(tokenizerError { try Tokenizer(v) } == .badSpecialTokenID(name: "unk", id: -3))
        v = spmVocabulary([]); v.model = "bert"
        #expect(tokenizerError { try Tokenizer(v) } == .unsupportedModel("bert"))
        v = Vocabulary(tokens: [], model: "llama")
        #expect(tokenizerError { try Tokenizer(v) } == .emptyVocabulary)
    }

    @Test func missingByteTokensFallBackToUnknown() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1)], byteTokens: false, unknown: true))
        #expect(t.encode("a🦙") == [259, 0, 0, 0, 0])
        #expect(t.encode("x") == [0])
        #expect(try t.decode([259, 0]) == "a<unk>")
    }

    @Test func oddScoresDoNotCrash() throws {
        var v = spmVocabulary([("a", -1, 1), ("aa", .nan, 1), ("aaa", .infinity, 1), ("aaaa", -.infinity, 1)])
        let t = try Tokenizer(v)
        let ids = t.encode(String(repeating: "a", count: 50))
        #expect(try t.decode(ids) == String(repeating: "a", count: 50))
        // Duplicate texts: the later id wins, as in llama.cpp.
        v = spmVocabulary([("a", -1, 1), ("a", -1, 1)])
        #expect(try Tokenizer(v).encode("a") == [260])
    }

    @Test func absurdIDsThrow() throws {
        let t = try Tokenizer(spmVocabulary([("a", -1, 1)]))
        #expect(tokenizerError { try t.decode([259, 260]) } == .invalidTokenID(260))
        #expect(tokenizerError { try t.decode([Int.max]) } == .invalidTokenID(Int.max))
        #expect(tokenizerError { try t.decode([Int.min]) } == .invalidTokenID(Int.min))
        #expect(tokenizerError { try t.pieceBytes(-1) } == .invalidTokenID(-1))
        var d = StreamingDecoder(tokenizer: t)
        #expect(tokenizerError { try d.append(1 << 40) } == .invalidTokenID(1 << 40))
        #expect(t.tokenType(-7) == nil && !t.isControl(Int.max))
    }
}
