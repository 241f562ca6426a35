@testable import CostModel
import Testing

/// The priced traces against the paper's measurements (SPEC §5, §9) with the five fitted physical
/// parameters (`Calibration()`): median error ≤ 15% and no point worse than 35%, on the points
/// fitted and on points kept out of the fit.
struct CalibrationTests {
    static func summary(_ errors: [Double]) -> (median: Double, worst: Double) {
        let sorted = errors.map(abs).sorted()
        return (sorted[sorted.count / 2], sorted.last!)
    }

    static func report(_ data: [Measurement], _ errors: [Double]) -> String {
        zip(data, errors).map { "\($0.source): \(Int(($1 * 100).rounded()))%" }.joined(separator: ", ")
    }

    @Test func paperMeasurementsWithin15PercentMedianAnd35PercentWorst() throws {
        let errors = Calibration.errors(Calibration(), hardware: .tpuV4, on: Measurement.paper)
        #expect(errors.count == 37)
        let (median, worst) = Self.summary(errors)
        #expect(median <= 0.15, "median error \(median)")
        #expect(worst <= 0.35, "worst error \(worst): \(Self.report(Measurement.paper, errors))")
    }

    /// SPEC points that are not in the fit (the rest of Fig. 7's sweep, more of Fig. 1).
    @Test func heldOutMeasurements() throws {
        let errors = Calibration.errors(Calibration(), hardware: .tpuV4, on: Measurement.heldOut)
        let (median, worst) = Self.summary(errors)
        #expect(median <= 0.15, "median error \(median)")
        #expect(worst <= 0.35, "worst error \(worst): \(Self.report(Measurement.heldOut, errors))")
    }

    /// The defaults are the fit, rounded, and no worse than it.
    @Test func defaultsAreTheFit() throws {
        let fitted = try Calibration.fit(hardware: .tpuV4, to: Measurement.paper)
        let d = Calibration()
        #expect(abs(fitted.computeEfficiency - d.computeEfficiency) <= 0.01)
        #expect(abs(fitted.memoryEfficiency - d.memoryEfficiency) <= 0.01)
        #expect(abs(fitted.interconnectEfficiency - d.interconnectEfficiency) <= 0.005)
        #expect(abs(fitted.collectiveLatency - d.collectiveLatency) <= 0.25e-6)
        #expect(abs(fitted.overlap - d.overlap) <= 0.02)
        let lossFitted = Calibration.loss(Calibration.errors(fitted, hardware: .tpuV4, on: Measurement.paper))
        let lossDefault = Calibration.loss(Calibration.errors(d, hardware: .tpuV4, on: Measurement.paper))
        #expect(lossDefault <= lossFitted * 1.02, "\(lossDefault) vs \(lossFitted)")
    }

    /// Generalisation: fitted without one group of measurements, the model predicts that group
    /// within the same bounds.
    @Test(arguments: ["Table 2", "Fig 1 540B", "Fig 1 62B|Fig 1 8B", "Fig 7", "Table D.2"])
    func leaveOneGroupOut(_ prefixes: String) throws {
        let group = prefixes.split(separator: "|").map(String.init)
        let left = Measurement.paper.filter { m in group.contains { m.source.hasPrefix($0) } }
        let rest = Measurement.paper.filter { m in !group.contains { m.source.hasPrefix($0) } }
        #expect(!left.isEmpty && left.count + rest.count == 37)
        let fitted = try Calibration.fit(hardware: .tpuV4, to: rest)
        let errors = Calibration.errors(fitted, hardware: .tpuV4, on: left)
        let (median, worst) = Self.summary(errors)
        #expect(median <= 0.15, "\(prefixes): median error \(median)")
        #expect(worst <= 0.35, "\(prefixes): worst error \(worst): \(Self.report(left, errors))")
    }

    /// Table 2's four configurations, individually.
    @Test func table2() throws {
        let model = CostModel(hardware: .tpuV4)
        for m in Measurement.paper.filter({ $0.source.hasPrefix("Table 2") }) {
            let p = try model.predict(m)
            #expect(abs(p / m.seconds - 1) <= 0.15, "\(m.source): \(p) s vs \(m.seconds) s")
        }
    }
}
