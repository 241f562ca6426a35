import CostModel
import Collectives
import Foundation
import Partitioning
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
        #expect(old.decodeAttentionBandwidthOneThread == nil && old.decodeAttentionBandwidthAllThreads == nil
                && old.decodeRowsStreaming == nil)   // files from before them
        #expect(old.calibration(for: .native, activeThreads: 1, model: "gemma.gguf").computeEfficiency == 0.8)
    }
}

/// A cluster recorded by `calibrate --transport mpi` prices one device per rank: hosts that
/// are namespaces of one machine share its cores and memory bandwidth; separate machines do not.
struct ClusterPricingTests {
    static func host(machines: Int, hosts: Int = 4) -> HostCalibration {
        var h = HostCalibrationTests.host
        h.allThreadsOPs = ["f32": 100e9, "int8-g32": 200e9]
        h.mpiCollectiveLatency = 50e-6
        h.mpiCollectiveBandwidth = 0.1e9
        h.mpiCollectiveRates = ["all_gather": .init(latency: 50e-6, bandwidth: 0.1e9)]
        h.mpiCluster = .init(ranks: hosts, hosts: hosts, machines: machines, threadsPerRank: 1)
        return h
    }

    @Test func namespaceHostsShareTheMachinesCores() throws {
        let shared = Self.host(machines: 1)   // 4 namespace hosts of one 2-core machine, 1 thread each
        let (one, _) = try #require(shared.clusterHardware(weights: .f32, devices: 1))
        let (two, _) = try #require(shared.clusterHardware(weights: .f32, devices: 2))
        let (four, _) = try #require(shared.clusterHardware(weights: .f32, devices: 4))
        #expect(one.peakFLOPs == 60e9)                  // one thread alone: its solo rate
        #expect(two.peakFLOPs == 50e9)                  // both cores busy: the all-threads rate per core
        #expect(four.peakFLOPs == 25e9)                 // 4 threads on 2 cores: half a core each
        #expect(four.memoryBandwidth == 16e9 / 4 && two.memoryBandwidth == 16e9 / 2 && one.memoryBandwidth == 12e9)
        #expect(four.interconnectBandwidth == 0.1e9)    // the MPI measurements, not the in-process ones
        #expect(four.collectiveRates?[.allGather]?.latency == 50e-6)
    }

    @Test func separateMachinesDoNotShare() throws {
        let real = Self.host(machines: 4)
        let (one, _) = try #require(real.clusterHardware(weights: .f32, devices: 1))
        let (four, _) = try #require(real.clusterHardware(weights: .f32, devices: 4))
        #expect(four.peakFLOPs == one.peakFLOPs && four.memoryBandwidth == one.memoryBandwidth)
        // A run with more threads per rank than recorded is priced with them.
        let (wide, _) = try #require(real.clusterHardware(weights: .f32, devices: 4, threadsPerRank: 2))
        #expect(wide.peakFLOPs == 100e9)
    }

    @Test func noClusterNoClusterPricing() throws {
        var h = Self.host(machines: 1)
        h.mpiCluster = nil
        #expect(h.clusterHardware(weights: .f32, devices: 2) == nil)
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(Self.host(machines: 1))) as! [String: Any]
        object["mpiCluster"] = nil   // a file written before clusters were recorded
        let old = try JSONDecoder().decode(HostCalibration.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(old.mpiCluster == nil && old.overMPI != nil)
    }
}

/// Over a network `calibrate --transport mpi` keeps every measured call, and a collective is
/// priced from the measured calls around its size rather than from one fitted bandwidth.
struct MeasuredCallPricingTests {
    /// A link that moves small calls at 1 GB/s and large ones at 0.5 GB/s beyond 50 µs.
    static let rate = CollectiveRate(latency: 50e-6, bandwidth: 0.5e9, samples: [
        .init(bytes: 8, seconds: 50e-6), .init(bytes: 4096, seconds: 54e-6), .init(bytes: 1_048_576, seconds: 50e-6 + 1_048_576 / 0.5e9)])

