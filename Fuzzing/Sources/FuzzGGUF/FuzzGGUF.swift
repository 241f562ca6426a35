import FuzzSupport
import GGUF
import Runtime
import Tokenization
import Transformer

/// The GGUF parser on arbitrary bytes. `GGUFFile(bytes:)` may only throw (its errors are typed
/// `GGUFError` by its signature); a file it accepts must be consistent, and everything a model
/// loader does with it must work or throw:
/// - structure: keys in order without duplicates, alignment a power of two, every tensor named
///   once, found by `tensor(_:)`, shaped and sized by its type, aligned, inside the file, no two
///   overlapping; `data(for:)` gives exactly the tensor's bytes of the input;
/// - every metadata getter on every key either returns the value `metadata` holds or throws;
/// - dequantizable tensors: the first rows, the last row and (small tensors) the whole tensor
///   dequantize into buffers of exactly the right size (AddressSanitizer sees any overrun), rows
///   agree with the whole, and out-of-range rows throw; other types throw `unsupportedTensorType`;
/// - `ModelConfig(gguf:)` and `Vocabulary(gguf:)` only throw (the latter only `GGUFError`), and a
///   `Tokenizer` built from the file encodes sample texts to in-range ids that decode and stream.
@main
enum FuzzGGUF {
    static func main() {
        fuzzMain(seeds: Seeds.files, dictionary: Seeds.dictionary, body: fuzzOneInput)
    }
}

func run(_ input: [UInt8]) {
    let file: GGUFFile
    do {
        file = try GGUFFile(bytes: input)
    } catch {
        _ = error.description
        return
    }
    checkStructure(file, input)
    touchMetadata(file, input)
    for t in file.tensors { touchTensor(t, file, input) }
    touchModel(file, input)
}

func checkStructure(_ file: GGUFFile, _ input: [UInt8]) {
    guard file.version == 2 || file.version == 3 else { violated("version \(file.version) accepted", input: input) }
    guard file.fileSize == input.count else { violated("fileSize \(file.fileSize) != \(input.count)", input: input) }
    guard file.metadataKeys.count == file.metadata.count, Set(file.metadataKeys).count == file.metadataKeys.count,
          file.metadataKeys.allSatisfy({ file.metadata[$0] != nil }) else {
        violated("metadataKeys \(file.metadataKeys) do not match metadata's \(file.metadata.count) keys", input: input)
    }
    let a = file.alignment
    guard a > 0, a & (a - 1) == 0, file.dataOffset % a == 0 else {
        violated("alignment \(a), data offset \(file.dataOffset)", input: input)
    }
    var seen = Set<String>()
    for t in file.tensors {
        guard seen.insert(t.name).inserted else { violated("tensor \(t.name) listed twice", input: input) }
        guard file.hasTensor(t.name), (try? file.tensor(t.name)) == t else {
            violated("tensor(\(t.name.debugDescription)) does not find it", input: input)
        }
        guard (1...4).contains(t.dimensions.count), t.dimensions.allSatisfy({ $0 > 0 }),
              t.rowLength % t.type.blockSize == 0,
              t.byteCount == t.elementCount / t.type.blockSize * t.type.blockBytes,
              t.rowBytes * t.rowCount == t.byteCount else {
            violated("tensor \(t.name): dimensions \(t.dimensions) type \(t.type) byteCount \(t.byteCount)", input: input)
        }
        guard t.offset >= file.dataOffset, (t.offset - file.dataOffset) % a == 0,
              t.offset <= input.count, t.byteCount <= input.count - t.offset else {
            violated("tensor \(t.name) at \(t.offset) (\(t.byteCount) bytes) in a \(input.count)-byte file, data at \(file.dataOffset)", input: input)
        }
        let data = file.data(for: t)
        guard data.count == t.byteCount, data.elementsEqual(input[t.offset..<(t.offset + t.byteCount)]) else {
            violated("data(for: \(t.name)) is not the tensor's bytes", input: input)
        }
    }
    let sorted = file.tensors.sorted { $0.offset < $1.offset }
    for (x, y) in zip(sorted, sorted.dropFirst()) where x.offset + x.byteCount > y.offset {
        violated("tensors \(x.name) and \(y.name) overlap", input: input)
    }
    if !seen.contains("\u{0}absent") {
        do { _ = try file.tensor("\u{0}absent"); violated("an absent tensor was found", input: input) } catch {
            guard error == .missingTensor("\u{0}absent") else { violated("absent tensor: \(error)", input: input) }
        }
    }
}

/// Each typed getter either agrees with `metadata` or throws (a type mismatch).
func touchMetadata(_ file: GGUFFile, _ input: [UInt8]) {
    for key in file.metadataKeys {
        let v = file.metadata[key]!
        _ = v.typeName
        _ = "\(v)"
        func agree<T: Equatable>(_ getter: (String) throws(GGUFError) -> T, _ expected: T?, _ what: String) {
            do {
                let got = try getter(key)
                if got != expected { violated("\(what)(\(key.debugDescription)) = \(got), metadata holds \(v)", input: input) }
            } catch {
                if expected != nil { violated("\(what)(\(key.debugDescription)) threw \(error) for \(v)", input: input) }
                _ = error.description
            }
        }
        agree(file.string, v.stringValue, "string")
        agree(file.integer, v.intValue, "integer")
        agree(file.bool, v.boolValue, "bool")
        // Doubles compared by bit pattern (NaN).
        agree({ (k: String) throws(GGUFError) in try file.float(k).bitPattern }, v.doubleValue?.bitPattern, "float")
        let array = v.arrayValue
        agree(file.stringArray, array.flatMap { a in
            let s = a.compactMap(\.stringValue); return s.count == a.count ? s : nil }, "stringArray")
        agree(file.integerArray, array.flatMap { a in
            let s = a.compactMap(\.intValue); return s.count == a.count ? s : nil }, "integerArray")
        agree({ (k: String) throws(GGUFError) in try file.floatArray(k).map(\.bitPattern) }, array.flatMap { a in
            let s = a.compactMap { $0.doubleValue?.bitPattern }; return s.count == a.count ? s : nil }, "floatArray")
    }
    if file.metadata["\u{0}absent"] == nil {
        do { _ = try file.integer("\u{0}absent"); violated("an absent key was found", input: input) } catch {
            guard error == .missingKey("\u{0}absent") else { violated("absent key: \(error)", input: input) }
        }
    }
}

