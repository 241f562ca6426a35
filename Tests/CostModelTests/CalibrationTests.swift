import CostModel
import Foundation
import Testing

/// The priced traces against the paper's measurements (SPEC §5, §9): median error ≤ 15%,
/// none worse than 35%, with the four fitted physical parameters (`Calibration()`).
struct CalibrationTests {
    @Test func paperMeasurementsWithinTolerance() throws {
        let errors = Calibration.errors(Calibration(), hardware: .tpuV4, on: Measurement.paper).map(abs).sorted()
        #expect(errors.count == 37)
        #expect(errors[errors.count / 2] <= 0.15, "median error \(errors[errors.count / 2])")
        #expect(errors.last! <= 0.35, "worst error \(errors.last!)")
    }

    /// Table 2's decode and low-latency prefill points, individually.
    @Test func table2() throws {
        let model = CostModel(hardware: .tpuV4)
        for m in Measurement.paper.filter({ $0.source.hasPrefix("Table 2") }) {
            let p = try model.predict(m)
            #expect(abs(p / m.seconds - 1) <= 0.35, "\(m.source): \(p) s vs \(m.seconds) s")
        }
    }
}
