import Foundation
import Testing
import Tokenization

/// Tests against the real Gemma 3 270M SentencePiece vocabulary and llama.cpp's reference ids.
@Suite(.enabled(if: GemmaFixtures.tokenizer != nil,
                "Gemma 3 270M model file not found (set MESHINFER_GEMMA_MODEL, or put gemma-3-270m-q4_k_m.gguf in $MESHINFER_CACHE or ~/.cache/meshinfer)"))
struct GemmaVocabularyTests {
    var tokenizer: Tokenizer { GemmaFixtures.tokenizer! }

    @Test func metadataIsUnderstood() throws {
        let t = tokenizer
        print("Gemma tokenizer built in \(String(format: "%.3f", GemmaFixtures.buildSeconds)) s")
        #expect(t.model == .sentencePiece)
        #expect(t.preTokenizerKind == nil)
        #expect(t.vocabularySize == 262_144)
        #expect(t.vocabulary.addSpacePrefix == false)
        #expect(t.bosTokenID == 2 && t.eosTokenID == 1)
        // eos, <end_of_turn> by name, and '</s>' (an HTML tag here) which llama.cpp makes EOG by name.
        #expect(t.endOfGenerationTokenIDs == [1, 106, 212])
        #expect(t.isControl(212) && t.tokenType(212) == .control)
        #expect(t.isControl(2) && t.isControl(105) && t.isControl(106) && t.isControl(6))   // 6: <unused0>
        #expect(t.tokenType(138) == .userDefined && t.tokenType(238) == .byte && t.tokenType(236743) == .normal)
        #expect(t.tokenID(forText: "<0x41>") == 238 + 0x41)
        #expect(t.tokenID(forText: "▁") == 236743)
        #expect(try t.pieceBytes(238) == [0x00])
        #expect(try t.pieceBytes(238 + 0xF0) == [0xF0])
        #expect(try t.pieceBytes(236743) == [0x20])
        #expect(try t.pieceBytes(138) == Array("  ".utf8))
        #expect(try t.pieceBytes(105) == Array("<start_of_turn>".utf8))
        // No template in the file: Gemma's turn tokens select Gemma's turn format.
        #expect(t.chatTemplate.kind == "gemma")
        #expect(t.chatTemplate.render([ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
                == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    }

