// The attention batch kernels (include/moepack_attention.h): attention_isa.h compiled for portable
// C, AVX2 and AVX-512, one chosen per process like the kernels of kernels.c.
//
// Why the vector forms are exact. Let M = 1.5 * 2^52. Every double in [2^52, 2^53) is an integer
// and every integer there is a double (the spacing is 1). A fused multiply-add computes a*b + c
// exactly and rounds once, so with rounding toward -infinity (RD) and an integer c in [2^52, 2^53):
//   RD(a*b + c) = c + floor(a*b)   whenever c + a*b lies in [2^52, 2^53).
// Starting from c = M and adding terms x_1, x_2, ... one FMA at a time, each result is therefore
// M + floor(x_1) + ... + floor(x_k), exact, as long as every partial sum of the floors lies in
// [-2^51, 2^51). The operands: q, k, v, a are int32 (exact in a double) and the scale 2^-22 on one
// of them is exact too, so a*b is the exact rational q*k / 2^22 (or v*a / 2^22), |x| <= 2^62 / 2^22
// = 2^40, and the floor is the kernel's (an arithmetic shift by 22 of the exact 64-bit product).
//  - attn x V: the caller's no-wrap bound keeps every partial sum within fm_t, far inside 2^51
//    (without it, fewer than 2048 keys would do: 2047 * 2^40 < 2^51).
//  - Q·K: a block of 8 terms, |S_b| <= 2^43; acc - M = S_b exactly (both in [2^52, 2^53), Sterbenz).
//    Then floor(S_b * scale / 2^22) is added the same way: with |S_b| <= 2^31 each term is at most
//    2^40 in magnitude, and the caller's bound keeps the partial scores within fm_t.
// The result M + X (X the exact integer sum) has the bit pattern 0x433 << 52 | (M + X - 2^52), and
// M - 2^52 = 2^51 is 0 mod 2^32, so its low 32 bits are X mod 2^32: the wrapped sum, read without a
// conversion. The subtraction acc - M is exact in any rounding mode, and int32 -> double and the
// scaling by 2^-22 are exact, so RD is needed only in the FMAs. AVX-512 asks for it in each
// instruction (embedded rounding); AVX2 has no such operand, so its form runs with the MXCSR
// rounding control set to RD around a non-inlined call and restores the caller's MXCSR after
// (the asm statements are compiler barriers; the call cannot move across them).
#include "moepack_attention.h"

#include <string.h>

#include "isa_x86.h"
#if MOEPACK_X86
#include <immintrin.h>
#endif

#define ATTN_M 0x1.8p52
#define ATTN_NOINLINE __attribute__((noinline))

// Portable C: int64 arithmetic.
#define ISA_SUFFIX portable
#define ISA_FN
#define ATTN_VEC 0
#include "attention_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#undef ATTN_VEC

#if MOEPACK_X86
// AVX2 + FMA: 4 doubles per vector; RD from MXCSR (set by the caller, below).
#define ISA_SUFFIX avx2
#define ISA_FN __attribute__((target("avx2,fma")))
#define ATTN_VEC 1
#define VD __m256d
#define VD_LANES 4
#define VD_SET1 _mm256_set1_pd
#define VD_LOAD _mm256_loadu_pd
#define VD_STOREU _mm256_storeu_pd
#define VD_SUB _mm256_sub_pd
#define VD_FMA_RD _mm256_fmadd_pd
#include "attention_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#undef VD
#undef VD_LANES
#undef VD_SET1
#undef VD_LOAD
#undef VD_STOREU
#undef VD_SUB
#undef VD_FMA_RD

// AVX-512 F: 8 doubles per vector; RD in every FMA.
#define ISA_SUFFIX avx512
#define ISA_FN __attribute__((target("avx512f,avx512bw")))
#define VD __m512d
#define VD_LANES 8
#define VD_SET1 _mm512_set1_pd
#define VD_LOAD _mm512_loadu_pd
#define VD_STOREU _mm512_storeu_pd
#define VD_SUB _mm512_sub_pd
#define VD_FMA_RD(a, b, c) _mm512_fmadd_round_pd(a, b, c, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#include "attention_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#undef ATTN_VEC
#undef VD
#undef VD_LANES
#undef VD_SET1
#undef VD_LOAD
#undef VD_STOREU
#undef VD_SUB
#undef VD_FMA_RD

