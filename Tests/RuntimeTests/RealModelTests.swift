import CostModel
import Foundation
import Partitioning
import Testing
@testable import Runtime
import Tensors

/// The default model against llama.cpp's independent outputs (../shared/reference).
@Suite(.enabled(if: modelAvailable, "default model or reference file absent"), .serialized)
struct RealModelTests {
    let reference = Reference.shared!
    static let promptIDs = ["english", "numbers", "short", "chat_templated"]

    @Test(arguments: promptIDs)
    func tokenizationMatchesLlamaCpp(_ id: String) throws {
        let model = try ModelCache.shared.model(.f32)
        let p = reference.prompt(id)
        #expect(model.tokenizer.encode(p["text"] as! String) == p["prompt_token_ids"] as! [Int])
    }

    /// First-position logits of every reference top-5 token, our engine vs the reference.
    func firstPositionDifference(_ model: LoadedModel, _ id: String, _ variant: String) throws -> (Float, Int, Int) {
        let p = reference.prompt(id)
        let ref = reference.variant(id, variant)
        let logits = try model.engine.forward([SequenceInput(cache: model.engine.makeCache(), tokens: p["prompt_token_ids"] as! [Int])])[0]
        let top5 = ref["top5_first_position"] as! [[String: Any]]
        var worst: Float = 0
        for t in top5 {
            worst = max(worst, abs(logits[0, t["id"] as! Int] - Float(t["logit"] as! Double)))
        }
        let ours = Sampler.argmax(logits.rowArray(0))
        return (worst, ours, top5[0]["id"] as! Int)
    }

    @Test(arguments: promptIDs)
    func f32LogitsMatchExactReference(_ id: String) throws {
        let (diff, ours, theirs) = try firstPositionDifference(try ModelCache.shared.model(.f32), id, "F32_exact")
        #expect(diff <= 0.02, "max |Δlogit| over the reference top-5 = \(diff)")
        #expect(ours == theirs)
    }

    /// Greedy decoding equals F32_exact's 32 tokens up to its first near-tie (top-2 gap < 0.05
    /// in the reference, where f32 summation order may legitimately flip the choice).
    @Test(arguments: promptIDs)
    func f32GreedyMatchesExactReference(_ id: String) throws {
        let model = try ModelCache.shared.model(.f32)
        let ref = reference.variant(id, "F32_exact")
        let expected = ref["generated_ids"] as! [Int]
        let steps = ref["top5_every_step"] as! [[[Double]]]
        let nearTie = steps.firstIndex { $0[0][1] - $0[1][1] < 0.05 } ?? expected.count
        var request = GenerationRequest(promptTokens: reference.prompt(id)["prompt_token_ids"] as! [Int])
        request.sampling = .greedy
        request.maxTokens = expected.count
        request.ignoreEOS = true
        let result = try model.generator.generate([request])[0]
        #expect(Array(result.tokenIDs.prefix(nearTie)) == Array(expected.prefix(nearTie)), "near-tie at step \(nearTie)")
        #expect(nearTie > 0 || id == "chat_templated")
    }