    @Test(.enabled(if: !GemmaFixtures.cases.isEmpty, "Gemma reference JSON not found"),
          arguments: GemmaFixtures.cases)
    func matchesLlamaCppTokenizerCase(_ c: GemmaFixtures.Case) throws {
        let t = tokenizer
        let ids = t.encode(c.text)
        #expect(ids == c.ids)
        #expect(ids.map { t.vocabulary.tokens[$0] } == c.tokenTexts)
        #expect(t.encode(c.text, parseSpecial: false) == c.idsSpecialFalse)
        // Pieces as llama.cpp's token_to_piece(special=true); a byte token that is not UTF-8 on its own
        // is shown by its vocabulary text in the JSON.
        for (id, piece) in zip(c.ids, c.tokenPieces) where !(t.tokenType(id) == .byte && piece == t.vocabulary.tokens[id]) {
            #expect(try t.pieceBytes(id) == Array(piece.utf8), "token \(id)")
        }
        // Detokenization: llama_detokenize(remove_special: true) only drops the leading BOS.
        #expect(try t.decode(ids) == c.detokenizedWithBOS)
        #expect(try t.decode(Array(ids.dropFirst())) == c.detokenized)
        if c.roundTripExact { #expect(try t.decode(Array(ids.dropFirst())) == c.text) }
        if let s = c.detokenizedSpecialFalse { #expect(try t.decode(Array(c.idsSpecialFalse.dropFirst())) == s) }
        if let s = c.detokenizedWithoutSpecialPieces { #expect(try t.decode(ids, skipSpecial: true) == s) }
        // Streaming gives the same text, chunk by chunk, never a broken character.
        var d = StreamingDecoder(tokenizer: t)
        var chunks: [String] = []
        for id in ids.dropFirst() { chunks.append(try d.append(id)) }
        chunks.append(d.finish())
        #expect(chunks.joined() == c.detokenized)
        #expect(!chunks.contains { $0.unicodeScalars.contains("\u{FFFD}") })
    }

    @Test(.enabled(if: !GemmaFixtures.prompts.isEmpty, "Gemma reference JSON not found"),
          arguments: GemmaFixtures.prompts)
    func matchesLlamaCppPromptIDs(_ prompt: Fixtures.ReferencePrompt) throws {
        let ids = tokenizer.encode(prompt.text)
        #expect(ids == prompt.ids)
        #expect(try tokenizer.decode(Array(ids.dropFirst())) == prompt.text)
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/share/common-licenses/GPL-3")
                      && GemmaFixtures.gpl3TokenCount != nil, "GPL-3 text or Gemma reference JSON not found"))
    func gpl3TokenCountAndSpeed() throws {
        var text = try String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        if text.hasSuffix("\n") { text.removeLast() }   // llama-perplexity drops one trailing newline
        let expected = try #require(GemmaFixtures.gpl3TokenCount)
        let clock = ContinuousClock()
        var ids: [Int] = []
        let elapsed = clock.measure { ids = tokenizer.encode(text, addSpecial: true, parseSpecial: false) }
        #expect(ids.count == expected)
        #expect(try tokenizer.decode(Array(ids.dropFirst())) == text)
        print("GPL-3 (Gemma): \(text.utf8.count) bytes -> \(ids.count) tokens in \(elapsed)")
        #expect(elapsed < .seconds(60), "hang detection: a quadratic merge takes minutes here")
    }

    @Test func userDefinedTokensSplitWithoutParseSpecial() throws {
        let t = tokenizer
        let a = try #require(t.tokenID(forText: "a")), b = try #require(t.tokenID(forText: "b"))
        // Two spaces are user-defined token 138; the word after them gets no '▁'.
        #expect(t.encode("a  b", addSpecial: false, parseSpecial: false) == [a, 138, b])
        // 40 spaces: the longest run (31, id 167) first, then 9 (id 145).
        #expect(t.encode(String(repeating: " ", count: 40), addSpecial: false, parseSpecial: false) == [167, 145])
        // Control tokens are text unless parsed; '</s>' is control here, '<s>' (203) stays user-defined.
        #expect(t.encode("<s>x</s>", addSpecial: false).last == 212)
        #expect(!t.encode("<s>x</s>", addSpecial: false, parseSpecial: false).contains(212))
        #expect(t.encode("<s>x</s>", addSpecial: false, parseSpecial: false).first == 203)
        #expect(t.encode("<start_of_turn>", addSpecial: false) == [105])
        #expect(t.encode("<start_of_turn>", addSpecial: false, parseSpecial: false).count > 1)
    }

    @Test func byteFallbackAndNormalization() throws {
        let t = tokenizer
        // 🦙 is not in the vocabulary: its four UTF-8 bytes.
        #expect(t.encode("🦙", addSpecial: false) == [0xF0, 0x9F, 0xA6, 0x99].map { 238 + $0 })
        #expect(t.encode("\r", addSpecial: false) == [238 + 0x0D])
        // Precomposed and decomposed é are different tokens (no normalization, byte-exact lookup).
        let nfc = t.encode("\u{E9}", addSpecial: false), nfd = t.encode("e\u{301}", addSpecial: false)
        #expect(nfc != nfd)
        #expect(try t.decode(nfc).unicodeScalars.elementsEqual("\u{E9}".unicodeScalars))
        #expect(try t.decode(nfd).unicodeScalars.elementsEqual("e\u{301}".unicodeScalars))
    }

    @Test func streamingByteFallbackNeverSplitsACharacter() throws {
        let t = tokenizer
        let text = "I love 🦙 and 🦙🦙, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ done"
        let ids = t.encode(text, addSpecial: false)
        #expect(ids.contains { t.tokenType($0) == .byte })
        var d = StreamingDecoder(tokenizer: t)
        var chunks: [String] = []
        var sawHeldBack = false
        for id in ids {
            chunks.append(try d.append(id))
            if d.pendingByteCount > 0 { sawHeldBack = true }
        }
        chunks.append(d.finish())
        #expect(sawHeldBack)
        #expect(!chunks.contains { $0.unicodeScalars.contains("\u{FFFD}") })
        #expect(chunks.joined() == text)
    }

    @Test func invalidIDsThrow() {
        let t = tokenizer
        #expect(tokenizerError { try t.decode([2, 262_144]) } == .invalidTokenID(262_144))
        #expect(tokenizerError { try t.decode([Int.min]) } == .invalidTokenID(Int.min))
        #expect(tokenizerError { try t.pieceBytes(Int.max) } == .invalidTokenID(Int.max))
        var d = StreamingDecoder(tokenizer: t)
        #expect(tokenizerError { try d.append(-1) } == .invalidTokenID(-1))
        #expect(!t.isControl(-1) && t.tokenType(1 << 40) == nil)
    }

    @Test func emptyString() {
        #expect(tokenizer.encode("") == [2])
        #expect(tokenizer.encode("", addSpecial: false) == [])
    }

    @Test func longInputIsFast() throws {
        // A 100 kB word with no spaces (one fragment), and 100k spaces (user-defined runs).
        // (Release builds take about 25 ms for the word; the bound only detects a hang.)
        let word = String(repeating: "abcdefghij", count: 10_000)
        let clock = ContinuousClock()
        var ids: [Int] = []
        let elapsed = clock.measure { ids = tokenizer.encode(word, addSpecial: false) }
        #expect(try tokenizer.decode(ids) == word)
        print("Gemma: 100 kB word -> \(ids.count) tokens in \(elapsed)")
        #expect(elapsed < .seconds(60), "hang detection: a quadratic merge takes minutes here")
        let spaces = String(repeating: " ", count: 100_000) + "x"
        #expect(try tokenizer.decode(tokenizer.encode(spaces, addSpecial: false)) == spaces)
    }
}
