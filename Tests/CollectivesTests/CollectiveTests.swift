import Foundation
import Partitioning
import Testing
@testable import Collectives

@Suite struct CorrectnessTests {
    struct Step: Sendable { var kind: CollectiveKind; var axes: AxisSet; var count: Int; var site: CollectiveSite }

    /// Every kind over every axis subset; counts divisible by every group size (24), plus
    /// all-gather / all-reduce on an odd count (7) to check the rounded-down all-reduce bytes.
    /// The odd-count steps' site (each step's traffic is kept apart by kind, axes and site).
    static let oddCount = CollectiveSite(.measurement, .input)

    static func steps() -> [Step] {
        var s: [Step] = []
        for axes in AxisSet.allSubsets {
            for kind in CollectiveKind.allCases {
                s.append(Step(kind: kind, axes: axes, count: 24, site: .measurement))
            }
            for kind in [CollectiveKind.allGather, .allReduce] {
                s.append(Step(kind: kind, axes: axes, count: 7, site: Self.oddCount))
            }
        }
        return s
    }

    @Test(arguments: testMeshes)
    func everyCollectiveOverEveryAxisSubset(mesh: Mesh) throws {
        let steps = Self.steps()
        let out = try runOnMesh(mesh, timeout: 10) { rank, comm -> ([[Float]], TrafficCounter) in
            #expect(comm.rank == rank)
            #expect(comm.mesh == mesh)
            var results: [[Float]] = []
            for (t, step) in steps.enumerated() {
                results.append(try call(comm, step.kind, input(rank: rank, step: t, count: step.count), step.axes, step.site))
            }
            return (results, comm.traffic)
        }
        #expect(out.count == mesh.deviceCount)
        for (t, step) in steps.enumerated() {
            let inputs = (0..<mesh.deviceCount).map { input(rank: $0, step: t, count: step.count) }
            let k = mesh.size(step.axes)
            for rank in 0..<mesh.deviceCount {
                let expected = reference(step.kind, mesh: mesh, axes: step.axes, rank: rank, inputs: inputs)
                // Bitwise equality: reductions sum in member order, like the reference.
                #expect(out[rank].0[t].map(\.bitPattern) == expected.map(\.bitPattern),
                        "\(mesh) \(step.kind) over '\(step.axes)' n=\(step.count) rank \(rank)")
                let traffic = out[rank].1
                let b = bytes(step.kind, n: step.count, k: k)
                let key = TrafficCounter.Key(kind: step.kind, axes: step.axes, site: step.site)
                #expect(traffic.sent[key] == b)
                #expect(traffic.received[key] == b)
                #expect(traffic.calls[key] == 1)
                #expect(traffic.sentBytes(kind: step.kind, axes: step.axes, site: step.site) == b)
                #expect(traffic.receivedBytes(kind: step.kind, axes: step.axes, site: step.site) == b)
            }
        }
        // Totals per kind / axes agree with the per-step formulas.
        for rank in 0..<mesh.deviceCount {
            let traffic = out[rank].1
            for kind in CollectiveKind.allCases {
                let want = steps.filter { $0.kind == kind }.reduce(0) { $0 + bytes(kind, n: $1.count, k: mesh.size($1.axes)) }
                #expect(traffic.sentBytes(kind: kind) == want)
                #expect(traffic.receivedBytes(kind: kind) == want)
            }
            for axes in AxisSet.allSubsets {
                let want = steps.filter { $0.axes == axes }.reduce(0) { $0 + bytes($1.kind, n: $1.count, k: mesh.size(axes)) }
                #expect(traffic.sentBytes(axes: axes) == want)
            }
        }
        // All-reduce results are bitwise identical across each group.
        for (t, step) in steps.enumerated() where step.kind == .allReduce {
            for rank in 0..<mesh.deviceCount {
                for peer in mesh.group(of: rank, over: step.axes) {
                    #expect(out[rank].0[t].map(\.bitPattern) == out[peer].0[t].map(\.bitPattern))
                }
            }
        }
    }

    @Test func explicitValuesOnTwoDevices() throws {
        let out = try runOnMesh(Mesh(x: 2)) { rank, comm -> [[Float]] in
            let r = Float(rank)
            return [
                try comm.allGather([r, r + 10], over: .x, site: .measurement),
                try comm.reduceScatter([1 + r, 2 + r, 3 + r, 4 + r], over: .x, site: .measurement),
                try comm.allReduce([1 + r, 2 + r, 3], over: .x, site: .measurement),
                try comm.allToAll([10 * r, 10 * r + 1, 10 * r + 2, 10 * r + 3], over: .x, site: .measurement),
                try comm.allGather([r], over: .none, site: .measurement),
                try comm.allReduce([r], over: .yz, site: .measurement),  // y, z have size 1: local copy
            ]
        }
        #expect(out[0] == [[0, 10, 1, 11], [3, 5], [3, 5, 6], [0, 1, 10, 11], [0], [0]])
        #expect(out[1] == [[0, 10, 1, 11], [7, 9], [3, 5, 6], [2, 3, 12, 13], [1], [1]])
    }

    /// Groups over different axes run independently and slots are reused safely across many rounds.
    @Test func manyInterleavedRounds() throws {
        let mesh = Mesh(x: 2, y: 2, z: 2)
        let pattern: [AxisSet] = [.yz, .x, .xyz, .z, .xy, .y]
        let rounds = 300
        let out = try runOnMesh(mesh, timeout: 10) { rank, comm -> Float in
            var acc: Float = 0
            for t in 0..<rounds {
                let axes = pattern[t % pattern.count]
                let k = mesh.size(axes)
                let v = try comm.allReduce([Float(rank + t)], over: axes, site: .measurement)
                let expected = mesh.group(of: rank, over: axes).reduce(Float(0)) { $0 + Float($1 + t) }
                #expect(v == [expected])
                let g = try comm.allGather([Float(rank)], over: axes, site: .measurement)
                #expect(g == mesh.group(of: rank, over: axes).map(Float.init))
                let rs = try comm.reduceScatter(Array(repeating: 1, count: 2 * k), over: axes, site: .measurement)
                #expect(rs == [Float(k), Float(k)])
                acc += v[0]
            }
            return acc
        }
        #expect(out.count == 8)
    }
}

