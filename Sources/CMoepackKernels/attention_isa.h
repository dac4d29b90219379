// One instruction set's form of the attention batch kernels (include/moepack_attention.h).
// attention.c includes this file once per form with ISA_SUFFIX, ISA_FN and ATTN_VEC defined, and
// for the vector forms VD (a vector of VD_LANES doubles), VD_SET1, VD_LOAD, VD_STOREU, VD_SUB and
// VD_FMA_RD(a, b, c) = a*b + c rounded toward -infinity (the exactness argument is in attention.c).
// The portable form computes the same integers with int64 arithmetic.

#define ATTN_CAT2(a, b) a##b
#define ATTN_CAT(a, b) ATTN_CAT2(a, b)
#define ATTN_NAME(name) ATTN_CAT(name, ISA_SUFFIX)

#if ATTN_VEC
/// Lanes per pass: H vectors, 1 panel (AVX2) or 2 panels (AVX-512) of 8 lanes.
#define ATTN_H 2

/// Vector h of a pass starting at panel p0: the panel it reads and its first lane there.
#define ATTN_PANEL_OF(p0, h) ((p0) + ((h) * VD_LANES) / MOEPACK_ATTN_PANEL)
#define ATTN_LANE_OF(h) (((h) * VD_LANES) % MOEPACK_ATTN_PANEL)

/// The low 32 bits of M + x as a double's bit pattern, which are x mod 2^32 (attention.c).
static inline int32_t ATTN_NAME(low32_)(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return (int32_t)(uint32_t)u;
}

/// Q·K for the G queries of `qs` (qs[j*G + i] = q_i[j] * 2^-22) against the panels p0 .. of
/// `kp` covered by H vectors (H = ATTN_H, or one panel's worth for a last odd panel of AVX-512).
ISA_FN static inline __attribute__((always_inline)) void
ATTN_NAME(qk_pass_)(const double *qs, const double *kp, ptrdiff_t p0, const int H, ptrdiff_t hd, VD sc,
                    double *res) {
    enum { G = MOEPACK_ATTN_GROUP };
    const VD m = VD_SET1(ATTN_M);
    VD s[G][ATTN_H];
    for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) s[i][h] = m;
    for (ptrdiff_t b = 0; b < hd; b += 8) {
        VD acc[G][ATTN_H];
        for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) acc[i][h] = m;
        for (ptrdiff_t j = b; j < b + 8; j++) {
            VD kv[ATTN_H];
            for (int h = 0; h < H; h++)
                kv[h] = VD_LOAD(kp + (ATTN_PANEL_OF(p0, h) * hd + j) * MOEPACK_ATTN_PANEL + ATTN_LANE_OF(h));
            for (int i = 0; i < G; i++) {
                const VD qv = VD_SET1(qs[j * G + i]);
                for (int h = 0; h < H; h++) acc[i][h] = VD_FMA_RD(qv, kv[h], acc[i][h]);
            }
        }
        // acc - M = S_b exactly; s += floor(S_b * scale / 2^22).
        for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) s[i][h] = VD_FMA_RD(VD_SUB(acc[i][h], m), sc, s[i][h]);
    }
    for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) VD_STOREU(res + (i * ATTN_H + h) * VD_LANES, s[i][h]);
}

/// attn x V for the G queries of `as` (as[t*G + i] = a_i[t] * 2^-22) and the dim groups c0 ..
/// covered by H vectors.
ISA_FN static inline __attribute__((always_inline)) void
ATTN_NAME(av_pass_)(const double *as, const double *vp, ptrdiff_t c0, const int H, ptrdiff_t keys, double *res) {
    enum { G = MOEPACK_ATTN_GROUP };
    const VD m = VD_SET1(ATTN_M);
    VD acc[G][ATTN_H];
    for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) acc[i][h] = m;
    for (ptrdiff_t t = 0; t < keys; t++) {
        VD vv[ATTN_H];
        for (int h = 0; h < H; h++)
            vv[h] = VD_LOAD(vp + (ATTN_PANEL_OF(c0, h) * keys + t) * MOEPACK_ATTN_PANEL + ATTN_LANE_OF(h));
        for (int i = 0; i < G; i++) {
            const VD av = VD_SET1(as[t * G + i]);
            for (int h = 0; h < H; h++) acc[i][h] = VD_FMA_RD(av, vv[h], acc[i][h]);
        }
    }
    for (int i = 0; i < G; i++) for (int h = 0; h < H; h++) VD_STOREU(res + (i * ATTN_H + h) * VD_LANES, acc[i][h]);
}
#endif

/// The G = MOEPACK_ATTN_GROUP rows of a group starting at rows[r0] (fewer at the end: `count`),
/// scaled by 2^-22 (exact) into scratch[j*G + i], zeros for the missing ones.
ISA_FN static inline void ATTN_NAME(gather_scaled_)(const int32_t *x, ptrdiff_t ldx, const int32_t *rows,
                                                    ptrdiff_t count, ptrdiff_t len, double *scratch) {
    enum { G = MOEPACK_ATTN_GROUP };
    for (int i = 0; i < G; i++) {
        const int32_t *xi = i < count ? x + (ptrdiff_t)rows[i] * ldx : NULL;
        for (ptrdiff_t j = 0; j < len; j++) scratch[j * G + i] = xi != NULL ? (double)xi[j] * 0x1p-22 : 0.0;
    }
}

ISA_FN static void ATTN_NAME(row_max_abs_)(const int32_t *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                                            uint32_t *max_abs) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const int32_t *xr = x + r * ld;
        uint32_t m = 0;
        for (ptrdiff_t j = 0; j < n; j++) {
            const uint32_t u = (uint32_t)xr[j];
            const uint32_t a = xr[j] < 0 ? 0u - u : u;   // |INT32_MIN| = 2^31 as uint32
            m = a > m ? a : m;
        }
        max_abs[r] = m;
    }
}

