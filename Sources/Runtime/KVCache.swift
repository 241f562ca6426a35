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
}

/// One device's slice of one sequence's key/value cache: per layer, this device's KV heads'
/// keys and values (f16 or q8), head-major — layout (kvHeads, capacity, Q) per layer for keys
/// and the same for values — so attention reads each KV head's positions as one contiguous
/// stream (a position-major row interleaves the heads, and the head-by-head reads of it stride
/// through memory at a third of the rate: measured 7 vs 18 GB/s at batch 32). A q8 cache keeps
/// its scales, (layers, 2, kvHeads, capacity, Q/32) floats, after its codes. All layers live
/// in one allocation, on huge pages once it reaches 2 MiB. Written by position; how many
/// positions the sequence holds is its `MeshSequence`'s count, not the cache's. Grows by a
/// quarter up to the context limit.
final class KVCache: @unchecked Sendable {
    let type: KVCacheType
    let layers: Int
    let kvHeads: Int         // KV heads on this device
    let headDimension: Int   // Q
    let limit: Int           // context length
    private(set) var capacity = 0
    private var storage: UnsafeMutableRawPointer?   // f16 bits or q8 codes (layers, 2, kvHeads, capacity, Q); q8: then scales

    var kvDimension: Int { kvHeads * headDimension }

    init(type: KVCacheType, layers: Int, kvHeads: Int, headDimension: Int, limit: Int) {
        precondition(type.holds(headDimension: headDimension), "a \(type.rawValue) cache cannot hold heads of \(headDimension)")
        self.type = type
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.limit = limit
    }

    convenience init(type: KVCacheType, config: ModelConfig, kvHeads: Int, limit: Int) {
        self.init(type: type, layers: config.layers, kvHeads: kvHeads, headDimension: config.headDimension, limit: limit)
    }

    deinit { free(storage) }

    /// Elements between consecutive KV heads of one layer's keys (or values).
    var headStride: Int { capacity * headDimension }

    /// Where (layer, keys (0) or values (1), head, position) starts, in elements, in storage of
    /// `capacity` positions: layout (layers, 2, kvHeads, capacity, Q).
    private func offset(_ layer: Int, _ part: Int, _ head: Int, _ position: Int, capacity: Int) -> Int {
        (((layer * 2 + part) * kvHeads + head) * capacity + position) * headDimension
    }

    /// Elements (codes or f16 values) in storage of `capacity` positions.
    private func elements(capacity: Int) -> Int { layers * 2 * kvHeads * capacity * headDimension }

    private func f16(_ at: Int) -> UnsafeMutablePointer<UInt16> { storage!.assumingMemoryBound(to: UInt16.self) + at }
    private func codes(_ at: Int) -> UnsafeMutablePointer<Int8> { storage!.assumingMemoryBound(to: Int8.self) + at }
    /// q8: the scale of the 32 elements starting at element `at`.
    private func scales(_ at: Int) -> UnsafeMutablePointer<Float> {
        (storage! + elements(capacity: capacity)).assumingMemoryBound(to: Float.self) + at / 32
    }

    /// Stores `count` KV heads' keys and values (each `count`·Q floats, head after head) at
    /// `position` of `layer`, as heads `firstHead`..., rounded to the cache's type.
    func write(layer: Int, position: Int, firstHead: Int = 0, count: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        let Q = headDimension
        func store(_ x: UnsafePointer<Float>, _ at: Int) {
            switch type {
            case .f16: mi_f32_to_f16(x, f16(at), Int32(Q))
            case .q8: mi_f32_to_kv_q8(x, codes(at), scales(at), Int32(Q))
            }
        }
        for h in 0..<count {
            store(keys + h * Q, offset(layer, 0, firstHead + h, position, capacity: capacity))
            store(values + h * Q, offset(layer, 1, firstHead + h, position, capacity: capacity))
        }
    }