    /// The native (Q4_1/Q8_0 in place) and int8 paths are as close to llama.cpp's exact f32 run
    /// as llama.cpp's own formats are to each other: over the four prompts, the mean of the
    /// max |Δlogit| over the reference top-5 at the first position is within the mean of
    /// llama.cpp's own spreads, and no prompt is beyond 1.5× its spread. Why not each prompt
    /// within its own spread: 8-bit activation roundings make each prompt's number chaotic at
    /// the 0.3 level — measured, rewriting SiLU from g/(1+e^−g)·up to g·(up/(1+e^−g)) (one
    /// rounding) moved int8 from 0.15/0.20/0.39/0.97 to 0.34/0.33/0.39/1.05, and a 2-ulp vector
    /// exp moved "numbers" to 0.47 against a spread of 0.34 — as llama.cpp's own settings of one
    /// file move by up to 0.58 (Q4_1, flash attention and KV type). A wrong kernel moves logits
    /// by whole units.
    @Test(arguments: [WeightFormat.native, .int8])
    func quantizedPathsWithinLlamaCppVariantSpread(_ format: WeightFormat) throws {
        let model = try ModelCache.shared.model(format)
        var ours: [Float] = [], spreads: [Float] = []
        for id in Self.promptIDs {
            let tolerance = Float(reference.variantTolerance(id))
            let (diff, _, _) = try firstPositionDifference(model, id, "F32_exact")
            #expect(diff <= 1.5 * tolerance, "\(format) \(id): max |Δlogit| \(diff) > 1.5 × llama.cpp's own spread \(tolerance)")
            ours.append(diff)
            spreads.append(tolerance)
        }
        let mean = ours.reduce(0, +) / Float(ours.count), spread = spreads.reduce(0, +) / Float(spreads.count)
        #expect(mean <= spread, "\(format): mean max |Δlogit| \(mean) (\(ours)) > llama.cpp's mean spread \(spread)")
    }

