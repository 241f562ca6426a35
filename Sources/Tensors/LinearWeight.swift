import CKernels
import Foundation
import GGUF

/// How a model's matrices are held in memory.
public enum WeightFormat: String, Sendable, CaseIterable, Codable {
    /// Execute the file's own block formats in place (Q4_1, Q5_0, Q8_0, Q4_K, Q6_K); other types
    /// fall back to f32.
    case native
    /// 8-bit weights quantized on load per output channel (Pope et al. §3.6), refined to one
    /// scale per channel and group of 32 inputs: each row's values become GGML Q8_0 blocks
    /// (f16 d = max|x|/127, 32 int8 codes, value = d·q; 34 bytes per 32 weights), stored and
    /// multiplied as a file's Q8_0 blocks are (`StorageKind.q8_0`). A single scale per row adds
    /// more error than llama.cpp's own formats differ by, since the file's 4-bit blocks vary
    /// along a row. Activations are quantized to int8 in blocks of 32 so the matmul runs on VNNI.
    case int8
    /// Dequantized f32.
    case f32
}

public enum WeightError: Error, CustomStringConvertible, Equatable {
    case emptyWeight
    /// Weight shards that cannot be joined (different formats or shapes where they must agree).
    case incompatibleTiles(String)

    public var description: String {
        switch self {
        case .emptyWeight: "a weight with no rows"
        case let .incompatibleTiles(s): "weight shards cannot be joined: \(s)"
        }
    }
}

/// The storage formats a matmul runs from. Each stores the weight as panels of `panelRows`
/// output channels; a panel is a run of units of `unitInputs` inputs, `unitBytes` bytes each, so
/// one panel is one contiguous stream (see CKernels.h for the packed layouts). A kind says how
/// the bytes are laid out, not where they came from: `.q8_0` holds a file's Q8_0 blocks
/// (`native`) or blocks quantized on load (`int8`); `LinearWeight.format` says which.
public enum StorageKind: String, Sendable, Codable {
    case f32        // packed panels of 16 channels, one input per unit
    case q4_1       // the file's Q4_1 blocks, repacked 16 rows to a panel (the same bits)
    case q8_0       // Q8_0 blocks (the file's, or int8's quantized on load), repacked 16 rows to a panel
    case q5_0       // the file's Q5_0 blocks, repacked 16 rows to a panel
    case q4_K       // the file's Q4_K super-blocks (256 inputs), repacked 16 rows to a panel
    case q6_K       // the file's Q6_K super-blocks (256 inputs), repacked 16 rows to a panel