@Suite struct TrafficTests {
    static let ffn = CollectiveSite(.feedForward, .input)
    static let attention = CollectiveSite(.attention, .input)

    @Test func sitesSeparateTraffic() throws {
        let mesh = Mesh(x: 2, y: 2)
        let out = try runOnMesh(mesh) { _, comm -> (TrafficCounter, TrafficCounter) in
            _ = try comm.allGather(Array(repeating: 1, count: 8), over: .xy, site: Self.ffn)
            _ = try comm.allGather(Array(repeating: 1, count: 8), over: .xy, site: Self.ffn)
            _ = try comm.reduceScatter(Array(repeating: 1, count: 8), over: .y, site: Self.ffn)
            _ = try comm.allGather(Array(repeating: 1, count: 4), over: .xy, site: Self.attention)
            _ = try comm.allReduce(Array(repeating: 1, count: 6), over: .x, site: Self.attention)
            let before = comm.traffic
            comm.resetTraffic()
            return (before, comm.traffic)
        }
        for (t, after) in out {
            #expect(t.sentBytes(site: Self.ffn) == 2 * 4 * 8 * 3 + 4 * 4 * 1)
            #expect(t.sentBytes(site: Self.attention) == 4 * 4 * 3 + 2 * 4 * 6 * 1 / 2)
            #expect(t.sentBytes(kind: .allGather, site: Self.ffn) == 2 * 4 * 8 * 3)
            #expect(t.sentBytes(kind: .allGather) == 2 * 4 * 8 * 3 + 4 * 4 * 3)
            #expect(t.sentBytes(axes: .xy) == 2 * 4 * 8 * 3 + 4 * 4 * 3)
            #expect(t.sentBytes(axes: .x) == 24)
            #expect(t.sentBytes(site: CollectiveSite(.block, .input)) == 0)
            #expect(t.sentBytes() == t.receivedBytes())
            #expect(t.calls[.init(kind: .allGather, axes: .xy, site: Self.ffn)] == 2)
            #expect(t.callCount(site: Self.attention) == 2)
            #expect(after == TrafficCounter())
        }
    }

    @Test func counterArithmeticAndCoding() throws {
        var a = TrafficCounter()
        a.record(kind: .allGather, axes: .x, site: Self.ffn, sent: 10, received: 12)
        var b = TrafficCounter()
        b.record(kind: .allGather, axes: .x, site: Self.ffn, sent: 1, received: 2)
        b.record(kind: .allToAll, axes: .yz, site: Self.attention, sent: 5, received: 5)
        let c = a + b
        #expect(c.sentBytes() == 16)
        #expect(c.receivedBytes() == 19)
        #expect(c.sentBytes(kind: .allGather, axes: .x, site: Self.ffn) == 11)
        #expect(c.calls[.init(kind: .allGather, axes: .x, site: Self.ffn)] == 2)
        let decoded = try JSONDecoder().decode(TrafficCounter.self, from: JSONEncoder().encode(c))
        #expect(decoded == c)
        var d = c
        d.reset()
        #expect(d == TrafficCounter())
        #expect(collectiveBytes(.allReduce, count: 7, groupSize: 4) == 42)
        #expect(collectiveBytes(.allGather, count: 7, groupSize: 1) == 0)
    }
}

