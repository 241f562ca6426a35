import Collectives
import Foundation
import NaiveModel
import Partitioning
import Testing
@testable import Runtime
import Tensors
import Transformer

/// Sharded execution, and the single device (a mesh of one), equal the naive oracle (Pope et al.
/// §3 layouts, SPEC §4.4–4.6).
struct MeshTests {
    /// Tiny random models whose heads split over up to 8 devices: Llama with grouped-query
    /// attention (8 query heads, 2 KV heads, serial block), Llama with multi-head attention
    /// (8 and 8), PaLM with multiquery attention (parallel block, F = 4E), each block kind
    /// swapped, and Gemma 3 (multiquery, 4 heads padded on 8 devices, post norms, QK norm,
    /// GeGLU, NeoX RoPE, a 5-position window on 2 of 3 layers: sequences run past it).
    static let models: [ModelConfig] = {
        let llama = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        let palm = ModelConfig.palmTiny(layers: 2, modelDimension: 64, heads: 8, vocabularySize: 96)
        var llamaParallel = llama, palmSerial = palm
        llamaParallel.block = .parallel
        llamaParallel.name = "llama-tiny-parallel"
        palmSerial.block = .serial
        palmSerial.name = "palm-tiny-serial"
        var mha = ModelConfig.llamaTiny(layers: 2, modelDimension: 64, heads: 8, kvHeads: 8, vocabularySize: 96)
        mha.name = "llama-tiny-mha"
        let gemma = ModelConfig.gemmaTiny(layers: 3, modelDimension: 64, heads: 4, headDimension: 32, vocabularySize: 96)
        return [llama, mha, palm, llamaParallel, palmSerial, gemma]
    }()
    static let meshes = ["1", "2", "4", "2x2", "2x2x2"]

    struct Case: CustomTestStringConvertible, Sendable {
        let model: ModelConfig
        let mesh: String
        let ffn: FeedForwardLayout
        let attention: AttentionLayout
        var overlap = false
        var testDescription: String { "\(model.name) \(mesh) \(ffn) \(attention)\(overlap ? " overlap" : "")" }
    }

    /// Every model × mesh × layout, plus the overlapped (looped collective einsum) variant of
    /// every layout on 2x2x2 and 2.
    static let cases: [Case] = models.flatMap { m in
        meshes.flatMap { mesh in
            FeedForwardLayout.allCases.flatMap { f in AttentionLayout.allCases.map { Case(model: m, mesh: mesh, ffn: f, attention: $0) } }
        }
    } + models.flatMap { m in
        ["2", "2x2x2"].flatMap { mesh in
            FeedForwardLayout.allCases.map { Case(model: m, mesh: mesh, ffn: $0, attention: .shardedOverBatch, overlap: true) }
        }
    }

    /// Prefill logits (every position) and 8 greedy decode steps match the naive oracle within
    /// 2e-3 (f32 kernels against Double loops: only rounding and summation order differ), for
    /// batches that do and do not divide the mesh. Prompts have different lengths.
    @Test(arguments: cases)
    func shardedEqualsReference(_ c: Case) throws {
        let mesh = try Mesh(parsing: c.mesh)
        let n = mesh.deviceCount
        let source = RandomWeights(config: c.model, seed: 17)
        let reference = oracle(c.model, seed: 17)
        let layout = PhaseLayout(c.ffn, c.attention)
        let sharded = try MeshEngine(source: source, config: c.model, mesh: mesh, prefill: layout, decode: layout,
                                     format: .f32, threads: 2, overlap: c.overlap)
        for batch in Set([n, n + 1]) {
            let prompts = (0..<batch).map { b in (0..<((c.overlap ? 24 : 3) + b % 4)).map { ($0 * 7 + b * 5 + 1) % c.model.vocabularySize } }
            try Self.expectOracle(sharded, reference, prompts, steps: 8)
        }
    }

