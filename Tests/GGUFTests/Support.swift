import Foundation
import Testing
import GGUF

/// A little-endian byte builder for hand-made (often deliberately corrupt) GGUF images.
final class Bytes {
    var data: [UInt8] = []

    @discardableResult func u8(_ v: UInt8) -> Self { data.append(v); return self }
    @discardableResult func u16(_ v: UInt16) -> Self { le(v); return self }
    @discardableResult func u32(_ v: UInt32) -> Self { le(v); return self }
    @discardableResult func u64(_ v: UInt64) -> Self { le(v); return self }
    @discardableResult func raw(_ v: [UInt8]) -> Self { data += v; return self }
    @discardableResult func str(_ s: String) -> Self {
        u64(UInt64(s.utf8.count)); data += Array(s.utf8); return self
    }
    /// magic + version + tensor count + kv count.
    @discardableResult func header(version: UInt32 = 3, tensors: UInt64 = 0, kvs: UInt64 = 0) -> Self {
        raw(Array("GGUF".utf8)); u32(version); u64(tensors); u64(kvs); return self
    }
    /// A tensor info entry.
    @discardableResult func tensorInfo(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) -> Self {
        str(name); u32(UInt32(dims.count)); for d in dims { u64(d) }; u32(type); u64(offset); return self
    }
    func pad(to alignment: Int) {
        while data.count % alignment != 0 { data.append(0) }
    }
    private func le<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { data += $0 }
    }
}

/// Runs `body` and returns the GGUFError it throws (nil if it does not throw).
/// Any other error type is recorded as a test failure.
func gguferror(_ body: () throws -> Void) -> GGUFError? {
    do {
        try body()
        return nil
    } catch let error as GGUFError {
        return error
    } catch {
        Issue.record("expected a GGUFError, got \(error)")
        return nil
    }
}

func parseError(_ bytes: [UInt8]) -> GGUFError? {
    gguferror { _ = try GGUFFile(bytes: bytes) }
}

/// IEEE half bit patterns used in hand-built blocks.
enum Half {
    static let zero: UInt16 = 0x0000
    static let quarter: UInt16 = 0x3400   // 0.25
    static let half: UInt16 = 0x3800      // 0.5
    static let one: UInt16 = 0x3C00       // 1.0
    static let two: UInt16 = 0x4000       // 2.0
    static let minusOne: UInt16 = 0xBC00  // -1.0
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }

func dequantizeBytes(_ type: GGMLType, _ bytes: [UInt8], count: Int) throws -> [Float] {
    // Copy to an exact-size heap buffer (no slack, deliberately unaligned by one byte).
    let source = UnsafeMutableRawPointer.allocate(byteCount: bytes.count + 1, alignment: 16)
    defer { source.deallocate() }
    source.storeBytes(of: 0xAB, as: UInt8.self)
    for (i, b) in bytes.enumerated() { source.storeBytes(of: b, toByteOffset: i + 1, as: UInt8.self) }
    let destination = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
    defer { destination.deallocate() }
    destination.initialize(repeating: .nan, count: max(count, 1))
    try dequantize(type, from: UnsafeRawPointer(source + 1), count: count, into: destination)
    return Array(UnsafeBufferPointer(start: destination, count: count))
}

/// The real model used by the optional tests, or nil when absent.
func realModelPath() -> String? {
    let env = ProcessInfo.processInfo.environment
    let path: String
    if let p = env["MESHINFER_MODEL"], !p.isEmpty {
        path = p
    } else {
        let dir = env["MESHINFER_CACHE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/meshinfer")
        path = (dir as NSString).appendingPathComponent("SmolLM2-135M-Instruct.Q4_1.gguf")
    }
    return FileManager.default.fileExists(atPath: path) ? path : nil
}
