// Attention of one query row over cached positions, from an f16 cache (llama.cpp's default
// cache: half the bytes of f32, widened to f32 by vcvtph2ps as it loads) or an 8-bit one (q8:
// int8 codes with an f32 scale per 32 elements, widened by vpmovsxbd + vcvtdq2ps and scaled),
// and the conversions that write either cache.
#include "common.h"

/* Element offset of cached position p within its KV head (chunks of MI_KV_CHUNK positions,
 * chunkStride elements apart; rows of Q within a chunk). */
ALWAYS_INLINE int64_t kv_row(int64_t p, int Q, int64_t chunkStride) {
    return p / MI_KV_CHUNK * chunkStride + p % MI_KV_CHUNK * Q;
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

#if defined(MI_AVX512)
ALWAYS_INLINE __m512 load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* Elements 16c..16c+15 of a cached row as f32: f16 bits, or (q8) int8 codes times their block's
 * scale (scales: the row's Q/32 floats). */
ALWAYS_INLINE __m512 load_kv(const int q8, const void *row, const float *scales, int c) {
    if (!q8) return load_f16((const uint16_t *)row + 16 * c);
    __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)row + 16 * c))));
    return _mm512_mul_ps(x, _mm512_set1_ps(scales[c / 2]));
}

/* A decode step reads each sequence's keys and values once, from memory, as short streams (a
 * KV head's positions: 20 KB for 160 positions of 64), which the hardware prefetcher ramps up
 * on too late. A cold row asks for them ahead: keys AHEAD positions ahead of the scores, every
 * value as its key is scored (the weighted sum reads them next), and the next KV head's first
 * keys before a head starts. Measured on a cache larger than the L3 (64 sequences x 30
 * layers, 160 positions of 3 KV heads of 64): 5.8-8.5 -> 10-11.8 GB/s; in SmolLM2's decode
 * (int8, 1 thread, 128 cached positions) attention went from 4.1-5.1 to 3.1-4.2 ms of an
 * 8-sequence step (interleaved runs, a noisy host). A prompt's rows read the same cache over
 * and over, from L2: there the requests only cost issue slots (Gemma pp512 attention 5-10%
 * slower), so they are not made. */
#define AHEAD 16
/* Asks for a cached row's lines (f16: 2 bytes an element, q8: 1, and its scales' line when a
 * row's scales start one). */
ALWAYS_INLINE void prefetch_row(const int q8, const uint8_t *row, const float *scales, int NQ) {
    const int bytes = 16 * NQ * (q8 ? 1 : 2);
    for (int l = 0; l < bytes; l += 64) _mm_prefetch((const char *)(row + l), _MM_HINT_T0);
    if (q8 && ((uintptr_t)scales & 63) < (uintptr_t)(NQ / 2) * 4) _mm_prefetch((const char *)scales, _MM_HINT_T0);
}

/* Asks for the first AHEAD positions' keys (from `first`) of the KV head starting at element
 * `head` of k. */
ALWAYS_INLINE void prefetch_head(const int q8, const void *k, const float *ks, int64_t head, int64_t chunkStride, int first,
                                 int count, int NQ) {
    for (int p = 0; p < AHEAD && p < count; p++) {
        const int64_t at = head + kv_row(first + p, 16 * NQ, chunkStride);
        prefetch_row(q8, (const uint8_t *)k + at * (q8 ? 1 : 2), q8 ? ks + at / 32 : NULL, NQ);
    }
}

/* The sums of 16 vectors' elements, in order (out[p] = Σ a[p]): pairs of 128-bit lanes added
 * twice (16 vectors → 4, lane l of the i-th holding a partial sum of vector 4i + l), then
 * within lanes, then one permutation back to order. */
ALWAYS_INLINE __m512 sums16(const __m512 *a) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88), _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    __m512 v0 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    __m512 v1 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
    __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, 0x44), _mm512_shuffle_ps(v0, v1, 0xEE));   // w[4l + e] = Σ a[4e + l]
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, w);
}

/* The G query heads sharing one KV head (G = 1: one head), Q = 16·NQ with G·NQ <= 16 (the
 * default model: 3 heads of 64): each key and value row is loaded once for all G heads. Per
 * head: scores 16 positions at a time (each position's products summed in a vector, 16 of them
 * reduced together), softmax with the vector exp, then the weighted values accumulated in NQ
 * registers and scaled once; a head's arithmetic does not depend on G. Positions first..<first
 * + count; position p's row starts at element kv_row(p) of k and v (bytes: times q8 ? 1 : 2),
 * its q8 scales at kv_row(p)/32 of ks and vs. scratch: G·count floats. */
