// Dispatch and packing of moepack's float32 linear layers (include/moepack_float_gemm.h): the same
// loops (float_gemm_isa.h) compiled for portable C, AVX2+FMA and AVX-512F, one chosen per process
// (moepack_kernels_isa).
#include "moepack_float_gemm.h"

#include <math.h>
#include <string.h>

// Products and sums are rounded as written: the portable form must not be fused differently by the
// compiler on targets that have FMA, or its results would depend on the build target.
#pragma STDC FP_CONTRACT OFF

#include "isa_x86.h"
#if MOEPACK_X86
#include <immintrin.h>
#endif

size_t moepack_sgemm_packed_count(ptrdiff_t out, ptrdiff_t in) {
    const size_t panels = (size_t)((out + MOEPACK_SGEMM_PANEL - 1) / MOEPACK_SGEMM_PANEL);
    return panels * (size_t)(in + 1) * MOEPACK_SGEMM_PANEL;
}

// moepack_sgemm_pack with W's rows `ldw` floats apart and no bias (attention's K: rows of the
// stacked Q|K|V activations).
static void fg_pack_rows(const float *w, ptrdiff_t ldw, const float *bias, ptrdiff_t out, ptrdiff_t in,
                         float *packed) {
    const ptrdiff_t panels = (out + MOEPACK_SGEMM_PANEL - 1) / MOEPACK_SGEMM_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++) {
        float *dst = packed + p * (in + 1) * MOEPACK_SGEMM_PANEL;
        for (ptrdiff_t j = 0; j < MOEPACK_SGEMM_PANEL; j++) {
            const ptrdiff_t o = p * MOEPACK_SGEMM_PANEL + j;
            for (ptrdiff_t k = 0; k < in; k++) dst[k * MOEPACK_SGEMM_PANEL + j] = o < out ? w[o * ldw + k] : 0.0f;
            dst[in * MOEPACK_SGEMM_PANEL + j] = (o < out && bias != NULL) ? bias[o] : 0.0f;
        }
    }
}

void moepack_sgemm_pack(const float *w, const float *bias, ptrdiff_t out, ptrdiff_t in, float *packed) {
    fg_pack_rows(w, in, bias, out, in, packed);
}

// Attention's K [tokens, hd] (row stride ld) packed as the weight of a layer with `tokens` outputs:
// Q·Kᵀ is then that layer applied to Q.
static void fg_pack_strided(const float *k, ptrdiff_t ld, ptrdiff_t tokens, ptrdiff_t hd, float *packed) {
    fg_pack_rows(k, ld, NULL, tokens, hd, packed);
}

// Attention's V [tokens, hd] (row stride ld) packed as the weight Vᵀ [hd, tokens] of a layer with
// `hd` outputs: A·V is that layer applied to A. Panel p holds V[t][16p + j] at [t][j]: row slices.
static void fg_pack_transposed(const float *v, ptrdiff_t ld, ptrdiff_t tokens, ptrdiff_t hd, float *packed) {
    const ptrdiff_t panels = (hd + MOEPACK_SGEMM_PANEL - 1) / MOEPACK_SGEMM_PANEL;
    for (ptrdiff_t p = 0; p < panels; p++) {
        float *dst = packed + p * (tokens + 1) * MOEPACK_SGEMM_PANEL;
        const ptrdiff_t o = p * MOEPACK_SGEMM_PANEL;
        const ptrdiff_t n = hd - o < MOEPACK_SGEMM_PANEL ? hd - o : MOEPACK_SGEMM_PANEL;
        for (ptrdiff_t t = 0; t < tokens; t++) {
            float *row = dst + t * MOEPACK_SGEMM_PANEL;
            memcpy(row, v + t * ld + o, (size_t)n * sizeof(float));
            for (ptrdiff_t j = n; j < MOEPACK_SGEMM_PANEL; j++) row[j] = 0.0f;
        }
        memset(dst + tokens * MOEPACK_SGEMM_PANEL, 0, MOEPACK_SGEMM_PANEL * sizeof(float));
    }
}

size_t moepack_attention_work_count(ptrdiff_t tokens, ptrdiff_t head_dim) {
    const ptrdiff_t rows = tokens < MOEPACK_ATTENTION_ROWS ? tokens : MOEPACK_ATTENTION_ROWS;
    return moepack_sgemm_packed_count(tokens, head_dim) + moepack_sgemm_packed_count(head_dim, tokens) +
           (size_t)rows * (size_t)tokens;
}

// Portable C: one lane; 2 rows × 16 outputs per tile.
#define ISA_SUFFIX portable
#define ISA_FN
#define V float
#define VM int
#define VL 1
#define TILE_R 2
#define TILE_P 1
#define V_LOAD(p) (*(p))
#define V_STORE(p, a) (*(p) = (a))
#define V_SET1(a) ((float)(a))
#define V_ZERO 0.0f
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MUL(a, b) ((a) * (b))
#define V_DIV(a, b) ((a) / (b))
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ABS(a) fg_abs_portable(a)
#define V_LT(a, b) ((a) < (b))
#define V_SEL(m, a, b) ((m) ? (a) : (b))
#define V_POW2(s) fg_pow2_portable(s)
static inline float fg_abs_portable(float a) {
    uint32_t u;
    memcpy(&u, &a, 4);
    u &= 0x7FFFFFFFu;
    memcpy(&a, &u, 4);
    return a;
}
static inline float fg_pow2_portable(float shifted) {
    int32_t n;
    memcpy(&n, &shifted, 4);
    const uint32_t bits = (uint32_t)(n - 0x4B400000 + 127) << 23;
    float r;
    memcpy(&r, &bits, 4);
    return r;
}
#include "float_gemm_isa.h"

