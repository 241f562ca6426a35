import Foundation
import Testing
import Tokenization

/// Tests against the real SmolLM2-135M vocabulary and llama.cpp's reference token ids.
@Suite(.enabled(if: Fixtures.realTokenizer != nil, "SmolLM2 model file not found"))
struct RealVocabularyTests {
    var tokenizer: Tokenizer { Fixtures.realTokenizer! }

    @Test func metadataIsUnderstood() {
        let t = tokenizer
        #expect(t.vocabularySize == 49152)
        #expect(t.preTokenizerKind == .digitsThenGPT2)
        #expect(t.bosTokenID == 1)
        #expect(t.isControl(0) && t.isControl(1) && t.isControl(2))
        #expect(!t.isControl(504))
        #expect(t.endOfGenerationTokenIDs.contains(2))   // eos, <|im_end|>
        #expect(t.endOfGenerationTokenIDs.contains(0))   // <|endoftext|>
        #expect(!t.endOfGenerationTokenIDs.contains(1))
        #expect(t.chatTemplate.kind == "chatml")
        #expect(!t.chatTemplate.isFallback)
        #expect(t.chatTemplate.defaultSystemMessage == "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    }

    @Test(.enabled(if: !Fixtures.referencePrompts.isEmpty, "reference JSON not found"),
          arguments: Fixtures.referencePrompts)
    func matchesLlamaCppPromptIDs(_ prompt: Fixtures.ReferencePrompt) throws {
        let ids = tokenizer.encode(prompt.text)
        #expect(ids == prompt.ids)
        #expect(try tokenizer.decode(ids) == prompt.text)
    }

    @Test(.enabled(if: Fixtures.referencePrompts.count >= 4, "reference JSON not found"))
    func chatTemplateRendersReferencePrompt() {
        let expected = Fixtures.referencePrompts.first { $0.id == "chat_templated" }!
        let rendered = tokenizer.chatTemplate.render(
            [ChatMessage(role: "user", content: "What is the capital of France?")], addGenerationPrompt: true)
        #expect(rendered == expected.text)
        #expect(tokenizer.encode(rendered) == expected.ids)
    }

    @Test func chatTemplateKeepsExplicitSystemMessage() {
        let rendered = tokenizer.chatTemplate.render(
            [ChatMessage(role: "system", content: "Be terse."), ChatMessage(role: "user", content: "Hi"),
             ChatMessage(role: "assistant", content: "Hello.")], addGenerationPrompt: false)
        #expect(rendered == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n")
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/share/common-licenses/GPL-3")
                      && Fixtures.gpl3TokenCount != nil, "GPL-3 text or reference JSON not found"))
    func gpl3TokenCountAndSpeed() throws {
        let text = try String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        let expected = try #require(Fixtures.gpl3TokenCount)
        let clock = ContinuousClock()
        var ids: [Int] = []
        let elapsed = clock.measure { ids = tokenizer.encode(text) }
        #expect(ids.count == expected)
        #expect(try tokenizer.decode(ids) == text)
        print("GPL-3: \(text.utf8.count) bytes -> \(ids.count) tokens in \(elapsed)")
        #expect(elapsed < .seconds(60), "hang detection: a quadratic merge takes minutes here")
    }

    static let trickyTexts: [String] = [
        "",
        " ",
        "Hello, world!",
        "  leading and trailing spaces   ",
        "tabs\tand\t\ttabs\n\nnew\r\nlines\n",
        "multiple     spaces    between\u{00A0}words",
        "digits 1234567890 3.14159 1e-9 -42 ١٢٣ ²³",
        "contractions: I'm, you're, he's, we've, they'll, I'd, don't, CAN'T, 'tis",
        "emoji 🦜🤖 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽",
        "CJK 東京は日本の首都です。中文测试。한국어 텍스트",
        "combining: e\u{0301} a\u{0308}\u{0323} Z\u{0335}\u{0336} नमस्ते",
        "Ελληνικά, русский, עברית, العربية, ქართული",
        "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞ ≠ ≤",
        "code: func f(x: Int) -> [String: Int] { return [:] } // ok",
        "control \u{01}\u{1F}\u{7F} chars",
        "<|im_start|> not special <|im_end|>",
        "<|im_start|<|im_end|>>",
    ]

