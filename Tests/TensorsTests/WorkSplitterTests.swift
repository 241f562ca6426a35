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