    public var panelRows: Int { 16 }
    public var unitInputs: Int {
        switch self {
        case .f32: 1
        case .q4_K, .q6_K: 256
        default: 32
        }
    }
    public var unitBytes: Int {
        switch self {
        case .f32: 64
        case .q4_1, .q8_0, .q5_0: 16 * fileBlockBytes   // 16 rows' blocks, repacked (CKernels.h)
        case .q4_K, .q6_K: Int(mi_kquant_unit_bytes(kquantType!))   // 16 rows' super-blocks, repacked
        }
    }
    /// Bytes of one block in the file's format (in-place kinds; the unit of a row as read).
    var fileBlockBytes: Int {
        switch self {
        case .f32: 4
        case .q4_1: GGMLType.q4_1.blockBytes
        case .q8_0: GGMLType.q8_0.blockBytes
        case .q5_0: GGMLType.q5_0.blockBytes
        case .q4_K: GGMLType.q4_K.blockBytes
        case .q6_K: GGMLType.q6_K.blockBytes
        }
    }
    /// Repacks 16 rows of `blocks` of the file's blocks (row stride `rowBytes`) into a panel.
    func pack(_ rows: UnsafeRawPointer, rowBytes: Int, blocks: Int, into panel: UnsafeMutableRawPointer) {
        let from = rows.assumingMemoryBound(to: UInt8.self), to = panel.assumingMemoryBound(to: UInt8.self)
        if let type = kquantType {
            mi_pack_kquant(type, from, Int64(rowBytes), Int32(blocks), to)
        } else {
            mi_pack_blocks32(blocks32Type!, from, Int64(rowBytes), Int32(blocks), to)
        }
    }
    /// The K-quant format's id in CKernels (nil: not one of them).
    var kquantType: Int32? {
        switch self {
        case .q4_K: Int32(MI_Q4_K)
        case .q6_K: Int32(MI_Q6_K)
        default: nil
        }
    }
    /// The repacked 32-element format's id in CKernels (nil: not one of them).
    var blocks32Type: Int32? {
        switch self {
        case .q4_1: Int32(MI_Q4_1)
        case .q5_0: Int32(MI_Q5_0)
        case .q8_0: Int32(MI_Q8_0)
        default: nil
        }
    }
    /// The in-place storage of rows whose blocks come in `types`: one type with a kernel, or
    /// Q5_0 beside Q8_0 (Gemma's q|k|v where v is Q8_0), whose Q5_0 blocks are written as Q8_0
    /// blocks of the same values (q − 16 fits int8, the scale is kept), so the product is exactly
    /// the Q5_0 kernel's. Nil: no in-place kernel.
    static func inPlace(_ types: Set<GGMLType>) -> StorageKind? {
        if types == [.q5_0, .q8_0] { return .q8_0 }
        guard types.count == 1 else { return nil }
        switch types.first! {
        case .q4_1: return .q4_1
        case .q8_0: return .q8_0
        case .q5_0: return .q5_0
        case .q4_K: return .q4_K
        case .q6_K: return .q6_K
        default: return nil
        }
    }
}

/// A run of logical rows or columns and where it sits in the stored window.
public struct Segment: Sendable, Equatable, Codable {
    public var logical: Int
    public var window: Int
    public var count: Int
}

/// Which elements of the source tensors make up one weight matrix: output rows (ranges of rows
/// of named tensors, or zero rows) by input-column pieces (column ranges of those rows, or
/// zero columns). A device's shard of a layout is one of these (DESIGN.md: shard on load).
public struct ShardSpec: Sendable {
    public enum Rows: Sendable {
        case tensor(String, Range<Int>)
        case zeros(Int)
        var count: Int { switch self { case let .tensor(_, r): r.count; case let .zeros(n): n } }
    }
    public enum Columns: Sendable, Equatable {
        case source(Range<Int>)
        case zeros(Int)
        var count: Int { switch self { case let .source(r): r.count; case let .zeros(n): n } }
    }
    public var rows: [Rows]
    public var columns: [Columns]
    /// Every tensor of the whole matrix this is a shard of. The stored format is chosen from all
    /// of them, so every device stores its shard of one matrix alike (a shard of only padding
    /// rows, or only the Q5_0 rows of a q|k|v whose v is Q8_0, is stored as the others are).
    public var tensors: [String]
    public init(rows: [Rows], columns: [Columns], of tensors: [String] = []) {
        self.rows = rows
        self.columns = columns
        let named = rows.compactMap { if case let .tensor(n, _) = $0 { n } else { nil } }
        self.tensors = tensors + named.filter { !tensors.contains($0) }
    }
    public var outputs: Int { rows.reduce(0) { $0 + $1.count } }
    public var inputs: Int { columns.reduce(0) { $0 + $1.count } }
    /// The tensors' kinds without layer number and suffix ("blk.3.ffn_gate.weight" → "ffn_gate"),
    /// in order, joined by "|".
    public var label: String {
        var kinds: [String] = []
        for t in tensors {
            var name = Substring(t)
            if name.hasPrefix("blk."), let dot = name.dropFirst(4).firstIndex(of: ".") { name = name[name.index(after: dot)...] }
            if name.hasSuffix(".weight") { name = name.dropLast(7) }
            if !kinds.contains(String(name)) { kinds.append(String(name)) }
        }
        return kinds.joined(separator: "|")
    }