    @Test func interpolatesBetweenMeasuredCalls() throws {
        let r = Self.rate
        #expect(r.seconds(bytes: 1) == 50e-6)                               // below the smallest call: what it took
        #expect(abs(try #require(r.seconds(bytes: 2052)) - 52e-6) < 1e-9)   // halfway between the first two
        let beyond = try #require(r.seconds(bytes: 2_097_152))                // past the largest: the largest call's rate
        #expect(abs(beyond - 2 * (50e-6 + 1_048_576 / 0.5e9)) < 1e-9)
        #expect(r.seconds(bytes: 4096, backToBack: true) == 54e-6)           // no calls back to back: the calls on their own
        var streamed = r
        streamed.backToBackSamples = [.init(bytes: 4096, seconds: 100e-6)]
        #expect(streamed.seconds(bytes: 4096, backToBack: true) == 100e-6 && streamed.seconds(bytes: 4096) == 54e-6)
        #expect(CollectiveRate(latency: 1e-5, bandwidth: 1e9).seconds(bytes: 100) == nil)
    }

    /// SmolLM2 decode on 2 devices: its activation collectives are a few KB, so the measured
    /// small calls, not the large calls' bandwidth, price them; a fit-only rate of the same
    /// latency and bandwidth prices the same trace slower.
    @Test func smallCallsArePricedFromTheirOwnMeasurements() throws {
        var measured = HostCalibrationTests.host
        measured.mpiCollectiveLatency = 50e-6
        measured.mpiCollectiveBandwidth = 0.5e9
        measured.mpiCluster = .init(ranks: 2, hosts: 2, machines: 2, threadsPerRank: 1)
        var fitted = measured
        measured.mpiCollectiveRates = Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map { ($0.rawValue, Self.rate) })
        fitted.mpiCollectiveRates = Dictionary(uniqueKeysWithValues: CollectiveKind.allCases.map {
            ($0.rawValue, CollectiveRate(latency: 50e-6, bandwidth: 0.5e9)) })
        func decode(_ host: HostCalibration, _ ffn: FeedForwardLayout = .weightStationary1D, copies: Bool = true) throws -> Prediction {
            let (cluster, calibration) = try #require(host.clusterHardware(weights: .f32, devices: 2))
            var hardware = cluster
            hardware.copiesGatheredWeights = copies
            return try CostModel(hardware: hardware, calibration: calibration).predict(
                model: DefaultLayoutTests.smol, mesh: Mesh(x: 2), layout: PhaseLayout(ffn, .shardedOverHeads),
                phase: .decode, batch: 1, inputTokens: 1, generateTokens: 8, weights: .f32)
        }
        let m = try decode(measured), f = try decode(fitted)
        #expect(m.communicationSeconds < f.communicationSeconds)
        #expect(m.computeSeconds == f.computeSeconds && m.memorySeconds == f.memorySeconds)
        #expect(m.communicationBytesPerChip == f.communicationBytesPerChip)
        // Weight-gathered decode: its weight all-gathers are priced from the calls back to back
        // (here twice as slow), its activation collectives from the calls on their own; the
        // copies that assemble the gathered matrix do not depend on the link.
        var slowStreams = measured
        slowStreams.mpiCollectiveRates?["all_gather"]?.backToBackSamples = Self.rate.samples!.map { .init(bytes: $0.bytes, seconds: 2 * $0.seconds) }
        let plain = try decode(measured, .weightGatheredXYZ, copies: false), slow = try decode(slowStreams, .weightGatheredXYZ, copies: false)
        #expect(slow.communicationSeconds > 1.8 * plain.communicationSeconds)
        let copied = try decode(measured, .weightGatheredXYZ).communicationSeconds - plain.communicationSeconds
        #expect(copied > 0)
        #expect(abs(try decode(slowStreams, .weightGatheredXYZ).communicationSeconds - slow.communicationSeconds - copied) < 1e-9 * copied + 1e-12)
        #expect(try decode(slowStreams).communicationSeconds == m.communicationSeconds)   // no weight gathers in ws1d
    }
}

