/// SentencePiece ("SPM", `tokenizer.ggml.model == "llama"`) tokenization of one raw-text
/// fragment, as llama.cpp does it (`Tokenizer` has already split special tokens out):
/// 1. every ' ' becomes '▁' (U+2581); a '▁' is prepended when the caller asks (llama.cpp does
///    this only with `tokenizer.ggml.add_space_prefix`, and only for a fragment at the start of
///    the text or right after a special token);
/// 2. the initial symbols are the UTF-8 characters (length from the lead byte's high nibble);
///    no Unicode normalization happens;
/// 3. the adjacent pair whose concatenation is a vocabulary token (of any type) with the highest
///    score is merged, the leftmost pair on equal scores, until no adjacent pair forms a token;
/// 4. each final symbol is emitted as its token, or, when it is a character missing from the
///    vocabulary, byte by byte as the `<0xNN>` byte-fallback tokens.
///
/// A merged symbol is always a token (only pairs forming a token are merged), so only single
/// characters ever need byte fallback; llama.cpp's re-splitting of non-token symbols never fires.
struct SentencePiece: Sendable {
    let index: TokenIndex
    /// Score of each token id (`tokenizer.ggml.scores`).
    let scores: [Float]
    /// The token each byte falls back to: `<0xNN>`, else the one-byte text (ASCII), else unknown.
    let byteTokens: [Int32]
    /// `tokenizer.ggml.add_space_prefix` (llama.cpp's default for SPM when absent: true).
    let addSpacePrefix: Bool

    /// '▁' (U+2581), SentencePiece's visible space.
    static let escapedSpace: [UInt8] = [0xE2, 0x96, 0x81]

    /// Resolves the byte-fallback tokens. Throws `.missingByteToken` for a byte with no
    /// `<0xNN>` token, no one-byte token and no unknown token to stand in (llama.cpp would
    /// fail on such a byte when it meets it).
    init(index: TokenIndex, scores: [Float], unknownTokenID: Int?, addSpacePrefix: Bool) throws(TokenizerError) {
        let hex = Array("0123456789ABCDEF".utf8)
        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let name: [UInt8] = [UInt8(ascii: "<"), UInt8(ascii: "0"), UInt8(ascii: "x"), hex[b >> 4], hex[b & 15], UInt8(ascii: ">")]
            if let id = index.id(name[...]) ?? (b < 0x80 ? index.id([UInt8(b)][...]) : nil) ?? unknownTokenID {
                byteTokens[b] = Int32(id)
            } else {
                throw .missingByteToken(UInt8(b))
            }
        }
        self.index = index
        self.scores = scores
        self.byteTokens = byteTokens
        self.addSpacePrefix = addSpacePrefix
    }

    /// The byte a BYTE-typed token stands for: its text must be `<0xNN>` (hex digits of either case).
    static func byteValue(ofTokenText text: String) -> UInt8? {
        let u = Array(text.utf8)
        guard u.count == 6, u[0] == UInt8(ascii: "<"), u[1] == UInt8(ascii: "0"), u[2] == UInt8(ascii: "x"),
              u[5] == UInt8(ascii: ">") else { return nil }
        guard let hi = hexDigit(u[3]), let lo = hexDigit(u[4]) else { return nil }
        return hi << 4 | lo
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }

    /// Appends a normal token's bytes with every '▁' turned back into ' '.
    static func appendUnescaped(_ text: String, to out: inout [UInt8]) {
        let u = Array(text.utf8)
        var i = 0
        while i < u.count {
            if i + 2 < u.count && u[i] == 0xE2 && u[i + 1] == 0x96 && u[i + 2] == 0x81 {
                out.append(0x20); i += 3
            } else {
                out.append(u[i]); i += 1
            }
        }
    }

    /// Appends the tokens of one raw-text fragment (valid UTF-8).
    func encode(_ text: ArraySlice<UInt8>, spacePrefix: Bool, into out: inout [Int]) {
        // 1. Escape spaces.
        var s: [UInt8] = []
        s.reserveCapacity(text.count + 3)
        if spacePrefix { s.append(contentsOf: SentencePiece.escapedSpace) }
        for b in text {
            if b == 0x20 { s.append(contentsOf: SentencePiece.escapedSpace) } else { s.append(b) }
        }
        if s.isEmpty { return }

        // 2. One symbol per character, in a doubly linked list; a symbol merged away has length 0.
        var start: [Int] = [], length: [Int] = []
        start.reserveCapacity(s.count); length.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            let n = min(SentencePiece.utf8Length(s[i]), s.count - i)
            start.append(i); length.append(n)
            i += n
        }
        let count = start.count
        var prev = (0..<count).map { $0 - 1 }
        var next = (0..<count).map { $0 + 1 < count ? $0 + 1 : -1 }

        // 3. Merge by score.
        var queue = BinaryHeap<BigramCandidate>()
        func tryAdd(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let lo = start[l], hi = lo + length[l] + length[r]
            guard let id = index.id(s[lo..<hi]) else { return }
            queue.push(.init(score: scores[id], left: Int32(l), right: Int32(r), size: Int32(hi - lo)))
        }
        for k in 1..<max(count, 1) { tryAdd(k - 1, k) }
        while let b = queue.pop() {
            let l = Int(b.left), r = Int(b.right)
            // Stale: a side was merged away or has grown since the pair was queued.
            if length[l] == 0 || length[r] == 0 || length[l] + length[r] != Int(b.size) { continue }
            length[l] += length[r]
            length[r] = 0
            next[l] = next[r]
            if next[r] >= 0 { prev[next[r]] = l }
            tryAdd(prev[l], l)
            tryAdd(l, next[l])
        }

        // 4. Emit; the first symbol is never merged away (merges absorb the right side).
        var k = 0
        while k >= 0 {
            let piece = s[start[k]..<(start[k] + length[k])]
            if let id = index.id(piece) {
                out.append(id)
            } else {
                for byte in piece { out.append(Int(byteTokens[Int(byte)])) }
            }
            k = next[k]
        }
    }

    /// UTF-8 sequence length from the lead byte's high nibble (a stray continuation byte counts as 1),
    /// as llama.cpp computes it.
    @inline(__always) static func utf8Length(_ lead: UInt8) -> Int {
        switch lead >> 4 {
        case 0xC, 0xD: return 2
        case 0xE: return 3
        case 0xF: return 4
        default: return 1
        }
    }
}

/// A candidate merge of SentencePiece: highest score first, then the leftmost pair.
struct BigramCandidate: HeapOrdered {
    var score: Float
    var left: Int32
    var right: Int32
    /// Byte length of the merged text, to detect stale entries.
    var size: Int32
    @inline(__always) static func before(_ x: Self, _ y: Self) -> Bool {
        x.score > y.score || (x.score == y.score && x.left < y.left)
    }
}
