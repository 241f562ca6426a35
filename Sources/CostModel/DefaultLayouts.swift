import Partitioning
import Transformer

/// What a run will do, as far as choosing its layouts goes: `batch` sequences of about
/// `promptTokens` prompt tokens each, each generating up to `generateTokens` tokens.
public struct Workload: Sendable, Equatable, Codable {
    public var batch: Int
    public var promptTokens: Int
    public var generateTokens: Int
    public init(batch: Int, promptTokens: Int, generateTokens: Int) {
        self.batch = max(1, batch)
        self.promptTokens = max(1, promptTokens)
        self.generateTokens = max(0, generateTokens)
    }
}

/// Layouts a run is limited to: what the user named on the command line.
public struct LayoutConstraints: Sendable, Equatable {
    public var prefillFeedForward: FeedForwardLayout?
    public var decodeFeedForward: FeedForwardLayout?
    public var attention: AttentionLayout?
    public var prefillAttention: AttentionLayout?
    /// One feed-forward layout for both phases (the server: a step's numbers must not depend
    /// on whether another sequence in it is prefilling).
    public var samePhases: Bool
    public init(prefillFeedForward: FeedForwardLayout? = nil, decodeFeedForward: FeedForwardLayout? = nil,
                attention: AttentionLayout? = nil, prefillAttention: AttentionLayout? = nil, samePhases: Bool = false) {
        self.prefillFeedForward = prefillFeedForward
        self.decodeFeedForward = decodeFeedForward
        self.attention = attention
        self.prefillAttention = prefillAttention
        self.samePhases = samePhases
    }
}

/// The (prefill, decode) layouts a run uses, and why.
public struct LayoutChoice: Sendable {
    public enum Basis: String, Sendable {
        /// Lowest predicted time under this host's calibration.
        case costModel = "cost_model"
        /// §7's rule (no host calibration to price with).
        case paperRule = "paper_rule"
        /// A mesh of one: every layout is the same program.
        case singleDevice = "single_device"
    }
    public struct Priced: Sendable {
        public var prefill: PhaseLayout
        public var decode: PhaseLayout
        public var prefillSeconds: Double
        public var decodeSeconds: Double
        public var seconds: Double { prefillSeconds + decodeSeconds }
    }
    public var prefill: PhaseLayout
    public var decode: PhaseLayout
    public var basis: Basis
    /// §7's rule for the same run (what the choice is compared with).
    public var rule: (prefill: PhaseLayout, decode: PhaseLayout)
    /// Every pair priced (cost-model basis), fastest first; the rule's pair among them.
    public var ranked: [Priced]
    public var workload: Workload

    /// One sentence: which pair, on what basis, and how it compares with the runner-up and §7's rule.
    public var reason: String {
        let pair = "prefill \(prefill), decode \(decode)"
        let run = "\(workload.batch) sequence(s) of ~\(workload.promptTokens) prompt tokens, \(workload.generateTokens) to generate"
        switch basis {
        case .singleDevice: return "\(pair): a mesh of one runs every layout as the same program"
        case .paperRule:
            return "\(pair) by §7's rule (decode 2D weight-stationary; attention over the batch once the batch covers the mesh, "
                + "else over heads; prefill as decode), for \(run); run `meshinfer calibrate` to choose by predicted time"
        case .costModel:
            guard let best = ranked.first else { return pair }
            func ms(_ s: Double) -> String { String(Int((s * 1e3).rounded())) + " ms" }
            var text = "\(pair): lowest predicted time under this host's calibration, \(ms(best.seconds)) "
                + "(prefill \(ms(best.prefillSeconds)) + decode \(ms(best.decodeSeconds))) for \(run)"
            if ranked.count > 1 { text += "; next \(ranked[1].prefill)/\(ranked[1].decode) \(ms(ranked[1].seconds))" }
            if let r = ranked.first(where: { $0.prefill == rule.prefill && $0.decode == rule.decode }), (r.prefill, r.decode) != (best.prefill, best.decode) {
                text += "; §7's rule \(r.prefill)/\(r.decode) \(ms(r.seconds))"
            } else if (rule.prefill, rule.decode) == (best.prefill, best.decode) {
                text += "; the same pair as §7's rule"
            }
            return text
        }
    }
}

