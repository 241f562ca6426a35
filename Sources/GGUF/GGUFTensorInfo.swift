/// Where one tensor lives in a GGUF file and how it is laid out.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml order: `dimensions[0]` is the contiguous row length (ne0).
    public let dimensions: [Int]
    public let type: GGMLType
    /// Absolute byte offset of the data in the file.
    public let offset: Int
    public let byteCount: Int

    public init(name: String, dimensions: [Int], type: GGMLType, offset: Int, byteCount: Int) {
        self.name = name
        self.dimensions = dimensions
        self.type = type
        self.offset = offset
        self.byteCount = byteCount
    }

    public var elementCount: Int { dimensions.reduce(1, *) }
    public var rowLength: Int { dimensions.first ?? 1 }
    /// Product of `dimensions[1...]` (1 for a 1-D tensor).
    public var rowCount: Int { dimensions.dropFirst().reduce(1, *) }
    /// Bytes of one row.
    public var rowBytes: Int { rowLength / type.blockSize * type.blockBytes }

    /// Validates a shape for `type` and returns its byte size, using overflow-checked arithmetic.
    static func byteSize(name: String, dimensions: [Int], type: GGMLType) throws(GGUFError) -> Int {
        guard !dimensions.isEmpty else {
            throw .badTensorShape(name: name, reason: "it has no dimensions")
        }
        guard dimensions.count <= 4 else {
            throw .badTensorShape(name: name, reason: "it has \(dimensions.count) dimensions; at most 4 are allowed")
        }
        var elements = 1
        for (i, d) in dimensions.enumerated() {
            guard d > 0 else {
                throw .badTensorShape(name: name, reason: "dimension \(i) is \(d); dimensions must be positive")
            }
            let (p, o) = elements.multipliedReportingOverflow(by: d)
            guard !o else {
                throw .badTensorShape(name: name, reason: "the element count of \(dimensions) overflows")
            }
            elements = p
        }
        guard dimensions[0] % type.blockSize == 0 else {
            throw .badTensorShape(name: name, reason: "row length \(dimensions[0]) is not a multiple of the \(type) block size \(type.blockSize)")
        }
        let (bytes, o) = (elements / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
        guard !o else {
            throw .badTensorShape(name: name, reason: "the byte size of \(dimensions) overflows")
        }
        return bytes
    }
}
