// Attention of one query row over cached positions, from an f16 cache (llama.cpp's default
// cache: half the bytes of f32, widened to f32 by vcvtph2ps as it loads) or an 8-bit one (q8:
// int8 codes with an f32 scale per 32 elements), and the writes that fill either cache.
#include "common.h"
#include <float.h>

/* The cache layout (KVCache; element offsets, bytes times 2 for f16). Positions come in chunks
 * of C = MI_KV_CHUNK, chunkStride apart; a chunk holds each layer's positions in tiles of 16,
 * tileStride apart, and a tile every KV head's keys and values for its 16 positions, KV head g
 * at g·headStride: keys (16·Q elements), then values (16 rows of Q). A sequence's layer is
 * then one contiguous run of tiles, which a decode step reads front to back: measured on this
 * AMD host (32 sequences x 30 layers, 160 positions of 3 KV heads of 64, from memory), such
 * runs stream at 19-22 GB/s on one core, a run per head and K/V (10 KB each) at 11-12.
 * - f16: keys transposed (element d of the 16 positions at 16·d + p%16: one load holds the
 *   16 positions' element d, so a tile's scores need no horizontal sums), values as rows.
 * - q8: values as rows of signed codes; keys transposed in pairs, 2 elements of each of the 16
 *   positions per 32 bytes, byte (d/2)·32 + (p%16)·2 + d%2 — widened to 16-bit (vpmovsxbw),
 *   the lanes vpdpwssd multiplies by a pair of broadcast 16-bit query codes. Scales in a
 *   second allocation mirroring the codes divided by 32: the 16·Q codes at element E have
 *   their scales at float E/32, block b of position p at b·16 + p%16. */
ALWAYS_INLINE int64_t kv_tile(int64_t p, int64_t tileStride, int64_t chunkStride) {
    return p / MI_KV_CHUNK * chunkStride + (p % MI_KV_CHUNK) / 16 * tileStride;
}
/* Where a q8 key's code (p%16 = r, element d) sits within its tile's keys. */
ALWAYS_INLINE int q8_key(int r, int d) { return d / 2 * 32 + r * 2 + d % 2; }

/* A query head's Q floats as 16-bit codes per block of 32 (scale absmax / 32767, codes rounded
 * to nearest even): the q8 cache's scores multiply them by the keys' codes exactly, and their
 * rounding (2^-16 of a block's largest element) leaves a score within float rounding of the
 * float query's. */
ALWAYS_INLINE void query_i16(const float *x, int Q, int16_t *codes, float *scales) {
    for (int b = 0; b < Q / 32; b++) {
        // A block too small for a normal scale (below ~4e-34) scores as zeros.
        const float amax = abs_max(x + 32 * b, 32), d = amax / 32767, inv = d >= FLT_MIN ? 1 / d : 0;
        int i = 32 * b;
#if defined(MI_AVX512)
        // vcvtps2dq rounds to nearest even (the default rounding mode), as lrintf does.
        for (; i < 32 * b + 32; i += 16)
            _mm256_storeu_si256((__m256i *)(codes + i), _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(inv)))));
#endif
        for (; i < 32 * b + 32; i++) codes[i] = (int16_t)lrintf(x[i] * inv);
        scales[b] = d;
    }
}

void mi_f32_to_f16(const float *x, uint16_t *out, int n) {
    int i = 0;
#if defined(MI_AVX512)
    // vcvtps2ph rounds to nearest even, as float_to_half does.
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}

void mi_f32_to_kv_q8(const float *x, int8_t *codes, float *scales, int n) {
    for (int b = 0; b < n / 32; b++) {
        // Q8_0's rule (absmax / 127), the scale kept in f32.
        const float amax = abs_max(x + 32 * b, 32), d = amax / 127;
        round_to_int8(x + 32 * b, 32, d > 0 ? 1 / d : 0, codes + 32 * b);
        scales[b] = d;
    }
}

void mi_kv_write_f16(const float *k, const float *v, int Q, uint16_t *head, int64_t tileStride, int64_t chunkStride,
                     int position) {
    uint16_t *keys = head + kv_tile(position, tileStride, chunkStride), bits[Q];
    const int r = position % 16;
    mi_f32_to_f16(k, bits, Q);
    for (int i = 0; i < Q; i++) keys[16 * i + r] = bits[i];
    mi_f32_to_f16(v, keys + 16 * Q + r * Q, Q);
}