    /// The stored columns of a shard in a format of `unit`-input units: each piece becomes the
    /// whole units covering it (nil: zero weights), in order; the segments say where its logical
    /// columns land (zero pieces have none: their weights are zero, so their inputs do not matter).
    public static func window(_ columns: [Columns], unit u: Int) -> (covers: [(Range<Int>?, Int)], segments: [Segment], width: Int) {
        var covers: [(Range<Int>?, Int)] = []
        var segments: [Segment] = []
        var logical = 0, window = 0
        for piece in columns {
            switch piece {
            case let .source(r):
                let cover = (r.lowerBound / u * u)..<((r.upperBound + u - 1) / u * u)
                covers.append((cover, cover.count))
                let s = Segment(logical: logical, window: window + r.lowerBound - cover.lowerBound, count: r.count)
                // A segment that continues the previous one joins it (the common whole-row case).
                if let last = segments.last, last.logical + last.count == s.logical, last.window + last.count == s.window {
                    segments[segments.count - 1].count += s.count
                } else {
                    segments.append(s)
                }
                window += cover.count
            case let .zeros(n):
                let width = (n + u - 1) / u * u
                covers.append((nil, width))
                window += width
            }
            logical += piece.count
        }
        return (covers, segments, window)
    }
}

/// y = x · Wᵀ for W of shape (N outputs, K inputs), in one of several storage formats.
///
/// The stored matrix is a *window* of `windowOutputs` × `windowInputs` elements whose inputs are
/// whole units of its format: a shard whose columns begin or end inside a 32-input block keeps
/// the whole block (the neighbouring weights), and the input columns it does not own are fed
/// zeros (`inputSegments` says where each logical column sits), so no block is re-quantized.
/// Zero columns of a shard (padding) are stored as zero weights, whole units wide.
public final class LinearWeight: @unchecked Sendable {
    public let outputs: Int  // N
    public let inputs: Int   // K
    public let kind: StorageKind
    /// The format this weight was loaded in, as reported (`--weights`; native falls back to f32
    /// for types without an in-place kernel). Not derived from `kind`: int8 is stored as Q8_0.
    public let format: WeightFormat
    let windowOutputs: Int   // a multiple of kind.panelRows
    let windowInputs: Int    // a multiple of kind.unitInputs
    /// Where logical input columns sit in the window (columns not listed have zero weights).
    let inputSegments: [Segment]
    /// Where logical output rows sit in the window (rows not listed are zero).
    let outputSegments: [Segment]
    let storage: UnsafeMutableRawPointer   // windowOutputs / panelRows panels of panelBytes
    /// The arena `storage` was carved from (kept alive by this weight), nil: allocated alone.
    private let arena: WeightArena?
    /// Bytes read from memory by one pass over the weight (what this device stores for it).
    public let byteCount: Int
    /// What the matrix is, from the tensors it holds ("attn_q|attn_k|attn_v", "ffn_down",
    /// "output"): names its matmuls in `bench --profile`.
    public internal(set) var label = ""

    /// The matrix the kernels run over: (outputs, inputs) padded to whole panels and units.
    public var storedShape: (outputs: Int, inputs: Int) { (windowOutputs, windowInputs) }

    var panelBytes: Int { windowInputs / kind.unitInputs * kind.unitBytes }
    var inputsAreWindow: Bool { inputSegments == [Segment(logical: 0, window: 0, count: inputs)] && windowInputs == inputs }
    var outputsAreWindow: Bool { outputSegments == [Segment(logical: 0, window: 0, count: outputs)] }

    private init(kind: StorageKind, format: WeightFormat, outputs: Int, inputs: Int, windowOutputs: Int, windowInputs: Int,
                 inputSegments: [Segment], outputSegments: [Segment], arena: WeightArena? = nil) {
        precondition(windowOutputs % kind.panelRows == 0 && windowInputs % kind.unitInputs == 0)
        self.kind = kind
        self.format = format
        self.outputs = outputs
        self.inputs = inputs
        self.windowOutputs = windowOutputs
        self.windowInputs = windowInputs
        self.inputSegments = inputSegments
        self.outputSegments = outputSegments
        byteCount = windowOutputs / kind.panelRows * (windowInputs / kind.unitInputs) * kind.unitBytes
        if let piece = arena?.allocate(max(1, byteCount)) {
            storage = piece
            self.arena = arena
        } else {
            storage = allocateWeights(max(1, byteCount))
            self.arena = nil
        }
    }

