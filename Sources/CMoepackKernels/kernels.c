// Dispatch of moepack's integer kernels (include/moepack_kernels.h): the same loops compiled for
// portable C, AVX2 and AVX-512 (kernels_isa.h), one chosen per process.
#include "moepack_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "isa_x86.h"
#if MOEPACK_X86
#include <immintrin.h>
#endif

// Portable C: no vector primitives, the compiler's baseline target.
#define ISA_SUFFIX portable
#define ISA_FN
#define ISA_VEC 0
#include "kernels_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#undef ISA_VEC

#if MOEPACK_X86
/// GELU of bias_gelu (kernels_isa.h) on 8 lanes: the same arithmetic, the table read by gathers
/// and floor(frac * (hi - lo) / 2^17) from 64-bit products (even and odd lanes), whose low 32 bits
/// after a logical shift equal the floor's (it fits int32). Adds the INT32_MIN lanes to *wraps.
__attribute__((target("avx2"))) static inline __m256i gelu8_avx2(__m256i x, const int32_t *table,
                                                                 int32_t table_max, int64_t *wraps) {
    const __m256i relu = _mm256_max_epi32(x, _mm256_setzero_si256());
    const __m256i ax = _mm256_abs_epi32(x);   // INT32_MIN stays negative
    const __m256i in_table = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(table_max), ax),
                                              _mm256_cmpgt_epi32(ax, _mm256_set1_epi32(-1)));
    const __m256i index = _mm256_and_si256(_mm256_srli_epi32(ax, 17), in_table);
    // table[index] and table[index + 1] as one 64-bit read per lane (lanes 0-3, then 4-7), then
    // split into the lo and hi vectors in lane order: half the gathered elements of two 32-bit gathers.
    const __m256 g0 = _mm256_castsi256_ps(_mm256_i32gather_epi64((const long long *)table,
                                                                 _mm256_castsi256_si128(index), 4));
    const __m256 g1 = _mm256_castsi256_ps(_mm256_i32gather_epi64((const long long *)table,
                                                                 _mm256_extracti128_si256(index, 1), 4));
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(g0, g1, 0x88)), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(g0, g1, 0xDD)), 0xD8);
    const __m256i frac = _mm256_and_si256(ax, _mm256_set1_epi32(0x1FFFF));
    const __m256i diff = _mm256_sub_epi32(hi, lo);
    const __m256i even = _mm256_srli_epi64(_mm256_mul_epi32(frac, diff), 17);
    const __m256i odd = _mm256_srli_epi64(_mm256_mul_epi32(_mm256_srli_epi64(frac, 32), _mm256_srli_epi64(diff, 32)), 17);
    const __m256i interp = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    const __m256i delta = _mm256_and_si256(_mm256_add_epi32(lo, interp), in_table);
    const __m256i is_min = _mm256_cmpeq_epi32(x, _mm256_set1_epi32(INT32_MIN));
    *wraps += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(is_min)));
    return _mm256_andnot_si256(is_min, _mm256_sub_epi32(relu, delta));
}

// AVX2: 16 int16 lanes; tiles of 3 input rows x 2 weight rows (16 ymm registers).
#define ISA_SUFFIX avx2
#define ISA_FN __attribute__((target("avx2")))
#define ISA_VEC 1
#define TILE_MAX_R 3
#define V __m256i
#define V_LANES16 16
#define V_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define V_ZERO _mm256_setzero_si256()
#define V_ADD32 _mm256_add_epi32
#define V_ADD16 _mm256_add_epi16
#define V_MADD _mm256_madd_epi16
#define V_MULHI _mm256_mulhi_epi16
#define V_ONES16 _mm256_set1_epi16(1)
#define V_HSUM32 hsum_avx2
__attribute__((target("avx2"))) static inline uint32_t hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return (uint32_t)_mm_cvtsi128_si32(s);
}
#define V_SUMS2X2 sums2x2_avx2
/// The lane sums of four vectors stored as two pairs (d0 = sums of v00, v01; d1 = of v10, v11):
/// two rounds of pairwise horizontal adds, then the two 128-bit halves added.
__attribute__((target("avx2"))) static inline void sums2x2_avx2(__m256i v00, __m256i v01, __m256i v10, __m256i v11,
                                                                int32_t *d0, int32_t *d1) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(v00, v01), _mm256_hadd_epi32(v10, v11));
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    _mm_storel_epi64((__m128i *)d0, t);
    _mm_storeh_pd((double *)d1, _mm_castsi128_pd(t));
}
#include "kernels_isa.h"
#undef V_SUMS2X2
#undef ISA_SUFFIX
#undef ISA_FN
#undef TILE_MAX_R
#undef V
#undef V_LANES16
#undef V_LOAD
#undef V_ZERO
#undef V_ADD32
#undef V_ADD16
#undef V_MADD
#undef V_MULHI
#undef V_ONES16
#undef V_HSUM32