ALWAYS_INLINE void attend_group(const int NQ, const int G, const int q8, const float *q, const void *k, const void *v,
                                const float *ks, const float *vs, int64_t chunkStride, int first, int count, float scale,
                                float *scratch, float *out, const int cold) {
    const int esize = q8 ? 1 : 2, Q = 16 * NQ;
    const uint8_t *kb = (const uint8_t *)k, *vb = (const uint8_t *)v;
    __m512 qv[16];
    for (int h = 0; h < G; h++)
        for (int c = 0; c < NQ; c++) qv[h * NQ + c] = _mm512_mul_ps(_mm512_loadu_ps(q + h * 16 * NQ + 16 * c), _mm512_set1_ps(scale));
    __m512 prod[4][16];
    float m[4];
    for (int h = 0; h < G; h++) m[h] = -INFINITY;
    for (int j = 0; j < count; j += 16) {
        int n = count - j < 16 ? count - j : 16;
        for (int p = 0; p < n; p++) {
            const int64_t at = kv_row(first + j + p, Q, chunkStride);
            const uint8_t *kj = kb + at * esize;
            const float *ksj = q8 ? ks + at / 32 : NULL;
            if (cold) {
                if (j + p + AHEAD < count) {
                    const int64_t ahead = kv_row(first + j + p + AHEAD, Q, chunkStride);
                    prefetch_row(q8, kb + ahead * esize, q8 ? ks + ahead / 32 : NULL, NQ);
                }
                prefetch_row(q8, vb + at * esize, q8 ? vs + at / 32 : NULL, NQ);
            }
            __m512 kc[16];
            for (int c = 0; c < NQ; c++) kc[c] = load_kv(q8, kj, ksj, c);
            for (int h = 0; h < G; h++) {
                __m512 acc = _mm512_mul_ps(qv[h * NQ], kc[0]);
                for (int c = 1; c < NQ; c++) acc = _mm512_fmadd_ps(qv[h * NQ + c], kc[c], acc);
                prod[h][p] = acc;
            }
        }
        for (int h = 0; h < G; h++) {
            float *sh = scratch + (int64_t)h * count;
            if (n == 16) {
                __m512 sv = sums16(prod[h]);
                _mm512_storeu_ps(sh + j, sv);
                float mx = _mm512_reduce_max_ps(sv);
                m[h] = mx > m[h] ? mx : m[h];
            } else {
                for (int p = 0; p < n; p++) {
                    sh[j + p] = _mm512_reduce_add_ps(prod[h][p]);
                    m[h] = sh[j + p] > m[h] ? sh[j + p] : m[h];
                }
            }
        }
    }
    float inv[4];
    for (int h = 0; h < G; h++) {
        float *sh = scratch + (int64_t)h * count;
        __m512 sumv = _mm512_setzero_ps(), vm = _mm512_set1_ps(m[h]);
        for (int j = 0; j < count; j += 16) {
            __mmask16 live = count - j >= 16 ? 0xFFFF : (__mmask16)((1u << (count - j)) - 1);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sh + j), vm));
            _mm512_mask_storeu_ps(sh + j, live, e);
            sumv = _mm512_add_ps(sumv, _mm512_maskz_mov_ps(live, e));
        }
        inv[h] = 1.0f / _mm512_reduce_add_ps(sumv);
    }
    __m512 acc[16];
    for (int i = 0; i < G * NQ; i++) acc[i] = _mm512_setzero_ps();
    for (int j = 0; j < count; j++) {
        const int64_t at = kv_row(first + j, Q, chunkStride);
        const uint8_t *vj = vb + at * esize;
        const float *vsj = q8 ? vs + at / 32 : NULL;
        for (int c = 0; c < NQ; c++) {
            __m512 vc = load_kv(q8, vj, vsj, c);
            for (int h = 0; h < G; h++) acc[h * NQ + c] = _mm512_fmadd_ps(_mm512_set1_ps(scratch[(int64_t)h * count + j]), vc, acc[h * NQ + c]);
        }
    }
    for (int h = 0; h < G; h++)
        for (int c = 0; c < NQ; c++)
            _mm512_storeu_ps(out + h * 16 * NQ + 16 * c, _mm512_mul_ps(acc[h * NQ + c], _mm512_set1_ps(inv[h])));
}
#endif

/* Element i of a cached row as f32: f16 bits, or a q8 code times its block's scale (the scalar
 * reference's read). */