    deinit { if arena == nil { storage.deallocate() } }

    /// A weight from f32 values (row-major N x K): tests, calibration and random-weight models.
    /// `native` has no file blocks to keep here and means f32.
    public convenience init(values: [Float], outputs N: Int, inputs K: Int, format: WeightFormat, arena: WeightArena? = nil) {
        precondition(values.count == N * K)
        self.init(rows: N, windowInputs: K, inputSegments: [Segment(logical: 0, window: 0, count: K)], inputs: K,
                  quantized: format == .int8, arena: arena) { rows, staging, ld in
            values.withUnsafeBufferPointer { v in
                for r in rows { (staging + (r - rows.lowerBound) * ld).update(from: v.baseAddress! + r * K, count: K) }
            }
        }
    }

    /// Packs an f32 window of `rows` × `windowInputs` as f32 panels, or (`quantized`, int8) as
    /// Q8_0 blocks quantized from it, padding inputs to the kind's unit and rows to a panel (zero
    /// weights: a zero block's scale is 0). `fill(rows, buffer, ld)` writes the given rows into a
    /// zeroed buffer; it is called for a few panels at a time, so no f32 copy of a large matrix
    /// is ever whole.
    private convenience init(rows: Int, windowInputs: Int, inputSegments: [Segment], inputs: Int, quantized: Bool,
                             arena: WeightArena? = nil, fill: (Range<Int>, UnsafeMutablePointer<Float>, Int) throws -> Void) rethrows {
        let kind: StorageKind = quantized ? .q8_0 : .f32
        let paddedInputs = (windowInputs + kind.unitInputs - 1) / kind.unitInputs * kind.unitInputs
        let paddedRows = max(16, (rows + 15) / 16 * 16)
        self.init(kind: kind, format: quantized ? .int8 : .f32, outputs: rows, inputs: inputs, windowOutputs: paddedRows,
                  windowInputs: paddedInputs, inputSegments: inputSegments,
                  outputSegments: [Segment(logical: 0, window: 0, count: rows)], arena: arena)
        let chunk = max(16, (1 << 20) / max(1, paddedInputs) / 16 * 16)   // rows per staging chunk (~4 MiB)
        let staging = UnsafeMutablePointer<Float>.allocate(capacity: chunk * paddedInputs)   // (chunk, paddedInputs)
        defer { staging.deallocate() }
        // int8: one panel's rows as Q8_0 blocks, the file's layout, before the repacking.
        let blocksPerRow = paddedInputs / 32, rowBytes = blocksPerRow * GGMLType.q8_0.blockBytes
        let blocks = quantized ? UnsafeMutablePointer<UInt8>.allocate(capacity: 16 * rowBytes) : nil
        defer { blocks?.deallocate() }
        for first in stride(from: 0, to: paddedRows, by: chunk) {
            let count = min(chunk, paddedRows - first)
            staging.initialize(repeating: 0, count: count * paddedInputs)
            if first < rows { try fill(first..<min(rows, first + count), staging, paddedInputs) }
            if let blocks {
                for p in 0..<(count / 16) {
                    mi_quantize_q8_0(staging + p * 16 * paddedInputs, Int64(paddedInputs), 16, Int32(paddedInputs), blocks, Int64(rowBytes))
                    mi_pack_blocks32(Int32(MI_Q8_0), blocks, Int64(rowBytes), Int32(blocksPerRow),
                                     (storage + (first / 16 + p) * panelBytes).assumingMemoryBound(to: UInt8.self))
                }
            } else {
                mi_pack_f32(staging, Int64(paddedInputs), Int32(count), Int32(paddedInputs),
                            (storage + first / 16 * panelBytes).assumingMemoryBound(to: Float.self))
            }
        }
    }

