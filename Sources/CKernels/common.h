// Internal to the kernels: the SIMD targets, the f16 conversion and loads every family uses.
// Each kernel has a portable scalar path, and an AVX-512 (+VNNI) path compiled when the target
// has it (this package builds CKernels with -march=native). The scalar paths define the exact
// arithmetic; the SIMD paths compute the same sums in a different order.
#ifndef MESHINFER_KERNELS_COMMON_H
#define MESHINFER_KERNELS_COMMON_H
#include "CKernels.h"
#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define MI_AVX512 1
#if defined(__AVX512VNNI__)
#define MI_VNNI 1
#endif
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) { bits = sign; }
        else { // subnormal
            float f = (float)mant * (1.0f / 16777216.0f);
            memcpy(&bits, &f, 4); bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float out; memcpy(&out, &bits, 4); return out;
}

/* f32 -> f16 bits, rounded to nearest, ties to even (as F16C's vcvtps2ph and Swift's
 * Float16(x) round); beyond f16's range: infinity, below half its smallest subnormal: zero. */
ALWAYS_INLINE uint16_t float_to_half(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t a = bits & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00;   // NaN
    int exp = (int)(a >> 23) - 127;              // unbiased exponent (f32 subnormals: -127)
    if (exp >= 16) return sign | 0x7C00;         // at least 2^16: infinity
    // The value as a multiple of the f16 unit at its exponent, 2^(exp - 10) for normals
    // (exp >= -14) and 2^-24 for subnormals: the 24-bit mantissa shifted right by `shift`.
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    int shift = exp >= -14 ? 13 : -1 - exp;
    if (shift > 24) return sign;                 // under half the smallest subnormal
    uint32_t q = mant >> shift, rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (q & 1))) q++;
    // A normal's q carries its implicit bit (2^10): adding the exponent field minus one on top
    // gives the f16 bits, and a rounding carry out of the mantissa raises the exponent
    // (to infinity past 65504). A subnormal's q is its bits (1024: the smallest normal).
    return sign | (uint16_t)(exp >= -14 ? ((uint32_t)(exp + 14) << 10) + q : q);
}

ALWAYS_INLINE uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
ALWAYS_INLINE int32_t load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }



#if defined(MI_AVX512)
/* Weight streams ask for their bytes 16 KiB ahead of use, into L2: every line of
 * [p + 16 KiB, p + 16 KiB + n) for the n bytes a tile is about to consume at p. The hardware
 * prefetcher alone keeps too few lines in flight for several panel streams (measured on the
 * Intel host, Q8_0 1536 x 576 from memory, 1 row: 66-70 -> 58-64 us). */
ALWAYS_INLINE void prefetch_ahead(const uint8_t *p, int n) {
    for (int l = 0; l < n; l += 64) _mm_prefetch((const char *)(p + 16384 + l), _MM_HINT_T1);
}

/* What a tile (NR panels of `panel` bytes at `tile`, consumed in `steps` equal steps per pass
 * over its activation rows) asks for at step `step` of pass `pass` of `passes`:
 * - one pass (up to 4 rows: decode): the step's own bytes of each panel 16 KiB ahead, which
 *   keeps the tile's panel streams going while it computes;
 * - several passes (rows 4 at a time over the same panels, the later ones from cache): the
 *   next tile's bytes (the NR panels after these), spread evenly over every step of every
 *   pass, so memory streams the next tile all the while the passes compute. Asking only in
 *   the first pass left memory idle during the others (Q8_0 from memory, 8 rows, 576 x 1536:
 *   48-50 -> 37-43 us, 1536 x 576: 52-54 -> 40-45 us; 32 rows: 143-152 -> 124-128 us). */
