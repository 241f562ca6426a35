import Testing
import Tokenization

/// Unit tests on small hand-made vocabularies (no model file needed).
struct HandMadeVocabularyTests {
    /// ids: 0...255 bytes, then 256 "ab", 257 "bc", 258 "abc", 259 "aa".
    func abcVocabulary(merges: [String]) -> Vocabulary {
        byteVocabulary(extra: ["ab", "bc", "abc", "aa"], merges: merges)
    }
    let a = Int(UInt8(ascii: "a")), b = Int(UInt8(ascii: "b")), c = Int(UInt8(ascii: "c"))

    @Test func mergesApplyLowestRankFirst() throws {
        let bcFirst = try Tokenizer(abcVocabulary(merges: ["b c", "a b"]))
        #expect(bcFirst.encode("abc") == [a, 257])
        let abFirst = try Tokenizer(abcVocabulary(merges: ["a b", "b c"]))
        #expect(abFirst.encode("abc") == [256, c])
        let chained = try Tokenizer(abcVocabulary(merges: ["b c", "a b", "a bc"]))
        #expect(chained.encode("abc") == [258])
        #expect(chained.encode("abcab") == [258, 256])
        // A merge whose result is later merged again, by rank across the word.
        let chained2 = try Tokenizer(abcVocabulary(merges: ["a b", "ab c"]))
        #expect(chained2.encode("cabc") == [c, 258])
        for t in [bcFirst, abFirst, chained, chained2] {
            for w in ["abc", "abcab", "cabc", "aabbcc", "abcabcbcab"] {
                #expect(t._bpe(w) == t._bpe(w, longWordAlgorithm: true))
            }
        }
    }

    @Test func equalRanksMergeLeftmostFirst() throws {
        let t = try Tokenizer(abcVocabulary(merges: ["a a"]))
        #expect(t.encode("aaa") == [259, a])
        #expect(t.encode("aaaa") == [259, 259])
        #expect(t.encode("aaaaa") == [259, 259, a])
        #expect(t._bpe("aaaaa", longWordAlgorithm: true) == [259, 259, a])
        let long = String(repeating: "a", count: 201)
        #expect(t.encode(long) == [Int](repeating: 259, count: 100) + [a])
    }

    @Test func noMergesMeansBytes() throws {
        let t = try Tokenizer(byteVocabulary())
        let text = "é🦜"
        #expect(t.encode(text) == text.utf8.map { Int($0) })
        #expect(try t.decode(t.encode(text)) == text)
    }

    @Test func preTokenizerBoundariesStopMerges() throws {
        // "a b" would merge "aĠb" only if the pre-tokenizer kept them together.
        let v = byteVocabulary(extra: [encoded(" b"), encoded("a ")], merges: ["Ġ b", "a Ġ"])
        let t = try Tokenizer(v)
        #expect(t.encode("a b") == [a, 256])
    }

