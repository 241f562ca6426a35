import Testing
import GGUF

/// Checks against the real SmolLM2-135M Q4_1 model; skipped when the file is absent.
@Suite(.enabled(if: realModelPath() != nil, "real model file not found (set MESHINFER_MODEL)"))
struct RealFile {
    let file: GGUFFile

    init() throws {
        file = try GGUFFile(path: realModelPath()!)
    }

    @Test func header() throws {
        #expect(file.version == 3)
        #expect(file.tensors.count == 272)
        #expect(file.alignment == 32)
        #expect(try file.string("general.architecture") == "llama")
        #expect(try file.integer("llama.embedding_length") == 576)
        #expect(file.metadataKeys.count == file.metadata.count)
        #expect(file.metadataKeys.first == "general.architecture")
    }

    @Test func tokenizer() throws {
        let tokens = try file.stringArray("tokenizer.ggml.tokens")
        #expect(tokens.count == 49152)
        #expect(try file.integerArray("tokenizer.ggml.token_type").count == 49152)
        #expect(try file.stringArray("tokenizer.ggml.merges").count > 0)
    }

    @Test func tokenEmbedding() throws {
        let t = try file.tensor("token_embd.weight")
        #expect(t.type == .q8_0)
        #expect(t.dimensions == [576, 49152])
        #expect(t.rowLength == 576 && t.rowCount == 49152)
        #expect(t.rowBytes == 576 / 32 * 34)
        #expect(t.byteCount == t.rowBytes * t.rowCount)
        #expect(file.data(for: t).count == t.byteCount)

        let all = try file.dequantized(t)
        #expect(all.count == 576 * 49152)
        #expect(all.allSatisfy { $0.isFinite })
        var row = [Float](repeating: .nan, count: 576 * 2)
        for r in [0, 1, 1000, 49150] {
            try file.dequantizeRows(t, rows: r..<(r + 2), into: &row)
            #expect(row[...] == all[(r * 576)..<((r + 2) * 576)])
        }
        #expect(all[0..<576].contains { $0 != 0 })
    }

    @Test func tensorTable() throws {
        var types: [GGMLType: Int] = [:]
        var end = 0
        for t in file.tensors {
            types[t.type, default: 0] += 1
            #expect(t.offset % file.alignment == 0)
            #expect(t.offset >= end)  // file order is offset order here
            end = t.offset + t.byteCount
        }
        #expect(end <= file.fileSize)
        #expect(types == [.q4_1: 210, .f32: 61, .q8_0: 1])
        for name in ["output_norm.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"] {
            #expect(file.hasTensor(name), "\(name)")
        }
    }

    @Test func dequantizeEveryTensor() throws {
        var total = 0
        for t in file.tensors {
            let v = try file.dequantized(t)
            #expect(v.count == t.elementCount)
            total += v.count
            if t.type == .f32 {
                #expect(v.allSatisfy { $0.isFinite })
            }
        }
        #expect(total > 130_000_000)
        let norm = try file.dequantized(file.tensor("blk.0.attn_norm.weight"))
        #expect(norm.count == 576 && norm.contains { $0 != 0 })
    }
}
