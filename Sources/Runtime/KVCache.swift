import CKernels
import Foundation
import Transformer

/// How a KV cache stores keys and values (`--kv-cache`): f16 (llama.cpp's default cache type),
/// or q8: int8 codes with an f32 scale per 32 elements (Q8_0's rule: absmax / 127), 1.125 bytes
/// an element, which decode attention reads in ~0.56 of the f16 bytes.
public enum KVCacheType: String, Codable, Sendable, CaseIterable {
    case f16, q8

    /// Bytes per cached key or value element.
    public var bytesPerElement: Double { self == .f16 ? 2 : 1 + 4.0 / 32 }

    /// Bytes of `elements` cached elements (q8: codes, then a scale per 32).
    public func bytes(elements: Int) -> Int { Int((Double(elements) * bytesPerElement).rounded(.up)) }

    /// Whether heads `headDimension` wide can be cached this way (q8 scales runs of 32).
    public func holds(headDimension: Int) -> Bool { self == .f16 || headDimension % 32 == 0 }

    /// A sequence's cache is made in whole chunks of this many positions (`KVCache`).
    public static let chunkPositions = Int(MI_KV_CHUNK)

    /// `positions` rounded up to whole chunks: what a cache of that many positions holds.
    public static func wholeChunks(_ positions: Int) -> Int { (positions + chunkPositions - 1) / chunkPositions * chunkPositions }
}

/// One device's slice of one sequence's key/value cache: per layer, this device's KV heads'
/// keys and values (f16 or q8), in chunks of C = `MI_KV_CHUNK` (256) positions, and within a
/// chunk in tiles of 16 positions — layout (chunks, layers, C/16, kvHeads, 2, 16, Q), keys
/// transposed within their tile, a q8 cache's scales in a second allocation of the same layout
/// divided by 32 (`mi_attention_row`). A layer's positions are one contiguous run of tiles
/// holding every KV head, which a decode step's attention reads front to back: measured on the
/// AMD host, such runs stream at 19-22 GB/s on one core, where a run per KV head and keys or
/// values (the layout before, (chunks, layers, 2, kvHeads, C, Q)) streamed at 11-12; in the
/// kernels' own measurement (32 sequences of 160 positions, 30 layers, from memory) f16
/// attention went from 9.7-12.7 ms to 6.5-6.8 and q8 from 8.1-9.8 to 5.3. The cache grows
/// by whole chunks at its end: what it holds never moves. Written by position; how many
/// positions the sequence holds is its `MeshSequence`'s count, not the cache's.
///
/// The allocations are address space for the whole limit, made (zeroed, on huge pages where
/// the kernel allows them) as they are first written: a position's first write makes its whole
/// chunk, so a cache holds at most one chunk (SmolLM2: 5.9 MB) beyond its positions. Before, a
/// cache of (layers, 2, kvHeads, capacity, Q) grew by copying into a larger allocation: ~1.3
/// ms of a 14 ms decode step of 8 sequences at 128 positions in copies and fresh pages (`bench
/// --profile`, SmolLM2 int8, 1 thread); the same cache on 4 KiB pages, never copied, read ~10%
/// slower at 32 sequences. Under strict overcommit accounting (where a reservation would hold
/// its whole size), or where the system refuses the address space, the cache grows by a
/// quarter at a time, copying its chunks.
final class KVCache: @unchecked Sendable {
    let type: KVCacheType
    let layers: Int
    let kvHeads: Int         // KV heads on this device
    let headDimension: Int   // Q
    let limit: Int           // context length
    private(set) var capacity = 0                     // positions, whole chunks
    private var storage: UnsafeMutableRawPointer?     // f16 bits or q8 codes (chunks, layers, C/16, kvHeads, 2, 16, Q)
    private var scaleStorage: UnsafeMutablePointer<Float>?   // q8: the same layout / 32
    private var reserved = false                      // the allocations are mi_reserve's, for the whole limit
    private let reservesLimit: Bool

    static let chunk = KVCacheType.chunkPositions

    var kvDimension: Int { kvHeads * headDimension }