    /// Softmax attention of one query row (`heads` query heads over this cache's KV heads
    /// firstHead..<firstHead + kvHeads, grouped) over positions first..<first + count of
    /// `layer` (`mi_attention_row`). scratch: count · heads / kvHeads floats; out: heads · Q.
    func attend(_ q: UnsafePointer<Float>, heads: Int, kvHeads: Int, layer: Int, firstHead: Int, first: Int, count: Int,
                scale: Float, scratch: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, cold: Int32) {
        let Q = headDimension
        let k = offset(layer, 0, firstHead, first, capacity: capacity), v = offset(layer, 1, firstHead, first, capacity: capacity)
        switch type {
        case .f16:
            mi_attention_row(q, Int32(heads), Int32(kvHeads), Int32(Q), f16(k), f16(v), Int64(Q), Int64(headStride), Int32(count),
                             scale, scratch, out, cold)
        case .q8:
            mi_attention_row_q8(q, Int32(heads), Int32(kvHeads), Int32(Q), codes(k), codes(v), scales(k), scales(v), Int64(Q),
                                Int64(headStride), Int32(count), scale, scratch, out, cold)
        }
    }

    /// A new cache holding this one's first `positions` positions (for a sequence of `limit`).
    func copy(prefix positions: Int, limit: Int) -> KVCache {
        let c = KVCache(type: type, layers: layers, kvHeads: kvHeads, headDimension: headDimension, limit: limit)
        guard positions > 0 else { return c }
        c.reserve(min(max(limit, positions), positions + max(16, positions / 4)))   // room to go on, as it grows
        c.copyPositions(positions, from: storage!, capacity: capacity)
        return c
    }

    /// Copies the first `positions` positions of every layer, part and head (and their q8
    /// scales) from `source`, storage of the same heads and type laid out for `sourceCapacity`
    /// positions.
    private func copyPositions(_ positions: Int, from source: UnsafeMutableRawPointer, capacity sourceCapacity: Int) {
        let elementBytes = type == .f16 ? 2 : 1
        let sourceScales = (source + elements(capacity: sourceCapacity) * elementBytes).assumingMemoryBound(to: Float.self)
        for l in 0..<layers {
            for part in 0..<2 {
                for h in 0..<kvHeads {
                    let to = offset(l, part, h, 0, capacity: capacity), from = offset(l, part, h, 0, capacity: sourceCapacity)
                    (storage! + to * elementBytes).copyMemory(from: source + from * elementBytes, byteCount: positions * headDimension * elementBytes)
                    if type == .q8 { scales(to).update(from: sourceScales + from / 32, count: positions * headDimension / 32) }
                }
            }
        }
    }

    /// Makes room for `positions` in total.
    func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        // A quarter more than now (at least 16 positions): finished sequences are kept for
        // their prefixes, so what a cache holds beyond its positions is memory the KV budget
        // does not see; copying on growth costs little beside a step (a 32-sequence decode
        // from 128 positions spends ~1.2 ms a step on copies and fresh pages, ~3%).
        let newCapacity = min(max(positions, capacity + max(16, capacity / 4)), max(limit, positions))
        let (oldStorage, oldCapacity) = (storage, capacity)
        let bytes = type.bytes(elements: elements(capacity: newCapacity))
        let raw = (bytes >= 2 << 20 ? mi_huge_alloc(bytes) : nil) ?? malloc(max(bytes, 1))
        guard let raw else { fatalError("out of memory: a KV cache of \(bytes) bytes") }
        let n = elements(capacity: newCapacity)
        switch type {
        case .f16: raw.bindMemory(to: UInt16.self, capacity: n)
        case .q8:
            raw.bindMemory(to: Int8.self, capacity: n)
            (raw + n).bindMemory(to: Float.self, capacity: n / 32)
        }
        storage = raw
        capacity = newCapacity
        // Everything written so far (positions are written, never counted, here).
        if let oldStorage {
            copyPositions(oldCapacity, from: oldStorage, capacity: oldCapacity)
            free(oldStorage)
        }
    }

    /// Grows each cache once to the last of the positions the rows write into it (rows of one
    /// pass), before any row is written.
    static func reserve(_ caches: [KVCache], _ positions: [Int]) {
        var last: [ObjectIdentifier: (KVCache, Int)] = [:]
        for (c, p) in zip(caches, positions) { last[ObjectIdentifier(c)] = (c, max(last[ObjectIdentifier(c)]?.1 ?? 0, p)) }
        for (c, p) in last.values { c.reserve(p + 1) }
    }

    var byteCount: Int { type.bytes(elements: elements(capacity: capacity)) }
}
