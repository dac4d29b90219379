// moepack's float32 linear layers for the float reference path (MoepackInference FloatBackbone):
// weights packed once into 16-output panels, then Y = X·Wᵀ + bias with the bias, GELU and the
// write-back (store, accumulate, or weighted accumulate into gathered rows) fused into the tile
// epilogue. Forms: portable C, AVX2+FMA, AVX-512F, chosen like the integer kernels
// (moepack_kernels_isa, MOEPACK_SIMD).
//
// Result independence: every output element is one chain of multiply-adds over the input axis in
// ascending order, started from 0, then + bias, then GELU, then the write-back. It never depends on
// the number of rows in the call, on the row's position in a tile, or on which other rows are
// present. The AVX2 and AVX-512 forms use fused multiply-adds lane by lane in the same order (same
// bits by construction); the portable form rounds each product separately and may differ from them
// in the last bits.
#ifndef MOEPACK_FLOAT_GEMM_H
#define MOEPACK_FLOAT_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "moepack_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Outputs per packed panel (one AVX-512 register, two AVX2 registers).
#define MOEPACK_SGEMM_PANEL 16

/// Floats needed by moepack_sgemm_pack for a weight [out, in]:
/// ceil(out/16) panels of (in + 1)·16 floats (the last row of a panel is its bias slice).
size_t moepack_sgemm_packed_count(ptrdiff_t out, ptrdiff_t in);

/// Packs a kernel-form weight W [out, in] (float32, row-major, PyTorch nn.Linear layout) and its
/// bias [out] (NULL: zeros) into `packed` (moepack_sgemm_packed_count floats; 64-byte alignment
/// is faster, not required). Layout: panel p (outputs 16p ..< 16p+16) at packed + p·(in+1)·16,
/// element [k][j] = W[16p + j][k] for k < in, and [in][j] = bias[16p + j]; outputs ≥ out are 0.
void moepack_sgemm_pack(const float *w, const float *bias, ptrdiff_t out, ptrdiff_t in, float *packed);

/// What the epilogue does with v = (x·Wᵀ)[r, o] + bias[o] for row r, output o.
typedef enum {
    /// y[r, o] = v
    MOEPACK_EPILOGUE_STORE = 0,
    /// y[r, o] = GELU(v), the exact GELU 0.5·v·(1 + erf(v/√2)) (moepack_erf_f32)
    MOEPACK_EPILOGUE_GELU = 1,
    /// y[r, o] += v
    MOEPACK_EPILOGUE_ACCUMULATE = 2,
    /// y[r, o] += row_scale[r]·v (product rounded, then the sum)
    MOEPACK_EPILOGUE_ACCUMULATE_SCALED = 3,
} moepack_epilogue;

/// Linear layer on packed weights: for r < m, input row r at x + xr·ldx and output row r at
/// y + yr·ldy, where xr = x_rows[r] (x_rows NULL: xr = r) and yr likewise from y_rows; each row
/// has `in` / `out` float32 values. Rows gathered through x_rows/y_rows need no copies (the MoE
/// experts' token queues). `packed` comes from moepack_sgemm_pack with the same out and in;
/// `row_scale` [m] is read only by MOEPACK_EPILOGUE_ACCUMULATE_SCALED. Output rows must not
/// overlap input rows. Reentrant; no allocation.
void moepack_sgemm_linear(moepack_isa isa, ptrdiff_t m, const float *x, ptrdiff_t ldx, const int32_t *x_rows,
                          ptrdiff_t in, const float *packed, ptrdiff_t out, moepack_epilogue epilogue,
                          const float *row_scale, float *y, ptrdiff_t ldy, const int32_t *y_rows);

/// The form moepack_sgemm_linear, moepack_erf_f32 and moepack_gelu_f32 run for `isa` on this CPU
/// (AVX2 also needs FMA; a form the CPU cannot run falls back to the best it can).
moepack_isa moepack_sgemm_runnable(moepack_isa isa);

/// erf in place on n float32 values, the form used by the GELU epilogue: Abramowitz & Stegun
/// 7.1.26 (erf(x) = sign(x)·(1 − t·P(t)·e^(−x²)), t = 1/(1 + 0.3275911·|x|), |error| ≤ 1.5e-7, the
/// formula of PyTorch's vectorised CPU erf) for |x| ≥ 0.6, and the Maclaurin series to x^15 below
/// 0.6, where 1 − t·P·e^(−x²) would cancel (truncation < 1e-9). e^x: Cephes expf polynomial.
/// Measured against libm on [−8, 8] in steps of 5e-4: |error| ≤ 2.4e-7 in every form.
void moepack_erf_f32(moepack_isa isa, float *v, ptrdiff_t n);

/// Exact GELU in place on n float32 values: 0.5·v·(1 + erf(v/√2)) with moepack_erf_f32's erf.
void moepack_gelu_f32(moepack_isa isa, float *v, ptrdiff_t n);

/// Query rows moepack_attention_f32 takes at a time (a multiple of every form's tile rows).
#define MOEPACK_ATTENTION_ROWS 48

/// Floats of `work` moepack_attention_f32 needs: K and V packed (moepack_sgemm_packed_count(tokens,
/// head_dim) + moepack_sgemm_packed_count(head_dim, tokens)) and a block of attention rows
/// [min(tokens, MOEPACK_ATTENTION_ROWS), tokens].
size_t moepack_attention_work_count(ptrdiff_t tokens, ptrdiff_t head_dim);

/// Scaled dot-product attention of one head, softmax(scale·Q·Kᵀ)·V:
/// q, k, v: [tokens, head_dim] float32, row r at q + r·ld (likewise k, v; e.g. one head's slices of
/// the stacked Q|K|V activations); out: [tokens, head_dim], row r at out + r·ldo.
/// Query rows go in blocks of MOEPACK_ATTENTION_ROWS (their scores stay in cache); within a block,
/// Q·Kᵀ and A·V run on moepack_sgemm_linear's tiles (each score and each output one multiply-add
/// chain over its input axis in ascending order, from 0); the softmax per row of A [tokens, tokens]:
/// s = scale·(q·k) rounded, e = exp(s − max s) (the Cephes expf of moepack_erf_f32, about 2 ulp),
/// then e·(1/Σe). Every row depends only on its own query and the head's keys and values, never on
/// other calls. `work`: moepack_attention_work_count floats, overwritten (no alignment needed).
/// Reentrant; no allocation.
void moepack_attention_f32(moepack_isa isa, ptrdiff_t tokens, ptrdiff_t head_dim, float scale, const float *q,
                           const float *k, const float *v, ptrdiff_t ld, float *out, ptrdiff_t ldo, float *work);

#ifdef __cplusplus
}
#endif
#endif