ISA_FN ATTN_NOINLINE static void ATTN_NAME(qk_batch_)(const int32_t *q, ptrdiff_t ldq, const int32_t *rows,
                                                      ptrdiff_t n, const double *kp, ptrdiff_t keys, ptrdiff_t hd,
                                                      int32_t scale, int32_t *scores, ptrdiff_t lds,
                                                      double *scratch) {
    enum { G = MOEPACK_ATTN_GROUP, P = MOEPACK_ATTN_PANEL };
    const ptrdiff_t panels = (keys + P - 1) / P;
    for (ptrdiff_t r0 = 0; r0 < n; r0 += G) {
        const ptrdiff_t count = n - r0 < G ? n - r0 : G;
#if ATTN_VEC
        ATTN_NAME(gather_scaled_)(q, ldq, rows + r0, count, hd, scratch);
        const VD sc = VD_SET1((double)scale * 0x1p-22);
        enum { STEP = ATTN_H * VD_LANES / P };
        double res[G * ATTN_H * VD_LANES];
        for (ptrdiff_t p0 = 0; p0 < panels; p0 += STEP) {
            const int whole = p0 + STEP <= panels;
            if (whole) ATTN_NAME(qk_pass_)(scratch, kp, p0, ATTN_H, hd, sc, res);
            else ATTN_NAME(qk_pass_)(scratch, kp, p0, P / VD_LANES, hd, sc, res);
            const ptrdiff_t lanes = whole ? STEP * P : P;
            for (ptrdiff_t i = 0; i < count; i++) {
                int32_t *out = scores + (ptrdiff_t)rows[r0 + i] * lds + p0 * P;
                for (ptrdiff_t l = 0; l < lanes && p0 * P + l < keys; l++)
                    out[l] = ATTN_NAME(low32_)(res[i * ATTN_H * VD_LANES + l]);
            }
        }
#else
        (void)scratch; (void)panels;
        for (ptrdiff_t i = 0; i < count; i++) {
            const int32_t *qi = q + (ptrdiff_t)rows[r0 + i] * ldq;
            int32_t *out = scores + (ptrdiff_t)rows[r0 + i] * lds;
            for (ptrdiff_t t = 0; t < keys; t++) {
                const double *kt = kp + (t / P) * hd * P + t % P;
                int64_t score = 0;
                for (ptrdiff_t b = 0; b < hd; b += 8) {
                    int64_t s = 0;   // |s| <= 8 * 2^40
                    for (ptrdiff_t j = b; j < b + 8; j++) s += ((int64_t)qi[j] * (int64_t)kt[j * P]) >> 22;
                    score += (s * (int64_t)scale) >> 22;   // |s| <= 2^31 (the caller's bound)
                }
                out[t] = (int32_t)(uint32_t)(uint64_t)score;
            }
        }
#endif
    }
}

ISA_FN ATTN_NOINLINE static void ATTN_NAME(av_batch_)(const int32_t *a, ptrdiff_t lda, const int32_t *rows,
                                                      ptrdiff_t n, const double *vp, ptrdiff_t keys, ptrdiff_t hd,
                                                      int32_t *out, ptrdiff_t ldo, double *scratch) {
    enum { G = MOEPACK_ATTN_GROUP, P = MOEPACK_ATTN_PANEL };
    const ptrdiff_t groups = hd / P;
    for (ptrdiff_t r0 = 0; r0 < n; r0 += G) {
        const ptrdiff_t count = n - r0 < G ? n - r0 : G;
#if ATTN_VEC
        ATTN_NAME(gather_scaled_)(a, lda, rows + r0, count, keys, scratch);
        enum { STEP = ATTN_H * VD_LANES / P };
        double res[G * ATTN_H * VD_LANES];
        for (ptrdiff_t c0 = 0; c0 < groups; c0 += STEP) {
            const int whole = c0 + STEP <= groups;
            if (whole) ATTN_NAME(av_pass_)(scratch, vp, c0, ATTN_H, keys, res);
            else ATTN_NAME(av_pass_)(scratch, vp, c0, P / VD_LANES, keys, res);
            const ptrdiff_t lanes = whole ? STEP * P : P;
            for (ptrdiff_t i = 0; i < count; i++) {
                int32_t *o = out + (ptrdiff_t)rows[r0 + i] * ldo + c0 * P;
                for (ptrdiff_t l = 0; l < lanes; l++) o[l] = ATTN_NAME(low32_)(res[i * ATTN_H * VD_LANES + l]);
            }
        }
#else
        (void)scratch; (void)groups;
        for (ptrdiff_t i = 0; i < count; i++) {
            const int32_t *ai = a + (ptrdiff_t)rows[r0 + i] * lda;
            int32_t *o = out + (ptrdiff_t)rows[r0 + i] * ldo;
            for (ptrdiff_t d = 0; d < hd; d++) {
                const double *vd = vp + (d / P) * keys * P + d % P;
                int64_t sum = 0;   // |sum| <= keys * 2^40
                for (ptrdiff_t t = 0; t < keys; t++) sum += ((int64_t)vd[t * P] * (int64_t)ai[t]) >> 22;
                o[d] = (int32_t)(uint32_t)(uint64_t)sum;
            }
        }
#endif
    }
}

#undef ATTN_NAME
#undef ATTN_CAT
#undef ATTN_CAT2
#if ATTN_VEC
#undef ATTN_H
#undef ATTN_PANEL_OF
#undef ATTN_LANE_OF
#endif