/// MXCSR with rounding control RD (bits 13-14 = 01), and back. Volatile asm with a memory clobber:
/// neither the call between them nor any memory access moves across.
static inline unsigned attn_round_down(void) {
    unsigned saved, rd;
    __asm__ volatile("stmxcsr %0" : "=m"(saved) : : "memory");
    rd = (saved & ~0x6000u) | 0x2000u;
    __asm__ volatile("ldmxcsr %0" : : "m"(rd) : "memory");
    return saved;
}
static inline void attn_restore_rounding(unsigned saved) {
    __asm__ volatile("ldmxcsr %0" : : "m"(saved) : "memory");
}

/// The AVX2 form also needs FMA (every AVX2 CPU so far has it; otherwise the portable form runs).
static int attn_fma_supported(void) { return __builtin_cpu_supports("fma"); }
#endif

void moepack_attn_row_max_abs(moepack_isa isa, const int32_t *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                              uint32_t *max_abs) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: row_max_abs_avx512(x, ld, rows, n, max_abs); return;
    case MOEPACK_ISA_AVX2: row_max_abs_avx2(x, ld, rows, n, max_abs); return;
#endif
    default: row_max_abs_portable(x, ld, rows, n, max_abs); return;
    }
}

void moepack_attn_key_panels(const int32_t *k, ptrdiff_t ldk, ptrdiff_t keys, ptrdiff_t hd, double *panels) {
    enum { P = MOEPACK_ATTN_PANEL };
    const ptrdiff_t count = (keys + P - 1) / P;
    for (ptrdiff_t g = 0; g < count; g++)
        for (ptrdiff_t l = 0; l < P; l++) {
            const ptrdiff_t t = g * P + l;
            double *dst = panels + g * hd * P + l;
            if (t < keys) for (ptrdiff_t j = 0; j < hd; j++) dst[j * P] = (double)k[t * ldk + j];
            else for (ptrdiff_t j = 0; j < hd; j++) dst[j * P] = 0.0;
        }
}

void moepack_attn_value_panels(const int32_t *v, ptrdiff_t ldv, ptrdiff_t keys, ptrdiff_t hd, double *panels) {
    enum { P = MOEPACK_ATTN_PANEL };
    for (ptrdiff_t t = 0; t < keys; t++)
        for (ptrdiff_t d = 0; d < hd; d++) panels[((d / P) * keys + t) * P + d % P] = (double)v[t * ldv + d];
}

void moepack_attn_qk_batch(moepack_isa isa, const int32_t *q, ptrdiff_t ldq, const int32_t *rows, ptrdiff_t n,
                           const double *key_panels, ptrdiff_t keys, ptrdiff_t hd, int32_t scale,
                           int32_t *scores, ptrdiff_t lds, double *scratch) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512:
        qk_batch_avx512(q, ldq, rows, n, key_panels, keys, hd, scale, scores, lds, scratch);
        return;
    case MOEPACK_ISA_AVX2: {
        if (!attn_fma_supported()) break;
        const unsigned saved = attn_round_down();
        qk_batch_avx2(q, ldq, rows, n, key_panels, keys, hd, scale, scores, lds, scratch);
        attn_restore_rounding(saved);
        return;
    }
#endif
    default: break;
    }
    qk_batch_portable(q, ldq, rows, n, key_panels, keys, hd, scale, scores, lds, scratch);
}

void moepack_attn_av_batch(moepack_isa isa, const int32_t *a, ptrdiff_t lda, const int32_t *rows, ptrdiff_t n,
                           const double *value_panels, ptrdiff_t keys, ptrdiff_t hd, int32_t *out, ptrdiff_t ldo,
                           double *scratch) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: av_batch_avx512(a, lda, rows, n, value_panels, keys, hd, out, ldo, scratch); return;
    case MOEPACK_ISA_AVX2: {
        if (!attn_fma_supported()) break;
        const unsigned saved = attn_round_down();
        av_batch_avx2(a, lda, rows, n, value_panels, keys, hd, out, ldo, scratch);
        attn_restore_rounding(saved);
        return;
    }
#endif
    default: break;
    }
    av_batch_portable(a, lda, rows, n, value_panels, keys, hd, out, ldo, scratch);
}
