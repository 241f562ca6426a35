/// Everything that can go wrong while reading, validating or converting a GGUF file.
///
/// Every case names what was being processed and, where it applies, the byte offset,
/// metadata key or tensor name involved. `description` is one human-readable sentence.
public enum GGUFError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened, inspected, mapped or written.
    case io(path: String, reason: String)
    /// The first four bytes are not "GGUF" (the value found is read little-endian).
    case badMagic(found: UInt32)
    /// The format version is not 2 or 3.
    case unsupportedVersion(UInt32)
    /// Reading `what` at `offset` needed `needed` bytes but the file ends at `fileSize`.
    case truncated(offset: Int, needed: Int, fileSize: Int, what: String)
    /// A metadata value (or array element) has a type id outside 0...12.
    case unknownValueType(raw: UInt32, key: String)
    /// A tensor has a ggml type id this library does not know.
    case unknownTensorType(raw: UInt32, tensor: String)
    /// A tensor's data does not lie inside the file.
    case tensorOutOfBounds(name: String, offset: Int, byteCount: Int, fileSize: Int)
    /// A tensor's dimensions are invalid (count, zero, overflow, block-size multiple...).
    case badTensorShape(name: String, reason: String)
    /// A metadata key that was asked for is absent.
    case missingKey(String)
    /// A metadata key exists but holds a value of another type.
    case typeMismatch(key: String, expected: String, found: String)
    /// A tensor that was asked for is absent.
    case missingTensor(String)
    /// A string (key, value or tensor name) starting at `offset` is not valid UTF-8.
    case invalidUTF8(offset: Int)
    /// The operation (dequantization) is not implemented for this tensor type.
    case unsupportedTensorType(GGMLType)
    /// The same metadata key appears twice.
    case duplicateKey(String)
    /// The same tensor name appears twice.
    case duplicateTensor(String)
    /// A tensor's data offset (relative to the data section) is not a multiple of the alignment.
    case badAlignment(tensor: String, offset: Int, alignment: Int)
    /// Two tensors' data ranges overlap.
    case overlappingTensors(String, String)
    /// A metadata value is structurally valid but semantically unacceptable
    /// (e.g. `general.alignment` not a power of two, arrays nested too deeply).
    case invalidValue(key: String, offset: Int, reason: String)
    /// A row range or element count does not fit the tensor / block size.
    case invalidRange(tensor: String, reason: String)

    public var description: String {
        switch self {
        case let .io(path, reason):
            return "I/O error on '\(path)': \(reason)."
        case let .badMagic(found):
            let hex = String(found, radix: 16)
            return "Not a GGUF file: the magic number is 0x\(hex), expected 0x46554747 (\"GGUF\")."
        case let .unsupportedVersion(v):
            return "Unsupported GGUF version \(v); only versions 2 and 3 are supported."
        case let .truncated(offset, needed, fileSize, what):
            return "The file is truncated: reading \(what) at byte offset \(offset) needs \(needed) bytes, but the file is only \(fileSize) bytes long."
        case let .unknownValueType(raw, key):
            return "Metadata key '\(key)' has unknown value type \(raw)."
        case let .unknownTensorType(raw, tensor):
            return "Tensor '\(tensor)' has unknown ggml type \(raw)."
        case let .tensorOutOfBounds(name, offset, byteCount, fileSize):
            return "The data of tensor '\(name)' (\(byteCount) bytes at byte offset \(offset)) lies outside the \(fileSize)-byte file."
        case let .badTensorShape(name, reason):
            return "Tensor '\(name)' has an invalid shape: \(reason)."
        case let .missingKey(key):
            return "Metadata key '\(key)' is missing."
        case let .typeMismatch(key, expected, found):
            return "Metadata key '\(key)' holds a value of type \(found), expected \(expected)."
        case let .missingTensor(name):
            return "Tensor '\(name)' is missing."
        case let .invalidUTF8(offset):
            return "The string at byte offset \(offset) is not valid UTF-8."
        case let .unsupportedTensorType(type):
            return "Tensor type \(type) cannot be dequantized by this library."
        case let .duplicateKey(key):
            return "Metadata key '\(key)' appears more than once."
        case let .duplicateTensor(name):
            return "Tensor '\(name)' appears more than once."
        case let .badAlignment(tensor, offset, alignment):
            return "Tensor '\(tensor)' has data offset \(offset), which is not a multiple of the alignment \(alignment)."
        case let .overlappingTensors(a, b):
            return "The data of tensors '\(a)' and '\(b)' overlap."
        case let .invalidValue(key, offset, reason):
            return "Metadata key '\(key)' at byte offset \(offset) is invalid: \(reason)."
        case let .invalidRange(tensor, reason):
            return "Invalid range for '\(tensor)': \(reason)."
        }
    }
}
