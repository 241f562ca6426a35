// The 8-bit format (Pope et al. §3.6, per channel, refined to groups of 32 inputs): packing,
// activation quantization and the GEMM. A 64-byte load holds 4 codes of each of 16 channels;
// `vpdpbusd` multiplies them (unsigned) against 4 broadcast activation bytes (signed).
#include "common.h"

int mi_int8_group(void) { return MI_QB; }

int64_t mi_int8_packed_bytes(int N, int K) { return (int64_t)(N / 16) * (K / MI_QB) * MI_BLOCK_BYTES; }

void mi_pack_int8(const float *w, int64_t ldw, int N, int K, uint8_t *packed) {
    const int nblk = K / MI_QB;
    for (int n = 0; n < N; n++) {
        const float *row = w + (int64_t)n * ldw;
        int p = n / 16, lane = n % 16;
        for (int b = 0; b < nblk; b++) {
            uint8_t *blk = packed + ((int64_t)p * nblk + b) * MI_BLOCK_BYTES;
            float lo = row[b * MI_QB], hi = lo;
            for (int k = b * MI_QB; k < b * MI_QB + MI_QB; k++) { lo = fminf(lo, row[k]); hi = fmaxf(hi, row[k]); }
            // f32 parameters: f16 would flush the small scales of 4-bit source blocks to
            // subnormals and lose their precision.
            float scale = (hi - lo) / 255.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
            memcpy(blk + MI_QB * 16 + lane * 4, &scale, 4);
            memcpy(blk + MI_QB * 16 + 64 + lane * 4, &lo, 4);
            for (int k = b * MI_QB; k < b * MI_QB + MI_QB; k++) {
                int v = (int)lrintf((row[k] - lo) * inv);
                v = v > 255 ? 255 : (v < 0 ? 0 : v);
                int kk = k - b * MI_QB;
                blk[((kk / 4) * 16 + lane) * 4 + kk % 4] = (uint8_t)v;
            }
        }
    }
}


// ------------------------------------------------------------------------------------------
// Activation quantization
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

// ------------------------------------------------------------------------------------------
// 8-bit GEMM over packed panels (activation blocks of MI_QB)
// ------------------------------------------------------------------------------------------
#if defined(MI_VNNI)
ALWAYS_INLINE void tile_int8(const int MR, const int NR, const int8_t *q, const float *xs,
                             const int32_t *xsum, int K, const uint8_t *wp, float *y, int64_t ldy) {
    const int nblk = K / MI_QB;
    const int64_t panel = (int64_t)nblk * MI_BLOCK_BYTES;
    __m512 accf[6][4];
    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) accf[m][j] = _mm512_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        __m512i acci[6][4];
        for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) acci[m][j] = _mm512_setzero_si512();
        const uint8_t *wb = wp + (int64_t)b * MI_BLOCK_BYTES;
        const int8_t *qb = q + b * MI_QB;
        for (int j = 0; j < NR; j++) _mm_prefetch((const char *)(wb + j * panel + 4 * MI_BLOCK_BYTES), _MM_HINT_T0);
        for (int g = 0; g < MI_QB / 4; g++) {
            __m512i w[4];
            for (int j = 0; j < NR; j++) w[j] = _mm512_loadu_si512((const void *)(wb + j * panel + g * 64));
            for (int m = 0; m < MR; m++) {
                __m512i xb = _mm512_set1_epi32(load_i32(qb + (int64_t)m * K + g * 4));
                for (int j = 0; j < NR; j++) acci[m][j] = _mm512_dpbusd_epi32(acci[m][j], w[j], xb);
            }
        }
        // block sum = s_w·s_x·Σ u·q + min_w·s_x·Σ q
        __m512 sv[4], mv[4];
        for (int j = 0; j < NR; j++) {
            const uint8_t *params = wb + j * panel + MI_QB * 16;
            sv[j] = _mm512_loadu_ps((const float *)params);
            mv[j] = _mm512_loadu_ps((const float *)(params + 64));
        }
        for (int m = 0; m < MR; m++) {
            float sx = xs[m * nblk + b];
            __m512 s = _mm512_set1_ps(sx), off = _mm512_set1_ps(sx * (float)xsum[m * nblk + b]);
            for (int j = 0; j < NR; j++) {
                accf[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[m][j]), _mm512_mul_ps(sv[j], s), accf[m][j]);
                accf[m][j] = _mm512_fmadd_ps(mv[j], off, accf[m][j]);
            }
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NR; j++) _mm512_storeu_ps(y + m * ldy + j * 16, accf[m][j]);
}
#endif

void mi_gemm_int8(const int8_t *q, const float *xscales, const int32_t *xsums, int M, int K,
                  const uint8_t *packed, int n0, int n1, float *y, int64_t ldy) {
    const int nblk = K / MI_QB;
    const int64_t panel = (int64_t)nblk * MI_BLOCK_BYTES;
#if defined(MI_VNNI)
    for (int n = n0; n < n1;) {
        // Decode (1-2 rows) is memory-bound: four weight streams in flight; prefill uses
        // 6 rows x 2 panels to reuse each loaded weight vector six times.
        int nr = (M <= 2 && n1 - n >= 64) ? 4 : (n1 - n >= 32) ? 2 : 1;
        const uint8_t *wp = packed + (int64_t)(n / 16) * panel;
        for (int m = 0; m < M; m += 6) {
            int mr = M - m < 6 ? M - m : 6;
            const int8_t *qm = q + (int64_t)m * K;
            const float *xs = xscales + m * nblk;
            const int32_t *xsum = xsums + m * nblk;
            if (nr == 4) {
                if (mr == 1) tile_int8(1, 4, qm, xs, xsum, K, wp, y + m * ldy + n, ldy);
                else tile_int8(2, 4, qm, xs, xsum, K, wp, y + m * ldy + n, ldy);
            } else if (nr == 2) { DISPATCH_MR(tile_int8, 2, mr, qm, xs, xsum, K, wp, y + m * ldy + n, ldy) }
            else { DISPATCH_MR(tile_int8, 1, mr, qm, xs, xsum, K, wp, y + m * ldy + n, ldy) }
        }
        n += nr * 16;
    }
#else
    for (int n = n0; n < n1; n++) {
        int p = n / 16, lane = n % 16;
        for (int m = 0; m < M; m++) {
            float acc = 0;
            for (int b = 0; b < nblk; b++) {
                const uint8_t *blk = packed + p * panel + (int64_t)b * MI_BLOCK_BYTES;
                float sw, mw;
                memcpy(&sw, blk + MI_QB * 16 + lane * 4, 4);
                memcpy(&mw, blk + MI_QB * 16 + 64 + lane * 4, 4);
                int32_t s = 0;
                for (int kk = 0; kk < MI_QB; kk++)
                    s += (int32_t)blk[((kk / 4) * 16 + lane) * 4 + kk % 4] * (int32_t)q[(int64_t)m * K + b * MI_QB + kk];
                float sx = xscales[m * nblk + b];
                acc += (float)s * (sw * sx) + mw * (sx * (float)xsums[m * nblk + b]);
            }
            y[m * ldy + n] = acc;
        }
    }
#endif
}

