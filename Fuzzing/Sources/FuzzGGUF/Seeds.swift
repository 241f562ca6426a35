import FuzzSupport
import GGUF

/// Small valid GGUF files to start from, made with `GGUFWriter` (written at run time by
/// `FuzzGGUF --write-seeds DIR`), and a dictionary of the keys and values a loader looks for.
enum Seeds {
    static func files() -> [(String, [UInt8])] {
        var out: [(String, [UInt8])] = []
        out.append(("empty-v3", GGUFWriter().serialized()))
        out.append(("metadata-v2", metadataFile()))
        out.append(("tensors-all", tensorFile(types: GGMLType.allCases.filter(\.isDequantizable) + [.q2_K, .i32])))
        for type in GGMLType.allCases where type.isDequantizable {
            out.append(("tensor-\(type)", tensorFile(types: [type])))
        }
        out.append(("llama-bpe", bpeModelFile()))
        out.append(("gemma3-spm", spmModelFile(byteTokens: true, spacePrefix: false, architecture: "gemma3")))
        out.append(("llama-spm-unk", spmModelFile(byteTokens: false, spacePrefix: true, architecture: "llama")))
        for (name, bytes) in out {
            do { _ = try GGUFFile(bytes: bytes) } catch { fail("seed \(name) does not parse: \(error)") }
        }
        return out
    }

    /// Every value type, nested arrays, and an alignment other than 32.
    static func metadataFile() -> [UInt8] {
        var w = GGUFWriter(version: 2, alignment: 64)
        w.set("u8", .uint8(200)); w.set("i8", .int8(-3)); w.set("u16", .uint16(65535)); w.set("i16", .int16(-300))
        w.set("u32", .uint32(1 << 31)); w.set("i32", .int32(-7)); w.set("f32", .float32(0.5)); w.set("b", .bool(true))
        w.set("s", .string("héllo")); w.set("u64", .uint64(.max)); w.set("i64", .int64(.min)); w.set("f64", .float64(-2.5))
        w.set("strings", .array([.string("a"), .string(""), .string("▁b")]))
        w.set("ints", .array([.int32(1), .int32(-2)]))
        w.set("floats", .array([.float32(1), .float32(.nan)]))
        w.set("nested", .array([.array([.uint16(1), .uint16(2)]), .array([])]))
        w.addTensor(name: "x", dimensions: [4], values: [1, -1, 0.5, 2])
        return w.serialized()
    }

    /// One tensor per type, two rows of one block each (3-D for the first), deterministic bytes.
    static func tensorFile(types: [GGMLType]) -> [UInt8] {
        var w = GGUFWriter()
        var state: UInt32 = 12345
        for (i, type) in types.enumerated() {
            let rows = 2
            let bytes = (0..<(rows * type.blockBytes)).map { _ -> UInt8 in
                state = state &* 1_103_515_245 &+ 12345
                return UInt8(truncatingIfNeeded: state >> 16)
            }
            let dims = i == 0 ? [type.blockSize, 1, rows] : [type.blockSize, rows]
            w.addTensor(name: "t.\(type)", dimensions: dims, type: type, data: bytes)
        }
        return w.serialized()
    }

    static func llamaConfig(_ w: inout GGUFWriter, architecture: String) {
        w.set("general.architecture", .string(architecture))
        w.set("general.name", .string("tiny"))
        w.set("\(architecture).block_count", .uint32(2))
        w.set("\(architecture).embedding_length", .uint32(8))
        w.set("\(architecture).feed_forward_length", .uint32(16))
        w.set("\(architecture).attention.head_count", .uint32(2))
        w.set("\(architecture).attention.head_count_kv", .uint32(1))
        w.set("\(architecture).context_length", .uint32(64))
        w.set("\(architecture).rope.freq_base", .float32(10000))
        w.set("\(architecture).attention.layer_norm_rms_epsilon", .float32(1e-5))
        if architecture == "gemma3" {
            w.set("gemma3.attention.key_length", .uint32(4))
            w.set("gemma3.attention.sliding_window", .uint32(4))
        }
    }