    @Test(arguments: trickyTexts)
    func roundTrips(_ text: String) throws {
        // \u{01} etc. have no byte token in this vocabulary (llama.cpp drops them too).
        let droppable: Set<Unicode.Scalar> = ["\u{04}", "\u{06}", "\u{13}", "\u{14}", "\u{16}", "\u{1D}"]
        let expected = String(String.UnicodeScalarView(text.unicodeScalars.filter { !droppable.contains($0) }))
        let ids = tokenizer.encode(text)
        #expect(try tokenizer.decode(ids) == expected)
        let raw = tokenizer.encode(text, parseSpecial: false)
        #expect(try tokenizer.decode(raw) == expected)
        #expect(!raw.contains { tokenizer.isControl($0) })
    }

    @Test func specialTokenParsingOnOff() throws {
        let text = "<|im_start|>user\nHi<|im_end|>\n"
        let parsed = tokenizer.encode(text)
        #expect(parsed.first == 1)
        #expect(parsed.contains(2))
        let literal = tokenizer.encode(text, parseSpecial: false)
        #expect(!literal.contains(1) && !literal.contains(2))
        #expect(literal.count > parsed.count)
        #expect(try tokenizer.decode(literal) == text)
        #expect(try tokenizer.decode(parsed) == text)
        #expect(try tokenizer.decode(parsed, skipSpecial: true) == "user\nHi\n")
        #expect(try tokenizer.pieceBytes(2) == Array("<|im_end|>".utf8))
        #expect(try tokenizer.pieceBytes(3575) == Array(" capital".utf8))
    }

    @Test func invalidIDsThrow() {
        #expect(tokenizerError { try tokenizer.decode([504, 49152]) } == .invalidTokenID(49152))
        #expect(tokenizerError { try tokenizer.pieceBytes(-1) } == .invalidTokenID(-1))
        var d = StreamingDecoder(tokenizer: tokenizer)
        #expect(tokenizerError { try d.append(1 << 20) } == .invalidTokenID(1 << 20))
    }

    @Test func emptyString() {
        #expect(tokenizer.encode("") == [])
        #expect(tokenizer.encode("", addSpecial: true, parseSpecial: false) == [])
    }

    @Test func streamingNeverSplitsACharacter() throws {
        let text = "Parrot 🦜, robot 🤖, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, ქართული, 東京 — done."
        let ids = tokenizer.encode(text)
        // The sequence must really contain tokens that end inside a multi-byte character.
        let partial = try ids.filter { String(validating: try tokenizer.pieceBytes($0), as: UTF8.self) == nil }
        #expect(!partial.isEmpty)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var chunks: [String] = []
        var sawHeldBack = false
        for id in ids {
            let chunk = try decoder.append(id)
            if decoder.pendingByteCount > 0 { sawHeldBack = true }
            chunks.append(chunk)
        }
        chunks.append(decoder.finish())
        #expect(sawHeldBack)
        #expect(!chunks.contains { $0.unicodeScalars.contains("\u{FFFD}") })
        #expect(chunks.joined() == (try tokenizer.decode(ids)))
        #expect(chunks.joined() == text)
    }

    @Test func streamingSkipsSpecialsWhenAsked() throws {
        let ids = tokenizer.encode("<|im_start|>assistant\nOK<|im_end|>")
        var d = StreamingDecoder(tokenizer: tokenizer, skipSpecial: true)
        var s = ""
        for id in ids { s += try d.append(id) }
        s += d.finish()
        #expect(s == "assistant\nOK")
    }

    @Test func longWordMergeLoopAgreesWithShortWordLoop() {
        let t = tokenizer
        var rng = SystemRandomNumberGenerator()
        let pieces = ["the", "ing", " capital", "é", "東京", "🦜", "ab", "zz", "q", "tion", "x", "ää", "-", "  "]
        for _ in 0..<300 {
            var w = ""
            for _ in 0..<Int.random(in: 1...40, using: &rng) { w += pieces.randomElement(using: &rng)! }
            #expect(t._bpe(w) == t._bpe(w, longWordAlgorithm: true), "\(w)")
        }
    }

    @Test func hugeSingleWordIsFast() throws {
        let word = String(repeating: "abcdefghij", count: 20_000)   // one 200 kB \p{L}+ piece
        let clock = ContinuousClock()
        var ids: [Int] = []
        let elapsed = clock.measure { ids = tokenizer.encode(word) }
        #expect(try tokenizer.decode(ids) == word)
        #expect(elapsed < .seconds(60), "hang detection: a quadratic merge takes minutes here")
        let spaces = String(repeating: " ", count: 100_000) + "x"
        #expect(try tokenizer.decode(tokenizer.encode(spaces)) == spaces)
    }
}
