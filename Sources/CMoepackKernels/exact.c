// Dispatch of the exact replays (include/moepack_exact.h): the same loops compiled for portable C,
// AVX2 and AVX-512 (exact_isa.h), one chosen per process like the kernels of kernels.c.
#include "moepack_exact.h"

#include <stdlib.h>

#include "isa_x86.h"

// Lanes per chunk: one AVX-512 vector of int32 (two of AVX2).
#define EXACT_LANES 16

#define ISA_FORMS_FILE "exact_isa.h"
#include "isa_forms.h"

#if MOEPACK_X86
#include <immintrin.h>

// AVX2 form of the replay that dominates, linear.cpp with the fast Int16 weights, in 32-bit lanes
// (the same values and counts as exact_isa.h, whose loops need 64-bit lanes and run at half the
// speed; for the int32-weight replays of attention the compiled loops are as fast as hand-written
// AVX2, which has no 64-bit arithmetic shift).

/// The count of lanes whose 32-bit `acc + addend` left int32, subtracted from `ov` (so -ov counts),
/// and the wrapped sum s. The exact sum left int32 iff s moved the wrong way: s < acc with
/// addend >= 0, or s > acc with addend < 0 (s = acc iff addend = 0), i.e. iff (s < acc) != (addend < 0).
__attribute__((target("avx2"))) static inline __m256i acc_add_avx2(__m256i acc, __m256i addend, __m256i *ov) {
    const __m256i s = _mm256_add_epi32(acc, addend);
    const __m256i t = _mm256_xor_si256(_mm256_cmpgt_epi32(acc, s), _mm256_cmpgt_epi32(_mm256_setzero_si256(), addend));
    *ov = _mm256_add_epi32(*ov, t);
    return s;
}

/// Int16 weights, shift 14, per product (linear.cpp with the fast weights), 8 lanes per vector,
/// on x split once per chunk into xh = x >> 16 and xl = x & 0xFFFF (x = xh*2^16 + xl).
/// With q = xh*w and c = floor(xl*w / 2^14), both exact in int32, the floored product is
/// p = 4q + c. With r = q + floor(c/4), p = 4r + (c & 3), so p lies in int32 iff
/// -2^29 <= r < 2^29 (the top three bits of r agree), and p mod 2^32 = (r << 2) + (c & 3).
__attribute__((target("avx2"))) static inline __m256i product14_avx2(__m256i xh, __m256i xl, __m256i wv,
                                                                     __m256i *fit) {
    const __m256i q = _mm256_mullo_epi32(xh, wv);
    const __m256i c = _mm256_srai_epi32(_mm256_mullo_epi32(xl, wv), 14);
    const __m256i r = _mm256_add_epi32(q, _mm256_srai_epi32(c, 2));
    const __m256i r4 = _mm256_slli_epi32(r, 2);
    *fit = _mm256_add_epi32(*fit, _mm256_cmpeq_epi32(_mm256_srai_epi32(r4, 2), r));
    return _mm256_add_epi32(r4, _mm256_and_si256(c, _mm256_set1_epi32(3)));
}

/// The same product when it provably fits int32 (|x|*|w| < 2^45): p mod 2^32 = 4q + c, with
/// 4q mod 2^32 = xh * (4w) mod 2^32 (w4v = 4w).
__attribute__((target("avx2"))) static inline __m256i product14_fits_avx2(__m256i xh, __m256i xl, __m256i wv,
                                                                          __m256i w4v) {
    return _mm256_add_epi32(_mm256_mullo_epi32(xh, w4v), _mm256_srai_epi32(_mm256_mullo_epi32(xl, wv), 14));
}

