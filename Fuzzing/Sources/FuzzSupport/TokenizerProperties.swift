import Foundation
import GGUF
import Runtime
import Tokenization

/// The model file whose vocabulary a tokenizer target fuzzes, found as the tests find it:
/// `$<variable>` if set (it must exist), else `$MESHINFER_CACHE/<fileName>`, else
/// `~/.cache/meshinfer/<fileName>`. Missing: a message and exit 1, never a silent pass.
public func modelPath(variable: String, fileName: String, pullCommand: String) -> String {
    let env = ProcessInfo.processInfo.environment
    if let p = env[variable], !p.isEmpty {
        guard FileManager.default.fileExists(atPath: p) else { fail("\(variable)=\(p): no such file") }
        return p
    }
    var candidates: [String] = []
    if let c = env["MESHINFER_CACHE"], !c.isEmpty { candidates.append(c + "/" + fileName) }
    candidates.append(NSHomeDirectory() + "/.cache/meshinfer/" + fileName)
    guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
        fail("""
            model file \(fileName) not found (looked at \(candidates.joined(separator: ", "))); \
            set \(variable) to its path, or fetch it with `\(pullCommand)`
            """)
    }
    return found
}

/// Reads a model file's tokenizer, once; exits 1 when it cannot or is not of `model`.
public func loadTokenizer(path: String, model: Tokenizer.Model) -> Tokenizer {
    let tokenizer: Tokenizer
    do {
        tokenizer = try Tokenizer(Vocabulary(gguf: GGUFFile(path: path)))
    } catch {
        fail("cannot read the tokenizer of \(path): \(error)")
    }
    guard tokenizer.model == model else {
        fail("\(path) has a '\(tokenizer.model.rawValue)' tokenizer, this target fuzzes '\(model.rawValue)'")
    }
    return tokenizer
}

/// GPT-2's byte-to-character table (printable Latin-1 bytes stand for themselves, the other 68
/// are U+0100 and up, in byte order), written here independently of the module under test.
public func gpt2ByteText(_ b: UInt8) -> String {
    func printable(_ x: Int) -> Bool { (33...126).contains(x) || (161...172).contains(x) || (174...255).contains(x) }
    if printable(Int(b)) { return String(UnicodeScalar(b)) }
    let rank = (0..<Int(b)).filter { !printable($0) }.count
    return String(UnicodeScalar(UInt32(256 + rank))!)
}

/// The properties both tokenizer targets check on every input `s` (the input bytes decoded as
/// UTF-8 with U+FFFD for ill-formed sequences), with `parseSpecial` true and false:
/// 1. `encode(s, addSpecial: true)` is `encode(s, addSpecial: false)` with BOS/EOS around it
///    exactly as the vocabulary asks;
/// 2. without `parseSpecial` no control token comes out;
/// 3. every id decodes, and `decode(encode(s))` equals `s` byte for byte, but for the cases the
///    algorithm loses by design (the tests' round-trip properties): byte-level BPE drops bytes
///    that have no byte token (`RealVocabularyTests.roundTrips`; a dropped lead byte leaves the
///    rest of its character ill-formed, which decode shows as U+FFFD); SentencePiece reads a '▁'
///    (U+2581) in the input as a space, and adds a leading space with `add_space_prefix`
///    (`randomTextRoundTrips` compares UTF-8 bytes);
/// 4. streaming decode (`StreamingDecoder`, one id at a time, then `finish`) gives the same text
///    (so it never splits a character into U+FFFDs that decode does not have);
/// and, independently of the text, the input read as token ids (3 bytes each, modulo the
/// vocabulary size) streams to the same text as `decode`, with and without `skipSpecial`.
/// Byte-level BPE also checks that the pre-tokenizer's words cover `s` and that both merge
/// loops (`_bpe`'s short-word rescan and the heap used past 64 bytes) agree on every word.
public struct TokenizerProperties: Sendable {
    public let tokenizer: Tokenizer
    /// Byte-level BPE: bytes without a byte token (encode drops them).
    private let dropped: [Bool]
    /// SentencePiece: the space prefix is added at the start and after each special token.
    private let spacePrefix: Bool