void mi_kv_write_q8(const float *k, const float *v, int Q, int8_t *head, float *scales, int64_t tileStride,
                    int64_t chunkStride, int position) {
    const int64_t keys = kv_tile(position, tileStride, chunkStride), values = keys + 16 * Q;
    const int r = position % 16;
    int8_t codes[Q];
    float d[Q / 32];
    mi_f32_to_kv_q8(k, codes, d, Q);
    for (int i = 0; i < Q; i++) head[keys + q8_key(r, i)] = codes[i];
    for (int b = 0; b < Q / 32; b++) scales[keys / 32 + b * 16 + r] = d[b];
    mi_f32_to_kv_q8(v, head + values + r * Q, d, Q);
    for (int b = 0; b < Q / 32; b++) scales[values / 32 + b * 16 + r] = d[b];
}

#if defined(MI_AVX512)
ALWAYS_INLINE __m512 load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* Scores of G query heads (q: G·Q floats, already times `scale`) against one KV head's tile
 * of f16 keys (transposed: element d of the 16 positions at 16·d): per element, the 16 keys
 * widened (vcvtph2ps) and multiplied by each head's broadcast query element, summed in two
 * registers per head (two dependency chains). */
ALWAYS_INLINE void scores_f16(const int G, int Q, const float *q, const uint16_t *keys, __m512 *s) {
    __m512 acc[8][2];
    for (int h = 0; h < G; h++) acc[h][0] = acc[h][1] = _mm512_setzero_ps();
    for (int d = 0; d < Q; d += 2) {
        const __m512 k0 = load_f16(keys + 16 * d), k1 = load_f16(keys + 16 * (d + 1));
        for (int h = 0; h < G; h++) {
            acc[h][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[h * Q + d]), k0, acc[h][0]);
            acc[h][1] = _mm512_fmadd_ps(_mm512_set1_ps(q[h * Q + d + 1]), k1, acc[h][1]);
        }
    }
    for (int h = 0; h < G; h++) s[h] = _mm512_add_ps(acc[h][0], acc[h][1]);
}

/* Scores of G query heads (16-bit codes qc: G·Q, per 32 the scale dq·`scale`) against one KV
 * head's tile of q8 keys: per block of 32, 16 pairs of elements, each the tile's 32 codes
 * widened to 16 bits (vpmovsxbw) and multiplied by the heads' broadcast pair of query codes
 * (vpdpwssd; two sums in turn, for two dependency chains), then converted and scaled by the
 * tile's 16 key scales times dq. */
ALWAYS_INLINE void scores_q8(const int G, int Q, const int16_t *qc, const float *dq, const int8_t *keys,
                             const float *kscales, __m512 *s) {
#if defined(MI_VNNI)
    const int NB = Q / 32;
    for (int h = 0; h < G; h++) s[h] = _mm512_setzero_ps();
    for (int b = 0; b < NB; b++) {
        __m512i dot[8][2];
        for (int h = 0; h < G; h++) dot[h][0] = dot[h][1] = _mm512_setzero_si512();
        for (int i = 0; i < 16; i += 2) {
            const __m512i k0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(keys + (b * 16 + i) * 32)));
            const __m512i k1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(keys + (b * 16 + i + 1) * 32)));
            for (int h = 0; h < G; h++) {
                const int16_t *qh = qc + h * Q + 32 * b + 2 * i;
                dot[h][0] = _mm512_dpwssd_epi32(dot[h][0], k0, _mm512_set1_epi32(load_i32(qh)));
                dot[h][1] = _mm512_dpwssd_epi32(dot[h][1], k1, _mm512_set1_epi32(load_i32(qh + 2)));
            }
        }
        const __m512 dk = _mm512_loadu_ps(kscales + 16 * b);
        for (int h = 0; h < G; h++)
            s[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dot[h][0], dot[h][1])), _mm512_mul_ps(dk, _mm512_set1_ps(dq[h * NB + b])), s[h]);
    }
#else
    (void)Q, (void)qc, (void)dq, (void)keys, (void)kscales, (void)s;   // q8 runs attend_tiles only with VNNI
#endif
}

