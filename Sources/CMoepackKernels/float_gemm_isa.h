// One instruction set's form of the float32 linear layer and GELU declared in
// include/moepack_float_gemm.h. float_gemm.c includes this file once per form with the vector
// primitives defined; the arithmetic is the same text in every form. It undefines them at its end.
//
// Expected definitions: ISA_SUFFIX, ISA_FN (function attributes), V (vector of VL float lanes),
// VM (comparison mask), VL, TILE_R (rows per tile), TILE_P (panels per tile), V_LOAD, V_STORE
// (unaligned), V_SET1, V_ZERO, V_ADD, V_SUB, V_MUL, V_DIV, V_FMA(a, b, c) = a·b + c, V_ABS,
// V_LT(a, b) → VM, V_SEL(m, a, b) = m ? a : b, V_POW2(shifted): 2^n as float from the 1.5·2²³
// rounding trick (n in the low mantissa bits of `shifted`).

#define FG_CAT2(a, b) a##b
#define FG_CAT(a, b) FG_CAT2(a, b)
#define FG_NAME(name) FG_CAT(name, ISA_SUFFIX)
#define FG_NV (MOEPACK_SGEMM_PANEL / VL)  // vectors per panel row

/// e^x per lane: Cephes expf (x = n·ln2 + r, degree-5 polynomial in r, times 2ⁿ); x < −87.3 → 0,
/// x > 88.3 clamped. Relative error about 2 ulp.
ISA_FN static inline __attribute__((always_inline)) V FG_NAME(exp_)(V x) {
    const V lo = V_SET1(-87.3f), hi = V_SET1(88.3f), magic = V_SET1(12582912.0f);  // 1.5·2²³
    V xc = V_SEL(V_LT(x, lo), lo, x);
    xc = V_SEL(V_LT(hi, xc), hi, xc);
    const V shifted = V_FMA(xc, V_SET1(1.44269504088896341f), magic);
    const V fx = V_SUB(shifted, magic);
    V r = V_SUB(xc, V_MUL(fx, V_SET1(0.693359375f)));
    r = V_SUB(r, V_MUL(fx, V_SET1(-2.12194440e-4f)));
    const V z = V_MUL(r, r);
    V y = V_SET1(1.9875691500e-4f);
    y = V_FMA(y, r, V_SET1(1.3981999507e-3f));
    y = V_FMA(y, r, V_SET1(8.3334519073e-3f));
    y = V_FMA(y, r, V_SET1(4.1665795894e-2f));
    y = V_FMA(y, r, V_SET1(1.6666665459e-1f));
    y = V_FMA(y, r, V_SET1(5.0000001201e-1f));
    y = V_ADD(V_FMA(y, z, r), V_SET1(1.0f));
    return V_SEL(V_LT(x, lo), V_ZERO, V_MUL(y, V_POW2(shifted)));
}

/// erf per lane (see moepack_erf_f32): A&S 7.1.26 for |x| ≥ 0.6, Maclaurin series below.
ISA_FN static inline __attribute__((always_inline)) V FG_NAME(erf_)(V x) {
    const V ax = V_ABS(x);
    const V t = V_DIV(V_SET1(1.0f), V_FMA(ax, V_SET1(0.3275911f), V_SET1(1.0f)));
    V p = V_SET1(1.061405429f);
    p = V_FMA(p, t, V_SET1(-1.453152027f));
    p = V_FMA(p, t, V_SET1(1.421413741f));
    p = V_FMA(p, t, V_SET1(-0.284496736f));
    p = V_FMA(p, t, V_SET1(0.254829592f));
    const V y = V_SUB(V_SET1(1.0f), V_MUL(V_MUL(p, t), FG_NAME(exp_)(V_SUB(V_ZERO, V_MUL(ax, ax)))));
    const V large = V_SEL(V_LT(x, V_ZERO), V_SUB(V_ZERO, y), y);
    const V x2 = V_MUL(x, x);
    // 2/√π·Σₖ (−1)ᵏ x^(2k+1)/(k!(2k+1)), k ≤ 7.
    V s = V_SET1(-1.4925650358406251e-05f);
    s = V_FMA(s, x2, V_SET1(0.00012055332981789664f));
    s = V_FMA(s, x2, V_SET1(-0.0008548327023450852f));
    s = V_FMA(s, x2, V_SET1(0.005223977625442188f));
    s = V_FMA(s, x2, V_SET1(-0.026866170645131252f));
    s = V_FMA(s, x2, V_SET1(0.11283791670955126f));
    s = V_FMA(s, x2, V_SET1(-0.37612638903183754f));
    s = V_FMA(s, x2, V_SET1(1.1283791670955126f));
    return V_SEL(V_LT(ax, V_SET1(0.6f)), V_MUL(s, x), large);
}

