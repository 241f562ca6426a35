import Foundation

extension Calibration {
    /// Relative errors |predicted − measured| / measured of a calibration on measurements.
    public static func errors(_ c: Calibration, hardware: Hardware, on data: [Measurement]) -> [Double] {
        let model = CostModel(hardware: hardware, calibration: c)
        return data.map { m in ((try? model.predict(m)) ?? .infinity) / m.seconds - 1 }
    }

    static func errors(_ c: Calibration, hardware: Hardware, traced: [(TracedConfiguration, Double)]) -> [Double] {
        let model = CostModel(hardware: hardware, calibration: c)
        return traced.map { model.price($0.0).latencySeconds / $0.1 - 1 }
    }

    /// A grid search over the four physical parameters minimising the squared log error (each
    /// point counts alike whether over or under), with a penalty on points beyond ±30%.
    public static func fit(hardware: Hardware, to data: [Measurement]) throws -> Calibration {
        let tracer = CostModel(hardware: hardware)
        let traced = try data.map { (try tracer.trace($0), $0.seconds) }
        var best = Calibration(), bestLoss = Double.infinity
        for ce in stride(from: 0.4, through: 1.0, by: 0.05) {
            for me in stride(from: 0.3, through: 1.0, by: 0.05) {
                for lat in [0.5e-6, 0.75e-6, 1e-6, 1.25e-6, 1.5e-6, 2e-6, 3e-6, 4e-6, 6e-6] {
                    for ov in stride(from: 0.0, through: 1.0, by: 0.25) {
                        var c = Calibration()
                        c.computeEfficiency = ce
                        c.memoryEfficiency = me
                        c.collectiveLatency = lat
                        c.overlap = ov
                        // Squared log errors, plus a steep penalty beyond ±30% so no point is left far off.
                        let loss = errors(c, hardware: hardware, traced: traced).reduce(0) {
                            let e = abs(log(1 + $1))
                            return $0 + e * e + 20 * pow(max(0, e - log(1.3)), 2)
                        }
                        if loss < bestLoss { bestLoss = loss; best = c }
                    }
                }
            }
        }
        return best
    }
}
