/// Incremental detokenizer for generation: feeds token ids, returns the text that became
/// complete. Bytes of a UTF-8 sequence that is still incomplete are held back until the
/// next token completes it (or `finish`), so a character is never split across chunks.
public struct StreamingDecoder: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecial: Bool
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer, skipSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// Number of bytes currently held back (0...3).
    public var pendingByteCount: Int { pending.count }

    public mutating func append(_ id: Int) throws(TokenizerError) -> String {
        try tokenizer.appendPiece(id, skipSpecial: skipSpecial, to: &pending)
        let keep = StreamingDecoder.incompleteSuffixLength(pending)
        if keep == pending.count { return "" }
        let text = String(decoding: pending[..<(pending.count - keep)], as: UTF8.self)
        pending.removeFirst(pending.count - keep)
        return text
    }

    /// Flushes what is held back; bytes that never completed become U+FFFD.
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
    }

    /// Length of a trailing, possibly-valid but incomplete UTF-8 sequence (0 if none).
    static func incompleteSuffixLength(_ b: [UInt8]) -> Int {
        let n = b.count
        var k = 1
        // Walk back over at most 3 continuation bytes to the lead byte.
        while k <= min(4, n) {
            let c = b[n - k]
            if c & 0xC0 == 0x80 { k += 1; continue }   // continuation
            let need: Int
            if c & 0xE0 == 0xC0 && c >= 0xC2 { need = 2 }
            else if c & 0xF0 == 0xE0 { need = 3 }
            else if c & 0xF8 == 0xF0 && c <= 0xF4 { need = 4 }
            else { return 0 }                           // ASCII or invalid lead: nothing to wait for
            if k >= need { return 0 }                   // complete (or over-long: let it decode)
            // Reject second bytes that can never form a valid sequence.
            if k >= 2 {
                let s = b[n - k + 1]
                if c == 0xE0 && s < 0xA0 { return 0 }
                if c == 0xED && s > 0x9F { return 0 }
                if c == 0xF0 && s < 0x90 { return 0 }
                if c == 0xF4 && s > 0x8F { return 0 }
            }
            return k
        }
        return 0
    }
}