    /// Every feed-forward × attention layout on `mesh`, for each batch size: `expectOracle`.
    static func expectEveryLayoutMatchesOracle(_ model: ModelConfig, _ mesh: Mesh, seed: UInt64, batches: Set<Int>, steps: Int) throws {
        let reference = oracle(model, seed: seed)
        for ffn in FeedForwardLayout.allCases {
            for attention in AttentionLayout.allCases {
                let layout = PhaseLayout(ffn, attention)
                let sharded = try MeshEngine(source: RandomWeights(config: model, seed: seed), config: model, mesh: mesh,
                                             prefill: layout, decode: layout, format: .f32, threads: 2)
                for batch in batches.sorted() {
                    let prompts = (0..<batch).map { b in (0..<(3 + b % 3)).map { ($0 * 7 + b * 5 + 1) % model.vocabularySize } }
                    try expectOracle(sharded, reference, prompts, steps: steps)
                }
            }
        }
    }

    /// Prefill logits of every position, then `steps` greedy decode steps: `engine` within 4e-3
    /// of the oracle for every sequence. (Both round cached keys and values to f16; a value
    /// whose f32 and Double computations straddle an f16 rounding boundary lands one f16 ulp
    /// apart, 2^-11 relative: measured up to 2.6e-3 on the tiny multi-head model's 2×2×2 mesh.)
    static func expectOracle(_ engine: MeshEngine, _ reference: NaiveModel, _ prompts: [[Int]], steps: Int) throws {
        let refCaches = prompts.map { _ in reference.makeSequence() }
        let meshCaches = prompts.map { _ in engine.makeCache() }
        var expected = reference.forward(refCaches, prompts, logitsFrom: 0)
        var got = try engine.forward(zip(meshCaches, prompts).map { SequenceInput(cache: $0, tokens: $1, logitsFrom: 0) })
        for step in 0...steps {
            for b in prompts.indices {
                #expect(got[b].rows == expected[b].rows)
                let d = maxAbsDifference(got[b].values, expected[b].values)
                #expect(d < 4e-3, "\(engine.decode) batch \(prompts.count) step \(step) sequence \(b): max |Δ| = \(d)")
            }
            if step == steps { break }
            let next = expected.map { Sampler.argmax($0.rowArray($0.rows - 1)) }
            expected = reference.forward(refCaches, next.map { [$0] })
            got = try engine.forward(zip(meshCaches, next).map { SequenceInput(cache: $0, tokens: [$1]) })
        }
    }

    /// Long sequences: a prefill past the cache's first growth (64 positions), decode past the
    /// second (128), then a rewritten tail (a chat turn: truncate, prefill new tokens) — logits
    /// equal the oracle's. (The device caches once lost their contents when they grew.)
    @Test(arguments: ["1", "2", "2x2"], [FeedForwardLayout.weightStationary2D, .weightGatheredXYZ])
    func longSequencesAndRewrites(_ meshName: String, _ ffn: FeedForwardLayout) throws {
        let model = Self.models[0]
        let mesh = try Mesh(parsing: meshName)
        for attention in AttentionLayout.allCases {
            let reference = oracle(model, seed: 17)
            let layout = PhaseLayout(ffn, attention)
            let sharded = try MeshEngine(source: RandomWeights(config: model, seed: 17), config: model, mesh: mesh,
                                         prefill: layout, decode: layout, format: .f32, threads: 2)
            let batch = mesh.deviceCount
            let refCaches = (0..<batch).map { _ in reference.makeSequence() }
            let meshCaches = (0..<batch).map { _ in sharded.makeCache() }
            func step(_ tokens: [[Int]]) throws {
                let expected = reference.forward(refCaches, tokens)
                let got = try sharded.forward(zip(meshCaches, tokens).map { SequenceInput(cache: $0, tokens: $1) })
                for b in 0..<batch {
                    let d = maxAbsDifference(got[b].values, expected[b].values)
                    #expect(d < 2e-3, "\(attention) at position \(refCaches[b].count): max |Δ| = \(d)")
                }
            }
            let token = { (i: Int, b: Int) in (i * 7 + b * 5 + 1) % model.vocabularySize }
            try step((0..<batch).map { b in (0..<(100 + b)).map { token($0, b) } })
            for i in 0..<40 { try step((0..<batch).map { [token(200 + i, $0)] }) }
            for c in refCaches { c.truncate(to: 90) }
            for c in meshCaches { c.truncate(to: 90) }
            try step((0..<batch).map { b in (0..<12).map { token(300 + $0, b) } })
            for i in 0..<4 { try step((0..<batch).map { [token(400 + i, $0)] }) }
        }
    }