    /// `reservesLimit: false` skips the address-space reservation and grows by copying (the
    /// path taken where the system refuses it; for tests).
    init(type: KVCacheType, layers: Int, kvHeads: Int, headDimension: Int, limit: Int, reservesLimit: Bool = true) {
        precondition(type.holds(headDimension: headDimension), "a \(type.rawValue) cache cannot hold heads of \(headDimension)")
        self.type = type
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.limit = limit
        self.reservesLimit = reservesLimit
    }

    convenience init(type: KVCacheType, config: ModelConfig, kvHeads: Int, limit: Int) {
        self.init(type: type, layers: config.layers, kvHeads: kvHeads, headDimension: config.headDimension, limit: limit)
    }

    deinit { release(storage, scaleStorage, capacity: capacity, reserved: reserved) }

    private var elementBytes: Int { type == .f16 ? 2 : 1 }
    /// Elements (codes or f16 values) of `positions` positions (whole chunks).
    private func elements(positions: Int) -> Int { layers * 2 * kvHeads * positions * headDimension }
    /// Elements between consecutive chunks.
    private var chunkStride: Int { elements(positions: Self.chunk) }
    /// Elements between a layer's consecutive tiles of 16 positions (every KV head's keys and values).
    private var tileStride: Int { kvHeads * 2 * 16 * headDimension }
    /// Elements between consecutive KV heads within a tile.
    private var headStride: Int { 2 * 16 * headDimension }

    /// Where `head` of `layer` starts in tile 0 of chunk 0, in elements.
    private func offset(_ layer: Int, _ head: Int) -> Int { layer * (Self.chunk / 16) * tileStride + head * headStride }

    private func f16(_ at: Int) -> UnsafeMutablePointer<UInt16> { storage!.assumingMemoryBound(to: UInt16.self) + at }
    private func codes(_ at: Int) -> UnsafeMutablePointer<Int8> { storage!.assumingMemoryBound(to: Int8.self) + at }
    /// q8: the scales of the codes from element `at` on.
    private func scales(_ at: Int) -> UnsafeMutablePointer<Float> { scaleStorage! + at / 32 }

    /// Stores `count` KV heads' keys and values (each `count`·Q floats, head after head) at
    /// `position` of `layer`, as heads `firstHead`..., rounded to the cache's type.
    func write(layer: Int, position: Int, firstHead: Int = 0, count: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        let Q = headDimension
        for h in 0..<count {
            let at = offset(layer, firstHead + h)
            switch type {
            case .f16:
                mi_kv_write_f16(keys + h * Q, values + h * Q, Int32(Q), f16(at), Int64(tileStride), Int64(chunkStride), Int32(position))
            case .q8:
                mi_kv_write_q8(keys + h * Q, values + h * Q, Int32(Q), codes(at), scales(at), Int64(tileStride), Int64(chunkStride),
                               Int32(position))
            }
        }
    }

    /// Softmax attention of one query row (`heads` query heads over this cache's KV heads
    /// firstHead..<firstHead + kvHeads, grouped) over positions first..<first + count of
    /// `layer` (`mi_attention_row`). scratch: count floats; out: heads · Q.
    func attend(_ q: UnsafePointer<Float>, heads: Int, kvHeads: Int, layer: Int, firstHead: Int, first: Int, count: Int,
                scale: Float, scratch: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, cold: Int32) {
        let Q = headDimension
        let at = offset(layer, firstHead)
        switch type {
        case .f16:
            mi_attention_row(q, Int32(heads), Int32(kvHeads), Int32(Q), f16(at), Int64(headStride), Int64(tileStride), Int64(chunkStride),
                             Int32(first), Int32(count), scale, scratch, out, cold)
        case .q8:
            mi_attention_row_q8(q, Int32(heads), Int32(kvHeads), Int32(Q), codes(at), scales(at), Int64(headStride), Int64(tileStride),
                                Int64(chunkStride), Int32(first), Int32(count), scale, scratch, out, cold)
        }
    }

