/// IEEE half (binary16) bits to Float. Exact for every input (NaNs stay NaN).
@inline(__always)
public func halfToFloat(_ bits: UInt16) -> Float {
    let sign = UInt32(bits & 0x8000) << 16
    let exponent = UInt32(bits >> 10) & 0x1F
    let mantissa = UInt32(bits & 0x03FF)
    if exponent == 0x1F {  // inf / NaN
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    if exponent == 0 {  // zero / subnormal: mantissa * 2^-24, exact in Float
        let v = Float(mantissa) * 0x1p-24
        return sign != 0 ? -v : v
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}

/// bfloat16 bits to Float (the high half of an f32).
@inline(__always)
public func bfloat16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

@inline(__always)
private func loadHalf(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

/// Converts `count` elements of `type` at `source` to f32 at `destination`.
/// `count` must be a non-negative multiple of `type.blockSize`; `source` must hold
/// `count / blockSize * blockBytes` bytes. No alignment is required.
public func dequantize(_ type: GGMLType, from source: UnsafeRawPointer, count: Int,
                       into destination: UnsafeMutablePointer<Float>) throws(GGUFError) {
    guard type.isDequantizable else { throw .unsupportedTensorType(type) }
    guard count >= 0, count % type.blockSize == 0 else {
        throw .invalidRange(tensor: "\(type) buffer",
                            reason: "element count \(count) is not a non-negative multiple of the block size \(type.blockSize)")
    }
    let blocks = count / type.blockSize
    switch type {
    case .f32:
        if Int(bitPattern: source) & 3 == 0 {
            destination.update(from: source.assumingMemoryBound(to: Float.self), count: count)
        } else {
            UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        }
        #if _endian(big)
        for i in 0..<count { destination[i] = Float(bitPattern: UInt32(littleEndian: destination[i].bitPattern)) }
        #endif
    case .f16:
        for i in 0..<count { destination[i] = loadHalf(source, 2 * i) }
    case .bf16:
        for i in 0..<count {
            destination[i] = bfloat16ToFloat(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
        }
    case .q8_0: dequantizeQ8_0(source, blocks, destination)
    case .q4_0: dequantizeQ4_0(source, blocks, destination)
    case .q4_1: dequantizeQ4_1(source, blocks, destination)
    case .q5_0: dequantizeQ5(source, blocks, destination, withMin: false)
    case .q5_1: dequantizeQ5(source, blocks, destination, withMin: true)
    case .q4_K: dequantizeK(source, blocks, destination, fifthBits: false)
    case .q5_K: dequantizeK(source, blocks, destination, fifthBits: true)
    case .q6_K: dequantizeQ6_K(source, blocks, destination)
    default: throw .unsupportedTensorType(type)
    }
}

/// Q8_0: f16 d, 32 × int8 q. x = q * d.
private func dequantizeQ8_0(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>) {
    for b in 0..<blocks {
        let block = src + b * 34
        let d = loadHalf(block, 0)
        let q = (block + 2).assumingMemoryBound(to: Int8.self)
        let y = dst + b * 32
        for j in 0..<32 { y[j] = Float(q[j]) * d }
    }
}

/// Q4_0: f16 d, 16 bytes; low nibbles are elements 0..<16, high nibbles 16..<32. x = (q - 8) * d.
private func dequantizeQ4_0(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>) {
    for b in 0..<blocks {
        let block = src + b * 18
        let d = loadHalf(block, 0)
        let q = (block + 2).assumingMemoryBound(to: UInt8.self)
        let y = dst + b * 32
        for j in 0..<16 {
            let v = q[j]
            y[j] = Float(Int32(v & 0x0F) - 8) * d
            y[j + 16] = Float(Int32(v >> 4) - 8) * d
        }
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles (same order as Q4_0). x = q * d + m.
private func dequantizeQ4_1(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>) {
    for b in 0..<blocks {
        let block = src + b * 20
        let d = loadHalf(block, 0)
        let m = loadHalf(block, 2)
        let q = (block + 4).assumingMemoryBound(to: UInt8.self)
        let y = dst + b * 32
        for j in 0..<16 {
            let v = q[j]
            y[j] = Float(v & 0x0F) * d + m
            y[j + 16] = Float(v >> 4) * d + m
        }
    }
}

/// Q5_0 (22 bytes): f16 d, 4 bytes qh (bit j = 5th bit of element j, little-endian), 16 bytes
/// of nibbles in Q4_0's order. x = (q - 16) * d.
/// Q5_1 (24 bytes): f16 d, f16 m, then qh and nibbles as Q5_0. x = q * d + m.
private func dequantizeQ5(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>, withMin: Bool) {
    let size = withMin ? 24 : 22, header = withMin ? 4 : 2
    for b in 0..<blocks {
        let block = src + b * size
        let d = loadHalf(block, 0)
        let m: Float = withMin ? loadHalf(block, 2) : 0
        let offset: Int32 = withMin ? 0 : 16
        let qh = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: header, as: UInt32.self))
        let q = (block + header + 4).assumingMemoryBound(to: UInt8.self)
        let y = dst + b * 32
        for j in 0..<16 {
            let low = UInt32(q[j] & 0x0F) | ((qh >> j) & 1) << 4
            let high = UInt32(q[j] >> 4) | ((qh >> (j + 16)) & 1) << 4
            y[j] = Float(Int32(low) - offset) * d + m
            y[j + 16] = Float(Int32(high) - offset) * d + m
        }
    }
}

/// Q4_K super-block (256 elements, 144 bytes): f16 d, f16 dmin, 12 bytes packing eight
/// 6-bit scales and eight 6-bit mins, 128 bytes of nibbles. Each 64-element chunk uses
/// 32 bytes: low nibbles with sub-block 2c, high nibbles with sub-block 2c+1.
/// x = d*scale*q - dmin*min.
/// Q5_K (176 bytes) is the same with 32 bytes qh between the scales and the nibbles: element l
/// of chunk c takes its 5th bit from qh[l % 32], bit 2c for the low-nibble half and 2c + 1 for
/// the high one.
private func dequantizeK(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>, fifthBits: Bool) {
    let size = fifthBits ? 176 : 144, nibbles = fifthBits ? 48 : 16
    for b in 0..<blocks {
        let block = src + b * size
        let d = loadHalf(block, 0)
        let dmin = loadHalf(block, 2)
        let s = (block + 4).assumingMemoryBound(to: UInt8.self)
        let qh = (block + 16).assumingMemoryBound(to: UInt8.self)
        let q = (block + nibbles).assumingMemoryBound(to: UInt8.self)
        let y = dst + b * 256
        for chunk in 0..<4 {
            let (sc1, m1) = q4KScaleMin(2 * chunk, s)
            let (sc2, m2) = q4KScaleMin(2 * chunk + 1, s)
            let d1 = d * Float(sc1), dm1 = dmin * Float(m1)
            let d2 = d * Float(sc2), dm2 = dmin * Float(m2)
            let qc = q + 32 * chunk
            let yc = y + 64 * chunk
            for l in 0..<32 {
                let h1 = fifthBits ? (qh[l] >> (2 * chunk)) & 1 : 0, h2 = fifthBits ? (qh[l] >> (2 * chunk + 1)) & 1 : 0
                yc[l] = d1 * Float((qc[l] & 0x0F) | h1 << 4) - dm1
                yc[l + 32] = d2 * Float((qc[l] >> 4) | h2 << 4) - dm2
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..<8) from the 12 packed bytes of a Q4_K/Q5_K block.
@inline(__always)
func q4KScaleMin(_ j: Int, _ s: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
    if j < 4 {
        return (s[j] & 63, s[j + 4] & 63)
    }
    return ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
}

/// Q6_K super-block (256 elements, 210 bytes): 128 bytes ql (low 4 bits), 64 bytes qh
/// (high 2 bits), 16 int8 scales (one per 16 elements), f16 d. x = d * scale * (q - 32).
private func dequantizeQ6_K(_ src: UnsafeRawPointer, _ blocks: Int, _ dst: UnsafeMutablePointer<Float>) {
    for b in 0..<blocks {
        let block = src + b * 210
        let d = loadHalf(block, 208)
        for half in 0..<2 {
            let ql = (block + 64 * half).assumingMemoryBound(to: UInt8.self)
            let qh = (block + 128 + 32 * half).assumingMemoryBound(to: UInt8.self)
            let sc = (block + 192 + 8 * half).assumingMemoryBound(to: Int8.self)
            let y = dst + b * 256 + 128 * half
            for l in 0..<32 {
                let i = l / 16
                let h = qh[l]
                let q1 = Int32((ql[l] & 0x0F) | ((h & 3) << 4)) - 32
                let q2 = Int32((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32
                let q3 = Int32((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = Int32((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32
                y[l] = d * Float(sc[i]) * Float(q1)
                y[l + 32] = d * Float(sc[i + 2]) * Float(q2)
                y[l + 64] = d * Float(sc[i + 4]) * Float(q3)
                y[l + 96] = d * Float(sc[i + 6]) * Float(q4)
            }
        }
    }
}