    @Test func kvCacheIncrementalDecodeEqualsFullPass() throws {
        let engine = try ModelCache.shared.model(.f32).engine
        let tokens = reference.prompt("numbers")["prompt_token_ids"] as! [Int]
        let full = try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: tokens, logitsFrom: 0)])[0]
        let cache = engine.makeCache()
        let prefix = 10
        var rows = [try engine.forward([SequenceInput(cache: cache, tokens: Array(tokens[..<prefix]))])[0].rowArray(0)]
        for t in tokens[prefix...] { rows.append(try engine.forward([SequenceInput(cache: cache, tokens: [t])])[0].rowArray(0)) }
        for (i, row) in rows.enumerated() {
            #expect(maxAbsDifference(row, full.rowArray(prefix - 1 + i)) < 1e-3)
        }
    }

    @Test func batchOfThreeEqualsSeparateRuns() throws {
        let engine = try ModelCache.shared.model(.int8).engine
        let prompts = ["english", "numbers", "short"].map { reference.prompt($0)["prompt_token_ids"] as! [Int] }
        let caches = prompts.map { _ in engine.makeCache() }
        var batched = try engine.forward(zip(caches, prompts).map { SequenceInput(cache: $0, tokens: $1) })
        for step in 0..<3 {
            var separate: [Matrix] = []
            let singleCaches = prompts.map { _ in engine.makeCache() }
            for (i, p) in prompts.enumerated() {
                var out = try engine.forward([SequenceInput(cache: singleCaches[i], tokens: p)])[0]
                for s in 0..<step { out = try engine.forward([SequenceInput(cache: singleCaches[i], tokens: [100 + s])])[0] }
                separate.append(out)
            }
            for i in 0..<3 { #expect(maxAbsDifference(batched[i].rowArray(0), separate[i].rowArray(0)) < 1e-3, "step \(step) seq \(i)") }
            batched = try engine.forward(caches.map { SequenceInput(cache: $0, tokens: [100 + step]) })
        }
    }

    @Test(arguments: [(WeightFormat.f32, "F32"), (.native, "Q4_1")])
    func perplexityOnGPL3MatchesLlamaCpp(_ format: WeightFormat, _ variant: String) throws {
        let path = "/usr/share/common-licenses/GPL-3"
        try #require(FileManager.default.fileExists(atPath: path))
        let model = try ModelCache.shared.model(format)
        let (tokens, chunkStart) = perplexityTokens(try String(contentsOfFile: path, encoding: .utf8), tokenizer: model.tokenizer)
        let result = try perplexity(engine: model.engine, tokens: tokens, context: 512, chunkStart: chunkStart)
        #expect(result.chunks == 14 && result.scoredTokens == 14 * 255)
        #expect(abs(result.perplexity - reference.perplexity(variant)) <= 0.1, "PPL \(result.perplexity)")
    }

    /// int8 weights with the 8-bit KV cache: GPL-3 perplexity within 0.1 of llama.cpp's Q8_0
    /// file with its f16 cache (18.35), and not the f16 cache's (18.370: the 8-bit cache is in
    /// use). Not closer: with keys, values and activations all rounded to 8 bits, the last bits
    /// of one attention output move later codes, and the perplexity with them — measured 18.359
    /// to 18.419 for the same kernel's arithmetic in other orders (the portable path 18.376;
    /// its outputs perturbed by 1e-6 relative 18.361–18.367; expf for the vector exp 18.392;
    /// the tiled kernel 18.419), where llama.cpp's own q8_0 cache gives 18.364.
    @Test func q8CachePerplexityOnGPL3MatchesLlamaCpp() throws {
        let path = "/usr/share/common-licenses/GPL-3"
        try #require(FileManager.default.fileExists(atPath: path))
        let model = try LoadedModel(path: defaultModelPath!, format: .int8, threads: 2, kvCache: .q8)
        let (tokens, chunkStart) = perplexityTokens(try String(contentsOfFile: path, encoding: .utf8), tokenizer: model.tokenizer)
        let result = try perplexity(engine: model.engine, tokens: tokens, context: 512, chunkStart: chunkStart)
        #expect(result.chunks == 14 && result.scoredTokens == 14 * 255)
        #expect(abs(result.perplexity - reference.perplexity("Q8_0")) <= 0.1, "PPL \(result.perplexity)")
        let f16 = try perplexity(engine: ModelCache.shared.model(.int8).engine, tokens: tokens, context: 512, chunkStart: chunkStart)
        #expect(result.perplexity != f16.perplexity, "PPL \(result.perplexity) with both caches")
    }

    /// The real model on meshes 2, 4 and 2x2 (2D weight-stationary, attention over the batch — the
    /// 9 heads do not split over 2 or 4) gives the single-device greedy tokens for the four
    /// reference prompts run as one batch (the longest reaches 67 positions, past the KV
    /// caches' first growth).
    @Test(arguments: [Mesh(x: 2), Mesh(x: 4), Mesh(x: 2, y: 2)])
    func meshGreedyEqualsSingleDevice(_ mesh: Mesh) throws {
        let model = try ModelCache.shared.model(.f32)
        let layout = PhaseLayout(.weightStationary2D, .shardedOverBatch)
        let sharded = try MeshEngine(source: model.file, config: model.config, mesh: mesh, prefill: layout,
                                     decode: layout, format: .f32, threads: 2)
        let requests = Self.promptIDs.map { id -> GenerationRequest in
            var r = GenerationRequest(promptTokens: reference.prompt(id)["prompt_token_ids"] as! [Int])
            r.sampling = .greedy
            r.maxTokens = 30
            r.ignoreEOS = true
            return r
        }
        let single = try model.generator.generate(requests).map(\.tokenIDs)
        let meshed = try Generator(engine: sharded, tokenizer: model.tokenizer).generate(requests).map(\.tokenIDs)
        #expect(meshed == single)
    }
}

/// Meshes in the file's own formats: native blocks and int8 shards, not f32 copies.
@Suite(.enabled(if: modelAvailable, "default model or reference file absent"), .serialized)
struct RealModelMeshFormatTests {
    let reference = Reference.shared!

