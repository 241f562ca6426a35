import CKernels
import Foundation

/// Memory for the weights one device loads: chunks of 2 MiB-aligned memory advised onto
/// transparent huge pages, carved into 64-byte-aligned pieces. Weights stream 25–40% faster from
/// huge pages on this machine kind (../shared/research/cpu-kernels.md §1.1), but most matrices
/// of a small model are under 2 MiB and never get one alone: packed side by side they do.
/// Pieces live as long as the arena; every weight carved from it holds it.
public final class WeightArena: @unchecked Sendable {
    static let chunkBytes = 64 << 20
    private let lock = NSLock()
    private var chunks: [UnsafeMutableRawPointer] = []
    private var next: UnsafeMutableRawPointer?
    private var left = 0

    public init() {}

    deinit { for c in chunks { mi_huge_free(c) } }

    /// `bytes` of 64-byte-aligned memory, or nil when the system has none to give (callers then
    /// allocate ordinarily). A piece larger than a chunk gets a chunk of its own size.
    func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let size = (bytes + 63) / 64 * 64
        lock.lock()
        defer { lock.unlock() }
        if size > left {
            guard let chunk = mi_huge_alloc(max(size, Self.chunkBytes)) else { return nil }
            chunks.append(chunk)
            if size >= Self.chunkBytes { return chunk }   // its own chunk; the current one stays open
            next = chunk
            left = Self.chunkBytes
        }
        let piece = next!
        next = piece + size
        left -= size
        return piece
    }
}
