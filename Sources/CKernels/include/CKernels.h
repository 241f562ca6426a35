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
// Packed weight layout shared by the f32 and 8-bit GEMMs ("lane = output channel"):
// a weight W of N output channels x K inputs is stored in panels of 16 output channels.
//   f32 : panel p holds K groups of 16 floats          -> w[(p*K + k)*16 + lane]
//   int8: panel p holds K/G blocks of G = mi_int8_group() inputs; a block is G/4 groups of
//         16 x 4 unsigned codes (byte ((k/4)*16 + lane)*4 + k%4), then 16 f32 scales and 16
//         f32 mins, so w ≈ scale·u + min per (channel, block). Codes are unsigned because VNNI
//         multiplies u8 x s8; the activations are the signed operand. Everything a panel needs
//         is one contiguous stream (decode reads it once, at memory bandwidth).
// N must be a multiple of 16 and K a multiple of G (callers pad).
// ---------------------------------------------------------------------------------------------

/// Inputs per weight (scale, min) and per activation block in the 8-bit path.
int mi_int8_group(void);

/// Packs rows [0, N) of a row-major f32 matrix (N x K, leading dimension ldw) into f32 panels.
void mi_pack_f32(const float *w, int64_t ldw, int N, int K, float *packed);

/// Quantizes a row-major f32 matrix to 8 bits per output channel (Pope et al. §3.6), with a
/// scale and minimum per channel and group of G inputs (affine, so the file's Q4_1 blocks map
/// almost exactly), and packs codes and parameters as panels of mi_int8_packed_bytes(N, K) bytes.
void mi_pack_int8(const float *w, int64_t ldw, int N, int K, uint8_t *packed);
int64_t mi_int8_packed_bytes(int N, int K);

/// Quantizes M activation rows (K floats each) symmetrically to int8 in blocks of `block`.
/// q: M x K; scales: M x (K/block); sums: M x (K/block), the sum of q over each block.
void mi_quantize_activations(const float *x, int64_t ldx, int M, int K, int block,
                             int8_t *q, float *scales, int32_t *sums);

/// y[m, n0..n1) = x[m, :] . W[n, :] for f32 panels; n0, n1 multiples of 16.
void mi_gemm_f32(const float *x, int64_t ldx, int M, int K, const float *packed,
                 int n0, int n1, float *y, int64_t ldy);

/// Same for 8-bit panels (N channels in all), activations from mi_quantize_activations(block = G).
void mi_gemm_int8(const int8_t *q, const float *xscales, const int32_t *xsums, int M, int K,
                  const uint8_t *packed, int n0, int n1, float *y, int64_t ldy);

// ---------------------------------------------------------------------------------------------
// GGML block formats, executed in place (no dequantization). The 32-element formats are
// repacked 16 rows to a panel on load, the same bits regrouped (layouts in kernels.c); their
// activations are quantized with mi_quantize_q8_blocks (block 32: scale d, s = d * sum(q) for
// Q4_1's minimum, and the integer sum(q) for the others' code offsets).
// ---------------------------------------------------------------------------------------------
void mi_quantize_q8_blocks(const float *x, int64_t ldx, int M, int K,
                           int8_t *q, float *d, float *s, int32_t *sums);

enum { MI_Q4_1 = 1, MI_Q5_0 = 2, MI_Q8_0 = 3 };
/// Bytes of one panel of 16 rows and one 32-input block: Q4_1 320, Q5_0 352, Q8_0 544.
/// Packs 16 rows of `nblk` of the file's blocks of `type` (row stride rowBytes) into a panel.
void mi_pack_blocks32(int type, const uint8_t *rows, int64_t rowBytes, int nblk, uint8_t *panel);
/// y[m, n0..n1) for a repacked matrix of `type` (n0, n1 multiples of 16).
void mi_gemm_blocks32(int type, const int8_t *q, const float *d, const float *s, const int32_t *sums,
                      int M, int K, const uint8_t *w, int n0, int n1, float *y, int64_t ldy);

/// K-quant rows in place (256-element super-blocks), against activations quantized to Q8_K:
/// per 256 inputs one scale d (M x K/256) and the sums of every 16 quantized values
/// (bsums: M x K/16).
void mi_quantize_q8_K(const float *x, int64_t ldx, int M, int K, int8_t *q, float *d, int32_t *bsums);
/// The file's Q4_K rows (144-byte super-blocks: f16 d, f16 dmin, 6-bit scales and mins of
/// eight 32-element sub-blocks, nibbles; w = d·scale·q − dmin·min).
void mi_gemm_q4_K(const int8_t *q, const float *d, const int32_t *bsums, int M, int K,
                  const uint8_t *w, int64_t rowBytes, int n0, int n1, float *y, int64_t ldy);
/// The file's Q6_K rows (210-byte super-blocks: 4 + 2 bits per weight, an int8 scale per 16
/// elements, f16 d; w = d·scale·(q − 32)).
void mi_gemm_q6_K(const int8_t *q, const float *d, const int32_t *bsums, int M, int K,
                  const uint8_t *w, int64_t rowBytes, int n0, int n1, float *y, int64_t ldy);

// ---------------------------------------------------------------------------------------------
// Elementwise and attention.
// ---------------------------------------------------------------------------------------------
float mi_dot(const float *a, const float *b, int n);
/// y += a * x
void mi_axpy(float a, const float *x, float *y, int n);
/// out = x / sqrt(mean(x^2) + eps) * w
void mi_rmsnorm(const float *x, const float *w, int n, float eps, float *out);
/// RMSNorm of a row split over devices, in two halves: the sum of squares of this device's
/// n elements (in double), then, given the all-reduced sum over all `count` elements of the
/// row, out = x / sqrt(sum / count + eps) * w for this device's elements.
double mi_sum_squares(const float *x, int n);
void mi_rms_scale(const float *x, const float *w, int n, double sumSquares, int count, float eps, float *out);
/// out[i] = silu(gate[i]) * up[i]
void mi_swiglu(const float *gate, const float *up, int n, float *out);
/// out = gelu_tanh(gate) * up, elementwise (n floats).
void mi_geglu(const float *gate, const float *up, int n, float *out);

/// Causal attention of one query row against `count` cached positions for all heads.
/// q: H*Q floats; k, v: cache rows with stride kvStride floats, head g at offset g*Q;
/// query head h reads KV head h / (H / KV). scratch: >= count * (H / KV) floats. out: H*Q floats.
void mi_attention_row(const float *q, int H, int KV, int Q,
                      const float *k, const float *v, int64_t kvStride, int count,
                      float scale, float *scratch, float *out);

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

#ifdef __cplusplus
}
#endif
#endif
