// GGML's 32-element block formats executed in place (Q4_1, Q5_0, Q8_0), repacked 16 rows to a
// panel, against activations quantized to Q8 blocks of 32 (llama.cpp's pairing; the K-quants
// are in kquants.c). Layouts and the instructions that carry them are described below. `--weights int8` is Q8_0 too:
// f32 rows quantized to Q8_0 blocks on load (mi_quantize_q8_0), then repacked and multiplied
// as a file's Q8_0 blocks are.
#include "common.h"

// ------------------------------------------------------------------------------------------
// Quantization: activations (per matmul, symmetric int8 per block of 32 with an f32 scale)
// and, for `--weights int8`, weights on load (f32 rows to the file format's Q8_0 blocks).
// ------------------------------------------------------------------------------------------
void mi_quantize_activations(const float *x, int64_t ldx, int M, int K, int block,
                             int8_t *q, float *scales, int32_t *sums) {
    int nb = K / block;
    for (int m = 0; m < M; m++) {
        const float *row = x + (int64_t)m * ldx;
        for (int b = 0; b < nb; b++) {
            const float *xb = row + b * block;
            float amax = abs_max(xb, block);
            float inv = amax > 0 ? 127.0f / amax : 0.0f;
            scales[m * nb + b] = amax / 127.0f;
            sums[m * nb + b] = round_to_int8(xb, block, inv, q + (int64_t)m * K + b * block);
        }
    }
}

/* The code offset of a format's unsigned codes (w = d·(u − offset), Q4_1's minimum aside). */
ALWAYS_INLINE int code_offset(int type) { return type == MI_Q4_1 ? 0 : type == MI_Q5_0 ? 16 : 128; }

void mi_quantize_q8_blocks(int type, const float *x, int64_t ldx, int M, int K,
                           int8_t *q, float *d, float *s, int32_t *start) {
    // The activation quantizer with blocks of 32 (start holds Σq), then Q4_1's s = d·Σq and
    // each block's integer start −offset·Σq (0 for Q4_1, whose codes have no offset).
    mi_quantize_activations(x, ldx, M, K, 32, q, d, start);
    const int offset = code_offset(type);
    for (int i = 0; i < M * (K / 32); i++) {
        s[i] = d[i] * (float)start[i];
        start[i] *= -offset;
    }
}

/* Q8_0 block (34 bytes): f16 d, then 32 int8 q; value = d·q. The scale is rounded to f16
 * before the codes are computed, so codes and stored scale agree (quantizing with the f32
 * d and storing its f16 rounding would add the scale's rounding to every value). A block
 * whose d rounds to 0 (all zeros, or below f16's range) is all zero codes. Scalar: this runs
 * once, on load. */
void mi_quantize_q8_0(const float *x, int64_t ldx, int N, int K, uint8_t *out, int64_t rowBytes) {
    for (int n = 0; n < N; n++) {
        const float *row = x + (int64_t)n * ldx;
        for (int b = 0; b < K / 32; b++) {
            const float *xb = row + b * 32;
            uint8_t *blk = out + (int64_t)n * rowBytes + (int64_t)b * 34;
            uint16_t dh = float_to_half(abs_max(xb, 32) / 127.0f);
            if (dh == 0x7C00) dh = 0x7BFF;   // beyond f16 (|x| > 127·65504): the largest scale; codes clamp
            float d = half_to_float(dh);
            memcpy(blk, &dh, 2);
            for (int i = 0; i < 32; i++) {
                // Clamped in float: the f16 rounding of d may leave |x / d| a little over 127.
                float v = d > 0 ? fminf(127.0f, fmaxf(-127.0f, roundf(xb[i] / d))) : 0.0f;
                blk[2 + i] = (uint8_t)(int8_t)v;
            }
        }
    }
}


// ------------------------------------------------------------------------------------------
// 32-element GGML block formats (Q4_1, Q5_0, Q8_0), repacked 16 rows to a panel on load: the
// same bits, regrouped so one 64-byte load holds four elements of each of 16 rows, in the
// lanes `vpdpbusd` multiplies (unsigned weights) against four broadcast activation bytes. 16
// rows advance together; the row-at-a-time kernel stalls at half the bandwidth on per-row
// horizontal sums (research/cpu-kernels.md §1.2). Per 32-input block a panel holds:
//   Q4_1 (320 B = 16 x 20): 4 groups of 64 bytes, byte (g*16 + r)*4 + j = row r's nibble byte
//        4g + j (low nibble: element 4g + j, high: 16 + 4g + j); 16 f16 d; 16 f16 m.
//        w = d·q + m.
//   Q5_0 (352 B = 16 x 22): the nibbles as Q4_1's; then the fifth bits as 8 masks of 64 bits,
//        mask (h*4 + g) bit (r*4 + j) = fifth bit of row r's element h*16 + 4g + j; 16 f16 d.
//        w = d·(q − 16).
//   Q8_0 (544 B = 16 x 34): 8 groups of 64 bytes, byte (G*16 + r)*4 + j = row r's element
//        4G + j plus 128 (unsigned); 16 f16 d. w = d·(u − 128).
// Every format's unsigned codes u give Σ w·x = d_w·d_x·(Σ u·q − offset·Σ q) (+ m_w·s_x for
// Q4_1), with Σ q the activation block's integer sum: the integer sum starts from −offset·Σ q
// (`start`, made by the activation quantizer for the weight's format), a broadcast load where
// subtracting it after the block cost a scalar multiply, a register broadcast and a vpsubd
// per row and panel (4–8% of a multi-row tile in cache).
// ------------------------------------------------------------------------------------------
#define MI_Q4_1_UNIT 320
#define MI_Q5_0_UNIT 352
#define MI_Q8_0_UNIT 544