/// Lanes l0 .. l0+16 of `outs` outputs; returns the wraps. Outputs whose largest |w| times the
/// chunk's largest |x| is below 2^45 cannot have a product outside int32 and skip that check.
/// `split` holds 2 * 16 * n int32 (x's halves, [i][xh 16 lanes, xl 16 lanes]).
__attribute__((target("avx2"))) static int64_t replay_w16s14_avx2(const int32_t *x, ptrdiff_t ldx, const int16_t *w,
                                                                  ptrdiff_t ldw, ptrdiff_t outs, ptrdiff_t n,
                                                                  int32_t *acc, ptrdiff_t ld_acc, int32_t *split) {
    int64_t maxX = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        for (int l = 0; l < 16; l++) {
            const int32_t xv = x[i * ldx + l];
            const int64_t a = xv < 0 ? -(int64_t)xv : xv;
            maxX = a > maxX ? a : maxX;
            split[i * 32 + l] = xv >> 16;
            split[i * 32 + 16 + l] = xv & 0xFFFF;
        }
    int64_t total = 0;
    for (ptrdiff_t o = 0; o < outs; o++) {
        const int16_t *wo = w + o * ldw;
        int32_t *ao = acc + o * ld_acc;
        int32_t maxW = 0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const int32_t a = wo[i] < 0 ? -(int32_t)wo[i] : wo[i];
            maxW = a > maxW ? a : maxW;
        }
        __m256i a0 = _mm256_loadu_si256((const __m256i *)ao), a1 = _mm256_loadu_si256((const __m256i *)(ao + 8));
        __m256i fit = _mm256_setzero_si256(), ov = _mm256_setzero_si256();
        const int fits = maxX * maxW < ((int64_t)1 << 45);
        if (fits) {
            for (ptrdiff_t i = 0; i < n; i++) {
                const __m256i wv = _mm256_set1_epi32(wo[i]), w4v = _mm256_set1_epi32(4 * (int32_t)wo[i]);
                const int32_t *si = split + i * 32;
                a0 = acc_add_avx2(a0, product14_fits_avx2(_mm256_loadu_si256((const __m256i *)si),
                                                          _mm256_loadu_si256((const __m256i *)(si + 16)), wv, w4v), &ov);
                a1 = acc_add_avx2(a1, product14_fits_avx2(_mm256_loadu_si256((const __m256i *)(si + 8)),
                                                          _mm256_loadu_si256((const __m256i *)(si + 24)), wv, w4v), &ov);
            }
        } else {
            for (ptrdiff_t i = 0; i < n; i++) {
                const __m256i wv = _mm256_set1_epi32(wo[i]);
                const int32_t *si = split + i * 32;
                a0 = acc_add_avx2(a0, product14_avx2(_mm256_loadu_si256((const __m256i *)si),
                                                     _mm256_loadu_si256((const __m256i *)(si + 16)), wv, &fit), &ov);
                a1 = acc_add_avx2(a1, product14_avx2(_mm256_loadu_si256((const __m256i *)(si + 8)),
                                                     _mm256_loadu_si256((const __m256i *)(si + 24)), wv, &fit), &ov);
            }
        }
        _mm256_storeu_si256((__m256i *)ao, a0);
        _mm256_storeu_si256((__m256i *)(ao + 8), a1);
        // fit holds -(products that fit) per lane, ov -(accumulator wraps); n <= 2^31 / 16 per lane.
        int32_t f[8], v[8];
        _mm256_storeu_si256((__m256i *)f, fit);
        _mm256_storeu_si256((__m256i *)v, ov);
        if (!fits) total += 16 * (int64_t)n;
        for (int l = 0; l < 8; l++) total += (int64_t)f[l] - (int64_t)v[l];
    }
    return total;
}