#if MOEPACK_X86
// AVX2 + FMA: 8 lanes; tiles of 6 rows × 1 panel (12 accumulators, 2 weight vectors, 1 broadcast).
#define ISA_SUFFIX avx2
#define ISA_FN __attribute__((target("avx2,fma")))
#define V __m256
#define VM __m256
#define VL 8
#define TILE_R 6
#define TILE_P 1
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_STORE(p, a) _mm256_storeu_ps((p), (a))
#define V_SET1(a) _mm256_set1_ps(a)
#define V_ZERO _mm256_setzero_ps()
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_DIV _mm256_div_ps
#define V_FMA _mm256_fmadd_ps
#define V_ABS(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define V_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define V_SEL(m, a, b) _mm256_blendv_ps((b), (a), (m))
#define V_POW2(s)                                                                                          \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                                                 \
        _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(s), _mm256_set1_epi32(0x4B400000)),         \
                         _mm256_set1_epi32(127)),                                                          \
        23))
#include "float_gemm_isa.h"

// AVX-512F: 16 lanes; tiles of 6 rows × 2 panels (12 accumulators).
#define ISA_SUFFIX avx512
#define ISA_FN __attribute__((target("avx512f")))
#define V __m512
#define VM __mmask16
#define VL 16
#define TILE_R 6
#define TILE_P 2
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, a) _mm512_storeu_ps((p), (a))
#define V_SET1(a) _mm512_set1_ps(a)
#define V_ZERO _mm512_setzero_ps()
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_DIV _mm512_div_ps
#define V_FMA _mm512_fmadd_ps
#define V_ABS(a) _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF)))
#define V_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define V_SEL(m, a, b) _mm512_mask_blend_ps((m), (b), (a))
#define V_POW2(s)                                                                                          \
    _mm512_castsi512_ps(_mm512_slli_epi32(                                                                 \
        _mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(s), _mm512_set1_epi32(0x4B400000)),         \
                         _mm512_set1_epi32(127)),                                                          \
        23))
#include "float_gemm_isa.h"
#endif

// A form this CPU cannot run is never entered. AVX2 here also needs FMA.
moepack_isa moepack_sgemm_runnable(moepack_isa isa) {
#if MOEPACK_X86
    if (isa == MOEPACK_ISA_AVX512 && !__builtin_cpu_supports("avx512f")) isa = MOEPACK_ISA_AVX2;
    if (isa == MOEPACK_ISA_AVX2 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        isa = MOEPACK_ISA_PORTABLE;
    return isa;
#else
    (void)isa;
    return MOEPACK_ISA_PORTABLE;
#endif
}

void moepack_sgemm_linear(moepack_isa isa, ptrdiff_t m, const float *x, ptrdiff_t ldx, const int32_t *x_rows,
                          ptrdiff_t in, const float *packed, ptrdiff_t out, moepack_epilogue epilogue,
                          const float *row_scale, float *y, ptrdiff_t ldy, const int32_t *y_rows) {
    if (m <= 0 || out <= 0) return;
    switch (moepack_sgemm_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512:
        sgemm_linear_avx512(m, x, ldx, x_rows, in, packed, out, epilogue, row_scale, y, ldy, y_rows);
        return;
    case MOEPACK_ISA_AVX2:
        sgemm_linear_avx2(m, x, ldx, x_rows, in, packed, out, epilogue, row_scale, y, ldy, y_rows);
        return;
#endif
    default:
        sgemm_linear_portable(m, x, ldx, x_rows, in, packed, out, epilogue, row_scale, y, ldy, y_rows);
        return;
    }
}

static void fg_erf_array(moepack_isa isa, float *v, ptrdiff_t n, int gelu) {
    switch (moepack_sgemm_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: erf_array_avx512(v, n, gelu); return;
    case MOEPACK_ISA_AVX2: erf_array_avx2(v, n, gelu); return;
#endif
    default: erf_array_portable(v, n, gelu); return;
    }
}

void moepack_erf_f32(moepack_isa isa, float *v, ptrdiff_t n) { fg_erf_array(isa, v, n, 0); }

void moepack_gelu_f32(moepack_isa isa, float *v, ptrdiff_t n) { fg_erf_array(isa, v, n, 1); }

void moepack_attention_f32(moepack_isa isa, ptrdiff_t tokens, ptrdiff_t head_dim, float scale, const float *q,
                           const float *k, const float *v, ptrdiff_t ld, float *out, ptrdiff_t ldo, float *work) {
    if (tokens <= 0 || head_dim <= 0) return;
    switch (moepack_sgemm_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512: attention_avx512(tokens, head_dim, scale, q, k, v, ld, out, ldo, work); return;
    case MOEPACK_ISA_AVX2: attention_avx2(tokens, head_dim, scale, q, k, v, ld, out, ldo, work); return;
#endif
    default: attention_portable(tokens, head_dim, scale, q, k, v, ld, out, ldo, work); return;
    }
}
