// GGML K-quants (Q4_K, Q6_K: 256-element super-blocks) executed in place, repacked 16 rows to
// a panel on load, against activations quantized to Q8_K blocks of 256 (llama.cpp's pairing):
// per block one f32 scale, the int8 values, and the sum of every 16 of them, so the weights'
// offsets (Q4_K's mins, Q6_K's −32) cost a small product with the sums instead of touching
// the activations again.
//
// The repacking regroups the same bits as the 32-element formats' panels do (blocks.c): one
// 64-byte load holds four elements of each of 16 rows, in the lanes `vpdpbusd` multiplies
// (unsigned codes) against four broadcast activation bytes, so 16 rows advance together and
// no row needs a horizontal sum. The sub-block scales (and Q4_K's mins) are unpacked to a
// byte per row, 16 rows side by side, so one `vpmovzxbd`/`vpmovsxbd` gives a lane's scale
// for `vpmulld`. Per super-block a panel holds:
//   Q4_K (2368 B; the file's 16 x 144 plus 64 for the unpacked 6-bit scales and mins):
//        [0, 2048) nibbles: chunk c (0..3), group g (0..7) at (8c + g)·64, byte 4r + j = row
//        r's qs[32c + 4g + j] (low nibble: element 64c + 4g + j, sub-block 2c; high nibble:
//        element 64c + 32 + 4g + j, sub-block 2c + 1);
//        [2048, 2176) scales and [2176, 2304) mins: sub-block s at +16s, byte r (0..63);
//        [2304, 2336) 16 f16 d; [2336, 2368) 16 f16 dmin.
//        w = d·scale_s·q − dmin·min_s.
//   Q6_K (3360 B = 16 x 210): half h (0..1), group g (0..7) at (8h + g)·192: three 64-byte
//        groups A, C, H, byte 4r + j = row r's ql[64h + 4g + j], ql[64h + 32 + 4g + j] and
//        qh[32h + 4g + j]. Part p (0..3) of the half, element 128h + 32p + 4g + j, takes its low
//        4 bits from A (p = 0: low nibble, p = 2: high nibble) or C (p = 1, 3) and its high 2
//        bits from H bits 2p..2p+1 (the file's own arrangement);
//        [3072, 3328) int8 scales: sub-block s (16 elements) at 3072 + 16s, byte r;
//        [3328, 3360) 16 f16 d. w = d·scale_s·(q − 32).
// Σ w·x over a super-block is then d_x·(d·Σ_s scale_s·dot_s − dmin·Σ_s min_s·Σx_s) for Q4_K and
// d_x·d·Σ_s scale_s·(dot_s − 32·Σx_s) for Q6_K, with dot_s the integer dot of the unsigned codes
// and the quantized activations over sub-block s and Σx_s the activations' integer sums.
#include "common.h"

#define MI_Q4_K_UNIT 2368
#define MI_Q6_K_UNIT 3360

int mi_kquant_unit_bytes(int type) { return type == MI_Q4_K ? MI_Q4_K_UNIT : MI_Q6_K_UNIT; }

void mi_quantize_q8_K(const float *x, int64_t ldx, int M, int K, int8_t *q, float *d, int32_t *bsums) {
    int nb = K / 256;
    for (int m = 0; m < M; m++) {
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (int64_t)m * ldx + b * 256;
            float amax = abs_max(xb, 256);
            float inv = amax > 0 ? 127.0f / amax : 0.0f;
            int8_t *qb = q + (int64_t)m * K + b * 256;
            for (int g = 0; g < 16; g++)
                bsums[((int64_t)m * nb + b) * 16 + g] = round_to_int8(xb + g * 16, 16, inv, qb + g * 16);
            d[(int64_t)m * nb + b] = amax / 127.0f;
        }
    }
}

/* The file's Q4_K super-block (144 bytes): f16 d, f16 dmin, 12 bytes packing eight 6-bit
 * scales and eight 6-bit mins, then 128 bytes of nibbles. */
