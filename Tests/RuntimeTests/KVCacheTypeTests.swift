import Foundation
import Partitioning
import Testing
@testable import Runtime
import Tensors
import Transformer

/// The 8-bit KV cache (`--kv-cache q8`) against the f16 cache of the same engine, across
/// meshes, through growth and prefix copies. (The kernel and the quantizer are tested against
/// definitions in TensorsTests; the real models' perplexity in RealModelTests.)
struct KVCacheTypeTests {
    /// Multiquery with heads of 32 (one q8 block each), a 5-position window on 2 of 3 layers.
    static let model = ModelConfig.gemmaTiny(layers: 3, modelDimension: 64, heads: 4, headDimension: 32, vocabularySize: 96)

    static func engine(_ kv: KVCacheType, mesh: Mesh = .single, layout: PhaseLayout = LoadedModel.singleDeviceLayout) throws -> MeshEngine {
        try MeshEngine(source: RandomWeights(config: model, seed: 23), config: model, mesh: mesh, prefill: layout, decode: layout,
                       format: .f32, threads: 2, kvCache: kv)
    }

    /// Logits of 3 prompts of 20–22 tokens (every position), then 30 decode steps of fixed
    /// tokens: past the caches' first growths.
    static func logits(_ engine: MeshEngine) throws -> [[Float]] {
        let prompts = (0..<3).map { b in (0..<(20 + b)).map { ($0 * 7 + b * 5 + 1) % model.vocabularySize } }
        let caches = prompts.map { _ in engine.makeCache() }
        var out = try engine.forward(zip(caches, prompts).map { SequenceInput(cache: $0, tokens: $1, logitsFrom: 0) }).map(\.values)
        for step in 0..<30 {
            out += try engine.forward(caches.indices.map { SequenceInput(cache: caches[$0], tokens: [(step * 11 + $0) % model.vocabularySize]) })
                .map(\.values)
        }
        return out
    }

    /// q8 logits stay within 1% of the largest |logit| of the f16 cache's (measured: 0.057 of 37.9, 0.15%), and
    /// differ from them (the 8-bit cache is in use).
    @Test func q8StaysCloseToF16() throws {
        let (f16, q8) = (try Self.logits(Self.engine(.f16)), try Self.logits(Self.engine(.q8)))
        let d = zip(f16, q8).map { maxAbsDifference($0, $1) }.max()!
        let largest = f16.joined().map(abs).max()!
        #expect(d > 0 && d < 0.01 * largest, "max |Δ| = \(d), largest |logit| \(largest)")
    }

    /// Sharded q8 equals the single-device q8 run within 2e-3 (measured: 1e-5): heads and batch
    /// attention, on meshes 2 and 2x2 (4 heads over 4 devices, the KV head replicated).
    @Test(arguments: ["2", "2x2"], AttentionLayout.allCases)
    func shardedQ8EqualsSingleDevice(_ meshName: String, _ attention: AttentionLayout) throws {
        let single = try Self.logits(Self.engine(.q8))
        let sharded = try Self.logits(Self.engine(.q8, mesh: try Mesh(parsing: meshName), layout: PhaseLayout(.weightStationary2D, attention)))
        let d = zip(single, sharded).map { maxAbsDifference($0, $1) }.max()!
        #expect(d < 2e-3, "max |Δ| = \(d)")
    }

    /// A sequence started from a copied q8 prefix (the server's prefix cache: codes and scales
    /// copied) continues with the logits of the sequence it was copied from.
    @Test func copiedQ8PrefixContinuesTheSource() throws {
        let engine = try Self.engine(.q8)
        let tokens = (0..<40).map { ($0 * 13 + 3) % Self.model.vocabularySize }
        let source = engine.makeCache()
        let full = try engine.forward([SequenceInput(cache: source, tokens: tokens, logitsFrom: 0)])[0]
        let copy = engine.makeCache()
        try engine.copyPrefix(30, from: source, to: copy)
        let tail = try engine.forward([SequenceInput(cache: copy, tokens: Array(tokens[30...]), logitsFrom: 0)])[0]
        for i in 0..<10 {
            #expect(maxAbsDifference(tail.rowArray(i), full.rowArray(30 + i)) < 1e-5, "position \(30 + i)")
        }
    }

    /// A cache grown position by position (each growth copies every chunk of codes and scales:
    /// the path where the system refuses to reserve the whole limit) attends bitwise as one
    /// reserved for its whole limit at once, and so does a copy of its first 300 positions, for
    /// both types (2 layers, 3 KV heads of 64, 9 query heads, 600 positions: three chunks).
    @Test(arguments: KVCacheType.allCases)
    func grownCacheAttendsAsOneMadeAtOnce(_ type: KVCacheType) {
        let (layers, kv, Q, H, n) = (2, 3, 64, 9, 600)
        let grown = KVCache(type: type, layers: layers, kvHeads: kv, headDimension: Q, limit: 1024, reservesLimit: false)
        let atOnce = KVCache(type: type, layers: layers, kvHeads: kv, headDimension: Q, limit: 1024)
        atOnce.reserve(n)
        var x = (0..<(2 * kv * Q)).map { Float(($0 * 37) % 101) / 50 - 1 }
        for p in 0..<n {
            grown.reserve(p + 1)
            for i in x.indices { x[i] = x[i] * 0.9 + Float((p * 13 + i) % 7) / 10 }
            for l in 0..<layers {
                for c in [grown, atOnce] { c.write(layer: l, position: p, count: kv, keys: x, values: Array(x[(kv * Q)...])) }
            }
        }
        #expect(grown.capacity == 768 && atOnce.capacity == 1024, "grown: 256, 512, 768")
        let prefix = grown.copy(prefix: 300, limit: 1024)
        #expect(prefix.capacity == 512, "a copy has room for a quarter more, in whole chunks")
        let q = (0..<(H * Q)).map { Float(($0 * 11) % 17) / 17 - 0.5 }
        var scratch = [Float](repeating: 0, count: n * H / kv)
        for l in 0..<layers {
            for (cache, count) in [(grown, n), (prefix, 300)] {
                var a = [Float](repeating: 0, count: H * Q), b = a
                cache.attend(q, heads: H, kvHeads: kv, layer: l, firstHead: 0, first: 0, count: count, scale: 0.125, scratch: &scratch, out: &a, cold: 1)
                atOnce.attend(q, heads: H, kvHeads: kv, layer: l, firstHead: 0, first: 0, count: count, scale: 0.125, scratch: &scratch, out: &b, cold: 1)
                #expect(a == b, "layer \(l), \(count) positions")
            }
        }
    }

    /// Heads that are not a multiple of 32 wide cannot be cached as q8: a typed error.
    @Test func q8NeedsHeadsOfMultiplesOf32() {
        let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)   // heads of 8
        #expect(throws: EngineError.unsupportedKVCache(.q8, headDimension: 8)) {
            try MeshEngine(source: RandomWeights(config: config, seed: 1), config: config, mesh: .single,
                           prefill: LoadedModel.singleDeviceLayout, decode: LoadedModel.singleDeviceLayout, format: .f32, threads: 1, kvCache: .q8)
        }
    }
}