    /// int8 weights whose 2D shards start inside a 32-input group (E/x = 16 on 4 devices): each
    /// device stores the whole group, and the weight-gathered layout joins the gathered groups
    /// with each member's columns where that member holds them. Its logits equal the 2D
    /// weight-stationary run of the same shards (which never gathers weights) up to rounding.
    /// (Not one device's int8 run: activations are quantized per 32-input group too, and a
    /// shard's group holds zeros for the columns it does not own.)
    @Test func int8GatheredShardsInsideGroupsEqualStationary() throws {
        let config = Self.models[0]
        func run(_ ffn: FeedForwardLayout) throws -> [Matrix] {
            let layout = PhaseLayout(ffn, .shardedOverBatch)
            let engine = try MeshEngine(source: RandomWeights(config: config, seed: 9), config: config, mesh: Mesh(x: 4),
                                        prefill: layout, decode: layout, format: .int8, threads: 1)
            let prompts = (0..<4).map { b in (0..<(3 + b)).map { ($0 * 5 + b + 2) % config.vocabularySize } }
            return try engine.forward(prompts.map { SequenceInput(cache: engine.makeCache(), tokens: $0, logitsFrom: 0) })
        }
        for (e, g) in zip(try run(.weightStationary2D), try run(.weightGatheredX)) {
            let d = maxAbsDifference(g.values, e.values)
            #expect(d < 1e-4, "max |Δ| = \(d)")
        }
    }

