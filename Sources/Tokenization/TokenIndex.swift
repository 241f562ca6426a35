/// Token text -> id, compared byte for byte.
///
/// Swift `String` equality is canonical equivalence ("é" precomposed equals "e" + U+0301),
/// but llama.cpp looks token texts up as raw bytes, and SentencePiece vocabularies hold both
/// forms as different tokens. Keys are slices of one buffer holding every token's UTF-8 text,
/// so building the index allocates no per-token storage, and a lookup with a slice of the text
/// being tokenized allocates nothing.
struct TokenIndex: Sendable {
    private let ids: [ArraySlice<UInt8>: Int32]

    /// Indexes `tokens`; when two tokens have the same text the later id wins, as in llama.cpp.
    /// Empty texts are not indexed (they can never match).
    init(_ tokens: [String]) {
        var flat: [UInt8] = []
        var ends: [Int] = []
        ends.reserveCapacity(tokens.count)
        for t in tokens {
            flat.append(contentsOf: t.utf8)
            ends.append(flat.count)
        }
        var ids: [ArraySlice<UInt8>: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        var start = 0
        for (i, end) in ends.enumerated() {
            if end > start { ids[flat[start..<end]] = Int32(i) }
            start = end
        }
        self.ids = ids
    }

    /// The id of the token whose text is exactly these bytes.
    @inline(__always) func id(_ bytes: ArraySlice<UInt8>) -> Int? {
        ids[bytes].map(Int.init)
    }

    func id(_ text: String) -> Int? { id(ArraySlice(text.utf8)) }
}