void mi_pack_blocks32(int type, const uint8_t *rows, int64_t rowBytes, int nblk, uint8_t *panel) {
    const int unit = type == MI_Q4_1 ? MI_Q4_1_UNIT : type == MI_Q5_0 ? MI_Q5_0_UNIT : MI_Q8_0_UNIT;
    const int src = type == MI_Q4_1 ? 20 : type == MI_Q5_0 ? 22 : 34;
    for (int b = 0; b < nblk; b++) {
        uint8_t *out = panel + (int64_t)b * unit;
        if (type == MI_Q5_0) memset(out + 256, 0, 64);
        for (int r = 0; r < 16; r++) {
            const uint8_t *blk = rows + r * rowBytes + (int64_t)b * src;
            if (type == MI_Q4_1) {
                for (int g = 0; g < 4; g++) memcpy(out + (g * 16 + r) * 4, blk + 4 + 4 * g, 4);
                memcpy(out + 256 + 2 * r, blk, 2);
                memcpy(out + 288 + 2 * r, blk + 2, 2);
            } else if (type == MI_Q5_0) {
                uint32_t qh;
                memcpy(&qh, blk + 2, 4);
                for (int g = 0; g < 4; g++) memcpy(out + (g * 16 + r) * 4, blk + 6 + 4 * g, 4);
                for (int i = 0; i < 32; i++) {
                    int h = i / 16, g = (i % 16) / 4, j = i % 4, bit = r * 4 + j;
                    if ((qh >> i) & 1) out[256 + (h * 4 + g) * 8 + bit / 8] |= (uint8_t)(1u << (bit % 8));
                }
                memcpy(out + 320 + 2 * r, blk, 2);
            } else {
                for (int i = 0; i < 32; i++) out[((i / 4) * 16 + r) * 4 + i % 4] = (uint8_t)(blk[2 + i] ^ 0x80);
                memcpy(out + 512 + 2 * r, blk, 2);
            }
        }
    }
}

/* The unsigned code of row r's element i in a packed unit (the scalar reference). */
ALWAYS_INLINE int unit_code(int type, const uint8_t *u, int r, int i) {
    if (type == MI_Q8_0) return u[((i / 4) * 16 + r) * 4 + i % 4];
    int h = i / 16, g = (i % 16) / 4, j = i % 4;
    uint8_t byte = u[(g * 16 + r) * 4 + j];
    int code = h ? byte >> 4 : byte & 0x0F;
    if (type == MI_Q5_0) code |= ((u[256 + (h * 4 + g) * 8 + (r * 4 + j) / 8] >> ((r * 4 + j) % 8)) & 1) << 4;
    return code;
}

#if defined(MI_VNNI)
/* Codes of elements 4g..4g+3 (a) and 16+4g..16+4g+3 (b) of each of a panel unit's 16 rows. */
ALWAYS_INLINE void unit_codes(const int type, const uint8_t *u, int g, __m512i *a, __m512i *b) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    if (type == MI_Q8_0) {
        *a = _mm512_loadu_si512((const void *)(u + g * 64));
        *b = _mm512_loadu_si512((const void *)(u + (g + 4) * 64));
        return;
    }
    __m512i w = _mm512_loadu_si512((const void *)(u + g * 64));
    *a = _mm512_and_si512(w, low);
    *b = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
    if (type == MI_Q5_0) {
        const __m512i fifth = _mm512_set1_epi8(0x10);
        uint64_t ml, mh;
        memcpy(&ml, u + 256 + g * 8, 8);
        memcpy(&mh, u + 256 + (4 + g) * 8, 8);
        *a = _mm512_or_si512(*a, _mm512_and_si512(_mm512_movm_epi8(ml), fifth));
        *b = _mm512_or_si512(*b, _mm512_and_si512(_mm512_movm_epi8(mh), fifth));
    }
}

