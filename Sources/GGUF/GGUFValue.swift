/// A GGUF metadata value. Arrays may nest.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8)
    case int8(Int8)
    case uint16(UInt16)
    case int16(Int16)
    case uint32(UInt32)
    case int32(Int32)
    case float32(Float)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])
    case uint64(UInt64)
    case int64(Int64)
    case float64(Double)

    /// Any integer case as `Int` (nil for non-integers, for `bool`, and for a `uint64` above `Int.max`).
    public var intValue: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(exactly: v)
        default: return nil
        }
    }

    /// Any float or integer case as `Double`.
    public var doubleValue: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        case let .uint64(v): return Double(v)
        case let .int64(v): return Double(v)
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    public var boolValue: Bool? {
        if case let .bool(b) = self { return b }
        return nil
    }

    public var arrayValue: [GGUFValue]? {
        if case let .array(a) = self { return a }
        return nil
    }

    /// The GGUF value type id (0...12).
    public var typeID: UInt32 {
        switch self {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    /// A short type name for messages, e.g. "uint32" or "array[string]".
    public var typeName: String {
        switch self {
        case let .array(a):
            if let first = a.first { return "array[\(first.typeName)]" }
            return "array"
        default:
            return GGUFValue.typeName(ofID: typeID)
        }
    }

    static func typeName(ofID id: UInt32) -> String {
        switch id {
        case 0: return "uint8"
        case 1: return "int8"
        case 2: return "uint16"
        case 3: return "int16"
        case 4: return "uint32"
        case 5: return "int32"
        case 6: return "float32"
        case 7: return "bool"
        case 8: return "string"
        case 9: return "array"
        case 10: return "uint64"
        case 11: return "int64"
        case 12: return "float64"
        default: return "unknown(\(id))"
        }
    }
}