ALWAYS_INLINE float kv_at(const int q8, const void *base, const float *scales, int64_t i) {
    return q8 ? (float)((const int8_t *)base)[i] * scales[i / 32] : half_to_float(((const uint16_t *)base)[i]);
}

/* Softmax attention of one query row (H heads of Q, grouped over KV heads) over `count` cached
 * positions. The scalar path below is the reference arithmetic; with AVX-512 and Q a multiple
 * of 16 up to 256, attend_group computes the same function in another order (and a 2-ulp exp). */
ALWAYS_INLINE void attention_row(const int q8, const float *q, int H, int KV, int Q, const void *k, const void *v,
                                 const float *ks, const float *vs, int64_t headStride, int64_t chunkStride, int first,
                                 int count, float scale, float *scratch, float *out, int cold) {
    int group = H / KV;
    const int esize = q8 ? 1 : 2;
#if defined(MI_AVX512)
    if (Q % 16 == 0 && Q <= 256) {
        // Heads of 64 attend their KV head's group together (2–4 heads); others one at a time.
        const int NQ = Q / 16, G = NQ == 4 && group >= 2 && group <= 4 ? group : 1;
        for (int h = 0; h < H; h += G) {
            const float *qh = q + h * Q;
            const int64_t head = (h / group) * headStride;   // elements
            const uint8_t *kh = (const uint8_t *)k + head * esize, *vh = (const uint8_t *)v + head * esize;
            const float *ksh = q8 ? ks + head / 32 : NULL, *vsh = q8 ? vs + head / 32 : NULL;
            float *oh = out + h * Q;
            // A cold row asks for the first KV head's first keys, and the next KV head's before
            // this one starts.
            if (cold && h == 0) prefetch_head(q8, k, ks, head, chunkStride, first, count, NQ);
            if (cold && h + G < H && (h + G) / group != h / group)
                prefetch_head(q8, k, ks, ((h + G) / group) * headStride, chunkStride, first, count, NQ);
#define ATTEND(NQ_, G_) (cold ? attend_group(NQ_, G_, q8, qh, kh, vh, ksh, vsh, chunkStride, first, count, scale, scratch, oh, 1) \
                              : attend_group(NQ_, G_, q8, qh, kh, vh, ksh, vsh, chunkStride, first, count, scale, scratch, oh, 0))
            if (NQ == 4) { switch (G) { case 2: ATTEND(4, 2); break; case 3: ATTEND(4, 3); break; case 4: ATTEND(4, 4); break; default: ATTEND(4, 1); } }
            else if (NQ == 8) ATTEND(8, 1);
            else if (NQ == 16) ATTEND(16, 1);
            else ATTEND(NQ, 1);
#undef ATTEND
        }
        return;
    }
#endif
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * Q;
        int64_t g = (h / group) * headStride;
        float mx = -INFINITY;
        for (int j = 0; j < count; j++) {
            float sc = 0;
            for (int i = 0; i < Q; i++) sc += qh[i] * kv_at(q8, k, ks, g + kv_row(first + j, Q, chunkStride) + i);
            sc *= scale;
            scratch[j] = sc;
            mx = sc > mx ? sc : mx;
        }
        float sum = 0;
        for (int j = 0; j < count; j++) { float e = expf(scratch[j] - mx); scratch[j] = e; sum += e; }
        float *oh = out + h * Q;
        memset(oh, 0, sizeof(float) * Q);
        float inv = 1.0f / sum;
        for (int j = 0; j < count; j++)
            for (int i = 0; i < Q; i++) oh[i] += scratch[j] * inv * kv_at(q8, v, vs, g + kv_row(first + j, Q, chunkStride) + i);
    }
}

void mi_attention_row(const float *q, int H, int KV, int Q,
                      const uint16_t *k, const uint16_t *v, int64_t headStride, int64_t chunkStride, int first, int count,
                      float scale, float *scratch, float *out, int cold) {
    attention_row(0, q, H, KV, Q, k, v, NULL, NULL, headStride, chunkStride, first, count, scale, scratch, out, cold);
}

void mi_attention_row_q8(const float *q, int H, int KV, int Q,
                         const int8_t *k, const int8_t *v, const float *ks, const float *vs, int64_t headStride,
                         int64_t chunkStride, int first, int count, float scale, float *scratch, float *out, int cold) {
    attention_row(1, q, H, KV, Q, k, v, ks, vs, headStride, chunkStride, first, count, scale, scratch, out, cold);
}