    public init(tokenizer t: Tokenizer) {
        tokenizer = t
        var dropped = [Bool](repeating: false, count: 256)
        if t.model == .bytePairEncoding {
            for b in 0..<256 where t.tokenID(forText: gpt2ByteText(UInt8(b))) == nil { dropped[b] = true }
        }
        self.dropped = dropped
        spacePrefix = t.model == .sentencePiece && (t.vocabulary.addSpacePrefix ?? true)
        // Special tokens are matched whole, so the expected text below (computed byte by byte)
        // is only right if no special token's text holds a byte BPE drops or an escaped space.
        for id in 0..<t.vocabularySize {
            guard let type = t.tokenType(id), type == .control || type == .unknown || type == .userDefined else { continue }
            let text = t.vocabulary.tokens[id]
            if text.utf8.contains(where: { dropped[Int($0)] }) || (t.model == .sentencePiece && text.contains("\u{2581}")) {
                fail("special token \(id) \(text.debugDescription) holds a byte the round-trip property treats specially")
            }
        }
        let droppedList = (0..<256).filter { dropped[$0] }.map { "0x" + String($0, radix: 16) }
        FileHandle.standardError.write(Data("""
            tokenizer: \(t.model.rawValue), \(t.vocabularySize) tokens, pre-tokenizer \(t.preTokenizerKind.map { "\($0)" } ?? "none"), \
            add BOS \(t.vocabulary.addBOS), add EOS \(t.vocabulary.addEOS), space prefix \(spacePrefix), \
            bytes without a token: \(droppedList.isEmpty ? "none" : droppedList.joined(separator: " "))

            """.utf8))
    }

    /// What `decode(encode(s))` must give (special tokens found in `s` decode to their own text,
    /// which `init` made sure holds no byte treated here).
    private func expectedBytes(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        switch tokenizer.model {
        case .bytePairEncoding:
            out = s.utf8.filter { !dropped[Int($0)] }
        case .sentencePiece:
            let u = Array(s.utf8)
            if spacePrefix && !u.isEmpty { out.append(0x20) }
            var i = 0
            while i < u.count {
                if i + 2 < u.count && u[i] == 0xE2 && u[i + 1] == 0x96 && u[i + 2] == 0x81 {
                    out.append(0x20); i += 3
                } else {
                    out.append(u[i]); i += 1
                }
            }
        }
        return out
    }

    public func check(_ input: [UInt8]) {
        let t = tokenizer
        let s = String(decoding: input, as: UTF8.self)
        let bos = t.vocabulary.addBOS ? t.bosTokenID.map { [$0] } ?? [] : []
        let eos = t.vocabulary.addEOS ? t.eosTokenID.map { [$0] } ?? [] : []
        for parseSpecial in [true, false] {
            let ids = t.encode(s, addSpecial: false, parseSpecial: parseSpecial)
            let withSpecial = t.encode(s, addSpecial: true, parseSpecial: parseSpecial)
            if withSpecial != bos + ids + eos {
                violated("parseSpecial \(parseSpecial): addSpecial gives \(withSpecial), expected \(bos) + \(ids) + \(eos)", input: input)
            }
            if !parseSpecial, let c = ids.first(where: { t.isControl($0) }) {
                violated("parseSpecial false produced control token \(c)", input: input)
            }
            let decoded: String
            do { decoded = try t.decode(ids) } catch {
                violated("parseSpecial \(parseSpecial): encode produced an id decode rejects: \(error)", input: input)
            }
            // With a space prefix, each special token starts a new prefixed fragment; the
            // expectation is computed for the text as one fragment, so only without specials.
            if !(spacePrefix && parseSpecial) {
                // decode repairs ill-formed UTF-8 (a dropped lead byte leaves some) as U+FFFD.
                let expected = String(decoding: expectedBytes(s), as: UTF8.self)
                if !decoded.utf8.elementsEqual(expected.utf8) {
                    violated("""
                        parseSpecial \(parseSpecial): decode(encode(s)) != s
                          s       = \(s.debugDescription)
                          decoded = \(decoded.debugDescription)
                          expected= \(expected.debugDescription)
                          ids     = \(ids)
                        """, input: input)
                }
            }
            let streamed = stream(ids, skipSpecial: false, input: input)
            if !streamed.joined().utf8.elementsEqual(decoded.utf8) {
                violated("parseSpecial \(parseSpecial): streaming gives \(streamed), decode \(decoded.debugDescription)", input: input)
            }
        }
        if t.model == .bytePairEncoding {
            let words = t.preTokenize(s)
            if !words.joined().unicodeScalars.elementsEqual(s.unicodeScalars) {
                violated("the pre-tokenizer's words \(words) do not cover \(s.debugDescription)", input: input)
            }
            for w in words {
                let short = t._bpe(w), long = t._bpe(w, longWordAlgorithm: true)
                if short != long { violated("word \(w.debugDescription): rescan loop \(short), heap loop \(long)", input: input) }
            }
        }
        checkArbitraryIDs(input)
    }

