// The softmax of attention.cpp (finalize_attn) and the fm_t exponential it calls, in three forms that
// give the same bits (softmax_isa.h compiled portable / AVX2 + FMA / AVX-512, chosen like the kernels
// of kernels.c). See include/moepack_kernels.h for the contracts.
//
// Exactness of the fast exponential (exp_fm_poly_ in softmax_isa.h). The emulation defines
// hls::exp(fm_t x) as E(x) = floor(exp_libm(x / 2^22) * 2^22) with the C library's double exp
// (expFm in FixedEmulationKernels.swift). For an integer x in [-16*2^22, 0):
//  1. x / 2^22 is exact. k = nearest integer to x/ln2 (any k with |r| <= 0.35 would do), and
//     r = (x - k*LN2_HI) - k*LN2_LO: |k| <= 24, LN2_HI has 33 significant bits, so k*LN2_HI is
//     exact and x - k*LN2_HI is exact (Sterbenz, or k = 0); the rest costs <= 2^-53 |r| + 24*2^-86,
//     so |r| <= 0.347 and e^r_computed = e^r_true * (1 + e1), |e1| < 2^-52.
//  2. p = sum_{i<=12} r^i / i!. Truncation: e^0.347 * 0.347^13 / 13! < 2.5e-16 < 2^-51 absolute,
//     relative to e^r >= e^-0.347 = 0.707 below 2^-50. Rounding: each term passes at most 26
//     roundings (its coefficient's and every step's; Estrin's order as written takes at most 16,
//     fused multiply-adds fewer), so the error is <= gamma_26 * sum |c_i| |r|^i <= 26 * 2^-53 *
//     e^0.347 < 2^-47.6, relative below 2^-47.1. So p = e^r (1 + e2), |e2| < 2^-46.
//  3. y = p * 2^(k+22) is exact (a power of two, no underflow: k >= -24), so |y - e^x 2^22| <=
//     2^22 * 2^-46 = 2^-24 (e^x <= 1).
//  4. glibc's exp is within 1 ulp (documented 0.511 ulp; we allow 4): |exp_libm(x) 2^22 - e^x 2^22|
//     <= 4 * 2^-52 * 2^22 = 2^-28. So both lie in [y - 2^-21, y + 2^-21] (2^-24 + 2^-28 < 2^-21).
//  5. With DELTA = 2^-20: h = y + DELTA is computed with error <= ulp(2^22)/2 = 2^-31, f = floor(h)
//     and h - f (exact: the fraction bits of h). When h - f >= 2*DELTA: y >= h - DELTA - 2^-31 >=
//     f + DELTA - 2^-31, so y - 2^-21 > f; and y <= h - DELTA + 2^-31 < f + 1 - DELTA + 2^-31, so
//     y + 2^-21 < f + 1. Every number in [y - 2^-21, y + 2^-21] then floors to f, so E(x) = f.
//     Otherwise the library is called (about 2^-19 of all arguments).
// Outside [-16*2^22, 0): x < -16*2^22 gives e^x * 2^22 < e^-16 * 2^22 < 0.48 and the library's
// value is within 2^-28 of it, so E(x) = 0 = E(-16*2^22), the value computed for it; x = 0 gives
// exp_libm(0) = 1 exactly (C11 F.10.3.1), so E(0) = 2^22; x > 0 (only after a wrapped argument)
// always calls the library.
#include "moepack_kernels.h"

#include <math.h>
#include <string.h>

#include "isa_x86.h"

#define FM_ONE (1 << 22)
/// At and below this argument (raw) E(x) = 0.
#define EXP_ZERO_BELOW (-(16 << 22))

/// E(x) through the C library, with the saturation of the Swift reference (doubleToFm): a value at
/// or beyond 2^31 raw saturates to INT32_MAX and counts as a wrap.
static int32_t exp_fm_libm(int32_t x, int64_t *wraps) {
    const double v = exp((double)x / 4194304.0);
    const double s = floor(v * 4194304.0);
    if (!(s < 2147483648.0)) {
        (*wraps)++;
        return INT32_MAX;
    }
    if (s < -2147483648.0) {
        (*wraps)++;
        return INT32_MIN;
    }
    return (int32_t)s;
}

// The forms of isa_forms.h, AVX2 with FMA: the fused polynomial needs fewer instructions and gives
// the same bits (step 2 above holds for every fusion).
#define ISA_FORMS_FILE "softmax_isa.h"
#define ISA_FORMS_AVX2_TARGET "avx2,fma"
#include "isa_forms.h"

/// The form to run: moepack_kernels_runnable's, the AVX2 form only where FMA runs too.
static moepack_isa softmax_runnable(moepack_isa isa) {
    isa = moepack_kernels_runnable(isa);
#if MOEPACK_X86
    if (isa == MOEPACK_ISA_AVX2 && !__builtin_cpu_supports("fma")) isa = MOEPACK_ISA_PORTABLE;
#endif
    return isa;
}

int32_t moepack_exp_fm(int32_t x, int64_t *wraps) {
    int32_t e;
    exp_fm_batch_portable(&x, 1, &e);
    return e >= 0 ? e : exp_fm_libm(x, wraps);
}

void moepack_exp_fm_many(moepack_isa isa, const int32_t *x, ptrdiff_t n, int32_t *e, int64_t *wraps) {
    switch (softmax_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: exp_fm_batch_avx512(x, n, e); break;
    case MOEPACK_ISA_AVX2: exp_fm_batch_avx2(x, n, e); break;
#endif
    default: exp_fm_batch_portable(x, n, e); break;
    }
    for (ptrdiff_t i = 0; i < n; i++)
        if (e[i] < 0) e[i] = exp_fm_libm(x[i], wraps);
}

int64_t moepack_attn_softmax(moepack_isa isa, const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                             int32_t *weights, int32_t *scratch, int64_t *abs_sum, int *all_nonneg) {
    switch (softmax_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: return attn_softmax_avx512(scores, keys, first, weights, scratch, abs_sum, all_nonneg);
    case MOEPACK_ISA_AVX2: return attn_softmax_avx2(scores, keys, first, weights, scratch, abs_sum, all_nonneg);
#endif
    default: return attn_softmax_portable(scores, keys, first, weights, scratch, abs_sum, all_nonneg);
    }
}
