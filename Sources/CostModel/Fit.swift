import Foundation

extension Calibration {
    /// Relative errors (predicted − measured) / measured of a calibration on measurements.
    public static func errors(_ c: Calibration, hardware: Hardware, on data: [Measurement]) -> [Double] {
        let model = CostModel(hardware: hardware, calibration: c)
        return data.map { m in ((try? model.predict(m)) ?? .infinity) / m.seconds - 1 }
    }

    /// What the fit minimises: squared log errors (over- and under-prediction count alike), plus
    /// a steep penalty beyond ±30% so that no point is left far off.
    static func loss(_ errors: [Double]) -> Double {
        errors.reduce(0) {
            let e = abs(log(1 + $1))
            return $0 + e * e + 20 * pow(max(0, e - log(1.3)), 2)
        }
    }

    /// The five parameters, their physical ranges and the coarse grid the fit starts from.
    private static var parameters: [(WritableKeyPath<Calibration, Double>, ClosedRange<Double>, [Double])] { [
        (\.computeEfficiency, 0.3...1, Array(stride(from: 0.5, through: 1.0, by: 0.05))),
        (\.memoryEfficiency, 0.3...1, Array(stride(from: 0.5, through: 1.0, by: 0.05))),
        (\.interconnectEfficiency, 0.02...1, Array(stride(from: 0.05, through: 0.5, by: 0.025))),
        (\.collectiveLatency, 0...1e-5, [0.5e-6, 1e-6, 1.5e-6, 2e-6, 2.5e-6, 3e-6, 4e-6, 6e-6]),
        (\.overlap, 0...1, Array(stride(from: 0.0, through: 1.0, by: 0.125))),
    ] }

    /// Fits the five physical parameters to measurements: a grid search, then a coordinate
    /// search with halving steps inside each parameter's physical range. Deterministic; the
    /// traces are priced from per-pass totals, so a fit to the 37 paper points takes well under
    /// a second in release builds.
    public static func fit(hardware: Hardware, to data: [Measurement]) throws -> Calibration {
        let tracer = CostModel(hardware: hardware)
        let points = try data.map { m -> (TracedConfiguration, PassTotals, Double) in
            let tc = try tracer.trace(m)
            return (tc, PassTotals(tc, hardware: hardware), m.seconds)
        }
        func lossOf(_ c: Calibration) -> Double {
            let model = CostModel(hardware: hardware, calibration: c)
            return loss(points.map { model.price($0.0, totals: $0.1).latencySeconds / $0.2 - 1 })
        }
        let parameters = Self.parameters
        var best = Calibration(), bestLoss = Double.infinity
        func grid(_ i: Int, _ c: Calibration) {
            guard i < parameters.count else {
                let l = lossOf(c)
                if l < bestLoss { (best, bestLoss) = (c, l) }
                return
            }
            var c = c
            for v in parameters[i].2 {
                c[keyPath: parameters[i].0] = v
                grid(i + 1, c)
            }
        }
        grid(0, Calibration())
        var steps = parameters.map { $0.2[1] - $0.2[0] }
        var halvings = 0
        while halvings < 8 {
            var improved = false
            for (i, (key, range, _)) in parameters.enumerated() {
                for sign in [-1.0, 1.0] {
                    var c = best
                    c[keyPath: key] = min(range.upperBound, max(range.lowerBound, best[keyPath: key] + sign * steps[i]))
                    let l = lossOf(c)
                    if l < bestLoss - 1e-12 { (best, bestLoss, improved) = (c, l, true) }
                }
            }
            if !improved { steps = steps.map { $0 / 2 }; halvings += 1 }
        }
        return best
    }
}