/* All H query heads of one row, G at a time (the query heads of one KV head, or a part of
 * them), over positions first..<first + count, in one pass over the row's tiles: per tile and
 * KV head, the G heads' 16 scores (scores_f16, scores_q8), then the softmax online (each head's
 * running maximum m and Σ e; when a tile raises m, what is summed so far is rescaled by
 * e^(old − new)), then the values weighted by e (q8: e times the block's value scale) added
 * into `out` (the weighted sums, divided by Σ e at the end), in slices of CC 16-column
 * registers per head (G·CC <= 16). A value row is widened 16 elements at a time: vcvtph2ps
 * (f16), vpmovsxbd + vcvtdq2ps (q8). */
ALWAYS_INLINE void attend_tiles(const int q8, const int G, const int CC, int H, int KV, int Q, const float *q,
                                const void *kv, const float *scales, int64_t headStride, int64_t tileStride,
                                int64_t chunkStride, int first, int count, float scale, float *out) {
    const int group = H / KV, NB = Q / 32, end = first + count;
    // The queries times `scale` (f16), or as 16-bit codes (q8), scale folded into dq.
    float qs[q8 ? 1 : H * Q];
    int16_t qc[q8 ? H * Q : 1];
    float dq[q8 ? H * NB : 1];
    for (int h = 0; h < H; h++) {
        if (!q8) {
            for (int i = 0; i < Q; i += 16) _mm512_storeu_ps(qs + h * Q + i, _mm512_mul_ps(_mm512_loadu_ps(q + h * Q + i), _mm512_set1_ps(scale)));
            continue;
        }
        query_i16(q + h * Q, Q, qc + h * Q, dq + h * NB);
        for (int b = 0; b < NB; b++) dq[h * NB + b] *= scale;
    }
    float m[H], total[H];
    for (int h = 0; h < H; h++) { m[h] = -INFINITY; total[h] = 0; }
    for (int i = 0; i < H * Q; i += 16) _mm512_storeu_ps(out + i, _mm512_setzero_ps());
    for (int t = first & ~15; t < end; t += 16) {
        const int lo = t < first ? first - t : 0, hi = end - t < 16 ? end - t : 16;
        const __mmask16 live = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        const int64_t tile = kv_tile(t, tileStride, chunkStride);
        for (int h0 = 0; h0 < H; h0 += G) {
            const int64_t keys = tile + (h0 / group) * headStride, values = keys + 16 * Q;
            __m512 s[8];
            if (q8) scores_q8(G, Q, qc + h0 * Q, dq + h0 * NB, (const int8_t *)kv + keys, scales + keys / 32, s);
            else scores_f16(G, Q, qs + h0 * Q, (const uint16_t *)kv + keys, s);
            // The running maxima, and the factors e^(old − new) that rescale the sums so far
            // (0 before a head's first tile; lanes beyond G unused).
            float mt[16], fix[16];
            for (int h = 0; h < 16; h++) mt[h] = fix[h] = 0;
            for (int h = 0; h < G; h++) {
                const float x = _mm512_mask_reduce_max_ps(live, s[h]);
                mt[h] = x > m[h0 + h] ? x : m[h0 + h];
                fix[h] = m[h0 + h] - mt[h];
            }
            _mm512_storeu_ps(fix, exp_ps(_mm512_loadu_ps(fix)));
            float w[8][16 * 8];   // (head, value block b · 16 + position in the tile): the weights (q8: Q <= 256)
            for (int h = 0; h < G; h++) {
                if (m[h0 + h] == -INFINITY) fix[h] = 0;
                const __m512 e = _mm512_maskz_mov_ps(live, exp_ps(_mm512_sub_ps(s[h], _mm512_set1_ps(mt[h]))));
                total[h0 + h] = total[h0 + h] * fix[h] + _mm512_reduce_add_ps(e);
                m[h0 + h] = mt[h];
                if (q8) for (int b = 0; b < NB; b++) _mm512_storeu_ps(w[h] + 16 * b, _mm512_mul_ps(e, _mm512_loadu_ps(scales + values / 32 + 16 * b)));
                else _mm512_storeu_ps(w[h], e);
            }
            for (int c0 = 0; c0 < Q / 16; c0 += CC) {
                float *o = out + h0 * Q + 16 * c0;
                __m512 a[16];
                for (int h = 0; h < G; h++)
                    for (int c = 0; c < CC; c++) a[h * CC + c] = _mm512_mul_ps(_mm512_loadu_ps(o + h * Q + 16 * c), _mm512_set1_ps(fix[h]));
                for (int p = lo; p < hi; p++) {
                    for (int c = 0; c < CC; c++) {
                        const int col = 16 * (c0 + c);
                        const __m512 vc = q8 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)kv + values + p * Q + col))))
                                             : load_f16((const uint16_t *)kv + values + p * Q + col);
                        for (int h = 0; h < G; h++) a[h * CC + c] = _mm512_fmadd_ps(_mm512_set1_ps(w[h][q8 ? col / 32 * 16 + p : p]), vc, a[h * CC + c]);
                    }
                }
                for (int h = 0; h < G; h++)
                    for (int c = 0; c < CC; c++) _mm512_storeu_ps(o + h * Q + 16 * c, a[h * CC + c]);
            }
        }
    }
    for (int h = 0; h < H; h++) {
        const __m512 inv = _mm512_set1_ps(total[h] > 0 ? 1.0f / total[h] : 0);   // no positions: zeros, as the portable path
        for (int i = 0; i < Q; i += 16) _mm512_storeu_ps(out + h * Q + i, _mm512_mul_ps(_mm512_loadu_ps(out + h * Q + i), inv));
    }
}