/// Per product with int32 weights, one output, G vectors of 8 lanes: the low dword of
/// floor(x*w / 2^s) is that of the logical shift of the 64-bit product (they differ only above bit
/// 63 - s >= 32), so each 8 lanes take two 32x32-bit products (even lanes, then odd lanes shifted
/// down) and a blend. `check` (a constant at each call) counts the floored products that leave
/// int32: floor(p / 2^s) lies in int32 iff -2^(31+s) <= p < 2^(31+s), i.e. iff p + 2^(31+s), read
/// unsigned (it lies in [0, 2^63]), is below 2^(32+s). Without `check` the caller has proved that
/// no product leaves int32.
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
w32_group_avx2(const int32_t *x, ptrdiff_t ldx, const int32_t *w, ptrdiff_t n, int32_t *acc, __m128i sh,
               __m128i sh_fit, __m256i fit_bias, __m256i *ov, __m256i *fit, const int check, const int G) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i a[4];
    for (int g = 0; g < G; g++) a[g] = _mm256_loadu_si256((const __m256i *)(acc + 8 * g));
    for (ptrdiff_t i = 0; i < n; i++) {
        // A zero weight adds 0 (a product that fits) to every lane: nothing changes, nothing
        // wraps (attention's weights are mostly 0 when the scores spread far).
        if (w[i] == 0) continue;
        const __m256i wv = _mm256_set1_epi32(w[i]);
        const int32_t *xi = x + i * ldx;
        for (int g = 0; g < G; g++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xi + 8 * g));
            const __m256i pe = _mm256_mul_epi32(xv, wv);
            const __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(xv, 32), wv);
            if (check) {
                const __m256i fe = _mm256_cmpeq_epi64(_mm256_srl_epi64(_mm256_add_epi64(pe, fit_bias), sh_fit), zero);
                const __m256i fo = _mm256_cmpeq_epi64(_mm256_srl_epi64(_mm256_add_epi64(po, fit_bias), sh_fit), zero);
                *fit = _mm256_add_epi64(*fit, _mm256_add_epi64(fe, fo));
            }
            const __m256i even = _mm256_srl_epi64(pe, sh);
            const __m256i odd = _mm256_srl_epi64(po, sh);
            a[g] = acc_add_avx2(a[g], _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA), ov);
        }
    }
    for (int g = 0; g < G; g++) _mm256_storeu_si256((__m256i *)(acc + 8 * g), a[g]);
}

/// All lanes of one output in the form of w32_group_avx2; returns the wraps.
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) int64_t
replay_w32_avx2(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes, const int32_t *w, ptrdiff_t n, int shift,
                int32_t *acc, const int check) {
    const __m128i sh = _mm_cvtsi32_si128(shift), sh_fit = _mm_cvtsi32_si128(32 + shift);
    const __m256i fit_bias = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (31 + shift)));
    __m256i ov = _mm256_setzero_si256(), fit = _mm256_setzero_si256();
    // Groups of 4 vectors (32 lanes: a row's whole cache lines) per step, then single vectors;
    // G is a constant at each call, so the accumulators stay in registers.
    ptrdiff_t l0 = 0;
    for (; l0 + 32 <= lanes; l0 += 32)
        w32_group_avx2(x + l0, ldx, w, n, acc + l0, sh, sh_fit, fit_bias, &ov, &fit, check, 4);
    for (; l0 < lanes; l0 += 8)
        w32_group_avx2(x + l0, ldx, w, n, acc + l0, sh, sh_fit, fit_bias, &ov, &fit, check, 1);
    // ov holds -(accumulator wraps) per int32 lane (n <= 2^31 / 4 per lane), fit -(products that
    // fit) per int64 lane.
    int32_t v[8];
    int64_t f[4];
    _mm256_storeu_si256((__m256i *)v, ov);
    _mm256_storeu_si256((__m256i *)f, fit);
    // Every product of a non-zero weight was checked.
    ptrdiff_t nonzero = 0;
    for (ptrdiff_t i = 0; i < n; i++) nonzero += w[i] != 0;
    int64_t total = check ? (int64_t)nonzero * lanes : 0;
    for (int l = 0; l < 8; l++) total -= v[l];
    for (int l = 0; l < 4; l++) total += f[l];
    return total;
}

/// 1 when no floored product floor(x[i*ldx + l] * w[i] / 2^shift) (i < n, l < lanes, lanes % 8 == 0)
/// leaves int32: when every 0 <= w[i] <= 2^shift (attention's weights, at most 1.0), since then
/// -2^31 <= x*w / 2^shift <= x for every int32 x; else when max |x| * max |w| < 2^(31 + shift).
__attribute__((target("avx2"))) static int fits_w32_avx2(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                                                         const int32_t *w, ptrdiff_t n, int shift) {
    int64_t maxW = 0, minW = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const int64_t a = w[i] < 0 ? -(int64_t)w[i] : w[i];
        maxW = a > maxW ? a : maxW;
        minW = w[i] < minW ? w[i] : minW;
    }
    if (minW >= 0 && maxW <= ((int64_t)1 << shift)) return 1;
    if (maxW == 0) return 1;
    // Every |x| (as unsigned 32-bit: |INT32_MIN| = 2^31) must be at most (2^(31+shift) - 1) / maxW;
    // the scan stops at the first row that exceeds it.
    const int64_t limit = (((int64_t)1 << (31 + shift)) - 1) / maxW;
    if (limit >= ((int64_t)1 << 31)) return 1;
    const __m256i lim = _mm256_set1_epi32((int32_t)limit);
    for (ptrdiff_t i = 0; i < n; i++) {
        __m256i m = _mm256_setzero_si256();
        for (ptrdiff_t l0 = 0; l0 < lanes; l0 += 8)
            m = _mm256_max_epu32(m, _mm256_abs_epi32(_mm256_loadu_si256((const __m256i *)(x + i * ldx + l0))));
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(m, lim), lim)) != -1) return 0;
    }
    return 1;
}