/// Chooses the layouts of a run the user did not fully specify (Pope et al. §7). With a host
/// calibration: among the (prefill, decode) pairs that keep the KV cache in one place (same
/// attention layout; for attention over heads, the same head blocks on every device), the pair
/// with the lowest predicted prefill + decode time for the workload, each phase traced from
/// the layer program and priced like `meshinfer predict`. Without one, §7's rule.
public enum LayoutChooser {
    /// §7's rule as this runtime applies it: decode 2D weight-stationary, attention over the
    /// batch once the batch covers the mesh (else over heads, padded), prefill in the decode
    /// layouts (the KV cache stays where prefill put it).
    public static func paperRule(mesh: Mesh, batch: Int, constraints c: LayoutConstraints = .init()) -> (prefill: PhaseLayout, decode: PhaseLayout) {
        // The KV cache stays where prefill put it: one attention layout for both phases.
        let attention = c.attention ?? c.prefillAttention ?? (batch >= mesh.deviceCount ? .shardedOverBatch : .shardedOverHeads)
        let decode = PhaseLayout(c.decodeFeedForward ?? .weightStationary2D, attention)
        return (PhaseLayout(c.prefillFeedForward ?? decode.feedForward, c.prefillAttention ?? attention), decode)
    }

    /// `pricing` is this host's hardware and calibration for the run's weights and threads, or
    /// nil (then §7's rule). `singleDevice` is the layout a mesh of one runs.
    public static func choose(model: ModelSpec, mesh: Mesh, workload w: Workload, weights: WeightPrecision,
                              pricing: CostModel?, constraints c: LayoutConstraints = .init(),
                              singleDevice: PhaseLayout) -> LayoutChoice {
        let rule = paperRule(mesh: mesh, batch: w.batch, constraints: c)
        if mesh.deviceCount == 1 {
            let one = (PhaseLayout(c.prefillFeedForward ?? singleDevice.feedForward, c.prefillAttention ?? c.attention ?? singleDevice.attention),
                       PhaseLayout(c.decodeFeedForward ?? singleDevice.feedForward, c.attention ?? singleDevice.attention))
            return LayoutChoice(prefill: one.0, decode: one.1, basis: .singleDevice, rule: one, ranked: [], workload: w)
        }
        guard let pricing else {
            return LayoutChoice(prefill: rule.prefill, decode: rule.decode, basis: .paperRule, rule: rule, ranked: [], workload: w)
        }
        let config = model.config
        func seconds(_ layout: PhaseLayout, _ phase: Phase) -> Double? {
            try? pricing.predict(model: model, mesh: mesh, layout: layout, phase: phase, batch: w.batch, inputTokens: w.promptTokens,
                                 generateTokens: max(1, w.generateTokens), weights: weights).latencySeconds
        }
        var ranked: [LayoutChoice.Priced] = []
        var prefillSeconds: [PhaseLayout: Double] = [:], decodeSeconds: [PhaseLayout: Double] = [:]
        var loads: [PhaseLayout: Bool] = [:]   // whether its gathered shards can be stored alike
        func loadable(_ layout: PhaseLayout) -> Bool {
            if let known = loads[layout] { return known }
            let agree = Tracer.gatheredShardsAgree(config: config, mesh: mesh, layout: layout, unitInputs: weights.unitInputs)
            loads[layout] = agree
            return agree
        }
        for attention in AttentionLayout.allCases where (c.attention ?? c.prefillAttention ?? attention) == attention {
            for pf in FeedForwardLayout.allCases where (c.prefillFeedForward ?? pf) == pf {
                for df in FeedForwardLayout.allCases where (c.decodeFeedForward ?? df) == df && (!c.samePhases || df == pf) {
                    let prefill = PhaseLayout(pf, c.prefillAttention ?? attention), decode = PhaseLayout(df, attention)
                    guard (try? PhaseLayout.validatePhases(prefill: prefill, decode: decode, config: config, mesh: mesh)) != nil,
                          loadable(prefill), loadable(decode)
                    else { continue }
                    if prefillSeconds[prefill] == nil { prefillSeconds[prefill] = seconds(prefill, .prefill) ?? .infinity }
                    if decodeSeconds[decode] == nil {
                        decodeSeconds[decode] = w.generateTokens > 0 ? seconds(decode, .decode) ?? .infinity : 0
                    }
                    ranked.append(.init(prefill: prefill, decode: decode, prefillSeconds: prefillSeconds[prefill]!,
                                        decodeSeconds: decodeSeconds[decode]!))
                }
            }
        }
        // Fastest first; ties (equal predictions) keep §7's rule, then the enumeration order.
        ranked.sort { a, b in
            if a.seconds != b.seconds { return a.seconds < b.seconds }
            return (a.prefill, a.decode) == (rule.prefill, rule.decode) && (b.prefill, b.decode) != (rule.prefill, rule.decode)
        }
        guard let best = ranked.first, best.seconds.isFinite else {
            return LayoutChoice(prefill: rule.prefill, decode: rule.decode, basis: .paperRule, rule: rule, ranked: [], workload: w)
        }
        return LayoutChoice(prefill: best.prefill, decode: best.decode, basis: .costModel, rule: rule, ranked: ranked, workload: w)
    }
}