    /// A new cache holding this one's first `positions` positions (for a sequence of `limit`).
    func copy(prefix positions: Int, limit: Int) -> KVCache {
        let c = KVCache(type: type, layers: layers, kvHeads: kvHeads, headDimension: headDimension, limit: limit,
                        reservesLimit: reservesLimit)
        guard positions > 0 else { return c }
        c.reserve(min(max(limit, positions), positions + max(16, positions / 4)))   // room to go on, as it grows
        c.copyChunks(positions, from: storage!, scaleStorage)
        return c
    }

    /// Copies the chunks holding the first `positions` positions (and their q8 scales): one
    /// contiguous run each, the same in every cache of these heads and type.
    private func copyChunks(_ positions: Int, from source: UnsafeMutableRawPointer, _ sourceScales: UnsafeMutablePointer<Float>?) {
        let n = elements(positions: KVCacheType.wholeChunks(positions))
        storage!.copyMemory(from: source, byteCount: n * elementBytes)
        if let sourceScales { scaleStorage!.update(from: sourceScales, count: n / 32) }
    }

    /// Makes room for `positions` in total.
    func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        let wholeLimit = KVCacheType.wholeChunks(max(limit, positions))
        if storage == nil, reservesLimit, let (codes, scales) = allocate(positions: wholeLimit, reserve: true) {
            (storage, scaleStorage, capacity, reserved) = (codes, scales, wholeLimit, true)
            return
        }
        // A quarter more than now (at least a chunk): finished sequences are kept for their
        // prefixes, so what a cache holds beyond its positions is memory the KV budget does not see.
        let newCapacity = KVCacheType.wholeChunks(min(max(positions, capacity + max(Self.chunk, capacity / 4)), wholeLimit))
        guard let (codes, scales) = allocate(positions: newCapacity, reserve: false) else {
            fatalError("out of memory: a KV cache of \(type.bytes(elements: elements(positions: newCapacity))) bytes")
        }
        let old = (storage, scaleStorage, capacity, reserved)
        (storage, scaleStorage, capacity, reserved) = (codes, scales, newCapacity, false)
        // Everything written so far (positions are written, never counted, here).
        if let oldStorage = old.0 {
            copyChunks(old.2, from: oldStorage, old.1)
            release(old.0, old.1, capacity: old.2, reserved: old.3)
        }
    }

    /// Storage for `positions` positions (whole chunks): codes, and q8 scales. reserve: address
    /// space made as it is written (nil where refused); else allocated now, on huge pages from 2 MiB.
    private func allocate(positions: Int, reserve: Bool) -> (UnsafeMutableRawPointer, UnsafeMutablePointer<Float>?)? {
        let n = elements(positions: positions)
        func make(_ bytes: Int) -> UnsafeMutableRawPointer? {
            reserve ? mi_reserve(bytes) : (bytes >= 2 << 20 ? mi_huge_alloc(bytes) : nil) ?? malloc(max(bytes, 1))
        }
        guard let codes = make(n * elementBytes) else { return nil }
        if type == .f16 { codes.bindMemory(to: UInt16.self, capacity: n) } else { codes.bindMemory(to: Int8.self, capacity: n) }
        guard type == .q8 else { return (codes, nil) }
        guard let scales = make(n / 32 * 4) else {
            release(codes, nil, capacity: positions, reserved: reserve)
            return nil
        }
        return (codes, scales.bindMemory(to: Float.self, capacity: n / 32))
    }

    private func release(_ codes: UnsafeMutableRawPointer?, _ scales: UnsafeMutablePointer<Float>?, capacity: Int, reserved: Bool) {
        let n = elements(positions: capacity)
        if reserved {
            mi_unreserve(codes, n * elementBytes)
            mi_unreserve(scales, n / 32 * 4)
        } else {
            free(codes)
            free(scales)
        }
    }

    /// Grows each cache once to the last of the positions the rows write into it (rows of one
    /// pass), before any row is written.
    static func reserve(_ caches: [KVCache], _ positions: [Int]) {
        var last: [ObjectIdentifier: (KVCache, Int)] = [:]
        for (c, p) in zip(caches, positions) { last[ObjectIdentifier(c)] = (c, max(last[ObjectIdentifier(c)]?.1 ?? 0, p)) }
        for (c, p) in last.values { c.reserve(p + 1) }
    }
}
