// moepack's own integer inner loops of the Edge-MoE fixed-point emulation, in three forms that give
// the same bits: portable C, AVX2 and AVX-512 (F + BW). The form is chosen once per process (see
// moepack_kernels_isa) from the CPU and the environment variable MOEPACK_SIMD; every sum here is
// taken mod 2^32 (AP_WRAP), so the order of the integer additions does not change a bit.
#ifndef MOEPACK_KERNELS_H
#define MOEPACK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction sets the kernels exist for.
typedef enum {
    MOEPACK_ISA_PORTABLE = 0,
    MOEPACK_ISA_AVX2 = 1,
    MOEPACK_ISA_AVX512 = 2,
} moepack_isa;

/// The form this process uses, decided on the first call and never changed: MOEPACK_SIMD=portable,
/// avx2 or avx512 when set (a form the CPU cannot run falls back to the best it can), else the best
/// the CPU supports (`__builtin_cpu_supports`).
moepack_isa moepack_kernels_isa(void);

/// 1 when this CPU can run `isa`.
int moepack_kernels_cpu_supports(moepack_isa isa);

/// `isa`, or the best form below it that this CPU runs: every kernel dispatches through it, so a form
/// the CPU cannot run is never entered.
moepack_isa moepack_kernels_runnable(moepack_isa isa);

/// Linear layer dot products (linear.cpp `compute_linear`, fast form): for `rows` input rows given
/// as a' / b4 parts (row r at a + r*n, b4 + r*n; see FixedEmulationKernels.swift `inPairRange`) and
/// `m` weight rows w[o*n .. o*n+n) (int16, 14 fraction bits),
///   dots[r*ld + o] = sum_i a'[r][i]*w[o][i] + floor(b4[r][i]*w[o][i] / 2^16)   (mod 2^32).
/// `high_chunks` >= 2 lets the vector forms add up to that many floor(b4*w/2^16) terms in one
/// 16-bit lane before widening; allowed only when high_chunks * (max|w|/2 + 1) <= 32767 (each term
/// has |floor(b4*w/2^16)| <= |w|/2 + 1). 0 or 1: every term is widened at once. Same bits either way.
void moepack_linear_dots(moepack_isa isa, const int16_t *a, const int16_t *b4, ptrdiff_t n, ptrdiff_t rows,
                         const int16_t *w, ptrdiff_t m, int high_chunks, int32_t *dots, ptrdiff_t ld);

/// The end of linear.cpp for outputs none of whose partial sums can wrap: y[r*ld + o] =
/// wrap(y + bias[o]) for r < rows, o < m, then, when `table` is not NULL, gelu.cpp's GELU with
/// `table` the 177-entry correction table (geluDeltaTable) and `table_max` its end (raw 176 << 17);
/// the same arithmetic as geluFm in FixedEmulationKernels.swift. Returns the GELU wraps (inputs
/// equal to INT32_MIN).
int64_t moepack_bias_gelu(moepack_isa isa, int32_t *y, ptrdiff_t rows, ptrdiff_t m, ptrdiff_t ld,
                          const int32_t *bias, const int32_t *table, int32_t table_max);

/// Scores of one query against `keys` keys (attention.cpp `compute_q_matmul_k`), for queries
/// whose floored products can be summed per block of 8 without leaving fm_t (the caller's bound).
/// Inputs in unsigned-offset form (u = value + 2^31 as uint32): qu[hd]; K transposed,
/// ku_t[j*ldk + k]; qblock9[b] = 2^9 * sum of qu over block b and kblock9_t[b*ldk + k] the same for
/// key k (mod 2^32). Per block b of 8 dims, the block sum
///   sum_j floor(q_j*k_j / 2^22) = sum_j floor(qu_j*ku_j / 2^22) - qblock9[b] - kblock9[b][k]  (mod 2^32)
/// is multiplied by `scale` (fm_t raw) and floored to fm_t, then added to the score; both
/// assignments wrap to 32 bits. Writes scores[keys]; `t` is scratch of `keys` values. Returns the
/// number of assignments whose exact value was outside fm_t.
int64_t moepack_qk_scores(moepack_isa isa, const uint32_t *qu, const uint32_t *qblock9,
                          const uint32_t *ku_t, ptrdiff_t ldk, const uint32_t *kblock9_t, ptrdiff_t keys,
                          ptrdiff_t hd, int32_t scale, uint32_t *t, int32_t *scores);

