// Hot loops of MeshInfer. Built for the host CPU (-march=native); every kernel has a portable
// scalar path, and an AVX-512 (+VNNI) path where the compiler targets it.
#ifndef MESHINFER_CKERNELS_H
#define MESHINFER_CKERNELS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Which SIMD path this build uses: 2 = AVX-512 VNNI, 1 = AVX-512F, 0 = scalar.
int mi_simd_level(void);

// ---------------------------------------------------------------------------------------------
// Packed f32 weights ("lane = output channel"): a weight W of N output channels x K inputs is
// stored in panels of 16 output channels; panel p holds K groups of 16 floats
// -> w[(p*K + k)*16 + lane]. Everything a panel needs is one contiguous stream (decode reads it
// once, at memory bandwidth). N must be a multiple of 16 (callers pad).
// ---------------------------------------------------------------------------------------------

/// Packs rows [0, N) of a row-major f32 matrix (N x K, leading dimension ldw) into f32 panels.
void mi_pack_f32(const float *w, int64_t ldw, int N, int K, float *packed);

/// y[m, n0..n1) = x[m, :] . W[n, :] for f32 panels; n0, n1 multiples of 16.
void mi_gemm_f32(const float *x, int64_t ldx, int M, int K, const float *packed,
                 int n0, int n1, float *y, int64_t ldy);

// ---------------------------------------------------------------------------------------------
// GGML block formats, executed in place (no dequantization). The 32-element formats are
// repacked 16 rows to a panel on load, the same bits regrouped (layouts in blocks.c); their
// activations are quantized with mi_quantize_q8_blocks for the weights' type (block 32: scale
// d, s = d * sum(q) for Q4_1's minimum, and start = -offset * sum(q), where each block's integer
// sum starts for the others' code offsets, 16 for Q5_0 and 128 for Q8_0). `--weights int8`
// quantizes f32 rows to Q8_0 blocks on load (mi_quantize_q8_0) and runs them the same way.
// ---------------------------------------------------------------------------------------------
void mi_quantize_q8_blocks(int type, const float *x, int64_t ldx, int M, int K,
                           int8_t *q, float *d, float *s, int32_t *start);

/// Quantizes M activation rows (K floats each) symmetrically to int8 in blocks of `block`
/// (scale = max|x| / 127, q = x / scale rounded to nearest even).
/// q: M x K; scales: M x (K/block); sums: M x (K/block), the sum of q over each block.
void mi_quantize_activations(const float *x, int64_t ldx, int M, int K, int block,
                             int8_t *q, float *scales, int32_t *sums);

/// Quantizes rows [0, N) of a row-major f32 matrix (N x K, leading dimension ldx; K a multiple
/// of 32) to GGML Q8_0 blocks, as a file stores them: per 32 inputs 34 bytes, f16 d then 32
/// int8 q, with d = max|x| / 127 rounded to f16 first and q = x / d (that rounded d) rounded
/// half away from zero and clamped to ±127, so value = d·q; an all-zero block has d = 0.
/// Row n's blocks start at out + n * rowBytes.
void mi_quantize_q8_0(const float *x, int64_t ldx, int N, int K, uint8_t *out, int64_t rowBytes);

enum { MI_Q4_1 = 1, MI_Q5_0 = 2, MI_Q8_0 = 3 };
/// Bytes of one panel of 16 rows and one 32-input block: Q4_1 320, Q5_0 352, Q8_0 544.
/// Packs 16 rows of `nblk` of the file's blocks of `type` (row stride rowBytes) into a panel.
void mi_pack_blocks32(int type, const uint8_t *rows, int64_t rowBytes, int nblk, uint8_t *panel);
/// y[m, n0..n1) for a repacked matrix of `type` (n0, n1 multiples of 16).
void mi_gemm_blocks32(int type, const int8_t *q, const float *d, const float *s, const int32_t *start,
                      int M, int K, const uint8_t *w, int n0, int n1, float *y, int64_t ldy);

/// K-quants in place (256-element super-blocks; layouts in kquants.c), repacked 16 rows to a
/// panel on load, against activations quantized to Q8_K: per 256 inputs one scale d
/// (M x K/256) and the sums of every 16 quantized values (bsums: M x K/16).
enum { MI_Q4_K = 4, MI_Q6_K = 5 };
void mi_quantize_q8_K(const float *x, int64_t ldx, int M, int K, int8_t *q, float *d, int32_t *bsums);
/// Bytes of one panel of 16 rows and one super-block: Q4_K 2368 (the file's 16 x 144 and the
/// 6-bit scales and mins unpacked to bytes), Q6_K 3360 (16 x 210).
int mi_kquant_unit_bytes(int type);
/// Packs 16 rows of `nblk` of the file's super-blocks of `type` (row stride rowBytes) into a panel.
void mi_pack_kquant(int type, const uint8_t *rows, int64_t rowBytes, int nblk, uint8_t *panel);
/// y[m, n0..n1) for a repacked K-quant matrix of `type` (n0, n1 multiples of 16).
void mi_gemm_kquant(int type, const int8_t *q, const float *d, const int32_t *bsums, int M, int K,
                    const uint8_t *w, int n0, int n1, float *y, int64_t ldy);

