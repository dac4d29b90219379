// Per-row steps of the fixed-point emulation around the linear kernels: layernorm.cpp's
// compute_norm and the input-row preparation of the blocked linear layer, in three forms that give
// the same bits (rows_isa.h compiled portable / AVX2 / AVX-512, chosen like the kernels of
// kernels.c). See include/moepack_kernels.h for the contracts.
#include "moepack_kernels.h"

#include <math.h>

#include "isa_x86.h"

/// sqrtFm (FixedEmulationKernels.swift): floor(sqrt(v * 2^22)) exactly; v < 0 gives 0 and a wrap.
static int32_t rows_sqrt_fm(int32_t v, int64_t *wraps) {
    if (v < 0) {
        (*wraps)++;
        return 0;
    }
    const uint64_t n = (uint64_t)v << 22;
    uint64_t r = (uint64_t)sqrt((double)n);
    while (r * r > n) r--;
    while ((r + 1) * (r + 1) <= n) r++;
    return (int32_t)r;
}

/// recipFm: floor(2^44 / d) wrapped; d <= 0 saturates to INT32_MAX with a wrap.
static int32_t rows_recip_fm(int32_t d, int64_t *wraps) {
    if (d <= 0) {
        (*wraps)++;
        return INT32_MAX;
    }
    const int64_t q = ((int64_t)1 << 44) / d;
    *wraps += (q < INT32_MIN) | (q > INT32_MAX);
    return (int32_t)(uint32_t)q;
}

#define ISA_FORMS_FILE "rows_isa.h"
#include "isa_forms.h"

int64_t moepack_layer_norm(moepack_isa isa, const int32_t *x, ptrdiff_t rows, ptrdiff_t n, int32_t inv_dim,
                           int64_t eps, const int32_t *weight, int weight_frac, const int32_t *bias, int32_t *out) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: return layer_norm_avx512(x, rows, n, inv_dim, eps, weight, weight_frac, bias, out);
    case MOEPACK_ISA_AVX2: return layer_norm_avx2(x, rows, n, inv_dim, eps, weight, weight_frac, bias, out);
#endif
    default: return layer_norm_portable(x, rows, n, inv_dim, eps, weight, weight_frac, bias, out);
    }
}

int moepack_linear_split_rows(moepack_isa isa, const int32_t *x, ptrdiff_t n, int rows, double *norms,
                              int16_t *a, int16_t *b4) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: return linear_split_rows_avx512(x, n, rows, norms, a, b4);
    case MOEPACK_ISA_AVX2: return linear_split_rows_avx2(x, n, rows, norms, a, b4);
#endif
    default: return linear_split_rows_portable(x, n, rows, norms, a, b4);
    }
}
