import Foundation
import NaiveModel
import Partitioning
import Testing
@testable import Runtime
import Tensors
import Transformer

/// What a server does to an engine: other threads make sequences and release them while
/// passes run. `.ci/run` also runs this suite under the thread sanitizer.
struct SequenceChurnTests {
    /// Sequences handed between the churning threads and the pass loop, under a lock.
    final class Exchange: @unchecked Sendable {
        let lock = NSLock()
        var fresh: [MeshSequence] = []
        var used: [MeshSequence] = []
        var stop = false
    }

    /// 500 passes on meshes of 1 and 2 (attention over heads and over the batch). Each pass
    /// decodes one token of a long-lived sequence and prefills a sequence another thread just
    /// made; two threads keep making sequences and releasing the used ones (dropping their
    /// device caches) while the passes run. The long-lived sequence's and the newcomer's logits
    /// equal the naive oracle's at every 50th step, and at the end the devices hold caches of
    /// live sequences only.
    @Test(.timeLimit(.minutes(5)), arguments: ["1", "2"], AttentionLayout.allCases)
    func sequencesComeAndGoWhilePassesRun(_ meshName: String, _ attention: AttentionLayout) throws {
        let config = ModelConfig.llamaTiny(layers: 2, modelDimension: 32, heads: 4, kvHeads: 2, vocabularySize: 64)
        let mesh = try Mesh(parsing: meshName)
        let layout = PhaseLayout(.weightStationary2D, attention)
        let engine = try MeshEngine(source: RandomWeights(config: config, seed: 31), config: config, mesh: mesh,
                                    prefill: layout, decode: layout, format: .f32, threads: 2)
        let reference = oracle(config, seed: 31)
        let exchange = Exchange()
        let done = DispatchSemaphore(value: 0)
        let churn: @Sendable () -> Void = {
            defer { done.signal() }
            while true {
                let made = engine.makeCache(limit: 8)
                let released: [MeshSequence] = exchange.lock.withLock {
                    if exchange.fresh.count < 4 { exchange.fresh.append(made) }
                    defer { exchange.used.removeAll() }
                    return exchange.used
                }
                _ = released   // the last references: released here, on this thread
                if exchange.lock.withLock({ exchange.stop }) { return }
            }
        }
        for _ in 0..<2 { Thread(block: churn).start() }

        let kept = engine.makeCache(limit: 600)
        let keptReference = reference.makeSequence()
        var token = 1
        for step in 0..<500 {
            var batch = [SequenceInput(cache: kept, tokens: [token])]
            let newcomer = exchange.lock.withLock { exchange.fresh.popLast() }
            if let newcomer { batch.append(SequenceInput(cache: newcomer, tokens: [step % 64, (step * 7) % 64])) }
            let logits = try engine.forward(batch)
            let expected = reference.step(keptReference, token)
            if step % 50 == 0 || step == 499 {
                let d = maxAbsDifference(logits[0].values, expected)
                #expect(d < 2e-3, "step \(step): max |Δ| = \(d)")
                if let newcomer = batch.dropFirst().first {
                    let fresh = reference.makeSequence()
                    let alone = newcomer.tokens.map { reference.step(fresh, $0) }.last!
                    let e = maxAbsDifference(logits[1].values, alone)
                    #expect(e < 2e-3, "step \(step), newcomer: max |Δ| = \(e)")
                }
            }
            token = Sampler.argmax(expected)
            if let newcomer { exchange.lock.withLock { exchange.used.append(newcomer) } }
        }
        exchange.lock.withLock { exchange.stop = true }
        done.wait()
        done.wait()
        exchange.lock.withLock {
            exchange.used.removeAll()
            exchange.fresh.removeAll()
        }
        // Attention over the batch keeps a sequence's cache on its home device only.
        let held = engine.caches.map(\.sequences)
        #expect(held.allSatisfy { $0.isSubset(of: [kept.id]) } && held.contains([kept.id]), "caches left: \(held)")
    }
}