/* MR activation rows x NR panels of one format. */
ALWAYS_INLINE void tile_blocks32(const int type, const int MR, const int NR, const int8_t *q, const float *d,
                                 const float *s, const int32_t *start, int K, const uint8_t *wp, int64_t panel,
                                 int pass, int passes, float *y, int64_t ldy) {
    const int unit = type == MI_Q4_1 ? MI_Q4_1_UNIT : type == MI_Q5_0 ? MI_Q5_0_UNIT : MI_Q8_0_UNIT;
    const int scales = type == MI_Q4_1 ? 256 : type == MI_Q5_0 ? 320 : 512;
    const int nblk = K / 32;
    __m512 accf[4][8];
    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) accf[m][j] = _mm512_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        __m512i acci[4][8];
        for (int m = 0; m < MR; m++) {
            const __m512i s0 = _mm512_set1_epi32(start[m * nblk + b]);   // 0 for Q4_1
            for (int j = 0; j < NR; j++) acci[m][j] = s0;
        }
        const uint8_t *wb = wp + (int64_t)b * unit;
        ask_ahead(wp, NR, panel, b, nblk, pass, passes);
        for (int g = 0; g < 4; g++) {
            __m512i lo[8], hi[8];
            for (int j = 0; j < NR; j++) unit_codes(type, wb + j * panel, g, &lo[j], &hi[j]);
            for (int m = 0; m < MR; m++) {
                const int8_t *xb = q + (int64_t)m * K + b * 32;
                __m512i xl = _mm512_set1_epi32(load_i32(xb + 4 * g)), xh = _mm512_set1_epi32(load_i32(xb + 16 + 4 * g));
                for (int j = 0; j < NR; j++) {
                    acci[m][j] = _mm512_dpbusd_epi32(acci[m][j], lo[j], xl);
                    acci[m][j] = _mm512_dpbusd_epi32(acci[m][j], hi[j], xh);
                }
            }
        }
        for (int j = 0; j < NR; j++) {
            __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + j * panel + scales)));
            __m512 mw = type == MI_Q4_1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + j * panel + 288)))
                                        : _mm512_setzero_ps();
            for (int m = 0; m < MR; m++) {
                accf[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[m][j]), _mm512_mul_ps(dw, _mm512_set1_ps(d[m * nblk + b])), accf[m][j]);
                if (type == MI_Q4_1) accf[m][j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(s[m * nblk + b]), accf[m][j]);
            }
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NR; j++) _mm512_storeu_ps(y + m * ldy + j * 16, accf[m][j]);
}

#define TILE_B32(MR, NR) tile_blocks32(type, MR, NR, qm, dm, sm, um, K, wp, panel, m / 4, (M + 3) / 4, ym, ldy)
#endif

ALWAYS_INLINE void gemm_blocks32(const int type, const int8_t *q, const float *d, const float *s, const int32_t *start,
                                 int M, int K, const uint8_t *w, int n0, int n1, float *y, int64_t ldy) {
    const int nblk = K / 32;
    const int unit = type == MI_Q4_1 ? MI_Q4_1_UNIT : type == MI_Q5_0 ? MI_Q5_0_UNIT : MI_Q8_0_UNIT;
    const int64_t panel = (int64_t)nblk * unit;
#if defined(MI_VNNI)
    for (int n = n0; n < n1;) {
        int nr = panels_per_tile(M, n1 - n);
        const uint8_t *wp = w + (int64_t)(n / 16) * panel;
        for (int m = 0; m < M; m += 4) {
            int mr = M - m < 4 ? M - m : 4;
            const int8_t *qm = q + (int64_t)m * K;
            const float *dm = d + m * nblk, *sm = s + m * nblk;
            const int32_t *um = start + m * nblk;
            float *ym = y + m * ldy + n;
            DISPATCH_TILE(TILE_B32, mr, nr)
        }
        n += nr * 16;
    }
#else
    const int scales = type == MI_Q4_1 ? 256 : type == MI_Q5_0 ? 320 : 512;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wp = w + (int64_t)(n / 16) * panel;
        int r = n % 16;
        for (int m = 0; m < M; m++) {
            float acc = 0;
            for (int b = 0; b < nblk; b++) {
                const uint8_t *u = wp + (int64_t)b * unit;
                int32_t dot = start[m * nblk + b];
                for (int i = 0; i < 32; i++) dot += unit_code(type, u, r, i) * q[(int64_t)m * K + b * 32 + i];
                acc += half_to_float(load_u16(u + scales + 2 * r)) * d[m * nblk + b] * (float)dot;
                if (type == MI_Q4_1) acc += half_to_float(load_u16(u + 288 + 2 * r)) * s[m * nblk + b];
            }
            y[m * ldy + n] = acc;
        }
    }
#endif
}

void mi_gemm_blocks32(int type, const int8_t *q, const float *d, const float *s, const int32_t *start,
                      int M, int K, const uint8_t *w, int n0, int n1, float *y, int64_t ldy) {
    switch (type) {
    case MI_Q4_1: gemm_blocks32(MI_Q4_1, q, d, s, start, M, K, w, n0, n1, y, ldy); break;
    case MI_Q5_0: gemm_blocks32(MI_Q5_0, q, d, s, start, M, K, w, n0, n1, y, ldy); break;
    default: gemm_blocks32(MI_Q8_0, q, d, s, start, M, K, w, n0, n1, y, ldy); break;
    }
}