ALWAYS_INLINE void q4_K_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 4; j++) { sc[j] = s[j] & 63; mn[j] = s[j + 4] & 63; }
    for (int j = 4; j < 8; j++) {
        sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void mi_pack_kquant(int type, const uint8_t *rows, int64_t rowBytes, int nblk, uint8_t *panel) {
    for (int b = 0; b < nblk; b++) {
        for (int r = 0; r < 16; r++) {
            if (type == MI_Q4_K) {
                const uint8_t *blk = rows + r * rowBytes + (int64_t)b * 144;
                uint8_t *out = panel + (int64_t)b * MI_Q4_K_UNIT;
                uint8_t sc[8], mn[8];
                q4_K_scales(blk + 4, sc, mn);
                for (int c = 0; c < 4; c++)
                    for (int g = 0; g < 8; g++) memcpy(out + (8 * c + g) * 64 + 4 * r, blk + 16 + 32 * c + 4 * g, 4);
                for (int s = 0; s < 8; s++) { out[2048 + 16 * s + r] = sc[s]; out[2176 + 16 * s + r] = mn[s]; }
                memcpy(out + 2304 + 2 * r, blk, 2);
                memcpy(out + 2336 + 2 * r, blk + 2, 2);
            } else {
                const uint8_t *blk = rows + r * rowBytes + (int64_t)b * 210;
                uint8_t *out = panel + (int64_t)b * MI_Q6_K_UNIT;
                for (int h = 0; h < 2; h++)
                    for (int g = 0; g < 8; g++) {
                        uint8_t *grp = out + (8 * h + g) * 192 + 4 * r;
                        memcpy(grp, blk + 64 * h + 4 * g, 4);
                        memcpy(grp + 64, blk + 64 * h + 32 + 4 * g, 4);
                        memcpy(grp + 128, blk + 128 + 32 * h + 4 * g, 4);
                    }
                for (int s = 0; s < 16; s++) out[3072 + 16 * s + r] = blk[192 + s];
                memcpy(out + 3328 + 2 * r, blk + 208, 2);
            }
        }
    }
}

/* Row r's unsigned code of element i (0..255) in a packed unit (the scalar reference). */
ALWAYS_INLINE int q4_K_code(const uint8_t *u, int r, int i) {
    int c = i / 64, half = (i % 64) / 32, l = i % 32;
    uint8_t byte = u[(8 * c + l / 4) * 64 + 4 * r + l % 4];
    return half ? byte >> 4 : byte & 0x0F;
}
ALWAYS_INLINE int q6_K_code(const uint8_t *u, int r, int i) {
    int h = i / 128, p = (i % 128) / 32, l = i % 32;
    const uint8_t *grp = u + (8 * h + l / 4) * 192 + 4 * r + l % 4;
    int nib = p & 1 ? grp[64] : grp[0];
    nib = p >= 2 ? nib >> 4 : nib & 0x0F;
    return nib | (((grp[128] >> (2 * p)) & 3) << 4);
}

#if defined(MI_VNNI)
/* Row codes of part p (0..3) of a Q6_K unit's group at `grp` (A at +0, C at +64, H at +128):
 * the low 4 bits from A or C, bits 4-5 from H's bits 2p..2p+1 (shifted into place per 16-bit
 * lane; the masks drop what crosses a byte). */
ALWAYS_INLINE __m512i q6_K_codes(const uint8_t *grp, const int p) {
    const __m512i low = _mm512_set1_epi8(0x0F), top = _mm512_set1_epi8(0x30);
    __m512i nib = _mm512_loadu_si512((const void *)(grp + (p & 1) * 64));
    if (p >= 2) nib = _mm512_srli_epi16(nib, 4);
    __m512i h = _mm512_loadu_si512((const void *)(grp + 128));
    h = p == 0 ? _mm512_slli_epi16(h, 4) : p == 1 ? _mm512_slli_epi16(h, 2) : p == 3 ? _mm512_srli_epi16(h, 2) : h;
    // (nib & 0x0F) | (h & 0x30): vpternlogd with 0xEA is (a & b) | c.
    return _mm512_ternarylogic_epi32(nib, low, _mm512_and_si512(h, top), 0xEA);
}

/* MR activation rows x NR panels of Q4_K. Per sub-block the 16 rows' integer dots are scaled by
 * their 6-bit scales in int32 (exact), the mins' term likewise; per super-block both become
 * floats once. */
ALWAYS_INLINE void tile_q4_K(const int MR, const int NR, const int8_t *q, const float *d, const int32_t *bsums,
                             int K, const uint8_t *wp, int64_t panel, int pass, int passes, float *y, int64_t ldy) {
    const int nb = K / 256;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 accf[4][8];
    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) accf[m][j] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *wb = wp + (int64_t)b * MI_Q4_K_UNIT;
        __m512i isum[4][8];
        for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) isum[m][j] = _mm512_setzero_si512();
        for (int s = 0; s < 8; s++) {
            const int c = s / 2, half = s % 2;
            ask_ahead(wp, NR, panel, 8 * b + s, 8 * nb, pass, passes);
            __m512i acc[4][8];
            for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) acc[m][j] = _mm512_setzero_si512();
            for (int g = 0; g < 8; g++) {
                __m512i codes[8];
                for (int j = 0; j < NR; j++) {
                    __m512i w = _mm512_loadu_si512((const void *)(wb + j * panel + (8 * c + g) * 64));
                    codes[j] = _mm512_and_si512(half ? _mm512_srli_epi16(w, 4) : w, low);
                }
                for (int m = 0; m < MR; m++) {
                    __m512i x = _mm512_set1_epi32(load_i32(q + (int64_t)m * K + b * 256 + 64 * c + 32 * half + 4 * g));
                    for (int j = 0; j < NR; j++) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], codes[j], x);
                }
            }
            for (int j = 0; j < NR; j++) {
                __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wb + j * panel + 2048 + 16 * s)));
                for (int m = 0; m < MR; m++) isum[m][j] = _mm512_add_epi32(isum[m][j], _mm512_mullo_epi32(acc[m][j], sc));
            }
        }
        for (int j = 0; j < NR; j++) {
            const uint8_t *u = wb + j * panel;
            __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(u + 2304)));
            __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(u + 2336)));
            for (int m = 0; m < MR; m++) {
                const int32_t *bs = bsums + ((int64_t)m * nb + b) * 16;
                __m512i mins = _mm512_setzero_si512();
                for (int s = 0; s < 8; s++) {
                    __m512i mn = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(u + 2176 + 16 * s)));
                    mins = _mm512_add_epi32(mins, _mm512_mullo_epi32(mn, _mm512_set1_epi32(bs[2 * s] + bs[2 * s + 1])));
                }
                __m512 dx = _mm512_set1_ps(d[(int64_t)m * nb + b]);
                accf[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[m][j]), _mm512_mul_ps(dw, dx), accf[m][j]);
                accf[m][j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, dx), accf[m][j]);
            }
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NR; j++) _mm512_storeu_ps(y + m * ldy + j * 16, accf[m][j]);
}

