/// Splits text into the "words" BPE runs on, emulating the pre-tokenizer regexes llama.cpp
/// uses for each `tokenizer.ggml.pre` value with hand-written scanners over Unicode scalars.
///
/// Stages run in sequence: each stage splits every piece produced by the previous one
/// independently (a piece's end is the end of input for look-ahead purposes), exactly like
/// llama.cpp's `unicode_regex_split` with several expressions. Text a stage does not match is
/// kept as its own piece.
public enum PreTokenizerKind: String, Sendable, CaseIterable {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    case gpt2
    /// Every `\p{N}` isolated first, then the GPT-2 expression (smollm, starcoder, refact, ...).
    case digitsThenGPT2
    /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    case llama3
    /// Llama-3's expression with single digits (`\p{N}` instead of `\p{N}{1,3}`): qwen2, stablelm2.
    case llama3SingleDigits
    /// llama.cpp's fallback for BPE vocabularies: `[\p{P}\$\+<=>\^~\|]+`, then GPT-2,
    /// then `\p{N}+`, then `[0-9][0-9][0-9]`.
    case llamaDefault

    /// Maps a `tokenizer.ggml.pre` value to a scanner; nil when unsupported.
    public init?(ggmlName name: String) {
        switch name {
        case "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion", "granite-docling":
            self = .gpt2
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b":
            self = .digitsThenGPT2
        case "llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", "chatglm-bpe":
            self = .llama3
        case "qwen2", "stablelm2", "hunyuan":
            self = .llama3SingleDigits
        case "default":
            self = .llamaDefault
        default:
            return nil
        }
    }
}

/// Character classes the scanners need, as bit flags.
struct ScalarClass: OptionSet {
    let rawValue: UInt8
    static let letter = ScalarClass(rawValue: 1)
    static let number = ScalarClass(rawValue: 2)
    static let whitespace = ScalarClass(rawValue: 4)
    /// `\p{P}` or one of `$+<=>^~|` (llama.cpp's default first stage).
    static let defaultPunct = ScalarClass(rawValue: 8)
    static let asciiDigit = ScalarClass(rawValue: 16)

    static let asciiTable: [UInt8] = (0..<128).map { classify(Unicode.Scalar(UInt8($0))).rawValue }

    @inline(__always)
    static func of(_ s: Unicode.Scalar) -> ScalarClass {
        if s.value < 128 { return ScalarClass(rawValue: asciiTable[Int(s.value)]) }
        return classify(s)
    }

    static func classify(_ s: Unicode.Scalar) -> ScalarClass {
        var c: ScalarClass = []
        let p = s.properties
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            c.insert(.letter)
        case .decimalNumber, .letterNumber, .otherNumber:
            c.insert(.number)
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            c.insert(.defaultPunct)
        default:
            break
        }
        if p.isWhitespace { c.insert(.whitespace) }
        switch s {
        case "$", "+", "<", "=", ">", "^", "~", "|": c.insert(.defaultPunct)
        default: break
        }
        if s.value >= 0x30 && s.value <= 0x39 { c.insert(.asciiDigit) }
        return c
    }
}

struct PreTokenizer: Sendable {
    let kind: PreTokenizerKind

    /// Splits `scalars` into consecutive, non-empty ranges covering it.
    func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        let n = scalars.count
        if n == 0 { return [] }
        var classes = [UInt8](repeating: 0, count: n)
        for i in 0..<n { classes[i] = ScalarClass.of(scalars[i]).rawValue }
        return scalars.withUnsafeBufferPointer { sp in
            classes.withUnsafeBufferPointer { cp in
                let text = ScanText(scalars: sp, classes: cp)
                var pieces: [Range<Int>] = [0..<n]
                switch kind {
                case .gpt2:
                    pieces = apply(pieces) { text.gpt2($0, into: &$1) }
                case .digitsThenGPT2:
                    pieces = apply(pieces) { text.isolateEach(.number, $0, into: &$1) }
                    pieces = apply(pieces) { text.gpt2($0, into: &$1) }
                case .llama3:
                    pieces = apply(pieces) { text.llama3($0, maxDigits: 3, into: &$1) }
                case .llama3SingleDigits:
                    pieces = apply(pieces) { text.llama3($0, maxDigits: 1, into: &$1) }
                case .llamaDefault:
                    pieces = apply(pieces) { text.runs(of: .defaultPunct, $0, into: &$1) }
                    pieces = apply(pieces) { text.gpt2($0, into: &$1) }
                    pieces = apply(pieces) { text.runs(of: .number, $0, into: &$1) }
                    pieces = apply(pieces) { text.asciiDigitTriples($0, into: &$1) }
                }
                return pieces
            }
        }
    }

    private func apply(_ pieces: [Range<Int>], _ stage: (Range<Int>, inout [Range<Int>]) -> Void) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(pieces.count * 2)
        for p in pieces { stage(p, &out) }
        return out
    }
}

