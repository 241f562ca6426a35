// Attention of one query row over cached positions, and the dot/axpy it is made of.
#include "common.h"

float mi_dot(const float *a, const float *b, int n) {
    int i = 0;
#if defined(MI_AVX512)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#else
    float acc = 0;
#endif
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void mi_axpy(float a, const float *x, float *y, int n) {
    int i = 0;
#if defined(MI_AVX512)
    __m512 va = _mm512_set1_ps(a);
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

void mi_attention_row(const float *q, int H, int KV, int Q,
                      const float *k, const float *v, int64_t kvStride, int count,
                      float scale, float *scratch, float *out) {
    int group = H / KV;
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * Q;
        int g = h / group;
        float mx = -INFINITY;
        for (int j = 0; j < count; j++) {
            float sc = mi_dot(qh, k + j * kvStride + g * Q, Q) * scale;
            scratch[j] = sc;
            mx = sc > mx ? sc : mx;
        }
        float sum = 0;
        for (int j = 0; j < count; j++) { float e = expf(scratch[j] - mx); scratch[j] = e; sum += e; }
        float *oh = out + h * Q;
        memset(oh, 0, sizeof(float) * Q);
        float inv = 1.0f / sum;
        for (int j = 0; j < count; j++) mi_axpy(scratch[j] * inv, v + j * kvStride + g * Q, oh, Q);
    }
}