    /// Prefill and decode in different layouts over the same stored weights (§3.2.3).
    @Test(arguments: [FeedForwardLayout.weightGatheredX, .weightGatheredXY, .weightGatheredXYZ])
    func prefillWeightGatheredDecodeWeightStationary(_ prefill: FeedForwardLayout) throws {
        let config = Self.models[2]
        let mesh = Mesh(x: 2, y: 2, z: 2)
        let reference = oracle(config, seed: 3)
        let sharded = try MeshEngine(source: RandomWeights(config: config, seed: 3), config: config, mesh: mesh,
                                     prefill: PhaseLayout(prefill, .shardedOverBatch),
                                     decode: PhaseLayout(.weightStationary2D, .shardedOverBatch), format: .f32, threads: 2)
        #expect(sharded.devices.allSatisfy { $0.oneD == nil && $0.twoD != nil })
        let prompts = (0..<9).map { b in (0..<(2 + b % 3)).map { ($0 + 3 * b) % config.vocabularySize } }
        let rc = prompts.map { _ in reference.makeSequence() }, mc = prompts.map { _ in sharded.makeCache() }
        var e = reference.forward(rc, prompts)
        var g = try sharded.forward(zip(mc, prompts).map { SequenceInput(cache: $0, tokens: $1) })
        for _ in 0..<4 {
            for b in 0..<prompts.count { #expect(maxAbsDifference(g[b].values, e[b].values) < 2e-3) }
            let next = e.map { Sampler.argmax($0.rowArray(0)) }
            e = reference.forward(rc, next.map { [$0] })
            g = try sharded.forward(zip(mc, next).map { SequenceInput(cache: $0, tokens: [$1]) })
        }
    }

    @Test func badLayoutsAreRejectedBeforeWork() throws {
        let gqa = ModelConfig.llamaTiny(layers: 1, modelDimension: 48, heads: 6, kvHeads: 3, vocabularySize: 64)
        let ws = PhaseLayout(.weightStationary2D, .shardedOverHeads)
        // E = 48, F = 144: meshes of 1, 2, 3, 4, 6, 8, 12, 16, 24 and 48 devices split both.
        let sizes = [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]
        #expect(throws: LayoutError.indivisible(what: "model dimension E", size: 48, parts: 32, meshSizes: sizes)) {
            try MeshEngine.validate(config: gqa, mesh: Mesh(x: 2, y: 4, z: 4), prefill: ws, decode: ws)
        }
        #expect(throws: LayoutError.indivisible(what: "model dimension E", size: 48, parts: 5, meshSizes: sizes)) {
            try MeshEngine.validate(config: gqa, mesh: Mesh(x: 5), prefill: ws, decode: ws)
        }
        // Heads that do not divide are padded, not refused.
        try MeshEngine.validate(config: gqa, mesh: Mesh(x: 4), prefill: ws, decode: ws)
        let batch = PhaseLayout(.weightStationary2D, .shardedOverBatch)
        let aligned = Self.models[0]
        #expect(throws: LayoutError.incompatibleKVPlacement(prefill: "\(ws)", decode: "\(batch)")) {
            try MeshEngine.validate(config: aligned, mesh: Mesh(x: 2), prefill: ws, decode: batch)
        }
        let wgHeads = PhaseLayout(.weightGatheredX, .shardedOverHeads)
        #expect(throws: LayoutError.incompatibleKVPlacement(prefill: "\(wgHeads)", decode: "\(ws)")) {
            try MeshEngine.validate(config: aligned, mesh: Mesh(x: 2, y: 2), prefill: wgHeads, decode: ws)
        }
    }

    /// The bytes each device sends in one FFN layer equal the paper's closed forms (SPEC §4.4,
    /// Fig. 3), re-derived here for a SwiGLU FFN: W_in has 2F outputs (gate, up) and W_out F
    /// inputs, so the paper's two F terms become 2F + F = 3F. Every collective of ours moves
    /// (K−1)/K of its buffer (direct exchange), so each term carries its own group's factor:
    /// all-gather: output·(K−1)/K; reduce-scatter: input·(K−1)/K. 4 bytes per element.
    @Test(arguments: ["2", "4", "2x2", "1x2x2", "2x2x2"], FeedForwardLayout.allCases)
    func ffnBytesEqualClosedForm(_ meshText: String, _ ffn: FeedForwardLayout) throws {
        let mesh = try Mesh(parsing: meshText)
        let config = ModelConfig.llamaTiny(layers: 1, modelDimension: 64, heads: 8, kvHeads: 2, vocabularySize: 96)
        let E = Double(config.modelDimension), F = Double(config.feedForwardDimension)
        let X = Double(mesh.x), YZ = Double(mesh.y * mesh.z), Z = Double(mesh.z), XY = Double(mesh.x * mesh.y)
        let n = Double(mesh.deviceCount)
        func f(_ k: Double) -> Double { (k - 1) / k }
        let layout = PhaseLayout(ffn, .shardedOverBatch)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 2), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .f32, threads: 1)
        let B = 2 * mesh.deviceCount, L = 3
        let caches = (0..<B).map { _ in engine.makeCache() }
        _ = try engine.forward(caches.enumerated().map { i, c in SequenceInput(cache: c, tokens: (0..<L).map { t in (i + t) % 90 }) })
        let T = Double(B * L)
        let expected: Double = switch ffn {
        case .weightStationary1D: 2 * T * E * f(n)
        case .weightStationary2D: 2 * T * (E / X) * f(YZ) + T * (3 * F / YZ) * f(X)
        case .weightGatheredX: 2 * (T / X) * E * f(YZ) + 3 * E * F / YZ * f(X)
        case .weightGatheredXY: 2 * (T / XY) * E * f(Z) + 3 * E * F / Z * f(XY)
        case .weightGatheredXYZ: 3 * E * F * f(n)
        }
        for rank in 0..<mesh.deviceCount {
            let t = engine.traffic[rank]
            let measured = t.sentBytes(part: .feedForward) - t.sentBytes(site: CollectiveSite(.feedForward, .normStatistics))
            #expect(Double(measured) == 4 * expected, "rank \(rank): \(measured) bytes, closed form \(4 * expected)")
        }
    }
}

