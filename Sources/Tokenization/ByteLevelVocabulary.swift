extension Vocabulary {
    /// A vocabulary of the 256 bytes (ids 0–255) and unused ids up to `size`, with no merges:
    /// text is its UTF-8 bytes. Used by random-weight models that have no tokenizer of their own.
    public static func byteLevel(size: Int) -> Vocabulary {
        precondition(size >= 256)
        let bytes = (0..<256).map { ByteEncoding.encoded(UInt8($0)) }
        let unused = (256..<size).map { "<|unused_\($0)|>" }
        return Vocabulary(tokens: bytes + unused, tokenTypes: Array(repeating: 6, count: 256) + Array(repeating: 5, count: size - 256),
                          model: "gpt2", preTokenizer: "gpt2")
    }
}