// ---------------------------------------------------------------------------------------------
// Elementwise and attention.
// ---------------------------------------------------------------------------------------------
/// out[i] = x[i] rounded to f16 (nearest, ties to even), as bits.
void mi_f32_to_f16(const float *x, uint16_t *out, int n);
/// An 8-bit cache row: per block of 32 floats (n a multiple of 32), scale d = absmax / 127
/// (Q8_0's rule, kept in f32) and codes round(x / d).
void mi_f32_to_kv_q8(const float *x, int8_t *codes, float *scales, int n);
/// out = x / sqrt(mean(x^2) + eps) * w
void mi_rmsnorm(const float *x, const float *w, int n, float eps, float *out);
/// RMSNorm of a row split over devices, in two halves: the sum of squares of this device's
/// n elements (in double), then, given the all-reduced sum over all `count` elements of the
/// row, out = x / sqrt(sum / count + eps) * w for this device's elements.
double mi_sum_squares(const float *x, int n);
void mi_rms_scale(const float *x, const float *w, int n, double sumSquares, int count, float eps, float *out);
/// out[i] = silu(gate[i]) * up[i]
void mi_swiglu(const float *gate, const float *up, int n, float *out);
/// RoPE of one head in place: pairs (2i, 2i+1), or (i, i+half) when neox; cs = (half, 2) cos, sin.
void mi_rope(float *x, const float *cs, int half, int neox);
/// out = gelu_tanh(gate) * up, elementwise (n floats).
void mi_geglu(const float *gate, const float *up, int n, float *out);

/// Cached positions come in chunks of MI_KV_CHUNK: a cache grows by whole chunks at its end.
#define MI_KV_CHUNK 256

/// The KV cache layout the attention kernels read (attention.c has the full description):
/// position p of a layer is in the tile at element (p / MI_KV_CHUNK) * chunkStride +
/// (p % MI_KV_CHUNK) / 16 * tileStride of it; a tile holds 16 positions of every KV head, KV
/// head g at g * headStride: its keys (16 * Q elements, transposed: element d of the 16
/// positions at 16 * d, p % 16 within), then its values (16 rows of Q). A q8 cache stores
/// int8 codes there (keys in pairs of elements: (d / 2) * 32 + (p % 16) * 2 + d % 2), and per
/// 32 elements of a position an f32 scale in a second
/// allocation mirroring the codes divided by 32 (the 16 * Q codes at element E: scales at
/// E / 32, block b of position p at b * 16 + p % 16). headStride, tileStride and chunkStride
/// are multiples of 32 (a q8 block's scales are at its codes' offset / 32).
///
/// Stores one KV head's key and value (Q floats each) at `position`: head is the KV head's
/// part of tile 0 (chunk 0) of its layer; for q8, scales the same element offset / 32.
void mi_kv_write_f16(const float *k, const float *v, int Q, uint16_t *head, int64_t tileStride, int64_t chunkStride,
                     int position);
void mi_kv_write_q8(const float *k, const float *v, int Q, int8_t *head, float *scales, int64_t tileStride,
                    int64_t chunkStride, int position);

/// Causal attention of one query row against cached positions first..<first+count for all
/// heads, from an f16 cache laid out as above (kv: tile 0 of the layer, KV head 0). q: H*Q
/// floats; query head h reads KV head h / (H / KV). scratch: >= count floats (the portable
/// path's scores). out: H*Q floats. cold: the cache is read once and is not expected in the
/// core's caches (a decode step's rows, one per sequence): the first tile is requested ahead.
void mi_attention_row(const float *q, int H, int KV, int Q, const uint16_t *kv, int64_t headStride, int64_t tileStride,
                      int64_t chunkStride, int first, int count, float scale, float *scratch, float *out, int cold);
/// The same from a q8 cache (codes kv, scales at the same offsets / 32). Each query head is
/// scored as 16-bit codes per 32 elements (scale absmax / 32767, codes rounded to nearest
/// even) against the keys' codes. Q must be a multiple of 32.
void mi_attention_row_q8(const float *q, int H, int KV, int Q, const int8_t *kv, const float *scales, int64_t headStride,
                         int64_t tileStride, int64_t chunkStride, int first, int count, float scale, float *scratch,
                         float *out, int cold);

/* Keeps freed blocks of up to 32 MiB in the heap instead of returning them to the kernel, and
 * trims the heap only beyond 1 GiB free (glibc; no-op elsewhere). Per-op activation buffers then
 * reuse warm pages instead of faulting in fresh zeroed ones on every allocation. */
void mi_keep_freed_memory(void);

/* Runs fn(ctx, p) for p in 0..<parts on a pool of worker threads and the caller (which returns
 * when every part is done). Parts are claimed dynamically. A call while another is running, or
 * from inside a part, runs its parts on the caller alone. */
typedef void (*mi_task_fn)(void *ctx, int part);
void mi_pool_run(int parts, mi_task_fn fn, void *ctx);
/* Nanoseconds the calling thread has spent in mi_pool_run handing out a job and waiting for the
 * parts other threads ran (not running parts itself), since it started. */
uint64_t mi_pool_handoff_ns(void);

/* Reads `bytes` (a multiple of 64, 64-byte aligned) once with the widest loads the target has and
 * returns a value depending on every byte: how fast this core can stream memory (the roofline of
 * a bandwidth-bound pass). */
uint64_t mi_stream_read(const void *p, size_t bytes);

/* 2 MiB-aligned memory of at least `bytes` (rounded up to 2 MiB), advised MADV_HUGEPAGE before
 * first touch, so it streams from transparent huge pages where the kernel allows them
 * (`madvise` mode). NULL when out of memory. Free with mi_huge_free. */
void *mi_huge_alloc(size_t bytes);
void mi_huge_free(void *p);

/* 2 MiB-aligned address space for `bytes`, zero-filled, advised MADV_HUGEPAGE: the kernel makes
 * its pages only as they are first written, and does not count the rest against memory
 * (MAP_NORESERVE): a buffer that grows at its end into it holds at most one 2 MiB page beyond
 * what it has written. NULL under strict overcommit accounting (vm.overcommit_memory = 2,
 * where it would hold its whole size), where the system refuses it, or off Linux. Free with
 * mi_unreserve and the same size. */
void *mi_reserve(size_t bytes);
void mi_unreserve(void *p, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
