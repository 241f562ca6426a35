import Foundation
import Testing
import Tensors

/// The worker pool behind `WorkSplitter.parallelFor`: every index is run exactly once, for any
/// count, granule and thread count, with calls nested inside parts and made from several
/// threads at once (those run their parts alone while another job holds the pool).
struct WorkSplitterTests {
    final class Counts: @unchecked Sendable {
        let lock = NSLock()
        var seen: [Int]
        init(_ n: Int) { seen = Array(repeating: 0, count: n) }
        func mark(_ r: Range<Int>) { lock.withLock { for i in r { seen[i] += 1 } } }
    }

    @Test(arguments: [(1, 1, 2), (7, 1, 2), (100, 16, 2), (1000, 32, 3), (5, 8, 4), (64, 1, 8)])
    func everyIndexRunsOnce(_ count: Int, _ granule: Int, _ threads: Int) {
        let counts = Counts(count)
        WorkSplitter(threads: threads).parallelFor(count, granule: granule) { r in
            #expect(r.lowerBound % granule == 0)
            counts.mark(r)
        }
        #expect(counts.seen.allSatisfy { $0 == 1 })
    }

    /// Cost-weighted ranges: every index once, and each range's cost within one item of its
    /// thread's equal share (causal attention over a 512-token prompt: costs 1...512; uneven
    /// and zero costs; fewer items than threads).
    @Test(arguments: [(512, 2), (512, 3), (7, 2), (1, 2), (3, 8), (100, 4)])
    func costWeightedRangesCoverAndBalance(_ count: Int, _ threads: Int) {
        let costs = (0..<count).map { count == 100 ? ($0 % 10 == 0 ? 0 : $0 % 7 + 1) : $0 + 1 }
        let counts = Counts(count)
        final class Ranges: @unchecked Sendable { let lock = NSLock(); var all: [Range<Int>] = [] }
        let ranges = Ranges()
        WorkSplitter(threads: threads).parallelFor(count, cost: { costs[$0] }) { r in
            counts.mark(r)
            ranges.lock.withLock { ranges.all.append(r) }
        }
        #expect(counts.seen.allSatisfy { $0 == 1 })
        let cost = { (r: Range<Int>) in r.reduce(0) { $0 + max(1, costs[$1]) } }
        let share = Double(cost(0..<count)) / Double(min(threads, count)), largest = costs.map { max(1, $0) }.max()!
        for r in ranges.all { #expect(abs(Double(cost(r)) - share) <= Double(largest), "\(r): cost \(cost(r)), share \(share)") }
    }

    @Test func nestedAndConcurrentCallsRunEveryIndexOnce() {
        let outer = 8, inner = 50, rounds = 200
        let counts = Counts(outer * inner * rounds)
        DispatchQueue.concurrentPerform(iterations: 4) { caller in
            for round in stride(from: caller, to: rounds, by: 4) {
                WorkSplitter(threads: 2).parallelFor(outer) { r in
                    for o in r {
                        WorkSplitter(threads: 2).parallelFor(inner) { i in
                            counts.mark((round * outer + o) * inner + i.lowerBound..<(round * outer + o) * inner + i.upperBound)
                        }
                    }
                }
            }
        }
        #expect(counts.seen.allSatisfy { $0 == 1 })
    }
}