/// Batches smaller than the mesh: rows of missing sequences are padding (Pope et al. pad the
/// batch, §3.3, §4), so one sequence runs on every mesh and layout.
struct PaddedBatchTests {
    @Test(arguments: MeshTests.models.prefix(3), ["2", "4", "2x2", "2x2x2"])
    func fewerSequencesThanDevicesEqualOracle(_ model: ModelConfig, _ meshName: String) throws {
        let mesh = try Mesh(parsing: meshName)
        try MeshTests.expectEveryLayoutMatchesOracle(model, mesh, seed: 17, batches: [1, max(1, mesh.deviceCount / 2)], steps: 4)
    }
}

/// Heads that do not divide over the devices are padded (Pope et al. §3.3: PaLM 540B's 48
/// heads to 64 over 64 chips): zero-weight head slots that change no result.
struct PaddedHeadsTests {
    /// 9 query heads over 3 KV heads (the default model's shape), 4 multiquery heads (Gemma's),
    /// and 6 multi-head heads: none divides over every mesh below.
    static let models: [ModelConfig] = {
        var gqa = ModelConfig.llamaTiny(layers: 2, modelDimension: 72, heads: 9, kvHeads: 3, vocabularySize: 96)
        gqa.name = "llama-9q-3kv"
        var mqa = ModelConfig.palmTiny(layers: 2, modelDimension: 48, heads: 4, vocabularySize: 96)
        mqa.name = "palm-4q-1kv"
        var mha = ModelConfig.llamaTiny(layers: 2, modelDimension: 48, heads: 6, kvHeads: 6, vocabularySize: 96)
        mha.name = "llama-6q-6kv"
        return [gqa, mqa, mha]
    }()

    @Test(arguments: models, ["2", "3", "4", "2x2", "2x2x2"])
    func paddedHeadsEqualOracle(_ model: ModelConfig, _ meshName: String) throws {
        let mesh = try Mesh(parsing: meshName)
        try MeshTests.expectEveryLayoutMatchesOracle(model, mesh, seed: 23, batches: [1, mesh.deviceCount + 1], steps: 3)
    }

    /// The paper's example: 48 multiquery heads over 64 chips are 64 query slots, one per chip,
    /// each chip holding the one KV head. The default model's 9 query and 3 KV heads over 2
    /// devices: the KV heads padded to 4, two whole groups of 3 query heads per device.
    @Test func paddingFollowsThePaper() {
        let palm = HiddenBlocks(heads: 48, kvHeads: 1, devices: 64, attention: .shardedOverHeads)
        #expect(palm.wholeHeads! == (1, 1))
        #expect(palm.qkv[47] == [.query(47), .key(0), .value(0)])
        #expect(palm.qkv[48] == [.padding, .key(0), .value(0)])
        let smol = HiddenBlocks(heads: 9, kvHeads: 3, devices: 2, attention: .shardedOverHeads)
        #expect(smol.qkv[0] == (0..<6).map { .query($0) } + [.key(0), .key(1), .value(0), .value(1)])
        #expect(smol.qkv[1] == (6..<9).map { .query($0) } + Array(repeating: .padding, count: 3) + [.key(2), .padding, .value(2), .padding])
        // Over the batch the same heads split evenly, with no whole-head padding.
        #expect(HiddenBlocks(heads: 9, kvHeads: 3, devices: 2, attention: .shardedOverBatch).qkv[0].count == 8)
    }
}