    @Test func gpt2PreTokenizer() throws {
        let t = try Tokenizer(byteVocabulary(preTokenizer: "gpt2"))
        #expect(t.preTokenize("Hello world's  end 123 ok!!  \n\n x") ==
                ["Hello", " world", "'s", " ", " end", " 123", " ok", "!!", "  \n\n", " x"])
        #expect(t.preTokenize("a  1") == ["a", " ", " 1"])
        #expect(t.preTokenize("trailing   ") == ["trailing", "   "])
        #expect(t.preTokenize("I'M they'LL") == ["I", "'", "M", " they", "'", "LL"])
    }

    @Test func smollmPreTokenizerIsolatesDigits() throws {
        let t = try Tokenizer(byteVocabulary(preTokenizer: "smollm"))
        #expect(t.preTokenize("a  1") == ["a", "  ", "1"])
        #expect(t.preTokenize("x 2024!") == ["x", " ", "2", "0", "2", "4", "!"])
        #expect(t.preTokenize("v1.5") == ["v", "1", ".", "5"])
        #expect(t.preTokenize("１２") == ["１", "２"])   // fullwidth digits are \p{N}
    }

    @Test func llama3PreTokenizer() throws {
        let t = try Tokenizer(byteVocabulary(preTokenizer: "llama3"))
        #expect(t.preTokenize("Hello  world\n\n  12345 it's OK'S") ==
                ["Hello", " ", " world", "\n\n", " ", " ", "123", "45", " it", "'s", " OK", "'S"])
        #expect(t.preTokenize("x = (y);\n\nz") == ["x", " =", " (", "y", ");\n\n", "z"])
        #expect(t.preTokenize("  \n  a") == ["  \n", " ", " a"])
        #expect(t.preTokenize("end  ") == ["end", "  "])
    }

    @Test func defaultPreTokenizer() throws {
        let t = try Tokenizer(byteVocabulary(preTokenizer: "default"))
        #expect(t.preTokenize("pay $12345, ok?") == ["pay", " ", "$", "123", "45", ",", " ok", "?"])
    }

    @Test func specialTokensAreMatchedLongestFirst() throws {
        // 256 "<s>" control, 257 "<user>" user-defined, 258 "<s>x" control.
        let v = byteVocabulary(extra: ["<s>", "<user>", "<s>x"], extraTypes: [3, 4, 3])
        let t = try Tokenizer(v)
        #expect(t.encode("a<s>b") == [a, 256, b])
        #expect(t.encode("<s>x<s>") == [258, 256])
        #expect(t.encode("<s><user>") == [256, 257])
        // parseSpecial off: control tokens are plain text, user-defined ones still match (llama.cpp).
        let lt = Int(UInt8(ascii: "<")), s = Int(UInt8(ascii: "s")), gt = Int(UInt8(ascii: ">"))
        #expect(t.encode("<s><user>", parseSpecial: false) == [lt, s, gt, 257])
        #expect(try t.decode([256, a, 257]) == "<s>a<user>")
        #expect(try t.decode([256, a, 257], skipSpecial: true) == "a<user>")
    }

    @Test func addBOSAndEOSAreHonoured() throws {
        let v = byteVocabulary(extra: ["<bos>", "<eos>"], extraTypes: [3, 3], addBOS: true, addEOS: true, bos: 256, eos: 257)
        let t = try Tokenizer(v)
        #expect(t.encode("a") == [256, a, 257])
        #expect(t.encode("a", addSpecial: false) == [a])
        #expect(t.encode("") == [256, 257])
        #expect(t.encode("", addSpecial: false) == [])
        #expect(t.bosTokenID == 256)
        #expect(t.endOfGenerationTokenIDs == [257])
        let noBOS = try Tokenizer(byteVocabulary(extra: ["<bos>"], extraTypes: [3], bos: 256))
        #expect(noBOS.encode("a") == [a])
    }

    @Test func streamingHoldsBackIncompleteCharacters() throws {
        let t = try Tokenizer(byteVocabulary())
        let text = "a🦜é"
        var d = StreamingDecoder(tokenizer: t)
        var chunks: [String] = []
        for id in t.encode(text) { chunks.append(try d.append(id)) }
        #expect(chunks == ["a", "", "", "", "🦜", "", "é"])
        #expect(d.finish() == "")
        // An unfinished character is flushed as U+FFFD.
        var e = StreamingDecoder(tokenizer: t)
        #expect(try e.append(0xF0) == "")
        #expect(try e.append(0x9F) == "")
        #expect(e.finish() == "\u{FFFD}")
        // An invalid byte is not held back.
        var f = StreamingDecoder(tokenizer: t)
        #expect(try f.append(0xFF) == "\u{FFFD}")
        #expect(try f.append(Int(UInt8(ascii: "x"))) == "x")
    }

    // MARK: Corrupt input

    @Test func corruptVocabulariesThrowTypedErrors() {
        var v = byteVocabulary()
        v.tokenTypes.removeLast()
        #expect(tokenizerError { try Tokenizer(v) } == .tokenTypeCountMismatch(tokens: 256, types: 255))

        v = byteVocabulary(merges: ["a b", "ab"])
        #expect(tokenizerError { try Tokenizer(v) } == .malformedMerge(index: 1, text: "ab"))
        v = byteVocabulary(merges: ["a "])
        #expect(tokenizerError { try Tokenizer(v) } == .malformedMerge(index: 0, text: "a "))

        v = byteVocabulary(); v.model = "spm-foo"
        #expect(tokenizerError { try Tokenizer(v) } == .unsupportedModel("spm-foo"))

        v = byteVocabulary(); v.preTokenizer = "klingon"
        #expect(tokenizerError { try Tokenizer(v) } == .unsupportedPreTokenizer("klingon"))

        v = Vocabulary(tokens: [])
        #expect(tokenizerError { try Tokenizer(v) } == .emptyVocabulary)

        v = byteVocabulary(); v.bosTokenID = 9999
        #expect(tokenizerError { try Tokenizer(v) } == .badSpecialTokenID(name: "bos", id: 9999))

        v = byteVocabulary(); v.tokenTypes[7] = 42
        #expect(tokenizerError { try Tokenizer(v) } == .invalidTokenType(index: 7, type: 42))

        #expect(TokenizerError.unsupportedModel("spm-foo").description.contains("spm-foo"))
    }

    // MARK: Chat templates

    @Test func chatTemplateRecognitionAndFallback() throws {
        let chatml = ChatTemplate(template: "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
                                  bosToken: "", eosToken: "")
        #expect(chatml.kind == "chatml" && !chatml.isFallback && chatml.defaultSystemMessage == nil)
        #expect(chatml.render([ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true)
                == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

        let unknown = ChatTemplate(template: "{{ weird }}", bosToken: "<s>", eosToken: "</s>")
        #expect(unknown.kind == "chatml" && unknown.isFallback)
        #expect(ChatTemplate(template: nil, bosToken: "", eosToken: "").isFallback)

        let llama3 = ChatTemplate(template: "{{ '<|start_header_id|>' }}", bosToken: "<|begin_of_text|>", eosToken: "")
        #expect(llama3.kind == "llama3")
        #expect(llama3.render([ChatMessage(role: "user", content: " hi ")], addGenerationPrompt: true)
                == "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

        let plain = try ChatTemplate(kind: "plain")
        #expect(plain.render([ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true) == "user: hi\nassistant:")
        #expect(tokenizerError { try ChatTemplate(kind: "jinja-anything") } == .unsupportedChatTemplate("jinja-anything"))
    }

    @Test func chatMessageIsCodable() throws {
        let m = ChatMessage(role: "user", content: "hi")
        let data = try JSONEncoder().encode(m)
        #expect(try JSONDecoder().decode(ChatMessage.self, from: data) == m)
    }
}

import Foundation