/* Query heads taken together: the KV head's group when it is 1, 2, 3, 4 or 8 heads, else the
 * largest of those dividing it. */
ALWAYS_INLINE int heads_together(int group) {
    return group <= 4 || group == 8 ? group : group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 3 == 0 ? 3 : group % 2 == 0 ? 2 : 1;
}

/* Calls attend_tiles with compile-time G and CC (16-column registers per head: up to 8, at
 * most 16 over the G heads, dividing Q/16). */
#define ATTEND_CC(Q8, G_)                                                                                                  \
    {                                                                                                                      \
        const int nq = Q / 16;                                                                                             \
        if ((G_) <= 2 && nq % 8 == 0) ATTEND_TILES(Q8, G_, 8);                                                             \
        else if ((G_) <= 4 && nq % 4 == 0) ATTEND_TILES(Q8, G_, 4);                                                        \
        else if ((G_) <= 8 && nq % 2 == 0) ATTEND_TILES(Q8, G_, 2);                                                        \
        else ATTEND_TILES(Q8, G_, 1);                                                                                      \
    }
#define ATTEND(Q8)                                                                                                         \
    switch (heads_together(H / KV)) {                                                                                      \
    case 1: ATTEND_CC(Q8, 1); break;                                                                                       \
    case 2: ATTEND_CC(Q8, 2); break;                                                                                       \
    case 3: ATTEND_CC(Q8, 3); break;                                                                                       \
    case 4: ATTEND_CC(Q8, 4); break;                                                                                       \
    default: ATTEND_CC(Q8, 8); break;                                                                                      \
    }
#define ATTEND_TILES(Q8, G_, CC_) \
    attend_tiles(Q8, G_, CC_, H, KV, Q, q, kv, scales, headStride, tileStride, chunkStride, first, count, scale, out)

/* A decode row (`cold`) reads its layer's tiles once, from memory, as one run that the hardware
 * prefetcher follows; asking for the first tile before the first scores starts that run. Asking
 * for every tile ahead of its use (as the per-head layout needed) made the run slower here. */
ALWAYS_INLINE void prefetch_first_tile(const void *kv, const float *scales, int esize, int KV, int Q, int64_t tileStride,
                                       int64_t chunkStride, int first) {
    const int64_t tile = kv_tile(first & ~15, tileStride, chunkStride);
    for (int64_t l = 0; l < 2 * KV * 16 * Q * esize; l += 64) _mm_prefetch((const char *)kv + tile * esize + l, _MM_HINT_T0);
    if (scales)
        for (int64_t l = 0; l < 2 * KV * 16 * Q / 32 * 4; l += 64) _mm_prefetch((const char *)(scales + tile / 32) + l, _MM_HINT_T0);
}
#endif