// AVX-512 F + BW: 32 int16 lanes; tiles of 4 input rows x 2 weight rows (32 zmm registers).
#define ISA_SUFFIX avx512
#define ISA_FN __attribute__((target("avx512f,avx512bw")))
#define TILE_MAX_R 4
#define V __m512i
#define V_LANES16 32
#define V_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define V_ZERO _mm512_setzero_si512()
#define V_ADD32 _mm512_add_epi32
#define V_ADD16 _mm512_add_epi16
#define V_MADD _mm512_madd_epi16
#define V_MULHI _mm512_mulhi_epi16
#define V_ONES16 _mm512_set1_epi16(1)
#define V_HSUM32(v) ((uint32_t)_mm512_reduce_add_epi32(v))
#include "kernels_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#undef ISA_VEC
#undef TILE_MAX_R
#endif

int moepack_kernels_cpu_supports(moepack_isa isa) {
    switch (isa) {
    case MOEPACK_ISA_PORTABLE: return 1;
#if MOEPACK_X86
    case MOEPACK_ISA_AVX2: return __builtin_cpu_supports("avx2");
    case MOEPACK_ISA_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
    default: return 0;
    }
}

static const char *isa_name(moepack_isa isa) {
    return isa == MOEPACK_ISA_AVX512 ? "avx512" : isa == MOEPACK_ISA_AVX2 ? "avx2" : "portable";
}

// The best form the CPU runs, or the one MOEPACK_SIMD names. A value that names no form, or a form this
// CPU cannot run, is said once on stderr (the CLI's warning format) and the best runnable form is used:
// results are the same bits in every form, so a wrong setting costs speed, never correctness.
static moepack_isa choose_isa(void) {
    const char *env = getenv("MOEPACK_SIMD");
    moepack_isa want = MOEPACK_ISA_AVX512;
    int forced = 0;
    if (env != NULL && env[0] != '\0') {
        forced = 1;
        if (strcmp(env, "portable") == 0) want = MOEPACK_ISA_PORTABLE;
        else if (strcmp(env, "avx2") == 0) want = MOEPACK_ISA_AVX2;
        else if (strcmp(env, "avx512") != 0) {
            forced = 0;
            want = moepack_kernels_runnable(want);
            fprintf(stderr, "moepack: warning: MOEPACK_SIMD=%s is not one of portable, avx2, avx512; using %s\n",
                    env, isa_name(want));
        }
    }
    const moepack_isa asked = want;
    want = moepack_kernels_runnable(want);
    if (forced && want != asked)
        fprintf(stderr, "moepack: warning: MOEPACK_SIMD=%s: this CPU does not run that form; using %s\n",
                env, isa_name(want));
    return want;
}

moepack_isa moepack_kernels_isa(void) {
    // Computed once; a race between first callers computes the same value.
    static int chosen = -1;
    int c = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (c < 0) {
        c = (int)choose_isa();
        __atomic_store_n(&chosen, c, __ATOMIC_RELEASE);
    }
    return (moepack_isa)c;
}

moepack_isa moepack_kernels_runnable(moepack_isa isa) {
    while (isa > MOEPACK_ISA_PORTABLE && !moepack_kernels_cpu_supports(isa)) isa = (moepack_isa)(isa - 1);
    return isa;
}

void moepack_linear_dots(moepack_isa isa, const int16_t *a, const int16_t *b4, ptrdiff_t n, ptrdiff_t rows,
                         const int16_t *w, ptrdiff_t m, int high_chunks, int32_t *dots, ptrdiff_t ld) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: linear_dots_avx512(a, b4, n, rows, w, m, high_chunks, dots, ld); return;
    case MOEPACK_ISA_AVX2: linear_dots_avx2(a, b4, n, rows, w, m, high_chunks, dots, ld); return;
#endif
    default: linear_dots_portable(a, b4, n, rows, w, m, high_chunks, dots, ld); return;
    }
}

int64_t moepack_qk_scores(moepack_isa isa, const uint32_t *qu, const uint32_t *qblock9,
                          const uint32_t *ku_t, ptrdiff_t ldk, const uint32_t *kblock9_t, ptrdiff_t keys,
                          ptrdiff_t hd, int32_t scale, uint32_t *t, int32_t *scores) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512:
        return qk_scores_avx512(qu, qblock9, ku_t, ldk, kblock9_t, keys, hd, scale, t, scores);
    case MOEPACK_ISA_AVX2:
        return qk_scores_avx2(qu, qblock9, ku_t, ldk, kblock9_t, keys, hd, scale, t, scores);
#endif
    default:
        return qk_scores_portable(qu, qblock9, ku_t, ldk, kblock9_t, keys, hd, scale, t, scores);
    }
}

int64_t moepack_bias_gelu(moepack_isa isa, int32_t *y, ptrdiff_t rows, ptrdiff_t m, ptrdiff_t ld,
                          const int32_t *bias, const int32_t *table, int32_t table_max) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: return bias_gelu_avx512(y, rows, m, ld, bias, table, table_max);
    case MOEPACK_ISA_AVX2: return bias_gelu_avx2(y, rows, m, ld, bias, table, table_max);
#endif
    default: return bias_gelu_portable(y, rows, m, ld, bias, table, table_max);
    }
}
