import GGUF

/// Where weights come from, by GGUF tensor name: a model file or seeded random values. Matrices
/// are (rows = outputs, columns = inputs), read a range of rows at a time, as f32; a model file
/// also hands out its rows in their own block format, so they can run in place.
public protocol TensorSource: Sendable {
    /// (rows, columns); vectors are (1, n).
    func shape(_ name: String) throws -> (rows: Int, columns: Int)
    func readRows(_ name: String, _ rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws
    /// The tensor's rows in their stored block format, or nil when it has none (f32 values).
    func blockRows(_ name: String) throws -> BlockRows?
}

/// A tensor's rows as stored in a file: `rowBytes` bytes per row of `type` blocks.
public struct BlockRows: @unchecked Sendable {
    public let type: GGMLType
    public let base: UnsafeRawPointer   // (rows, rowBytes)
    public let rowBytes: Int
    public func row(_ r: Int) -> UnsafeRawPointer { base + r * rowBytes }
}

extension TensorSource {
    public func blockRows(_ name: String) throws -> BlockRows? { nil }

    /// Rows `rows` restricted to columns `columns`, row-major.
    public func matrix(_ name: String, rows: Range<Int>, columns: Range<Int>) throws -> [Float] {
        let full = try shape(name).columns
        var buffer = [Float](repeating: 0, count: rows.count * full)
        try buffer.withUnsafeMutableBufferPointer { try readRows(name, rows, into: $0.baseAddress!) }
        if columns == 0..<full { return buffer }
        var out = [Float]()
        out.reserveCapacity(rows.count * columns.count)
        for r in 0..<rows.count { out += buffer[(r * full + columns.lowerBound)..<(r * full + columns.upperBound)] }
        return out
    }

    public func vector(_ name: String) throws -> [Float] {
        let s = try shape(name)
        return try matrix(name, rows: 0..<s.rows, columns: 0..<s.columns)
    }
}

extension GGUFFile: TensorSource {
    public func shape(_ name: String) throws -> (rows: Int, columns: Int) {
        let t = try tensor(name)
        return (t.rowCount, t.rowLength)
    }

    public func readRows(_ name: String, _ rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws {
        try dequantizeRows(try tensor(name), rows: rows, into: into)
    }

    public func blockRows(_ name: String) throws -> BlockRows? {
        let t = try tensor(name)
        guard t.type != .f32 else { return nil }
        return BlockRows(type: t.type, base: data(for: t).baseAddress!, rowBytes: t.rowBytes)
    }
}