    /// Loads the elements `spec` names from `source` in `format`: a file's Q4_1, Q5_0, Q8_0, Q4_K or
    /// Q6_K blocks are copied as they are (when every row of the spec comes in the same such
    /// type, or Q5_0 beside Q8_0: see `StorageKind.inPlace`), int8 is quantized on load to Q8_0
    /// blocks (from the f32 values of whatever the file holds, so every device's shard of a
    /// matrix is Q8_0, whatever rows it holds), everything else is dequantized to f32. With an
    /// `arena`, the stored bytes are carved from it (a device's weights side by side on huge pages).
    public convenience init(source: any TensorSource, spec: ShardSpec, format: WeightFormat, arena: WeightArena? = nil) throws {
        guard spec.outputs > 0 else { throw WeightError.emptyWeight }
        let names = Set(spec.tensors)
        var blocks: [String: BlockRows] = [:]
        if format == .native {
            for n in names { if let b = try source.blockRows(n) { blocks[n] = b } }
        }
        let blockKind = format == .native && blocks.count == names.count ? StorageKind.inPlace(Set(blocks.values.map(\.type))) : nil
        let inPlace = blockKind != nil
        let kind: StorageKind = blockKind ?? (format == .int8 ? .q8_0 : .f32)

        let (covers, merged, window) = ShardSpec.window(spec.columns, unit: kind.unitInputs)
        let u = kind.unitInputs
        let N = spec.outputs, K = spec.inputs

        if inPlace {
            let paddedRows = (N + kind.panelRows - 1) / kind.panelRows * kind.panelRows
            self.init(kind: kind, format: .native, outputs: N, inputs: K, windowOutputs: paddedRows, windowInputs: window,
                      inputSegments: merged, outputSegments: [Segment(logical: 0, window: 0, count: N)], arena: arena)
            label = spec.label
            // Each logical row's window in the file's block format (zero rows and pieces: zero
            // blocks), written by `writeRow`; repacked kinds stage a panel's rows, then pack.
            let fileUnit = kind.fileBlockBytes, fileRowBytes = window / u * fileUnit
            var sources: [(BlockRows, Int)?] = []
            for rows in spec.rows {
                switch rows {
                case let .zeros(n): sources += Array(repeating: nil, count: n)
                case let .tensor(name, range): sources += range.map { (blocks[name]!, $0) }
                }
            }
            func writeRow(_ i: Int, _ to: UnsafeMutableRawPointer) {
                guard i < N, let (b, r) = sources[i] else {
                    to.initializeMemory(as: UInt8.self, repeating: 0, count: fileRowBytes)
                    return
                }
                let widen = b.type == .q5_0 && kind == .q8_0
                var offset = 0
                for (cover, width) in covers {
                    let bytes = width / u * fileUnit
                    if let cover, widen {
                        widenQ5_0(b.row(r) + cover.lowerBound / u * GGMLType.q5_0.blockBytes, blocks: width / u, into: to + offset)
                    } else if let cover {
                        (to + offset).copyMemory(from: b.row(r) + cover.lowerBound / u * fileUnit, byteCount: bytes)
                    } else {
                        (to + offset).initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
                    }
                    offset += bytes
                }
            }
            let staging = UnsafeMutableRawPointer.allocate(byteCount: kind.panelRows * fileRowBytes, alignment: 64)
            defer { staging.deallocate() }
            for p in 0..<(paddedRows / kind.panelRows) {
                for r in 0..<kind.panelRows { writeRow(p * kind.panelRows + r, staging + r * fileRowBytes) }
                kind.pack(staging, rowBytes: fileRowBytes, blocks: window / u, into: storage + p * panelBytes)
            }
            return
        }

        // Rows are read a few panels at a time and their covered columns copied into the window:
        // a vocabulary-sized matrix never exists whole in f32.
        for case let .tensor(name, _) in spec.rows {
            let width = try source.shape(name).columns
            for case let (c?, _) in covers where c.upperBound > width {
                throw WeightError.incompatibleTiles("columns \(c) of \(name), which has \(width)")
            }
        }
        try self.init(rows: N, windowInputs: window, inputSegments: merged, inputs: K, quantized: format == .int8,
                      arena: arena) { wanted, staging, ld in
            var at = 0   // the spec's first row of the current piece
            for rows in spec.rows {
                defer { at += rows.count }
                guard case let .tensor(name, range) = rows else { continue }
                let (lo, hi) = (max(wanted.lowerBound, at), min(wanted.upperBound, at + rows.count))
                guard lo < hi else { continue }
                let part = lo..<hi   // the rows of this piece wanted now (spec row numbers)
                let width = try source.shape(name).columns
                let buffer = UnsafeMutablePointer<Float>.allocate(capacity: part.count * width)   // (part, width)
                defer { buffer.deallocate() }
                try source.readRows(name, (range.lowerBound + part.lowerBound - at)..<(range.lowerBound + part.upperBound - at), into: buffer)
                for r in 0..<part.count {
                    var offset = 0
                    let row = staging + (part.lowerBound + r - wanted.lowerBound) * ld
                    for (c, w) in covers {
                        if let c { (row + offset).update(from: buffer + r * width + c.lowerBound, count: c.count) }
                        offset += w
                    }
                }
            }
        }
        label = spec.label
    }