/// Dequantizes rows of `t` into an exact-size buffer (an overrun is AddressSanitizer's to see).
func rows(_ t: GGUFTensorInfo, _ range: Range<Int>, _ file: GGUFFile, _ input: [UInt8]) -> [UInt32] {
    let count = range.count * t.rowLength
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
    defer { buffer.deallocate() }
    buffer.initialize(repeating: .nan, count: max(count, 1))
    do {
        try file.dequantizeRows(t, rows: range, into: buffer)
    } catch {
        violated("dequantizeRows(\(t.name), \(range)) of a \(t.type) \(t.dimensions) tensor threw \(error)", input: input)
    }
    return (0..<count).map { buffer[$0].bitPattern }
}

func touchTensor(_ t: GGUFTensorInfo, _ file: GGUFFile, _ input: [UInt8]) {
    let rowCount = t.rowCount, limit = 1 << 16
    guard t.type.isDequantizable else {
        do { _ = try file.dequantized(t); violated("\(t.type) dequantized", input: input) } catch {
            guard error == .unsupportedTensorType(t.type) else { violated("\(t.type): \(error)", input: input) }
        }
        return
    }
    guard t.rowLength <= limit else { return }
    let firstRows = min(rowCount, 4, max(limit / t.rowLength, 1))
    let first = rows(t, 0..<firstRows, file, input)
    let last = rows(t, (rowCount - 1)..<rowCount, file, input)
    if t.elementCount <= limit {
        let all: [Float]
        do { all = try file.dequantized(t) } catch {
            violated("dequantized(\(t.name)) threw \(error)", input: input)
        }
        guard all.count == t.elementCount,
              all.prefix(first.count).map(\.bitPattern) == first,
              all.suffix(last.count).map(\.bitPattern) == last else {
            violated("dequantized(\(t.name)) disagrees with dequantizeRows", input: input)
        }
    }
    for bad in [rowCount..<(rowCount + 1), (rowCount - 1)..<(rowCount + 1)] {
        var sink: Float = 0
        do {
            try file.dequantizeRows(t, rows: bad, into: &sink)
            violated("dequantizeRows(\(t.name), \(bad)) of \(rowCount) rows did not throw", input: input)
        } catch {
            guard case .invalidRange = error else { violated("rows \(bad): \(error)", input: input) }
        }
    }
}

/// What a model load reads besides the weights: the configuration and the tokenizer.
func touchModel(_ file: GGUFFile, _ input: [UInt8]) {
    do {
        let config = try ModelConfig(gguf: file)
        _ = config.isLocal(layer: config.layers - 1)
    } catch {
        _ = error.description
    }
    let vocabulary: Vocabulary
    do {
        vocabulary = try Vocabulary(gguf: file)
    } catch let error as GGUFError {
        _ = error.description
        return
    } catch {
        violated("Vocabulary(gguf:) threw a non-GGUF error: \(error)", input: input)
    }
    let tokenizer: Tokenizer
    do {
        tokenizer = try Tokenizer(vocabulary)
    } catch {
        _ = error.description
        return
    }
    let n = tokenizer.vocabularySize
    let samples = ["Hello, world! 123 'll  \t\n🦙 ▁x <0x41> é", vocabulary.tokens.prefix(12).joined(separator: " ")]
    for text in samples {
        for parseSpecial in [true, false] {
            let ids = tokenizer.encode(text, addSpecial: true, parseSpecial: parseSpecial)
            guard ids.allSatisfy({ $0 >= 0 && $0 < n }) else {
                violated("encode(\(text.debugDescription)) gave ids outside 0..<\(n): \(ids)", input: input)
            }
            let decoded: String
            do { decoded = try tokenizer.decode(ids) } catch { violated("decode of encode's ids threw \(error)", input: input) }
            var d = StreamingDecoder(tokenizer: tokenizer)
            var streamed = ""
            for id in ids {
                do { streamed += try d.append(id) } catch { violated("streaming of encode's ids threw \(error)", input: input) }
            }
            streamed += d.finish()
            guard streamed.utf8.elementsEqual(decoded.utf8) else {
                violated("streaming \(streamed.debugDescription) != decode \(decoded.debugDescription)", input: input)
            }
        }
    }
    _ = tokenizer.preTokenize(samples[0])
    let user = ChatMessage(role: "user", content: " Hi\n")
    _ = tokenizer.chatTemplate.render([user], addGenerationPrompt: true)
    _ = tokenizer.chatTemplate.render([ChatMessage(role: "system", content: "Be brief."), user], addGenerationPrompt: false)
}

/// libFuzzer's entry point (also referenced by libFuzzer's own `main`, which is linked but unused).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    run(inputBytes(data, size))
    return 0
}