    /// A tiny Llama with a byte-level BPE vocabulary: the 256 byte tokens, a few merges, ChatML specials.
    static func bpeModelFile() -> [UInt8] {
        var w = GGUFWriter()
        llamaConfig(&w, architecture: "llama")
        var tokens = (0..<256).map { gpt2ByteText(UInt8($0)) }
        var types = [Int32](repeating: 1, count: 256)
        let extra: [(String, Int32)] = [("he", 1), ("ll", 1), ("hell", 1), ("hello", 1), ("Ġw", 1),
                                        ("<|im_start|>", 3), ("<|im_end|>", 3), ("<|endoftext|>", 3), ("<tool>", 4)]
        for (text, type) in extra {
            tokens.append(text); types.append(type)
        }
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("smollm"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        w.set("tokenizer.ggml.merges", .array(["h e", "l l", "he ll", "hell o", "Ġ w"].map { .string($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(261))
        w.set("tokenizer.ggml.eos_token_id", .uint32(262))
        w.set("tokenizer.ggml.add_bos_token", .bool(true))
        w.set("tokenizer.chat_template", .string(
            "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system\nYou are tiny.<|im_end|>\n{% endif %}<|im_start|>{{m.role}}\n{{m.content}}<|im_end|>\n{% endfor %}"))
        w.addTensor(name: "output_norm.weight", dimensions: [8], values: [1, 1, 1, 1, 1, 1, 1, 1])
        return w.serialized()
    }

    /// A tiny SentencePiece vocabulary: control tokens, optional `<0xNN>` byte tokens, pieces with
    /// scores, Gemma's turn tokens and a user-defined whitespace token.
    static func spmModelFile(byteTokens: Bool, spacePrefix: Bool, architecture: String) -> [UInt8] {
        var w = GGUFWriter()
        llamaConfig(&w, architecture: architecture)
        var tokens = ["<pad>", "<eos>", "<bos>", "<unk>"]
        var types: [Int32] = [3, 3, 3, 2]
        var scores: [Float] = [0, 0, 0, 0]
        if byteTokens {
            let hex = Array("0123456789ABCDEF")
            for b in 0..<256 {
                tokens.append("<0x\(hex[b >> 4])\(hex[b & 15])>"); types.append(6); scores.append(0)
            }
        }
        let pieces: [(String, Int32)] = [("▁", 1), ("a", 1), ("b", 1), ("▁a", 1), ("ab", 1), ("▁ab", 1), ("é", 1),
                                         ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("  ", 4)]
        for (i, (text, type)) in pieces.enumerated() {
            tokens.append(text); types.append(type); scores.append(-Float(i))
        }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        w.set("tokenizer.ggml.scores", .array(scores.map { .float32($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(2))
        w.set("tokenizer.ggml.eos_token_id", .uint32(1))
        w.set("tokenizer.ggml.unknown_token_id", .uint32(3))
        w.set("tokenizer.ggml.padding_token_id", .uint32(0))
        w.set("tokenizer.ggml.add_bos_token", .bool(true))
        w.set("tokenizer.ggml.add_space_prefix", .bool(spacePrefix))
        w.addTensor(name: "output_norm.weight", dimensions: [8], values: [1, 1, 1, 1, 1, 1, 1, 1])
        return w.serialized()
    }

    /// Length-prefixed key and value strings (as they appear in a file) and the magic.
    static func dictionary() -> [[UInt8]] {
        var strings = ["general.architecture", "general.alignment", "general.name", "llama", "gemma3", "gpt2",
                       "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                       "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.bos_token_id",
                       "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.unknown_token_id",
                       "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                       "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template", "output.weight",
                       "smollm", "llama3", "qwen2", "default", "<|im_start|>", "<start_of_turn>", "<|end|>", "<|return|>",
                       "<|call|>", "</s>", "<|tool_response>"]
        for arch in ["llama", "gemma3"] {
            for k in ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                      "attention.head_count_kv", "attention.key_length", "vocab_size", "context_length",
                      "rope.freq_base", "rope.dimension_count", "attention.layer_norm_rms_epsilon",
                      "attention.sliding_window", "attention.sliding_window_pattern", "rope.freq_base_swa"] {
                strings.append("\(arch).\(k)")
            }
        }
        var out: [[UInt8]] = [Array("GGUF".utf8)]
        for s in strings {
            var b: [UInt8] = []
            withUnsafeBytes(of: UInt64(s.utf8.count).littleEndian) { b += $0 }
            out.append(b + Array(s.utf8))
        }
        return out
    }
}