@Suite struct FailureTests {
    @Test func oneDeviceThrowingAbortsTheOthers() throws {
        let mesh = Mesh(x: 2, y: 2)
        let seen = Box<[Int: CollectiveError]>([:])
        let start = Date()
        #expect(throws: Boom.self) {
            _ = try runOnMesh(mesh, timeout: 30) { rank, comm -> Int in
                _ = try comm.allReduce([1], over: .xy, site: .measurement)
                if rank == 2 {
                    Thread.sleep(forTimeInterval: 0.05)
                    throw Boom()
                }
                do throws(CollectiveError) {
                    _ = try comm.allGather([Float(rank)], over: .xy, site: .measurement)
                } catch {
                    seen.update { $0[rank] = error }
                    throw error
                }
                return rank
            }
        }
        #expect(Date().timeIntervalSince(start) < 1)
        let errors = seen.value
        #expect(errors.keys.sorted() == [0, 1, 3])
        for (_, e) in errors {
            guard case let .aborted(reason) = e else { Issue.record("expected .aborted, got \(e)"); continue }
            #expect(reason.contains("device 2"))
        }
    }

    @Test func explicitAbortReachesBlockedAndLaterCalls() throws {
        let mesh = Mesh(x: 4)
        let start = Date()
        let out = try runOnMesh(mesh, timeout: 30) { rank, comm -> CollectiveError? in
            if rank == 0 {
                Thread.sleep(forTimeInterval: 0.05)
                comm.abort(reason: "stop")
            }
            do throws(CollectiveError) {
                _ = try comm.allGather([1], over: .x, site: .measurement)
                return nil
            } catch {
                // A later call (even a local one) also throws .aborted.
                do throws(CollectiveError) { _ = try comm.allGather([1], over: .none, site: .measurement) } catch { #expect(error == .aborted(reason: "stop")) }
                return error
            }
        }
        #expect(Date().timeIntervalSince(start) < 1)
        #expect(out == Array(repeating: .aborted(reason: "stop"), count: 4))
    }

    @Test func mismatchedCountsGiveSizeMismatch() throws {
        let mesh = Mesh(x: 2, y: 2)
        let out = try runOnMesh(mesh, timeout: 5) { rank, comm -> [CollectiveError?] in
            var errs: [CollectiveError?] = []
            for kind in CollectiveKind.allCases {
                let n = mesh.index(of: rank, within: .y) == 0 ? 4 : 6
                do throws(CollectiveError) { _ = try call(comm, kind, Array(repeating: 1, count: n), .y, .measurement); errs.append(nil) } catch { errs.append(error) }
            }
            // The fabric is still usable afterwards.
            let sum = try comm.allReduce([1], over: .xy, site: .measurement)
            #expect(sum == [4])
            return errs
        }
        for rank in 0..<4 {
            #expect(out[rank] == CollectiveKind.allCases.map { .sizeMismatch(kind: $0, axes: "y", counts: [4, 6]) })
        }
    }

    @Test func indivisibleCounts() throws {
        let mesh = Mesh(x: 4)
        let out = try runOnMesh(mesh, timeout: 5) { rank, comm -> [CollectiveError?] in
            var errs: [CollectiveError?] = []
            for kind in [CollectiveKind.reduceScatter, .allToAll] {
                do throws(CollectiveError) { _ = try call(comm, kind, Array(repeating: 1, count: 6), .x, .measurement); errs.append(nil) } catch { errs.append(error) }
            }
            return errs
        }
        for errs in out {
            #expect(errs == [.indivisible(kind: .reduceScatter, count: 6, parts: 4), .indivisible(kind: .allToAll, count: 6, parts: 4)])
        }
    }

    @Test func missingPeerTimesOut() throws {
        let mesh = Mesh(x: 4)
        let start = Date()
        let out = try runOnMesh(mesh, timeout: 0.5) { rank, comm -> CollectiveError? in
            if rank == 3 { return nil }  // never calls the collective
            do throws(CollectiveError) { _ = try comm.allGather([1], over: .x, site: .measurement); return nil } catch { return error }
        }
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.45 && elapsed < 2)
        #expect(out == [.timeout(seconds: 0.5), .timeout(seconds: 0.5), .timeout(seconds: 0.5), nil])
    }

    @Test func timeoutIsRethrownByRunOnMesh() throws {
        let mesh = Mesh(x: 1, y: 2, z: 2)
        #expect(throws: CollectiveError.timeout(seconds: 0.3)) {
            _ = try runOnMesh(mesh, timeout: 0.3) { rank, comm -> Int in
                _ = try comm.allGather([1], over: .yz, site: .measurement)
                if rank != 0 { _ = try comm.allGather([1], over: .yz, site: .measurement) }
                return rank
            }
        }
    }

    @Test func errorDescriptions() {
        #expect(CollectiveError.indivisible(kind: .reduceScatter, count: 6, parts: 4).description.contains("reduce_scatter"))
        #expect(CollectiveError.sizeMismatch(kind: .allGather, axes: "yz", counts: [1, 2]).description.contains("yz"))
    }
}