/// The scanners. Each gets one piece `r` and appends sub-ranges that exactly tile it.
struct ScanText {
    let scalars: UnsafeBufferPointer<Unicode.Scalar>
    let classes: UnsafeBufferPointer<UInt8>

    @inline(__always) func cls(_ i: Int, _ end: Int) -> ScalarClass {
        i < end ? ScalarClass(rawValue: classes[i]) : []
    }
    @inline(__always) func value(_ i: Int, _ end: Int) -> UInt32 {
        i < end ? scalars[i].value : 0xFFFF_FFFF
    }
    @inline(__always) func isLetter(_ i: Int, _ end: Int) -> Bool { cls(i, end).contains(.letter) }
    @inline(__always) func isNumber(_ i: Int, _ end: Int) -> Bool { cls(i, end).contains(.number) }
    @inline(__always) func isSpace(_ i: Int, _ end: Int) -> Bool { cls(i, end).contains(.whitespace) }
    /// `[^\s\p{L}\p{N}]` (false past the end).
    @inline(__always) func isOther(_ i: Int, _ end: Int) -> Bool {
        i < end && ScalarClass(rawValue: classes[i]).isDisjoint(with: [.letter, .number, .whitespace])
    }

    /// Length of a contraction (`'s 't 'm 'd 're 've 'll`) at `i`, or 0.
    func contraction(_ i: Int, _ end: Int, caseInsensitive: Bool) -> Int {
        guard value(i, end) == 0x27 /* ' */ else { return 0 }
        func ch(_ k: Int) -> UInt32 {
            let v = value(k, end)
            if caseInsensitive && v >= 0x41 && v <= 0x5A { return v + 0x20 }
            return v
        }
        let a = ch(i + 1)
        switch a {
        case 0x73, 0x74, 0x6D, 0x64: return 2           // s t m d
        case 0x72: return ch(i + 2) == 0x65 ? 3 : 0     // re
        case 0x76: return ch(i + 2) == 0x65 ? 3 : 0     // ve
        case 0x6C: return ch(i + 2) == 0x6C ? 3 : 0     // ll
        default: return 0
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`; unmatched
    /// scalars become single-scalar pieces.
    func gpt2(_ r: Range<Int>, into out: inout [Range<Int>]) {
        let end = r.upperBound
        var pos = r.lowerBound
        while pos < end {
            let start = pos
            let c = contraction(pos, end, caseInsensitive: false)
            if c > 0 { pos += c; out.append(start..<pos); continue }
            // Optional leading U+0020 for the next three alternatives.
            let body = scalars[pos].value == 0x20 ? pos + 1 : pos
            if isLetter(body, end) {
                pos = body + 1
                while isLetter(pos, end) { pos += 1 }
                out.append(start..<pos); continue
            }
            if isNumber(body, end) {
                pos = body + 1
                while isNumber(pos, end) { pos += 1 }
                out.append(start..<pos); continue
            }
            if isOther(body, end) {
                pos = body + 1
                while isOther(pos, end) { pos += 1 }
                out.append(start..<pos); continue
            }
            var ws = 0
            while isSpace(pos + ws, end) { ws += 1 }
            if ws > 1 && pos + ws < end {
                // \s+(?!\S): leave the last whitespace to prefix the next word.
                pos += ws - 1; out.append(start..<pos); continue
            }
            if ws > 0 { pos += ws; out.append(start..<pos); continue }
            pos += 1; out.append(start..<pos)
        }
    }

    /// Llama-3 style expression (`maxDigits` 3 for llama3, 1 for qwen2).
    func llama3(_ r: Range<Int>, maxDigits: Int, into out: inout [Range<Int>]) {
        let end = r.upperBound
        var pos = r.lowerBound
        while pos < end {
            let start = pos
            let c = contraction(pos, end, caseInsensitive: true)
            if c > 0 { pos += c; out.append(start..<pos); continue }
            let v = scalars[pos].value
            let cl = cls(pos, end)
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if v != 0x0D && v != 0x0A && !cl.contains(.number) {
                if cl.contains(.letter) || isLetter(pos + 1, end) {
                    pos += 1
                    while isLetter(pos, end) { pos += 1 }
                    out.append(start..<pos); continue
                }
            }
            // \p{N}{1,maxDigits}
            if cl.contains(.number) {
                pos += 1
                while pos - start < maxDigits && isNumber(pos, end) { pos += 1 }
                out.append(start..<pos); continue
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            let body = v == 0x20 ? pos + 1 : pos
            if isOther(body, end) {
                pos = body + 1
                while isOther(pos, end) { pos += 1 }
                while value(pos, end) == 0x0D || value(pos, end) == 0x0A { pos += 1 }
                out.append(start..<pos); continue
            }
            var ws = 0
            var lastNewlineEnd = -1
            while isSpace(pos + ws, end) {
                let w = scalars[pos + ws].value
                if w == 0x0D || w == 0x0A { lastNewlineEnd = pos + ws + 1 }
                ws += 1
            }
            // \s*[\r\n]+
            if lastNewlineEnd > 0 { pos = lastNewlineEnd; out.append(start..<pos); continue }
            // \s+(?!\S)
            if ws > 1 && pos + ws < end { pos += ws - 1; out.append(start..<pos); continue }
            // \s+
            if ws > 0 { pos += ws; out.append(start..<pos); continue }
            pos += 1; out.append(start..<pos)
        }
    }

    /// Every scalar of class `c` becomes its own piece; the text between stays together.
    func isolateEach(_ c: ScalarClass, _ r: Range<Int>, into out: inout [Range<Int>]) {
        var runStart = r.lowerBound
        for i in r where ScalarClass(rawValue: classes[i]).contains(c) {
            if runStart < i { out.append(runStart..<i) }
            out.append(i..<(i + 1))
            runStart = i + 1
        }
        if runStart < r.upperBound { out.append(runStart..<r.upperBound) }
    }

    /// Maximal runs of class `c` become pieces; the text between stays together.
    func runs(of c: ScalarClass, _ r: Range<Int>, into out: inout [Range<Int>]) {
        var i = r.lowerBound
        var gapStart = i
        while i < r.upperBound {
            if ScalarClass(rawValue: classes[i]).contains(c) {
                if gapStart < i { out.append(gapStart..<i) }
                let s = i
                while i < r.upperBound && ScalarClass(rawValue: classes[i]).contains(c) { i += 1 }
                out.append(s..<i)
                gapStart = i
            } else {
                i += 1
            }
        }
        if gapStart < r.upperBound { out.append(gapStart..<r.upperBound) }
    }

    /// `[0-9][0-9][0-9]`: successive triples of ASCII digits become pieces.
    func asciiDigitTriples(_ r: Range<Int>, into out: inout [Range<Int>]) {
        var i = r.lowerBound
        var gapStart = i
        while i < r.upperBound {
            if i + 3 <= r.upperBound
                && ScalarClass(rawValue: classes[i]).contains(.asciiDigit)
                && ScalarClass(rawValue: classes[i + 1]).contains(.asciiDigit)
                && ScalarClass(rawValue: classes[i + 2]).contains(.asciiDigit) {
                if gapStart < i { out.append(gapStart..<i) }
                out.append(i..<(i + 3))
                i += 3
                gapStart = i
            } else {
                i += 1
            }
        }
        if gapStart < r.upperBound { out.append(gapStart..<r.upperBound) }
    }
}