    // MARK: joining shards (weight-gathered layouts, Pope et al. §3.2.3)

    /// Bytes read and written by the copies that build a gathered weight, tallied at each copy
    /// (`bench --profile`'s weight_gather class): a copy of n bytes reads n and writes n.
    public final class CopyTally {
        public private(set) var bytes = 0
        public init() {}
        func copied(_ n: Int) { bytes += 2 * n }
    }

    /// This weight's stored bytes, as a collective carries them (4-byte words, zero-padded).
    public func wireWords(tally: CopyTally? = nil) -> [Float] {
        tally?.copied(byteCount)
        return [Float](unsafeUninitializedCapacity: (byteCount + 3) / 4) { buffer, count in
            let raw = UnsafeMutableRawPointer(buffer.baseAddress!)
            raw.copyMemory(from: storage, byteCount: byteCount)
            raw.advanced(by: byteCount).initializeMemory(as: UInt8.self, repeating: 0, count: (byteCount + 3) / 4 * 4 - byteCount)
            count = (byteCount + 3) / 4
        }
    }

    /// A weight of this one's stored shape and format holding another member's stored bytes,
    /// whose logical inputs sit at `inputSegments` of the window (the member's own: its zero
    /// columns, padding head slots, may sit elsewhere than this shard's).
    public func sameShape(wireWords words: UnsafeBufferPointer<Float>, inputSegments: [Segment], tally: CopyTally? = nil) -> LinearWeight {
        precondition(words.count * 4 >= byteCount)
        let w = LinearWeight(kind: kind, format: format, outputs: outputs, inputs: inputs, windowOutputs: windowOutputs,
                             windowInputs: windowInputs, inputSegments: inputSegments, outputSegments: outputSegments)
        w.storage.copyMemory(from: UnsafeRawPointer(words.baseAddress!), byteCount: byteCount)
        tally?.copied(byteCount)
        w.label = label
        return w
    }