ALWAYS_INLINE void ask_ahead(const uint8_t *tile, int NR, int64_t panel, int64_t step, int64_t steps, int pass, int passes) {
    if (passes == 1) {
        const int bytes = (int)(panel / steps);
        for (int j = 0; j < NR; j++) prefetch_ahead(tile + j * panel + step * bytes, bytes);
        return;
    }
    const int64_t lines = (NR * panel + 63) / 64, s = (int64_t)pass * steps + step, S = (int64_t)passes * steps;
    for (int64_t l = s * lines / S; l < (s + 1) * lines / S; l++)
        _mm_prefetch((const char *)(tile + NR * panel + 64 * l), _MM_HINT_T1);
}
#endif

/* The tile walk of the panel formats (blocks.c, kquants.c): how many 16-row panels a tile of
 * `M` activation rows covers with `left` output rows to go. Decode (one row) keeps eight
 * panels' streams in flight, two rows four; more rows run tiles of up to 4 rows x 2 panels,
 * which reuse each unpacked panel. Each output's arithmetic is the same whatever the tile. */
ALWAYS_INLINE int panels_per_tile(int M, int left) {
    return (M == 1 && left >= 128) ? 8 : (M <= 2 && left >= 64) ? 4 : left >= 32 ? 2 : 1;
}
/* Calls TILE(MR, NR) with compile-time sizes for a tile of mr (1..4) rows and nr panels. */
#define DISPATCH_TILE(TILE, mr, nr) \
    if (nr == 8) TILE(1, 8); \
    else if (nr == 4) { if (mr == 1) TILE(1, 4); else TILE(2, 4); } \
    else if (nr == 2) { switch (mr) { case 1: TILE(1, 2); break; case 2: TILE(2, 2); break; case 3: TILE(3, 2); break; default: TILE(4, 2); } } \
    else { switch (mr) { case 1: TILE(1, 1); break; case 2: TILE(2, 1); break; case 3: TILE(3, 1); break; default: TILE(4, 1); } }

#if defined(MI_AVX512)
/* Calls FN(MR, NR, ...) with a compile-time MR of 1..6. */
#define DISPATCH_MR(FN, NR, MR, ...) \
    switch (MR) { case 1: FN(1, NR, __VA_ARGS__); break; case 2: FN(2, NR, __VA_ARGS__); break; \
                  case 3: FN(3, NR, __VA_ARGS__); break; case 4: FN(4, NR, __VA_ARGS__); break; \
                  case 5: FN(5, NR, __VA_ARGS__); break; default: FN(6, NR, __VA_ARGS__); break; }
#endif

/* Activation quantization's two passes over a block of n floats (the scalar loops define the
 * result; the AVX-512 path, for n a multiple of 16, is bitwise the same: the same products,
 * rounded to nearest-even as lrintf does in the default rounding mode). */
ALWAYS_INLINE float abs_max(const float *x, int n) {
#if defined(MI_AVX512)
    if (n % 16 == 0) {
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
        return _mm512_reduce_max_ps(m);
    }
#endif
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/// q[i] = round(x[i] · inv) (|x · inv| <= 127 by construction); returns Σ q.
ALWAYS_INLINE int round_to_int8(const float *x, int n, float inv, int8_t *q) {
#if defined(MI_AVX512)
    if (n % 16 == 0) {
        __m512 vinv = _mm512_set1_ps(inv);
        __m512i sum = _mm512_setzero_si512();
        for (int i = 0; i < n; i += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));
            _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtsepi32_epi8(v));
            sum = _mm512_add_epi32(sum, v);
        }
        return _mm512_reduce_add_epi32(sum);
    }
#endif
    int sum = 0;
    for (int i = 0; i < n; i++) {
        int v = (int)lrintf(x[i] * inv);
        q[i] = (int8_t)v;
        sum += v;
    }
    return sum;
}

#if defined(MI_AVX512)
/* e^x for 16 floats, within 2 ulp of expf over the range that matters here: x = n·ln2 + r with
 * n = round(x·log2 e) and |r| <= ln2/2 (ln2 split in two for an exact r), e^r by its Taylor
 * polynomial to degree 6 (truncation < 1.3e-7 relative), scaled by 2^n with vscalefps (which
 * gives 0 or inf beyond the float range, as expf does). */
ALWAYS_INLINE __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

#endif
