// f32 GEMM over packed panels of 16 output channels (layout in CKernels.h): each k loads one
// 64-byte vector of 16 channels' weights and FMAs it against a broadcast activation
// (`vfmadd231ps`), 6 activation rows x 2 panels per tile.
#include "common.h"

int mi_simd_level(void) {
#if defined(MI_VNNI)
    return 2;
#elif defined(MI_AVX512)
    return 1;
#else
    return 0;
#endif
}

void mi_pack_f32(const float *w, int64_t ldw, int N, int K, float *packed) {
    for (int p = 0; p < N / 16; p++)
        for (int k = 0; k < K; k++)
            for (int lane = 0; lane < 16; lane++)
                packed[((int64_t)p * K + k) * 16 + lane] = w[(int64_t)(p * 16 + lane) * ldw + k];
}

#if defined(MI_AVX512)
ALWAYS_INLINE void tile_f32(const int MR, const int NR, const float *x, int64_t ldx, int K,
                            const float *wp, float *y, int64_t ldy) {
    __m512 acc[6][2];
    for (int m = 0; m < MR; m++) for (int j = 0; j < NR; j++) acc[m][j] = _mm512_setzero_ps();
    const int64_t panel = (int64_t)K * 16;
    for (int k = 0; k < K; k++) {
        __m512 w[2];
        for (int j = 0; j < NR; j++) w[j] = _mm512_loadu_ps(wp + j * panel + (int64_t)k * 16);
        for (int m = 0; m < MR; m++) {
            __m512 xb = _mm512_set1_ps(x[m * ldx + k]);
            for (int j = 0; j < NR; j++) acc[m][j] = _mm512_fmadd_ps(w[j], xb, acc[m][j]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NR; j++) _mm512_storeu_ps(y + m * ldy + j * 16, acc[m][j]);
}
#endif

void mi_gemm_f32(const float *x, int64_t ldx, int M, int K, const float *packed,
                 int n0, int n1, float *y, int64_t ldy) {
#if defined(MI_AVX512)
    for (int n = n0; n < n1;) {
        int nr = (n1 - n >= 32) ? 2 : 1;
        const float *wp = packed + (int64_t)(n / 16) * K * 16;
        for (int m = 0; m < M; m += 6) {
            int mr = M - m < 6 ? M - m : 6;
            if (nr == 2) { DISPATCH_MR(tile_f32, 2, mr, x + m * ldx, ldx, K, wp, y + m * ldy + n, ldy) }
            else { DISPATCH_MR(tile_f32, 1, mr, x + m * ldx, ldx, K, wp, y + m * ldy + n, ldy) }
        }
        n += nr * 16;
    }
#else
    for (int n = n0; n < n1; n++) {
        const float *wp = packed + (int64_t)(n / 16) * K * 16 + n % 16;
        for (int m = 0; m < M; m++) {
            float acc = 0;
            for (int k = 0; k < K; k++) acc += wp[(int64_t)k * 16] * x[m * ldx + k];
            y[m * ldy + n] = acc;
        }
    }
#endif
}