    /// The matrix whose tile (i, j) is `tiles[i][j]`: tiles of a row share their output rows,
    /// tiles of a column their input columns. Stored bytes are copied panel by panel, never
    /// converted (a gathered int8 or Q4_1 weight is bitwise its members' shards). Tiles must
    /// agree in format as well as kind (a file's Q8_0 and int8's are both `.q8_0`).
    public static func joining(_ tiles: [[LinearWeight]], tally: CopyTally? = nil) throws -> LinearWeight {
        guard let first = tiles.first?.first else { throw WeightError.emptyWeight }
        let kind = first.kind, format = first.format
        for (i, row) in tiles.enumerated() {
            guard row.count == tiles[0].count else { throw WeightError.incompatibleTiles("ragged grid") }
            for (j, t) in row.enumerated() {
                guard t.kind == kind, t.format == format, t.windowOutputs == row[0].windowOutputs, t.outputs == row[0].outputs,
                      t.outputSegments == row[0].outputSegments, t.windowInputs == tiles[0][j].windowInputs,
                      t.inputs == tiles[0][j].inputs, t.inputSegments == tiles[0][j].inputSegments
                else { throw WeightError.incompatibleTiles("tile (\(i), \(j)) differs in format or shape from its row or column") }
            }
        }
        func join(_ parts: [LinearWeight], _ segments: (LinearWeight) -> [Segment], _ logical: (LinearWeight) -> Int,
                  _ window: (LinearWeight) -> Int) -> [Segment] {
            var out: [Segment] = [], l = 0, w = 0
            for p in parts {
                out += segments(p).map { Segment(logical: $0.logical + l, window: $0.window + w, count: $0.count) }
                l += logical(p)
                w += window(p)
            }
            return out
        }
        let column = tiles.map { $0[0] }, row = tiles[0]
        let joined = LinearWeight(
            kind: kind, format: format, outputs: column.reduce(0) { $0 + $1.outputs }, inputs: row.reduce(0) { $0 + $1.inputs },
            windowOutputs: column.reduce(0) { $0 + $1.windowOutputs }, windowInputs: row.reduce(0) { $0 + $1.windowInputs },
            inputSegments: join(row, \.inputSegments, \.inputs, \.windowInputs),
            outputSegments: join(column, \.outputSegments, \.outputs, \.windowOutputs))
        joined.label = first.label
        var at = joined.storage
        for tileRow in tiles {
            for p in 0..<(tileRow[0].windowOutputs / kind.panelRows) {
                for t in tileRow {
                    at.copyMemory(from: t.storage + p * t.panelBytes, byteCount: t.panelBytes)
                    tally?.copied(t.panelBytes)
                    at += t.panelBytes
                }
            }
        }
        return joined
    }

    // MARK: the matmul

