import Foundation
import Testing
@testable import Runtime
import Tensors
import Transformer

/// Engine invariants on small random-weight models (no model file needed).
struct TinyModelTests {
    static let configs: [ModelConfig] = [.llamaTiny(), .palmTiny()]

    @Test(arguments: configs)
    func incrementalDecodeEqualsFullSequencePass(_ config: ModelConfig) throws {
        let engine = try singleDevice(config, seed: 5)
        let tokens = (0..<20).map { ($0 * 37 + 11) % config.vocabularySize }
        let full = try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: tokens, logitsFrom: 0)])[0]
        #expect(full.rows == tokens.count)
        let cache = engine.makeCache()
        var rows = [try engine.forward([SequenceInput(cache: cache, tokens: Array(tokens[..<7]))])[0].rowArray(0)]
        for t in tokens[7...] { rows.append(try engine.forward([SequenceInput(cache: cache, tokens: [t])])[0].rowArray(0)) }
        for (i, row) in rows.enumerated() { #expect(maxAbsDifference(row, full.rowArray(6 + i)) < 1e-4) }
    }

    @Test(arguments: configs)
    func batchOfSequencesEqualsSeparateRuns(_ config: ModelConfig) throws {
        let engine = try singleDevice(config, seed: 9)
        let prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]]
        let caches = prompts.map { _ in engine.makeCache() }
        let batched = try engine.forward(zip(caches, prompts).map { SequenceInput(cache: $0, tokens: $1) })
        let decoded = try engine.forward(caches.map { SequenceInput(cache: $0, tokens: [42]) })
        for (i, p) in prompts.enumerated() {
            let c = engine.makeCache()
            let alone = try engine.forward([SequenceInput(cache: c, tokens: p)])[0]
            let aloneNext = try engine.forward([SequenceInput(cache: c, tokens: [42])])[0]
            #expect(maxAbsDifference(batched[i].rowArray(0), alone.rowArray(0)) < 1e-4)
            #expect(maxAbsDifference(decoded[i].rowArray(0), aloneNext.rowArray(0)) < 1e-4)
        }
    }

    @Test func parallelAndSerialBlocksDiffer() throws {
        // The block kind is a configuration: same weights, different composition, different output.
        var serial = ModelConfig.llamaTiny()
        serial.block = .serial
        var parallel = serial
        parallel.block = .parallel
        let source = RandomWeights(config: serial, seed: 1)
        func run(_ c: ModelConfig) throws -> [Float] {
            let engine = try MeshEngine(source: source, config: c, mesh: .single, prefill: LoadedModel.singleDeviceLayout,
                                        decode: LoadedModel.singleDeviceLayout, format: .f32, threads: 1)
            return try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: [1, 2, 3])])[0].rowArray(0)
        }
        #expect(maxAbsDifference(try run(serial), try run(parallel)) > 1e-3)
    }

    @Test func errorsAreTyped() throws {
        let config = ModelConfig.llamaTiny()
        let engine = try singleDevice(config, seed: 2)
        #expect(throws: EngineError.invalidToken(id: config.vocabularySize, vocabularySize: config.vocabularySize)) {
            try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: [config.vocabularySize])])
        }
        #expect(throws: EngineError.contextOverflow(requested: 5, limit: 4)) {
            try engine.forward([SequenceInput(cache: engine.makeCache(limit: 4), tokens: [1, 2, 3, 4, 5])])
        }
        #expect(throws: EngineError.emptyInput) { try engine.forward([]) }
        let c = engine.makeCache()
        #expect(throws: EngineError.duplicateSequence) {
            try engine.forward([SequenceInput(cache: c, tokens: [1]), SequenceInput(cache: c, tokens: [2])])
        }
        // Sequence ids are per engine: another engine's sequence 0 must not reach this one's caches.
        let other = try singleDevice(config, seed: 2)
        #expect(throws: EngineError.foreignSequence) { try engine.forward([SequenceInput(cache: other.makeCache(), tokens: [1])]) }
    }

    @Test func int8RandomModelTracksF32() throws {
        let config = ModelConfig.palmTiny()
        let f32 = try singleDevice(config, seed: 4, format: .f32), int8 = try singleDevice(config, seed: 4, format: .int8)
        let f = try f32.forward([SequenceInput(cache: f32.makeCache(), tokens: [3, 1, 4, 1, 5])])[0].rowArray(0)
        let q = try int8.forward([SequenceInput(cache: int8.makeCache(), tokens: [3, 1, 4, 1, 5])])[0].rowArray(0)
        let scale = f.map(abs).max()!
        #expect(maxAbsDifference(f, q) < 0.05 * scale)
    }
}

extension ModelConfig: CustomTestStringConvertible {
    public var testDescription: String { name }
}