/// hls::exp(fm_t x) -> fm_t as the emulation defines it: floor(exp(x / 2^22) * 2^22) with the C
/// library's double exp (expFm in FixedEmulationKernels.swift), computed by a polynomial whose error
/// bound decides the floor, the library only near an integer boundary (proof in softmax.c). A result
/// at or beyond 2^31 raw saturates to INT32_MAX and adds one to *wraps.
int32_t moepack_exp_fm(int32_t x, int64_t *wraps);

/// e[i] = moepack_exp_fm(x[i], wraps) for i < n, the polynomial vectorised for `isa`.
void moepack_exp_fm_many(moepack_isa isa, const int32_t *x, ptrdiff_t n, int32_t *e, int64_t *wraps);

/// The softmax of one query (attention.cpp finalize_attn) over scores[keys] (fm_t raw): the running
/// maximum and sum in the kernel's key order first, first+1, ..., keys-1, 0, ..., first-1
/// (RunningSoftmax in FixedEmulationKernels.swift), recip = fm_t(1) / sum, then
/// weights[k] = fm_t(exp(fm_t(scores[k] - max)) * recip) for every key. Writes *abs_sum =
/// sum_k |weights[k]| and *all_nonneg = 1 when no weight is negative; `scratch` holds 3*keys values.
/// Returns the number of fm_t assignments that wrapped (the emulation's `attn.softmax` count).
int64_t moepack_attn_softmax(moepack_isa isa, const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                             int32_t *weights, int32_t *scratch, int64_t *abs_sum, int *all_nonneg);

/// conv.cpp compute_patch_embed for patch weights of at most 16 bits with 16 fraction bits (each
/// floored product pixel*weight has |.| < 2^21, so a row sum of `patch` <= 1024 terms cannot leave
/// fm_t): pixels [chans][height][width] bytes (ap_ufixed<8,0>), weights_t [chans*patch*patch][dims]
/// (the kernel's [dims][chans][patch][patch] transposed), bias [dims] and pos [tokens][dims] in fm_t
/// raw. out [tokens][dims]: token 0 = pos[0]; token 1 + patch index (row-major) = bias + the row
/// sums sum_j floor(pixel_j * w_j / 4) over rows (chans, patch rows) in order, each addition
/// assigned to fm_t, then + pos. Returns the wraps of the row additions and writes those of the
/// pos additions to *pos_wraps. `scratch` holds dims values; dims is a multiple of 16.
int64_t moepack_patch_embed(moepack_isa isa, const uint8_t *pixels, ptrdiff_t chans, ptrdiff_t height,
                            ptrdiff_t width, ptrdiff_t patch, const int16_t *weights_t, ptrdiff_t dims,
                            const int32_t *bias, const int32_t *pos, int32_t *out, int32_t *scratch,
                            int64_t *pos_wraps);

/// layernorm.cpp compute_norm on `rows` rows of n fm_t values (layerNormRow in
/// FixedEmulation.swift): mean and E[x^2] accumulated per block of 8 dims with the factor inv_dim
/// (fm_t(1/n)) applied per term, variance = E[x^2] - mean^2 + eps, rstd = fm_t(1) / sqrt(variance)
/// (both floored exactly), out = ((x - mean) * rstd) * weight / 2^weight_frac + bias, every
/// assignment to fm_t wrapped. weight: wt_norm_t raw [n] with weight_frac (0...62) fraction bits;
/// bias [n] in fm_t raw. Returns the number of assignments that wrapped.
int64_t moepack_layer_norm(moepack_isa isa, const int32_t *x, ptrdiff_t rows, ptrdiff_t n, int32_t inv_dim,
                           int64_t eps, const int32_t *weight, int weight_frac, const int32_t *bias, int32_t *out);

/// Input rows of the blocked linear layer: for `rows` rows x[r*n .. r*n+n) (fm_t raw) writes
/// norms[r] = the L2 norm (raw units, for the no-wrap bounds); when every value lies in
/// -2^29 <= x < 2^29 - 2^13 returns 1 and writes the a' / b4 parts of moepack_linear_dots
/// (row r at a + r*n, b4 + r*n; splitPairRow in FixedEmulationKernels.swift), else returns 0 and
/// leaves a and b4 alone.
int moepack_linear_split_rows(moepack_isa isa, const int32_t *x, ptrdiff_t n, int rows, double *norms,
                              int16_t *a, int16_t *b4);

#ifdef __cplusplus
}
#endif

// The exact replays of the slow path (declared apart, in moepack_exact.h).
#include "moepack_exact.h"
#endif
