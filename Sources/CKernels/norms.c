// Norms, activations and RoPE: the per-row elementwise ops.
#include "common.h"

/* Σ x² in double (as GGML sums a norm's squares). The scalar loop is one chain of dependent
 * adds (~0.7 µs for a 576-wide row: most of a decode step's norm time); the AVX-512 path
 * keeps 16 partial sums in two double vectors and adds them up at the end. */
double mi_sum_squares(const float *x, int n) {
    double ss = 0;
    int i = 0;
#if defined(MI_AVX512)
    __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
    for (; i + 16 <= n; i += 16) {
        __m512d lo = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), hi = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        a = _mm512_fmadd_pd(lo, lo, a);
        b = _mm512_fmadd_pd(hi, hi, b);
    }
    ss = _mm512_reduce_add_pd(_mm512_add_pd(a, b));
#endif
    for (; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

void mi_rms_scale(const float *x, const float *w, int n, double sumSquares, int count, float eps, float *out) {
    float scale = (float)(1.0 / sqrt(sumSquares / count + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void mi_rmsnorm(const float *x, const float *w, int n, float eps, float *out) {
    mi_rms_scale(x, w, n, mi_sum_squares(x, n), n, eps, out);
}

/* SwiGLU: silu(gate) · up = gate / (1 + e^−gate) · up. */
void mi_swiglu(const float *gate, const float *up, int n, float *out) {
    int i = 0;
#if defined(MI_AVX512)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* GeGLU with the tanh-approximated GELU: gelu(gate) · up, gelu(x) = x/2 · (1 + tanh(u)),
 * u = √(2/π)·(x + 0.044715·x³), computed as x / (1 + e^−2u) (the same function, without the
 * cancellation of 1 + tanh u where tanh u ≈ −1). */
void mi_geglu(const float *gate, const float *up, int n, float *out) {
    const float c = 0.7978845608028654f, k = 0.044715f;
    int i = 0;
#if defined(MI_AVX512)
    const __m512 one = _mm512_set1_ps(1.0f), m2c = _mm512_set1_ps(-2 * c), vk = _mm512_set1_ps(k);
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(gate + i);
        __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(vk, x), _mm512_mul_ps(x, x), x);   // x + k·x³
        __m512 e = exp_ps(_mm512_mul_ps(m2c, inner));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float x = gate[i];
        out[i] = x / (1.0f + expf(-2 * c * (x + k * x * x * x))) * up[i];
    }
}

/* RoPE of one head in place (Su et al. 2021): each pair (a, b) becomes (a·c − b·s, a·s + b·c)
 * with cs = (half, 2) cos, sin. GGML's normal mode pairs elements (2i, 2i + 1), NeoX mode
 * (i, i + half). AVX-512: normal mode takes 8 pairs per vector (cos and sin duplicated into
 * their pair's lanes by movel/hdup, the partner by an in-lane swap, one fmaddsub); NeoX mode
 * 16 pairs (cos and sin gathered from the interleaved table by two-source permutes). Either
 * rounds b·s (or b·c) once and the other product inside the fused add, as the scalar loop
 * does when contracted; tested against a double reference within 2 ulp. */
void mi_rope(float *x, const float *cs, int half, int neox) {
    int i = 0;
#if defined(MI_AVX512)
    if (!neox) {
        for (; i + 8 <= half; i += 8) {
            __m512 v = _mm512_loadu_ps(x + 2 * i), t = _mm512_loadu_ps(cs + 2 * i);
            __m512 swapped = _mm512_permute_ps(v, 0xB1);                  // (b, a) per pair
            __m512 partner = _mm512_mul_ps(swapped, _mm512_movehdup_ps(t)); // (b·s, a·s)
            _mm512_storeu_ps(x + 2 * i, _mm512_fmaddsub_ps(v, _mm512_moveldup_ps(t), partner));
        }
    } else {
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for (; i + 16 <= half; i += 16) {
            __m512 t0 = _mm512_loadu_ps(cs + 2 * i), t1 = _mm512_loadu_ps(cs + 2 * i + 16);
            __m512 c = _mm512_permutex2var_ps(t0, even, t1), s = _mm512_permutex2var_ps(t0, odd, t1);
            __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + half + i);
            _mm512_storeu_ps(x + i, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s)));
            _mm512_storeu_ps(x + half + i, _mm512_fmadd_ps(a, s, _mm512_mul_ps(b, c)));
        }
    }
#endif
    const int stride = neox ? half : 1, step = neox ? 1 : 2;
    for (; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float *p = x + i * step;
        float a = p[0], b = p[stride];
        p[0] = a * c - b * s;
        p[stride] = a * s + b * c;
    }
}