/// Per product with int32 weights, `outs` outputs, lanes in whole vectors of 8: per output,
/// without the per-product check where fits_w32_avx2 proves that no product leaves int32.
__attribute__((target("avx2"))) static int64_t replay_w32_outs_avx2(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                                                                    const int32_t *w, ptrdiff_t ldw, ptrdiff_t outs,
                                                                    ptrdiff_t n, int shift, int32_t *acc,
                                                                    ptrdiff_t ld_acc) {
    int64_t total = 0;
    for (ptrdiff_t o = 0; o < outs; o++) {
        const int32_t *wo = w + o * ldw;
        int32_t *ao = acc + o * ld_acc;
        total += fits_w32_avx2(x, ldx, lanes, wo, n, shift) ? replay_w32_avx2(x, ldx, lanes, wo, n, shift, ao, 0)
                                                            : replay_w32_avx2(x, ldx, lanes, wo, n, shift, ao, 1);
    }
    return total;
}

/// Exact floor(x*w / 2^s) of int32 lanes (low dwords of `x`) and a broadcast weight, as int64
/// lanes. AVX2 has no 64-bit arithmetic shift: logical shift, then the sign bit (now bit 63 - s)
/// extended by (v ^ m) - m with m = 2^(63 - s).
__attribute__((target("avx2"))) static inline __m256i floored_product_avx2(__m256i x, __m256i wv, __m128i sh,
                                                                           __m256i m) {
    return _mm256_sub_epi64(_mm256_xor_si256(_mm256_srl_epi64(_mm256_mul_epi32(x, wv), sh), m), m);
}

/// One group of G vectors (G a constant at each call, so u, k and v stay in registers) of one
/// output of replay_block8_avx2; adds the equalities to *equal.
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
block8_group_avx2(const int32_t *x, ptrdiff_t ldx, const int16_t *w16, const int32_t *w32, ptrdiff_t n, __m128i sh,
                  __m256i m, int scaled, __m128i ssh, __m256i sm, __m256i sv, int32_t *ao, __m256i *equal,
                  const int G) {
    const __m256i half = _mm256_set1_epi64x((int64_t)1 << 31);
    const __m256i low = _mm256_set1_epi64x(0xFFFFFFFFLL);
    const __m256i zero = _mm256_setzero_si256();
    __m256i v[4], u[4], k[4];
    __m256i eq = *equal;
    // V = A + 2^31 for the outer accumulator A (start value sign-extended).
    for (int g = 0; g < G; g++)
        v[g] = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(ao + 4 * g))), half);
    for (ptrdiff_t i0 = 0; i0 < n; i0 += 8) {
        const ptrdiff_t i1 = i0 + 8 < n ? i0 + 8 : n;
        // U = block sum + 2^31 (block sum 0), k its high dword (carried from step to step).
        for (int g = 0; g < G; g++) { u[g] = half; k[g] = zero; }
        for (ptrdiff_t i = i0; i < i1; i++) {
            const __m256i wv = _mm256_set1_epi64x(w32 != NULL ? w32[i] : w16[i]);
            const int32_t *xi = x + i * ldx;
            for (int g = 0; g < G; g++) {
                const __m256i xv = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(xi + 4 * g)));
                u[g] = _mm256_add_epi64(u[g], floored_product_avx2(xv, wv, sh, m));
                const __m256i kn = _mm256_srli_epi64(u[g], 32);
                eq = _mm256_add_epi64(eq, _mm256_cmpeq_epi64(kn, k[g]));
                k[g] = kn;
            }
        }
        for (int g = 0; g < G; g++) {
            // The wrapped block sum + 2^31 (low dword of U).
            __m256i addend = _mm256_and_si256(u[g], low);
            if (scaled) {
                // addend = fm_t(block sum * scale): mul_epi32 reads the low dword, signed.
                const __m256i p = _mm256_add_epi64(floored_product_avx2(_mm256_sub_epi64(addend, half), sv, ssh, sm), half);
                eq = _mm256_add_epi64(eq, _mm256_cmpeq_epi64(_mm256_srli_epi64(p, 32), zero));
                addend = _mm256_and_si256(p, low);
            }
            const __m256i kv = _mm256_srli_epi64(v[g], 32);
            v[g] = _mm256_add_epi64(v[g], _mm256_sub_epi64(addend, half));
            eq = _mm256_add_epi64(eq, _mm256_cmpeq_epi64(_mm256_srli_epi64(v[g], 32), kv));
        }
    }
    // The low dwords of V - 2^31, in lane order.
    for (int g = 0; g < G; g++) {
        const __m256i out = _mm256_permutevar8x32_epi32(_mm256_sub_epi64(v[g], half),
                                                        _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        _mm_storeu_si128((__m128i *)(ao + 4 * g), _mm256_castsi256_si128(out));
    }
    *equal = eq;
}