/// Exact GELU per lane: 0.5·v·(1 + erf(v/√2)).
ISA_FN static inline __attribute__((always_inline)) V FG_NAME(gelu_)(V v) {
    const V e = FG_NAME(erf_)(V_MUL(v, V_SET1(0.70710678118654752440f)));
    return V_MUL(V_MUL(V_SET1(0.5f), v), V_ADD(V_SET1(1.0f), e));
}

ISA_FN static void FG_NAME(erf_array_)(float *v, ptrdiff_t n, int gelu) {
    float buf[VL];
    for (ptrdiff_t i = 0; i < n; i += VL) {
        const ptrdiff_t c = n - i < VL ? n - i : VL;
        for (ptrdiff_t j = 0; j < VL; j++) buf[j] = j < c ? v[i + j] : 0.0f;
        const V x = V_LOAD(buf);
        V_STORE(buf, gelu ? FG_NAME(gelu_)(x) : FG_NAME(erf_)(x));
        for (ptrdiff_t j = 0; j < c; j++) v[i + j] = buf[j];
    }
}

/// R input rows × P panels (constants after inlining): acc = Σₖ x[r][k]·panel[k][·] in ascending k,
/// one multiply-add chain per output from 0, written to tile[r][p·16 + j].
ISA_FN static inline __attribute__((always_inline)) void
FG_NAME(tile_)(const float *const *xr, const int R, const float *w, ptrdiff_t pstride, const int P, ptrdiff_t in,
               float tile[TILE_R][TILE_P * MOEPACK_SGEMM_PANEL]) {
    V acc[TILE_R][TILE_P * FG_NV];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < P * FG_NV; j++) acc[r][j] = V_ZERO;
    for (ptrdiff_t k = 0; k < in; k++) {
        V wv[TILE_P * FG_NV];
        for (int p = 0; p < P; p++)
            for (int v = 0; v < FG_NV; v++)
                wv[p * FG_NV + v] = V_LOAD(w + p * pstride + k * MOEPACK_SGEMM_PANEL + v * VL);
        for (int r = 0; r < R; r++) {
            const V xb = V_SET1(xr[r][k]);
            for (int j = 0; j < P * FG_NV; j++) acc[r][j] = V_FMA(xb, wv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < P * FG_NV; j++) V_STORE(&tile[r][j * VL], acc[r][j]);
}

/// Epilogue of one 16-output slice `t` of a tile row: + bias, GELU or write-back into y (n ≤ 16
/// valid outputs; a partial slice goes through a zero-padded copy so every lane sees the same ops).
ISA_FN static inline __attribute__((always_inline)) void
FG_NAME(epilogue_)(const float *t, const float *bias, moepack_epilogue epilogue, float scale, float *y, ptrdiff_t n) {
    float pad[MOEPACK_SGEMM_PANEL];
    float *dst = y;
    if (n < MOEPACK_SGEMM_PANEL) {
        for (ptrdiff_t j = 0; j < MOEPACK_SGEMM_PANEL; j++) pad[j] = j < n ? y[j] : 0.0f;
        dst = pad;
    }
    const V s = V_SET1(scale);
    for (int v = 0; v < FG_NV; v++) {
        V a = V_ADD(V_LOAD(t + v * VL), V_LOAD(bias + v * VL));
        switch (epilogue) {
        case MOEPACK_EPILOGUE_GELU: a = FG_NAME(gelu_)(a); break;
        case MOEPACK_EPILOGUE_ACCUMULATE: a = V_ADD(V_LOAD(dst + v * VL), a); break;
        case MOEPACK_EPILOGUE_ACCUMULATE_SCALED: a = V_ADD(V_LOAD(dst + v * VL), V_MUL(s, a)); break;
        default: break;
        }
        V_STORE(dst + v * VL, a);
    }
    if (n < MOEPACK_SGEMM_PANEL)
        for (ptrdiff_t j = 0; j < n; j++) y[j] = pad[j];
}

ISA_FN static inline __attribute__((always_inline)) void
FG_NAME(block_)(const float *const *xr, const int R, const float *w, ptrdiff_t pstride, const int P, ptrdiff_t in,
                ptrdiff_t o0, ptrdiff_t out, moepack_epilogue epilogue, const float *scales, float *const *yr) {
    float tile[TILE_R][TILE_P * MOEPACK_SGEMM_PANEL] __attribute__((aligned(64)));
    FG_NAME(tile_)(xr, R, w, pstride, P, in, tile);
    for (int r = 0; r < R; r++) {
        for (int p = 0; p < P; p++) {
            const ptrdiff_t o = o0 + p * MOEPACK_SGEMM_PANEL;
            const ptrdiff_t n = out - o < MOEPACK_SGEMM_PANEL ? out - o : MOEPACK_SGEMM_PANEL;
            const float *bias = w + p * pstride + in * MOEPACK_SGEMM_PANEL;
            FG_NAME(epilogue_)(&tile[r][p * MOEPACK_SGEMM_PANEL], bias, epilogue, scales ? scales[r] : 1.0f,
                               yr[r] + o, n);
        }
    }
}

ISA_FN static void FG_NAME(sgemm_linear_)(ptrdiff_t m, const float *x, ptrdiff_t ldx, const int32_t *x_rows,
                                          ptrdiff_t in, const float *packed, ptrdiff_t out,
                                          moepack_epilogue epilogue, const float *row_scale, float *y,
                                          ptrdiff_t ldy, const int32_t *y_rows) {
    const ptrdiff_t panels = (out + MOEPACK_SGEMM_PANEL - 1) / MOEPACK_SGEMM_PANEL;
    const ptrdiff_t pstride = (in + 1) * MOEPACK_SGEMM_PANEL;
    const int scaled = epilogue == MOEPACK_EPILOGUE_ACCUMULATE_SCALED;
    // Panels outside, rows inside: a panel ((in+1)·64 bytes) stays in cache while all rows pass.
    for (ptrdiff_t p0 = 0; p0 < panels;) {
        const int P = panels - p0 >= TILE_P ? TILE_P : 1;
        const float *w = packed + p0 * pstride;
        const ptrdiff_t o0 = p0 * MOEPACK_SGEMM_PANEL;
        for (ptrdiff_t r0 = 0; r0 < m; r0 += TILE_R) {
            const int R = m - r0 < TILE_R ? (int)(m - r0) : TILE_R;
            const float *xr[TILE_R];
            float *yr[TILE_R];
            // Scalar on purpose: vectorised, clang reads x_rows/y_rows with masked loads even when
            // they are NULL (all lanes masked off), which AMD CPUs serve through a slow assist
            // (measured: a tenth of the whole run).
#pragma clang loop vectorize(disable)
            for (int r = 0; r < R; r++) xr[r] = x + (x_rows ? (ptrdiff_t)x_rows[r0 + r] : r0 + r) * ldx;
#pragma clang loop vectorize(disable)
            for (int r = 0; r < R; r++) yr[r] = y + (y_rows ? (ptrdiff_t)y_rows[r0 + r] : r0 + r) * ldy;
            const float *sc = scaled ? row_scale + r0 : NULL;
            // Constant R and P for each call so the accumulators stay in registers.
#define FG_CASE(RR)                                                                                  \
    case RR:                                                                                         \
        if (P == TILE_P) FG_NAME(block_)(xr, RR, w, pstride, TILE_P, in, o0, out, epilogue, sc, yr); \
        else FG_NAME(block_)(xr, RR, w, pstride, 1, in, o0, out, epilogue, sc, yr);                  \
        break;
            switch (R) {
#if TILE_R >= 8
                FG_CASE(8) FG_CASE(7)
#endif
#if TILE_R >= 6
                FG_CASE(6) FG_CASE(5)
#endif
#if TILE_R >= 4
                FG_CASE(4) FG_CASE(3)
#endif
                FG_CASE(2)
                default: FG_CASE(1)
            }
#undef FG_CASE
        }
        p0 += P;
    }
}

/// Row softmax in place on s [rows, cols] (row stride ld) of scale·s: e = exp(scale·s − m) with m
/// the row maximum of scale·s, then e·(1/Σe), Σ over the row's lanes in VL partial sums (added lane
/// by lane at the end, in lane order). A partial last vector goes through a padded copy (−∞ → 0).
ISA_FN static void FG_NAME(softmax_rows_)(float *s, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t ld, float scale) {
    const V sc = V_SET1(scale);
    const ptrdiff_t full = cols / VL * VL;
    for (ptrdiff_t r = 0; r < rows; r++) {
        float *row = s + r * ld;
        V mx = V_SET1(-INFINITY);
        for (ptrdiff_t j = 0; j < full; j += VL) {
            const V a = V_MUL(V_LOAD(row + j), sc);
            mx = V_SEL(V_LT(mx, a), a, mx);
        }
        float lanes[VL];
        V_STORE(lanes, mx);
        float m = -INFINITY;
        for (int j = 0; j < VL; j++) m = lanes[j] > m ? lanes[j] : m;
        for (ptrdiff_t j = full; j < cols; j++) m = row[j] * scale > m ? row[j] * scale : m;
        const V mv = V_SET1(m);
        V acc = V_ZERO;
        for (ptrdiff_t j = 0; j < full; j += VL) {
            const V e = FG_NAME(exp_)(V_SUB(V_MUL(V_LOAD(row + j), sc), mv));
            V_STORE(row + j, e);
            acc = V_ADD(acc, e);
        }
        if (full < cols) {
            float pad[VL];
            for (ptrdiff_t j = 0; j < VL; j++) pad[j] = full + j < cols ? row[full + j] * scale : -INFINITY;
            const V e = FG_NAME(exp_)(V_SUB(V_LOAD(pad), mv));
            V_STORE(pad, e);
            acc = V_ADD(acc, e);
            for (ptrdiff_t j = 0; full + j < cols; j++) row[full + j] = pad[j];
        }
        V_STORE(lanes, acc);
        float sum = 0.0f;
        for (int j = 0; j < VL; j++) sum += lanes[j];
        const V inv = V_SET1(1.0f / sum);
        for (ptrdiff_t j = 0; j < full; j += VL) V_STORE(row + j, V_MUL(V_LOAD(row + j), inv));
        for (ptrdiff_t j = full; j < cols; j++) row[j] *= 1.0f / sum;
    }
}

/// One attention head (see moepack_attention_f32): K and V packed as the linear layer's weights
/// (panels of 16 keys with Kᵀ, panels of 16 value dimensions with V), then per block of
/// MOEPACK_ATTENTION_ROWS query rows: Q·Kᵀ and A·V by the linear layer's tiles and the softmax
/// between them, the block's rows of A staying in cache (long sequences: 1025 tokens give 4 MB
/// per head for the whole of A).
ISA_FN static void FG_NAME(attention_)(ptrdiff_t tokens, ptrdiff_t hd, float scale, const float *q, const float *k,
                                      const float *v, ptrdiff_t ld, float *out, ptrdiff_t ldo, float *work) {
    float *kp = work;
    float *vp = kp + moepack_sgemm_packed_count(tokens, hd);
    float *a = vp + moepack_sgemm_packed_count(hd, tokens);
    fg_pack_strided(k, ld, tokens, hd, kp);
    fg_pack_transposed(v, ld, tokens, hd, vp);
    for (ptrdiff_t r0 = 0; r0 < tokens; r0 += MOEPACK_ATTENTION_ROWS) {
        const ptrdiff_t rows = tokens - r0 < MOEPACK_ATTENTION_ROWS ? tokens - r0 : MOEPACK_ATTENTION_ROWS;
        FG_NAME(sgemm_linear_)(rows, q + r0 * ld, ld, NULL, hd, kp, tokens, MOEPACK_EPILOGUE_STORE, NULL, a, tokens,
                               NULL);
        FG_NAME(softmax_rows_)(a, rows, tokens, tokens, scale);
        FG_NAME(sgemm_linear_)(rows, a, tokens, NULL, tokens, vp, hd, MOEPACK_EPILOGUE_STORE, NULL, out + r0 * ldo,
                               ldo, NULL);
    }
}

#undef FG_NV
#undef FG_NAME
#undef FG_CAT
#undef FG_CAT2

// The form's parameters are consumed here, so float_gemm.c can define the next form's.
#undef ISA_SUFFIX
#undef ISA_FN
#undef V
#undef VM
#undef VL
#undef TILE_R
#undef TILE_P
#undef V_LOAD
#undef V_STORE
#undef V_SET1
#undef V_ZERO
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_DIV
#undef V_FMA
#undef V_ABS
#undef V_LT
#undef V_SEL
#undef V_POW2
