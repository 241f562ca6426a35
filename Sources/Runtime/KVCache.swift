import CKernels
import Foundation
import Transformer

/// Bytes per cached key or value element: the cache holds f16 (llama.cpp's default cache type).
public let kvCacheElementBytes = MemoryLayout<UInt16>.size

/// One device's slice of one sequence's key/value cache: per layer, this device's KV heads'
/// keys and values in f16 (as llama.cpp's default cache: half the bytes attention reads), head-
/// major — layout (kvHeads, capacity, Q) per layer for keys and the same for values — so attention reads each KV head's positions as one contiguous stream (a
/// position-major row interleaves the heads, and the head-by-head reads of it stride through
/// memory at a third of the rate: measured 7 vs 18 GB/s at batch 32). All layers live in one
/// allocation, on huge pages once it reaches 2 MiB. Written by position; how many positions the
/// sequence holds is its `MeshSequence`'s count, not the cache's. Grows by a quarter up to the
/// context limit.
final class KVCache: @unchecked Sendable {
    let layers: Int
    let kvHeads: Int         // KV heads on this device
    let headDimension: Int   // Q
    let limit: Int           // context length
    private(set) var capacity = 0
    private var storage: UnsafeMutablePointer<UInt16>?   // f16 bits (layers, 2, kvHeads, capacity, Q)

    var kvDimension: Int { kvHeads * headDimension }

    init(layers: Int, kvHeads: Int, headDimension: Int, limit: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.limit = limit
    }

    convenience init(config: ModelConfig, kvHeads: Int, limit: Int) {
        self.init(layers: config.layers, kvHeads: kvHeads, headDimension: config.headDimension, limit: limit)
    }

    deinit { free(storage) }

    /// Elements between consecutive KV heads of one layer's keys (or values).
    var headStride: Int { capacity * headDimension }

    /// Where (layer, keys (0) or values (1), head, position) starts in storage of `capacity`
    /// positions: layout (layers, 2, kvHeads, capacity, Q).
    private func offset(_ layer: Int, _ part: Int, _ head: Int, _ position: Int, capacity: Int) -> Int {
        (((layer * 2 + part) * kvHeads + head) * capacity + position) * headDimension
    }

    /// Head `head`'s key (Q f16 values) at `position` in `layer`; the next position follows it.
    func key(layer: Int, head: Int, position: Int) -> UnsafeMutablePointer<UInt16> {
        storage! + offset(layer, 0, head, position, capacity: capacity)
    }

    /// Head `head`'s value (Q f16 values) at `position` in `layer`.
    func value(layer: Int, head: Int, position: Int) -> UnsafeMutablePointer<UInt16> {
        storage! + offset(layer, 1, head, position, capacity: capacity)
    }

    /// Stores `count` KV heads' keys and values (each `count`·Q floats, head after head) at
    /// `position` of `layer`, as heads `firstHead`..., rounded to f16.
    func write(layer: Int, position: Int, firstHead: Int = 0, count: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        let Q = headDimension
        for h in 0..<count {
            mi_f32_to_f16(keys + h * Q, key(layer: layer, head: firstHead + h, position: position), Int32(Q))
            mi_f32_to_f16(values + h * Q, value(layer: layer, head: firstHead + h, position: position), Int32(Q))
        }
    }

    /// A new cache holding this one's first `positions` positions (for a sequence of `limit`).
    func copy(prefix positions: Int, limit: Int) -> KVCache {
        let c = KVCache(layers: layers, kvHeads: kvHeads, headDimension: headDimension, limit: limit)
        guard positions > 0 else { return c }
        c.reserve(min(max(limit, positions), positions + max(16, positions / 4)))   // room to go on, as it grows
        c.copyPositions(positions, from: storage!, capacity: capacity)
        return c
    }

    /// Copies the first `positions` positions of every layer, part and head from `source`, storage
    /// of the same heads laid out for `sourceCapacity` positions.
    private func copyPositions(_ positions: Int, from source: UnsafePointer<UInt16>, capacity sourceCapacity: Int) {
        for l in 0..<layers {
            for part in 0..<2 {
                for h in 0..<kvHeads {
                    (storage! + offset(l, part, h, 0, capacity: capacity))
                        .update(from: source + offset(l, part, h, 0, capacity: sourceCapacity), count: positions * headDimension)
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
        let bytes = layers * 2 * kvHeads * newCapacity * headDimension * MemoryLayout<UInt16>.size
        let raw = (bytes >= 2 << 20 ? mi_huge_alloc(bytes) : nil) ?? malloc(max(bytes, 1))
        guard let raw else { fatalError("out of memory: a KV cache of \(bytes) bytes") }
        storage = raw.bindMemory(to: UInt16.self, capacity: bytes / MemoryLayout<UInt16>.size)
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

    var byteCount: Int { 2 * layers * capacity * kvDimension * kvCacheElementBytes }
}