/// Block forms (moe.cpp's gate, attention.cpp's Q·K) in int64 lanes, 4 lanes per vector, whole
/// vectors only. Wraps are counted from prefix sums instead of a chain of assignments: with S_j
/// the exact sum of the first j addends of one accumulator (each addend exact for the block sum,
/// wrapped for the outer sum) and k_j = floor((S_j + 2^31) / 2^32), the accumulator holds
/// S_j - 2^32*k_j, and step j's exact value S_j - 2^32*k_(j-1) leaves int32 iff k_j != k_(j-1).
/// The lanes keep U = S + 2^31, so k is the high dword of U and the wrapped value the low dword
/// with its top bit flipped. Counts equalities, returned as (checks - equalities).
__attribute__((target("avx2"))) static int64_t replay_block8_avx2(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                                                                  const int16_t *w16, const int32_t *w32, ptrdiff_t ldw,
                                                                  ptrdiff_t outs, ptrdiff_t n, int shift, int scaled,
                                                                  int32_t scale, int scale_shift, int32_t *acc,
                                                                  ptrdiff_t ld_acc) {
    const __m128i sh = _mm_cvtsi32_si128(shift), ssh = _mm_cvtsi32_si128(scale_shift);
    const __m256i m = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - shift)));
    const __m256i sm = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - scale_shift)));
    const __m256i sv = _mm256_set1_epi64x(scale);
    const ptrdiff_t blocks = (n + 7) / 8;
    __m256i equal = _mm256_setzero_si256();
    for (ptrdiff_t o = 0; o < outs; o++) {
        const int16_t *wo16 = w16 != NULL ? w16 + o * ldw : NULL;
        const int32_t *wo32 = w32 != NULL ? w32 + o * ldw : NULL;
        // Groups of 4 vectors side by side (16 lanes: whole cache lines of x), then single vectors.
        ptrdiff_t l0 = 0;
        for (; l0 + 16 <= lanes; l0 += 16)
            block8_group_avx2(x + l0, ldx, wo16, wo32, n, sh, m, scaled, ssh, sm, sv, acc + o * ld_acc + l0, &equal, 4);
        for (; l0 < lanes; l0 += 4)
            block8_group_avx2(x + l0, ldx, wo16, wo32, n, sh, m, scaled, ssh, sm, sv, acc + o * ld_acc + l0, &equal, 1);
    }
    int64_t e[4];
    _mm256_storeu_si256((__m256i *)e, equal);
    const int64_t checks = (int64_t)outs * lanes * (n + blocks * (scaled ? 2 : 1));
    return checks + e[0] + e[1] + e[2] + e[3];
}