/* The portable paths' softmax: `count` scores to e^(s − max) in place; returns 1 / Σ e. */
static float softmax_scalar(float *scratch, int count) {
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j < count; j++) mx = scratch[j] > mx ? scratch[j] : mx;
    for (int j = 0; j < count; j++) { float e = expf(scratch[j] - mx); scratch[j] = e; sum += e; }
    return 1.0f / sum;
}

/* Softmax attention of one query row (H heads of Q, grouped over KV heads) over `count` f16
 * cached positions. The portable path below is the reference arithmetic (two passes: scores,
 * then the weighted values); with AVX-512 and Q a multiple of 16, attend_tiles computes the
 * same function in one pass with the softmax online (and a 2-ulp exp). */
void mi_attention_row(const float *q, int H, int KV, int Q, const uint16_t *kv, int64_t headStride, int64_t tileStride,
                      int64_t chunkStride, int first, int count, float scale, float *scratch, float *out, int cold) {
#if defined(MI_AVX512)
    if (Q % 16 == 0) {
        const float *scales = NULL;
        if (cold) prefetch_first_tile(kv, NULL, 2, KV, Q, tileStride, chunkStride, first);
        ATTEND(0)
        return;
    }
#endif
    const int group = H / KV;
    for (int h = 0; h < H; h++) {
        const uint16_t *head = kv + (h / group) * headStride;
        const float *qh = q + h * Q;
        for (int j = 0; j < count; j++) {
            const int p = first + j;
            const uint16_t *keys = head + kv_tile(p, tileStride, chunkStride) + p % 16;
            float sc = 0;
            for (int i = 0; i < Q; i++) sc += qh[i] * half_to_float(keys[16 * i]);
            scratch[j] = sc * scale;
        }
        const float inv = softmax_scalar(scratch, count);
        float *oh = out + h * Q;
        memset(oh, 0, sizeof(float) * Q);
        for (int j = 0; j < count; j++) {
            const int p = first + j;
            const uint16_t *row = head + kv_tile(p, tileStride, chunkStride) + 16 * Q + p % 16 * Q;
            for (int i = 0; i < Q; i++) oh[i] += scratch[j] * inv * half_to_float(row[i]);
        }
    }
}

/* The same over a q8 cache. The portable path is the reference: each head's query as 16-bit
 * codes per 32 (query_i16: codes qc, scales dq), score = scale · Σ_b dq_b · dk_b · Σ qc·kc
 * over block b, values dv_b · vc. attend_tiles computes the same with the integer sums exact. */
void mi_attention_row_q8(const float *q, int H, int KV, int Q, const int8_t *kv, const float *scales, int64_t headStride,
                         int64_t tileStride, int64_t chunkStride, int first, int count, float scale, float *scratch,
                         float *out, int cold) {
#if defined(MI_VNNI)
    if (Q <= 256) {
        if (cold) prefetch_first_tile(kv, scales, 1, KV, Q, tileStride, chunkStride, first);
        ATTEND(1)
        return;
    }
#endif
    const int group = H / KV, NB = Q / 32;
    for (int h = 0; h < H; h++) {
        const int8_t *head = kv + (h / group) * headStride;
        const float *hs = scales + (h / group) * headStride / 32;
        int16_t qc[Q];
        float dq[NB];
        query_i16(q + h * Q, Q, qc, dq);
        for (int j = 0; j < count; j++) {
            const int p = first + j;
            const int64_t keys = kv_tile(p, tileStride, chunkStride);
            float sc = 0;
            for (int b = 0; b < NB; b++) {
                int dot = 0;
                for (int i = 32 * b; i < 32 * b + 32; i++) dot += qc[i] * head[keys + q8_key(p % 16, i)];
                sc += dq[b] * hs[keys / 32 + b * 16 + p % 16] * (float)dot;
            }
            scratch[j] = sc * scale;
        }
        const float inv = softmax_scalar(scratch, count);
        float *oh = out + h * Q;
        memset(oh, 0, sizeof(float) * Q);
        for (int j = 0; j < count; j++) {
            const int p = first + j;
            const int64_t values = kv_tile(p, tileStride, chunkStride) + 16 * Q;
            for (int i = 0; i < Q; i++)
                oh[i] += scratch[j] * inv * hs[values / 32 + i / 32 * 16 + p % 16] * (float)head[values + p % 16 * Q + i];
        }
    }
}