    /// y (M x N) = x (M x K) · Wᵀ. With a `profile`, the activations' quantization is timed
    /// apart from the matmul (class "quantize_activations").
    public func apply(_ x: Matrix, threads: WorkSplitter, profile: OpProfile? = nil) -> Matrix {
        precondition(x.columns == inputs, "linear: input has \(x.columns) columns, weight expects \(inputs)")
        let M = x.rows, K = windowInputs, N = windowOutputs
        // Inputs spread over the window, zeros where no logical column sits.
        let xw: Matrix
        if inputsAreWindow {
            xw = x
        } else {
            xw = Matrix(rows: M, columns: K)
            for r in 0..<M {
                for s in inputSegments { (xw.row(r) + s.window).update(from: x.row(r) + s.logical, count: s.count) }
            }
        }
        // Every kernel stores (does not accumulate into) each output it computes.
        let y = Matrix(uninitializedRows: M, columns: N)
        // Reads M·K floats, writes M·K codes and a few parameters per block.
        func quantizing(_ body: () -> Void) {
            if let profile { profile.measure("quantize_activations", bytes: Double(M * K * 5), body) } else { body() }
        }
        if M > 0 {
            // Handing parts to the pool's spinning workers costs about a microsecond; below this
            // size a matmul gains less than that from a second core.
            let threads = M * N * K >= 100_000 ? threads : WorkSplitter(threads: 1)
            switch kind {
            case .f32:
                let w = storage.assumingMemoryBound(to: Float.self)
                threads.parallelFor(N, granule: 32) { r in
                    mi_gemm_f32(xw.data, Int64(K), Int32(M), Int32(K), w, Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(N))
                }
            case .q4_1, .q8_0, .q5_0:
                let q = UnsafeMutablePointer<Int8>.allocate(capacity: M * K)
                let d = UnsafeMutablePointer<Float>.allocate(capacity: M * K / 32)
                let s = UnsafeMutablePointer<Float>.allocate(capacity: M * K / 32)
                let start = UnsafeMutablePointer<Int32>.allocate(capacity: M * K / 32)
                defer { q.deallocate(); d.deallocate(); s.deallocate(); start.deallocate() }
                let w = storage.assumingMemoryBound(to: UInt8.self), type = kind.blocks32Type!
                quantizing {
                    threads.parallelRows(M, columns: K) { r in
                        let m = r.lowerBound, b = m * K / 32
                        mi_quantize_q8_blocks(type, xw.row(m), Int64(K), Int32(r.count), Int32(K), q + m * K, d + b, s + b, start + b)
                    }
                }
                threads.parallelFor(N, granule: 32) { r in
                    mi_gemm_blocks32(type, q, d, s, start, Int32(M), Int32(K), w, Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(N))
                }
            case .q4_K, .q6_K:
                let q = UnsafeMutablePointer<Int8>.allocate(capacity: M * K)
                let d = UnsafeMutablePointer<Float>.allocate(capacity: M * K / 256)
                let sums = UnsafeMutablePointer<Int32>.allocate(capacity: M * K / 16)
                defer { q.deallocate(); d.deallocate(); sums.deallocate() }
                quantizing {
                    threads.parallelRows(M, columns: K) { r in
                        let m = r.lowerBound
                        mi_quantize_q8_K(xw.row(m), Int64(K), Int32(r.count), Int32(K), q + m * K, d + m * K / 256, sums + m * K / 16)
                    }
                }
                let w = storage.assumingMemoryBound(to: UInt8.self), type = kind.kquantType!
                threads.parallelFor(N, granule: 32) { r in
                    mi_gemm_kquant(type, q, d, sums, Int32(M), Int32(K), w, Int32(r.lowerBound), Int32(r.upperBound), y.data, Int64(N))
                }
            }
        }
        if outputsAreWindow { return N == outputs ? y : y.columns(0, outputs) }
        let out = Matrix(rows: M, columns: outputs)
        for r in 0..<M {
            for s in outputSegments { (out.row(r) + s.logical).update(from: y.row(r) + s.window, count: s.count) }
        }
        return out
    }
}

/// Writes `blocks` Q5_0 blocks (22 bytes: f16 d, 32 fifth bits, 16 bytes of nibbles) as Q8_0
/// blocks (34 bytes: f16 d, 32 int8) of the same values: q − 16 in −16...15, the same d.
func widenQ5_0(_ source: UnsafeRawPointer, blocks: Int, into target: UnsafeMutableRawPointer) {
    for b in 0..<blocks {
        let from = source + b * 22, to = target + b * 34
        to.copyMemory(from: from, byteCount: 2)
        let qh = UInt32(from.load(fromByteOffset: 2, as: UInt8.self)) | UInt32(from.load(fromByteOffset: 3, as: UInt8.self)) << 8
            | UInt32(from.load(fromByteOffset: 4, as: UInt8.self)) << 16 | UInt32(from.load(fromByteOffset: 5, as: UInt8.self)) << 24
        for i in 0..<32 {
            let byte = from.load(fromByteOffset: 6 + i % 16, as: UInt8.self)
            let nibble = i < 16 ? byte & 0x0F : byte >> 4
            let value = Int(nibble) | Int((qh >> UInt32(i)) & 1) << 4
            to.storeBytes(of: Int8(value - 16), toByteOffset: 2 + i, as: Int8.self)
        }
    }
}

/// Weight memory, 64-byte aligned, for a weight outside any arena (gathered shards, tests).
func allocateWeights(_ bytes: Int) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
}

/// Which SIMD path the kernels were built with: 2 = AVX-512 VNNI, 1 = AVX-512F, 0 = scalar.
public var simdLevel: Int { Int(mi_simd_level()) }
