// Norms and activations.
#include "common.h"

double mi_sum_squares(const float *x, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

void mi_rms_scale(const float *x, const float *w, int n, double sumSquares, int count, float eps, float *out) {
    float scale = (float)(1.0 / sqrt(sumSquares / count + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void mi_rmsnorm(const float *x, const float *w, int n, float eps, float *out) {
    mi_rms_scale(x, w, n, mi_sum_squares(x, n), n, eps, out);
}

void mi_swiglu(const float *gate, const float *up, int n, float *out) {
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