/// A host that measured its decode attention (`calibrate`: the runtime's attention reading a
/// KV cache from memory) prices a decode pass's attention as a phase of its own after the
/// matmuls: the KV bytes it reads at the measured rate of the run's cache type. Prefill, and
/// hosts without the measurement, price as before.
struct DecodeAttentionPricingTests {
    static func host(_ rates: [String: Double]?) -> HostCalibration {
        var h = HostCalibrationTests.host
        h.attentionFLOPsPerThread = 50e9
        h.decodeAttentionBandwidthOneThread = rates
        return h
    }

    static func predict(_ host: HostCalibration, phase: Phase, batch: Int = 8, context: Int = 160, cache: (String, Double) = ("f16", 2),
                        threads: Int = 1) throws -> Prediction {
        var hardware = host.hardware(weights: .int8Grouped, threadsPerDevice: threads, activeThreads: threads)
        (hardware.kvCacheType, hardware.kvCacheBytes) = cache
        return try CostModel(hardware: hardware, calibration: host.calibration(for: .int8Grouped))
            .predict(model: DefaultLayoutTests.smol, mesh: .single, layout: PhaseLayout(.weightStationary1D, .shardedOverHeads),
                     phase: phase, batch: batch, inputTokens: phase == .prefill ? 128 : 1, generateTokens: phase == .prefill ? 1 : 32,
                     context: phase == .prefill ? nil : context, weights: .int8Grouped)
    }

    @Test func theRateIsPerThreadTimesItsCoreShare() throws {
        let h = Self.host(["f16": 8e9, "q8": 6e9])
        #expect(h.hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 1).decodeAttentionBandwidth == ["f16": 8e9, "q8": 6e9])
        let two = h.hardware(weights: .int8Grouped, threadsPerDevice: 2, activeThreads: 2)
        #expect(two.decodeAttentionBandwidth == ["f16": 8e9, "q8": 6e9] && two.threadsPerDevice == 2)
        // 4 one-thread devices on the 2 cores: half a core each.
        #expect(h.hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 4).decodeAttentionBandwidth == ["f16": 4e9, "q8": 3e9])
        #expect(Self.host(nil).hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 1).decodeAttentionBandwidth == nil)
        // Measured with all (2) threads as well: with more than one thread busy, a thread gets
        // its share of that rate; alone, its own.
        var both = h
        both.decodeAttentionBandwidthAllThreads = ["f16": 12e9, "q8": 10e9]
        #expect(both.hardware(weights: .int8Grouped, threadsPerDevice: 2, activeThreads: 2).decodeAttentionBandwidth == ["f16": 6e9, "q8": 5e9])
        #expect(both.hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 4).decodeAttentionBandwidth == ["f16": 3e9, "q8": 2.5e9])
        #expect(both.hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 1).decodeAttentionBandwidth == ["f16": 8e9, "q8": 6e9])
        // The runtime splits decode attention by sequence: 2 threads read one sequence's cache
        // at one thread's rate, and 8 sequences' at two threads' (within the memory bandwidth).
        let slow = Self.host(["f16": 1e9])
        let (one, oneTwo) = (try Self.predict(slow, phase: .decode, batch: 1), try Self.predict(slow, phase: .decode, batch: 1, threads: 2))
        #expect(one.attentionSeconds == oneTwo.attentionSeconds)
        let (eight, eightTwo) = (try Self.predict(slow, phase: .decode), try Self.predict(slow, phase: .decode, threads: 2))
        #expect(abs(eight.attentionSeconds / eightTwo.attentionSeconds - 2) < 1e-9)
    }