    /// Streaming decode of `ids`: the chunks, `finish()`'s last.
    private func stream(_ ids: [Int], skipSpecial: Bool, input: [UInt8]) -> [String] {
        var d = StreamingDecoder(tokenizer: tokenizer, skipSpecial: skipSpecial)
        var chunks: [String] = []
        chunks.reserveCapacity(ids.count + 1)
        for id in ids {
            do { chunks.append(try d.append(id)) } catch {
                violated("streaming rejected id \(id): \(error)", input: input)
            }
            if d.pendingByteCount > 3 { violated("streaming holds \(d.pendingByteCount) bytes back", input: input) }
        }
        chunks.append(d.finish())
        return chunks
    }

    /// The input as token ids (any bytes, so any UTF-8, well-formed or not, comes out of the
    /// pieces): streaming must give decode's text, U+FFFD substitutions included.
    private func checkArbitraryIDs(_ input: [UInt8]) {
        let t = tokenizer
        var ids: [Int] = []
        ids.reserveCapacity(input.count / 3)
        var i = 0
        while i + 3 <= input.count {
            ids.append((Int(input[i]) | Int(input[i + 1]) << 8 | Int(input[i + 2]) << 16) % t.vocabularySize)
            i += 3
        }
        for skipSpecial in [false, true] {
            let decoded: String
            do { decoded = try t.decode(ids, skipSpecial: skipSpecial) } catch {
                violated("decode rejected in-range ids \(ids): \(error)", input: input)
            }
            let streamed = stream(ids, skipSpecial: skipSpecial, input: input)
            if !streamed.joined().utf8.elementsEqual(decoded.utf8) {
                violated("""
                    ids \(ids) (skipSpecial \(skipSpecial)): streaming gives \(streamed.joined().debugDescription), \
                    decode \(decoded.debugDescription)
                    """, input: input)
            }
        }
    }

    /// Small texts to start from: the special tokens' texts, scripts, whitespace, byte fallback.
    public static func textSeeds(specials: [String]) -> [(String, [UInt8])] {
        var texts = [
            "", " ", "Hello, world!", "  leading and trailing spaces   ", "tabs\tand\t\ttabs\n\nnew\r\nlines\n",
            "digits 1234567890 3.14159 -42 ١٢٣ ²³", "contractions: I'm, you're, he's, we've, they'll, don't, CAN'T",
            "emoji 🦜🤖 family 👨‍👩‍👧‍👦 flags 🇫🇷 skin 👍🏽", "CJK 東京は日本の首都です。한국어",
            "combining e\u{301} a\u{308}\u{323} नमस्ते", "Ελληνικά русский עברית العربية",
            "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞", "func f(x: Int) -> [String: Int] { return [:] }",
            "control \u{01}\u{04}\u{1F}\u{7F} chars", "▁ escaped ▁space", "<0x41> <unk> <s> </s>",
            String(repeating: "a", count: 80), String(repeating: " ", count: 40),
        ]
        texts += specials.map { "x\($0)y \($0)\n" }
        var seeds = texts.enumerated().map { ("text-\($0.offset)", Array($0.element.utf8)) }
        seeds.append(("ill-formed", [0x61, 0xC3, 0x28, 0xE2, 0x82, 0xF0, 0x9F, 0x98, 0xFF, 0xED, 0xA0, 0x80, 0x62]))
        return seeds
    }
}
