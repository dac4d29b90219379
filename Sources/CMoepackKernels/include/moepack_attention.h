// The two matrix products of attention.cpp for many queries at once, exact in doubles (proof in
// attention.c). Same forms and per-process choice as moepack_kernels.h (portable C, AVX2,
// AVX-512; MOEPACK_SIMD); every form gives the same bits.
#ifndef MOEPACK_ATTENTION_H
#define MOEPACK_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "moepack_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Keys (or value rows) per panel: the lanes of the packed operands below, in every form.
#define MOEPACK_ATTN_PANEL 8
/// Queries per pass of the batch kernels; their `scratch` holds MOEPACK_ATTN_GROUP * max(hd, keys)
/// doubles.
#define MOEPACK_ATTN_GROUP 4
/// max_abs[r] = max_j |x[r*ld + j]| over j < n for each of `rows` rows of int32 (as uint32:
/// |INT32_MIN| = 2^31), the operands of the attention bounds; 0 when n = 0.
void moepack_attn_row_max_abs(moepack_isa isa, const int32_t *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                              uint32_t *max_abs);

/// K of one head packed for moepack_attn_qk_batch: key t's dim j (k[t*ldk + j], fm_t raw) at
/// panels[((t / 8) * hd + j) * 8 + t % 8] as a double (exact); lanes past `keys` in the last panel
/// are 0. `panels` holds ceil(keys / 8) * hd * 8 doubles.
void moepack_attn_key_panels(const int32_t *k, ptrdiff_t ldk, ptrdiff_t keys, ptrdiff_t hd, double *panels);

/// V of one head packed for moepack_attn_av_batch: key t's dim d (v[t*ldv + d], fm_t raw) at
/// panels[((d / 8) * keys + t) * 8 + d % 8] as a double (exact). hd is a multiple of 8;
/// `panels` holds keys * hd doubles.
void moepack_attn_value_panels(const int32_t *v, ptrdiff_t ldv, ptrdiff_t keys, ptrdiff_t hd, double *panels);

/// Q·K scores (attention.cpp `compute_q_matmul_k`) of the `n` queries rows[0..n): query i's
/// q[i*ldq + j] (j < hd, fm_t raw) against every key of `key_panels` (moepack_attn_key_panels), hd a
/// multiple of 8:
///   S_b(i, t) = sum_{j in block b of 8 dims} floor(q_j * k_j / 2^22),
///   scores[i*lds + t] = sum_b floor(S_b * scale / 2^22)   (mod 2^32).
/// For queries none of whose assignments can wrap (every partial block sum, scaled block sum and
/// partial score within fm_t: the caller's bound) this is attention.cpp's score; the kernel needs
/// |S_b| <= 2^31 and every partial score within +-2^51, which that bound implies.
/// `scratch`: see MOEPACK_ATTN_GROUP.
void moepack_attn_qk_batch(moepack_isa isa, const int32_t *q, ptrdiff_t ldq, const int32_t *rows, ptrdiff_t n,
                           const double *key_panels, ptrdiff_t keys, ptrdiff_t hd, int32_t scale,
                           int32_t *scores, ptrdiff_t lds, double *scratch);

/// attn x V (attention.cpp `compute_attn_matmul_v`) of the `n` queries rows[0..n): with query i's
/// weights a[i*lda + t] (fm_t raw, any sign) and `value_panels` (moepack_attn_value_panels), hd a
/// multiple of 8,
///   out[i*ldo + d] = sum_t floor(v[t][d] * a[i][t] / 2^22)   (mod 2^32),
/// attention.cpp's value when no partial sum, in any order, leaves fm_t (the caller's bound); the
/// kernel needs every partial sum within +-2^51, which that bound implies (and keys < 2048 alone
/// does too). `scratch`: see MOEPACK_ATTN_GROUP.
void moepack_attn_av_batch(moepack_isa isa, const int32_t *a, ptrdiff_t lda, const int32_t *rows, ptrdiff_t n,
                           const double *value_panels, ptrdiff_t keys, ptrdiff_t hd, int32_t *out, ptrdiff_t ldo,
                           double *scratch);

#ifdef __cplusplus
}
#endif
#endif