    @Test func decodeAttentionIsItsOwnPhase() throws {
        // KV elements per decode step: 8 sequences × 30 layers × (K, V) × 3 KV heads × 64 per
        // attended position, priced at the run's mean context (160 cached + 16 of the 32 new).
        let perPosition = 8.0 * 30 * 2 * 3 * 64
        let positions = 160.0 + 16
        let slow = try Self.predict(Self.host(["f16": 1e9]), phase: .decode), fast = try Self.predict(Self.host(["f16": 2e9]), phase: .decode)
        let expected = perPosition * positions * 2 * (1 / 1e9 - 1 / 2e9) * 32   // 32 steps
        #expect(abs((slow.latencySeconds - fast.latencySeconds) / expected - 1) < 1e-9)
        #expect(abs(slow.attentionSeconds / (perPosition * positions * 2 / 1e9 * 32) - 1) < 1e-9)
        // The q8 cache is priced at its own rate and bytes (1.125 per element).
        let q8 = try Self.predict(Self.host(["f16": 1e9, "q8": 0.5e9]), phase: .decode, cache: ("q8", 1.125))
        #expect(abs(q8.attentionSeconds / (perPosition * positions * 1.125 / 0.5e9 * 32) - 1) < 1e-9)
        // Without the measurement attention has no phase of its own, and costs less than its
        // KV bytes at the slow rate (they stream beside the weights, at the weights' rate).
        let unmeasured = try Self.predict(Self.host(nil), phase: .decode)
        #expect(unmeasured.attentionSeconds == 0 && unmeasured.latencySeconds < slow.latencySeconds)
    }

    @Test func prefillIsPricedAsBefore() throws {
        let measured = try Self.predict(Self.host(["f16": 1e9]), phase: .prefill), unmeasured = try Self.predict(Self.host(nil), phase: .prefill)
        #expect(measured.latencySeconds == unmeasured.latencySeconds && measured.attentionSeconds == 0)
    }
}

/// A host that measured weight streaming with several activation rows prices a decode pass's
/// weights at the rate for its rows per weight (the batch, on one device); prefill and hosts
/// without the table price as before.
struct RowsStreamingPricingTests {
    static func host(_ table: [String: Double]?) -> HostCalibration {
        var h = HostCalibrationTests.host
        h.decodeRowsStreaming = table.map { ["int8-g32": $0, "int8-g32@2": $0.mapValues { $0 / 2 }] }
        h.decodeAttentionBandwidthOneThread = ["f16": 8e9]   // KV reads priced apart: memory is the weights alone
        return h
    }

    @Test func theTableIsReadPerThreadCountAndInterpolated() {
        let h = Self.host(["2": 0.9, "8": 0.6, "32": 0.2])
        let one = h.hardware(weights: .int8Grouped, threadsPerDevice: 1, activeThreads: 1)
        #expect(one.decodeRowsStreaming == [2: 0.9, 8: 0.6, 32: 0.2])
        #expect(h.hardware(weights: .int8Grouped, threadsPerDevice: 2, activeThreads: 2).decodeRowsStreaming == [2: 0.45, 8: 0.3, 32: 0.1])
        #expect(h.hardware(weights: .f32, threadsPerDevice: 1, activeThreads: 1).decodeRowsStreaming == nil)   // not measured for f32 here
        #expect(one.rowsStreaming(1) == 1 && one.rowsStreaming(2) == 0.9 && one.rowsStreaming(8) == 0.6)
        #expect(abs(one.rowsStreaming(5) - 0.75) < 1e-12)      // halfway between 2 and 8
        #expect(one.rowsStreaming(64) == 0.2)                  // beyond 32: 32's (the compute term prices the matmuls there)
        var empty = one
        empty.decodeRowsStreaming = [:]                         // no usable entry: the full rate
        #expect(empty.rowsStreaming(8) == 1)
    }

    @Test func decodeWeightsStreamAtTheirRowsRate() throws {
        func latency(_ h: HostCalibration, batch: Int, phase: Phase = .decode) throws -> Prediction {
            try DecodeAttentionPricingTests.predict(h, phase: phase, batch: batch, context: 0)
        }
        let plain = Self.host(nil), halved = Self.host(["8": 0.5, "32": 0.25])
        // Batch 8 on one device: 8 rows per weight, half the rate, twice the memory time.
        let (a, b) = (try latency(plain, batch: 8), try latency(halved, batch: 8))
        #expect(abs(b.memorySeconds / a.memorySeconds - 2) < 1e-9)
        // Batch 1: one row, the full rate; prefill: unchanged.
        #expect(try latency(halved, batch: 1).memorySeconds == (try latency(plain, batch: 1)).memorySeconds)
        #expect(try latency(halved, batch: 8, phase: .prefill).latencySeconds == (try latency(plain, batch: 8, phase: .prefill)).latencySeconds)
    }
}
