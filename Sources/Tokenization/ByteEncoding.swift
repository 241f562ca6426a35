/// GPT-2's reversible byte <-> printable-character mapping: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100 and up, in byte order.
enum ByteEncoding {
    /// Scalar value each byte is written as.
    static let byteToScalar: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if isSelfMapped(b) { table[b] = UInt32(b) } else { table[b] = next; next += 1 }
        }
        return table
    }()

    /// Inverse of `byteToScalar`, indexed by scalar value (< 324); -1 where unmapped.
    static let scalarToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 324)
        for b in 0..<256 { table[Int(byteToScalar[b])] = Int16(b) }
        return table
    }()

    static func isSelfMapped(_ b: Int) -> Bool {
        (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
    }

    /// The encoded (vocabulary-form) string of one byte.
    static func encoded(_ byte: UInt8) -> String {
        String(Character(Unicode.Scalar(byteToScalar[Int(byte)])!))
    }

    /// Encoded form of a byte string.
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(Unicode.Scalar(byteToScalar[Int(b)])!) }
        return String(s)
    }

    /// Bytes an encoded token text stands for. Characters outside the mapping (never produced
    /// by the encoder) contribute their own UTF-8 bytes.
    static func decode(_ text: String, into out: inout [UInt8]) {
        for s in text.unicodeScalars {
            let v = Int(s.value)
            if v < scalarToByte.count, scalarToByte[v] >= 0 {
                out.append(UInt8(scalarToByte[v]))
            } else {
                out.append(contentsOf: Array(String(s).utf8))
            }
        }
    }
}