/// The hand-written AVX2 forms above, for the replays one of them covers: returns 1 and the wraps
/// in *total, or 0 (nothing done) when none does. Lanes past whole vectors take exact_isa.h's AVX2 loops.
__attribute__((target("avx2"))) static int replay_hand_avx2(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                                                            const int16_t *w16, const int32_t *w32, ptrdiff_t ldw,
                                                            ptrdiff_t outs, ptrdiff_t n, int shift,
                                                            moepack_replay_form form, int32_t scale, int scale_shift,
                                                            int32_t *acc, ptrdiff_t ld_acc, int64_t *total) {
    if (form == MOEPACK_REPLAY_PER_PRODUCT && w16 != NULL && shift == 14) {
        // Whole chunks of 16 lanes in the vector form, the rest in the loops of exact_isa.h.
        int32_t *split = lanes >= 16 ? malloc(sizeof(int32_t) * 32 * (size_t)(n > 0 ? n : 1)) : NULL;
        const ptrdiff_t whole = split != NULL ? lanes - lanes % 16 : 0;
        *total = 0;
        for (ptrdiff_t l0 = 0; l0 < whole; l0 += 16)
            *total += replay_w16s14_avx2(x + l0, ldx, w16, ldw, outs, n, acc + l0, ld_acc, split);
        free(split);
        if (whole < lanes)
            *total += replay_lanes_avx2(x + whole, ldx, lanes - whole, w16, w32, ldw, outs, n, shift, form, scale,
                                        scale_shift, acc + whole, ld_acc);
        return 1;
    }
    if (form == MOEPACK_REPLAY_PER_PRODUCT && w32 != NULL && lanes % 8 == 0 && shift <= 31) {
        *total = replay_w32_outs_avx2(x, ldx, lanes, w32, ldw, outs, n, shift, acc, ld_acc);
        return 1;
    }
    if (form != MOEPACK_REPLAY_PER_PRODUCT) {
        // Whole vectors of 4 lanes in the vector form, the rest in the loops of exact_isa.h.
        const ptrdiff_t whole = lanes - lanes % 4;
        *total = replay_block8_avx2(x, ldx, whole, w16, w32, ldw, outs, n, shift, form == MOEPACK_REPLAY_BLOCK8_SCALED,
                                    scale, scale_shift, acc, ld_acc);
        if (whole < lanes)
            *total += replay_lanes_avx2(x + whole, ldx, lanes - whole, w16, w32, ldw, outs, n, shift, form, scale,
                                        scale_shift, acc + whole, ld_acc);
        return 1;
    }
    return 0;
}
#endif

int64_t moepack_replay_lanes(moepack_isa isa, const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                             const int16_t *w16, const int32_t *w32, ptrdiff_t ldw, ptrdiff_t outs,
                             ptrdiff_t n, int shift, moepack_replay_form form, int32_t scale, int scale_shift,
                             int32_t *acc, ptrdiff_t ld_acc) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: {
        // The hand-written AVX2 forms (32-bit lanes, prefix-sum wraps) outran exact_isa.h's loops
        // compiled for AVX-512 (64-bit lanes) on a Zen 4 CPU: ViT-Small-sized fixed frames took 12%
        // more CPU time with those (BENCHMARKS.md). Same values and counts either way.
        int64_t total;
        if (replay_hand_avx2(x, ldx, lanes, w16, w32, ldw, outs, n, shift, form, scale, scale_shift, acc, ld_acc, &total))
            return total;
        return replay_lanes_avx512(x, ldx, lanes, w16, w32, ldw, outs, n, shift, form, scale, scale_shift, acc, ld_acc);
    }
    case MOEPACK_ISA_AVX2: {
        int64_t total;
        if (replay_hand_avx2(x, ldx, lanes, w16, w32, ldw, outs, n, shift, form, scale, scale_shift, acc, ld_acc, &total))
            return total;
        return replay_lanes_avx2(x, ldx, lanes, w16, w32, ldw, outs, n, shift, form, scale, scale_shift, acc, ld_acc);
    }
#endif
    default:
        return replay_lanes_portable(x, ldx, lanes, w16, w32, ldw, outs, n, shift, form, scale, scale_shift, acc,
                                     ld_acc);
    }
}