/* MR activation rows x NR panels of Q6_K. Sub-block s = 8h + 2p + quarter's dots come from the
 * four groups 4·quarter.. of part p; the −32 is taken off each sub-block's dot before its scale. */
ALWAYS_INLINE void tile_q6_K(const int MR, const int NR, const int8_t *q, const float *d, const int32_t *bsums,
                             int K, const uint8_t *wp, int64_t panel, int pass, int passes, float *y, int64_t ldy) {
    const int nb = K / 256;
    __m512 accf[4][8];
    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) accf[m][j] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *wb = wp + (int64_t)b * MI_Q6_K_UNIT;
        __m512i isum[4][8];
        for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) isum[m][j] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            for (int p = 0; p < 4; p++) {
                ask_ahead(wp, NR, panel, 8 * b + 4 * h + p, 8 * nb, pass, passes);
                for (int quarter = 0; quarter < 2; quarter++) {
                    const int s = 8 * h + 2 * p + quarter;
                    __m512i acc[4][8];
                    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) acc[m][j] = _mm512_setzero_si512();
                    for (int g = 4 * quarter; g < 4 * quarter + 4; g++) {
                        __m512i codes[8];
                        for (int j = 0; j < NR; j++) codes[j] = q6_K_codes(wb + j * panel + (8 * h + g) * 192, p);
                        for (int m = 0; m < MR; m++) {
                            __m512i x = _mm512_set1_epi32(load_i32(q + (int64_t)m * K + b * 256 + 128 * h + 32 * p + 4 * g));
                            for (int j = 0; j < NR; j++) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], codes[j], x);
                        }
                    }
                    for (int j = 0; j < NR; j++) {
                        __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(wb + j * panel + 3072 + 16 * s)));
                        for (int m = 0; m < MR; m++) {
                            __m512i shift = _mm512_set1_epi32(32 * bsums[((int64_t)m * nb + b) * 16 + s]);
                            isum[m][j] = _mm512_add_epi32(isum[m][j], _mm512_mullo_epi32(_mm512_sub_epi32(acc[m][j], shift), sc));
                        }
                    }
                }
            }
        }
        for (int j = 0; j < NR; j++) {
            __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + j * panel + 3328)));
            for (int m = 0; m < MR; m++)
                accf[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[m][j]), _mm512_mul_ps(dw, _mm512_set1_ps(d[(int64_t)m * nb + b])), accf[m][j]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NR; j++) _mm512_storeu_ps(y + m * ldy + j * 16, accf[m][j]);
}

