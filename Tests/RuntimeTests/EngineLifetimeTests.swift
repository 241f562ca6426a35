import Foundation
import Partitioning
import Tensors
import Testing
import Transformer
@testable import Runtime

struct EngineLifetimeTests {
    /// An engine's weights (and the huge-page arena they are carved from) are released with the
    /// engine: a program that loads one engine after another holds one engine's memory, not all
    /// of them. (The loader once kept a reference to every layer's weights: each engine loaded
    /// into the same process stayed resident.)
    @Test(arguments: [WeightFormat.f32, .int8])
    func weightsAreReleasedWithTheEngine(_ format: WeightFormat) throws {
        weak var layerWeight: LinearWeight?, outputWeight: LinearWeight?
        func load() throws {
            let config = ModelConfig.llamaTiny()
            let layout = PhaseLayout(.weightStationary2D, .shardedOverBatch)
            let engine = try MeshEngine(source: RandomWeights(config: config, seed: 3), config: config, mesh: Mesh(x: 2),
                                        prefill: layout, decode: layout, format: format, threads: 2)
            _ = try engine.forward([SequenceInput(cache: engine.makeCache(), tokens: [1, 2, 3])])
            layerWeight = engine.devices[1].layers(oneDimensional: false)[0].down
            outputWeight = engine.devices[0].output
            #expect(layerWeight != nil && outputWeight != nil)
        }
        try load()
        // The mesh's worker threads drop their references as they exit, just after the pass
        // returns: wait for them (a hang bound, not a timing).
        let deadline = Date().addingTimeInterval(10)
        while layerWeight != nil || outputWeight != nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(layerWeight == nil, "a layer's weight outlived its engine")
        #expect(outputWeight == nil)
    }
}
