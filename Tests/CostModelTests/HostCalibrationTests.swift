import CostModel
import Foundation
import Testing

/// Whole-pass efficiencies measured per model file: a model with its own tables is priced with
/// them, any other model with the default model's; files saved before the per-model tables
/// existed still load.
struct HostCalibrationTests {
    static let host: HostCalibration = {
        var h = HostCalibration(f32FLOPsPerThread: 60e9, int8OPsPerThread: 120e9, memoryBandwidthOneThread: 12e9,
                                memoryBandwidthAllThreads: 16e9, threads: 2, collectiveLatency: 20e-6, collectiveBandwidth: 1e9,
                                memoryBytes: 8e9)
        h.passComputeEfficiency = ["native": 0.8, "native@2": 0.7]
        h.passMemoryEfficiency = ["native": 0.9, "native@2": 0.6]
        h.modelPassEfficiency = ["gemma.gguf": .init(compute: ["native": 0.3, "native@2": 0.25], memory: ["native": 0.4, "native@2": 0.45])]
        return h
    }()

    @Test func aModelsOwnEfficienciesPriceIt() {
        let own = Self.host.calibration(for: .native, activeThreads: 1, model: "gemma.gguf")
        #expect(own.computeEfficiency == 0.3 && own.memoryEfficiency == 0.4)
        let ownTwo = Self.host.calibration(for: .native, activeThreads: 2, model: "gemma.gguf")
        #expect(ownTwo.computeEfficiency == 0.25 && ownTwo.memoryEfficiency == 0.45)
        for model in [nil, "other.gguf"] {
            let general = Self.host.calibration(for: .native, activeThreads: 2, model: model)
            #expect(general.computeEfficiency == 0.7 && general.memoryEfficiency == 0.6)
        }
    }

    @Test func filesWithoutPerModelTablesStillLoad() throws {
        let data = try JSONEncoder().encode(Self.host)
        #expect(try JSONDecoder().decode(HostCalibration.self, from: data) == Self.host)
        var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        object["modelPassEfficiency"] = nil
        let old = try JSONDecoder().decode(HostCalibration.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(old.modelPassEfficiency == nil)
        #expect(old.calibration(for: .native, activeThreads: 1, model: "gemma.gguf").computeEfficiency == 0.8)
    }
}