    /// Each device holds each matrix once, in the format it runs: on one device, native is the
    /// file's own block bytes (summed from the file's tensor directory), int8 34 bytes per 32
    /// weights (Q8_0 blocks) and f32 4 bytes per weight; on two devices each holds about half.
    @Test(arguments: [WeightFormat.native, .int8, .f32])
    func residentWeightBytesAreTheExecutionFormat(_ format: WeightFormat) throws {
        let model = try ModelCache.shared.model(format)
        let c = model.config
        let single = model.engine.weightsByDevice()
        #expect(single.count == 1 && single[0].formats == [format])
        let expected: Int
        switch format {
        case .native:
            var names = ["token_embd.weight"] + (model.file.hasTensor("output.weight") ? ["output.weight"] : [])
            for l in 0..<c.layers {
                names += ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].map { "blk.\(l).\($0).weight" }
            }
            expected = try names.reduce(0) { $0 + (try model.file.tensor($1)).byteCount }
        case .int8: expected = c.parameterCount * 34 / 32
        case .f32: expected = c.parameterCount * 4
        }
        #expect(single[0].weightBytes == expected)
        let layout = PhaseLayout(.weightStationary2D, .shardedOverBatch)
        let mesh = try MeshEngine(source: model.file, config: c, mesh: Mesh(x: 2), prefill: layout, decode: layout,
                                  format: format, threads: 2)
        for device in mesh.weightsByDevice() {
            #expect(device.formats == [format])
            // Half, plus the padding slot the 9 heads' split leaves (q|k|v: 16 slots for 15 heads).
            #expect(Double(device.weightBytes) < 0.53 * Double(expected) && Double(device.weightBytes) > 0.5 * Double(expected))
        }
    }

    /// Native and int8 weights on meshes 2 and 4 (2D weight-stationary, attention over the batch,
    /// one sequence per device). Summing partial products in another order moves an activation
    /// by ~1e-6, and 8-bit activation blocks turn that into rounding flips: measured here, a 1e-6
    /// relative change of the input embedding alone moves the single device's logits by up to
    /// 0.35 after one layer and 1.4 after 30, in both formats (f32: 0.001), so no reordering can
    /// stay within 0.05 (measured mesh-vs-one-device differences: 0.08–1.06; the f16 KV cache adds
    /// its own rounding flips). A mesh meets the bound the single device is held to
    /// (`quantizedPathsWithinLlamaCppVariantSpread`): its first-position logits of the
    /// reference's top-5 tokens are within 1.5 × llama.cpp's own spread for the prompt of
    /// llama.cpp's exact-f32 run — a wrong shard is off by several logits — and its greedy tokens
    /// equal the single device's up to the first step whose top-2 gap is within the prompt's
    /// spread.
    /// Native weights run every matrix from the file's blocks on every layout of a 2 × 4 mesh,
    /// both attention layouts: a device holding only padding heads (9 query heads padded to 16)
    /// stores its all-zero shard in the matrix's block format, as the others do, so
    /// weight-gathered layouts gather shards of one size. The first position's top token is the
    /// single device's.
    @Test(arguments: FeedForwardLayout.allCases, [AttentionLayout.shardedOverHeads, .shardedOverBatch])
    func nativeRunsInPlaceOnEveryLayout(_ ffn: FeedForwardLayout, _ attention: AttentionLayout) throws {
        let model = try ModelCache.shared.model(.native)
        let layout = PhaseLayout(ffn, attention)
        let sharded = try MeshEngine(source: model.file, config: model.config, mesh: Mesh(x: 2, y: 4), prefill: layout,
                                     decode: layout, format: .native, threads: 2)
        #expect(try sharded.weightsByDevice().allSatisfy { $0.formats == [.native] })
        let prompt = reference.prompt("english")["prompt_token_ids"] as! [Int]
        let logits = try sharded.forward([SequenceInput(cache: sharded.makeCache(), tokens: prompt)])[0].rowArray(0)
        let alone = try model.engine.forward([SequenceInput(cache: model.engine.makeCache(), tokens: prompt)])[0].rowArray(0)
        #expect(Sampler.argmax(logits) == Sampler.argmax(alone))
    }

    @Test(arguments: [WeightFormat.native, .int8], [2, 4])
    func meshTracksSingleDeviceInTheSameFormat(_ format: WeightFormat, _ devices: Int) throws {
        let model = try ModelCache.shared.model(format)
        let layout = PhaseLayout(.weightStationary2D, .shardedOverBatch)
        let sharded = try MeshEngine(source: model.file, config: model.config, mesh: Mesh(x: devices), prefill: layout,
                                     decode: layout, format: format, threads: 2)
        let ids = Array(RealModelTests.promptIDs.prefix(devices))
        let prompts = ids.map { reference.prompt($0)["prompt_token_ids"] as! [Int] }
        let got = try sharded.forward(prompts.map { SequenceInput(cache: sharded.makeCache(), tokens: $0) })
        for (id, logits) in zip(ids, got) {
            let tolerance = Float(reference.variantTolerance(id))
            let top5 = reference.variant(id, "F32_exact")["top5_first_position"] as! [[String: Any]]
            let d = top5.map { abs(logits[0, $0["id"] as! Int] - Float($0["logit"] as! Double)) }.max()!
            #expect(d <= 1.5 * tolerance, "\(format) on \(devices) devices, \(id): max |Δlogit| \(d) > 1.5 × llama.cpp's own spread \(tolerance)")
        }
        let requests = prompts.map { p -> GenerationRequest in
            var r = GenerationRequest(promptTokens: p)
            r.sampling = .greedy
            r.maxTokens = 24
            r.ignoreEOS = true
            r.topLogits = 2
            return r
        }
        let alone = try model.generator.generate(requests)
        let meshed = try Generator(engine: sharded, tokenizer: model.tokenizer).generate(requests)
        for (id, (a, m)) in zip(ids, zip(alone, meshed)) {
            let spread = Float(reference.variantTolerance(id))
            let nearTie = a.topLogits.firstIndex { $0[0].logit - $0[1].logit < spread } ?? a.tokenIDs.count
            #expect(Array(m.tokenIDs.prefix(nearTie)) == Array(a.tokenIDs.prefix(nearTie)), "\(id): near-tie at step \(nearTie)")
        }
    }

    /// One prompt, f32, greedy, on meshes 2, 3, 4 and 2×2: with the default layouts (§7's rule,
    /// as without a host calibration: attention over heads, padded — 9 query heads and 3 KV
    /// heads do not divide over 2 or 4 devices) and with each attention layout named, the tokens
    /// equal the single device's up to the first step whose top-2 gap is under 0.01 (f32 sums in
    /// another order move a logit by ~1e-3 here).
    @Test(.serialized, arguments: ["2", "3", "4", "2x2"])   // serialized: each case holds f32 engines of the whole model (GBs)
    func onePromptOnMeshEqualsOneDevice(_ meshName: String) throws {
        let model = try ModelCache.shared.model(.f32)
        let mesh = try Mesh(parsing: meshName)
        var request = GenerationRequest(promptTokens: reference.prompt("english")["prompt_token_ids"] as! [Int])
        request.sampling = .greedy
        request.maxTokens = 24
        request.ignoreEOS = true
        request.topLogits = 2
        let alone = try model.generator.generate([request])[0]
        let nearTie = alone.topLogits.firstIndex { $0[0].logit - $0[1].logit < 0.01 } ?? alone.tokenIDs.count
        let rule = LayoutChooser.paperRule(mesh: mesh, batch: 1)
        let layouts = [(rule.prefill, rule.decode), (PhaseLayout(.weightStationary1D, .shardedOverHeads), PhaseLayout(.weightStationary1D, .shardedOverHeads)),
                       (PhaseLayout(.weightStationary2D, .shardedOverBatch), PhaseLayout(.weightStationary2D, .shardedOverBatch))]
        for (prefill, decode) in layouts {
            let sharded = try MeshEngine(source: model.file, config: model.config, mesh: mesh, prefill: prefill, decode: decode,
                                         format: .f32, threads: 2)
            let meshed = try Generator(engine: sharded, tokenizer: model.tokenizer).generate([request])[0]
            #expect(meshed.tokenIDs.count == alone.tokenIDs.count)
            #expect(Array(meshed.tokenIDs.prefix(nearTie)) == Array(alone.tokenIDs.prefix(nearTie)),
                    "\(meshName) \(prefill)/\(decode): near-tie at step \(nearTie)")
        }
        #expect(nearTie >= 8)
    }
}