#define TILE_K(MR, NR) (type == MI_Q4_K ? tile_q4_K(MR, NR, qm, dm, bm, K, wp, panel, m / 4, (M + 3) / 4, ym, ldy) \
                                        : tile_q6_K(MR, NR, qm, dm, bm, K, wp, panel, m / 4, (M + 3) / 4, ym, ldy))
#endif

ALWAYS_INLINE void gemm_kquant(const int type, const int8_t *q, const float *d, const int32_t *bsums,
                               int M, int K, const uint8_t *w, int n0, int n1, float *y, int64_t ldy) {
    const int nb = K / 256;
    const int unit = type == MI_Q4_K ? MI_Q4_K_UNIT : MI_Q6_K_UNIT;
    const int64_t panel = (int64_t)nb * unit;
#if defined(MI_VNNI)
    for (int n = n0; n < n1;) {
        int nr = panels_per_tile(M, n1 - n);
        const uint8_t *wp = w + (int64_t)(n / 16) * panel;
        for (int m = 0; m < M; m += 4) {
            int mr = M - m < 4 ? M - m : 4;
            const int8_t *qm = q + (int64_t)m * K;
            const float *dm = d + m * nb;
            const int32_t *bm = bsums + m * nb * 16;
            float *ym = y + m * ldy + n;
            DISPATCH_TILE(TILE_K, mr, nr)
        }
        n += nr * 16;
    }
#else
    for (int n = n0; n < n1; n++) {
        const uint8_t *wp = w + (int64_t)(n / 16) * panel;
        int r = n % 16;
        for (int m = 0; m < M; m++) {
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                const uint8_t *u = wp + (int64_t)b * unit;
                const int8_t *xq = q + (int64_t)m * K + b * 256;
                const int32_t *bs = bsums + ((int64_t)m * nb + b) * 16;
                float dx = d[(int64_t)m * nb + b];
                if (type == MI_Q4_K) {
                    int32_t dots = 0, mins = 0;
                    for (int s = 0; s < 8; s++) {
                        int32_t dot = 0;
                        for (int i = 32 * s; i < 32 * s + 32; i++) dot += q4_K_code(u, r, i) * xq[i];
                        dots += u[2048 + 16 * s + r] * dot;
                        mins += u[2176 + 16 * s + r] * (bs[2 * s] + bs[2 * s + 1]);
                    }
                    acc += half_to_float(load_u16(u + 2304 + 2 * r)) * dx * (float)dots;
                    acc -= half_to_float(load_u16(u + 2336 + 2 * r)) * dx * (float)mins;
                } else {
                    int32_t dots = 0;
                    for (int s = 0; s < 16; s++) {
                        int32_t dot = 0;
                        for (int i = 16 * s; i < 16 * s + 16; i++) dot += q6_K_code(u, r, i) * xq[i];
                        dots += (int8_t)u[3072 + 16 * s + r] * (dot - 32 * bs[s]);
                    }
                    acc += half_to_float(load_u16(u + 3328 + 2 * r)) * dx * (float)dots;
                }
            }
            y[m * ldy + n] = acc;
        }
    }
#endif
}

void mi_gemm_kquant(int type, const int8_t *q, const float *d, const int32_t *bsums, int M, int K,
                    const uint8_t *w, int n0, int n1, float *y, int64_t ldy) {
    if (type == MI_Q4_K) gemm_kquant(MI_Q4_K, q, d, bsums, M, K, w, n0, n1, y, ldy);
    else gemm_kquant(MI_Q6_K, q, d, bsums, M, K, w, n0, n1, y, ldy);
}
