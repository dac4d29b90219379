// One instruction set's form of the kernels of rows.c (included once per form with ISA_SUFFIX and
// ISA_FN defined).

#define RW_CAT2(a, b) a##b
#define RW_CAT(a, b) RW_CAT2(a, b)
#define RW_NAME(name) RW_CAT(name, ISA_SUFFIX)

#define RW_OUTSIDE(v) (((v) < INT32_MIN) | ((v) > INT32_MAX))

/// Largest |v[i]| (|INT32_MIN| = 2^31).
ISA_FN static inline int64_t RW_NAME(max_abs_)(const int32_t *v, ptrdiff_t n) {
    uint32_t m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint32_t a = v[i] < 0 ? 0u - (uint32_t)v[i] : (uint32_t)v[i];
        m = a > m ? a : m;
    }
    return m;
}

/// layer_norm_'s mean and E[x^2] of one row when no assignment to fm_t can wrap: every term fits,
/// every square term is >= 0 and both sums of magnitudes stay within fm_t. Then every partial sum
/// the kernel forms (within a block of 8, and over blocks) is a sum of some of the terms, so none
/// wraps and the sums are exact in any order: vectorised, not per block. Returns 0 otherwise
/// (nothing written).
///
/// In doubles: with |inv_dim| <= 2^22, x * inv_dim is below 2^53, so exact, and the term (its
/// floor over 2^22) too; x * term is exact below 2^53 and otherwise yields a square term >= 2^31
/// (rejected: rounding is monotone). Every value summed is an integer below 2^53 in magnitude and
/// so is every partial sum of a row that is not rejected, so any association gives the same sums.
ISA_FN static inline int RW_NAME(layer_norm_moments_)(const int32_t *x, ptrdiff_t n, int32_t inv_dim,
                                                      int32_t *mean, int32_t *mean_sq) {
    if (inv_dim > (1 << 22) || inv_dim < -(1 << 22)) return 0;
    const double inv = (double)inv_dim * 0x1p-22;
    double sum = 0, magnitude = 0, sum_sq = 0;
    int negative = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
#pragma clang fp reassociate(on)
        const double xd = (double)x[i];
        const double tp = floor(xd * inv);
        const double q = floor(xd * 0x1p-22 * tp);
        sum += tp;
        magnitude += fabs(tp);
        sum_sq += q;
        negative |= q < 0;
    }
    if (negative || !(magnitude <= INT32_MAX) || !(sum_sq <= INT32_MAX)) return 0;
    *mean = (int32_t)sum;
    *mean_sq = (int32_t)sum_sq;
    return 1;
}

/// layer_norm_'s out = ((x - mean) * rstd) * weight / 2^weight_frac + bias when bounds from the
/// largest magnitudes (max_x of the row, max_w and max_b of weight and bias) show that no step
/// wraps and every product is below 2^53: then each step is exact in doubles (products of
/// integers and powers of two, floors, a sum of two integers). Returns 0 otherwise (nothing
/// written).
ISA_FN static inline int RW_NAME(layer_norm_scale_)(const int32_t *x, ptrdiff_t n, int32_t mean, int32_t rstd,
                                                    int64_t max_x, const int32_t *weight, int64_t max_w,
                                                    int weight_frac, const int32_t *bias, int64_t max_b,
                                                    int32_t *out) {
    const uint64_t exact = (uint64_t)1 << 53;
    const int64_t d = max_x + (mean < 0 ? -(int64_t)mean : mean);   // |x - mean|
    if (d > INT32_MAX) return 0;
    const uint64_t p = (uint64_t)d * (uint64_t)(rstd < 0 ? -(int64_t)rstd : rstd);
    if (p >= exact) return 0;
    const uint64_t t2 = (p >> 22) + 1;   // |floor((x - mean) * rstd / 2^22)|
    if (t2 > INT32_MAX) return 0;
    const uint64_t q = t2 * (uint64_t)max_w;
    if (q >= exact) return 0;
    const uint64_t t4 = (q >> weight_frac) + 1;
    if (t4 + (uint64_t)max_b > INT32_MAX) return 0;
    const double m = mean, rs = (double)rstd * 0x1p-22, ws = ldexp(1.0, -weight_frac);
    for (ptrdiff_t i = 0; i < n; i++) {
        const double t = floor(((double)x[i] - m) * rs);
        const double u = floor(t * ((double)weight[i] * ws));
        out[i] = (int32_t)(u + (double)bias[i]);
    }
    return 1;
}

ISA_FN static int64_t RW_NAME(layer_norm_)(const int32_t *x0, ptrdiff_t rows, ptrdiff_t n, int32_t inv_dim,
                                           int64_t eps, const int32_t *weight, int weight_frac,
                                           const int32_t *bias, int32_t *out0) {
    int64_t wraps = 0;
    const int64_t max_w = RW_NAME(max_abs_)(weight, n), max_b = RW_NAME(max_abs_)(bias, n);
    for (ptrdiff_t r = 0; r < rows; r++) {
        const int32_t *x = x0 + r * n;
        int32_t *out = out0 + r * n;
        // mean and E[x^2]: at once when nothing can wrap, else per block of 8 dims, every
        // assignment to fm_t wrapped and counted (layerNormRow in FixedEmulation.swift).
        int32_t mean = 0, mean_sq = 0;
        if (!RW_NAME(layer_norm_moments_)(x, n, inv_dim, &mean, &mean_sq)) {
            for (ptrdiff_t b = 0; b < n; b += 8) {
                const ptrdiff_t end = b + 8 < n ? b + 8 : n;
                int32_t pm = 0, pms = 0;
                for (ptrdiff_t i = b; i < end; i++) {
                    const int64_t tp = ((int64_t)x[i] * inv_dim) >> 22;
                    wraps += RW_OUTSIDE(tp);
                    const int32_t term = (int32_t)(uint32_t)tp;
                    const int64_t s = (int64_t)pm + term;
                    wraps += RW_OUTSIDE(s);
                    pm = (int32_t)(uint32_t)s;
                    const int64_t q = (int64_t)pms + (((int64_t)x[i] * term) >> 22);
                    wraps += RW_OUTSIDE(q);
                    pms = (int32_t)(uint32_t)q;
                }
                const int64_t m = (int64_t)mean + pm, ms = (int64_t)mean_sq + pms;
                wraps += RW_OUTSIDE(m) + RW_OUTSIDE(ms);
                mean = (int32_t)(uint32_t)m;
                mean_sq = (int32_t)(uint32_t)ms;
            }
        }
        const int64_t sq = ((int64_t)mean * mean) >> 22;
        wraps += RW_OUTSIDE(sq);
        const int64_t var = (int64_t)mean_sq - (int64_t)(int32_t)(uint32_t)sq + eps;
        wraps += RW_OUTSIDE(var);
        const int32_t rstd = rows_recip_fm(rows_sqrt_fm((int32_t)(uint32_t)var, &wraps), &wraps);
        // y = ((x - mean) * rstd) * weight + bias, each step assigned to fm_t: independent per dim.
        if (RW_NAME(layer_norm_scale_)(x, n, mean, rstd, RW_NAME(max_abs_)(x, n), weight, max_w, weight_frac,
                                       bias, max_b, out))
            continue;
        int64_t w2 = 0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const int64_t t0 = (int64_t)x[i] - (int64_t)mean;
            const int32_t t1 = (int32_t)(uint32_t)t0;
            const int64_t t2 = ((int64_t)t1 * rstd) >> 22;
            const int32_t t3 = (int32_t)(uint32_t)t2;
            const int64_t t4 = ((int64_t)t3 * weight[i]) >> weight_frac;
            const int64_t t5 = (int64_t)(int32_t)(uint32_t)t4 + bias[i];
            w2 += RW_OUTSIDE(t0) + RW_OUTSIDE(t2) + RW_OUTSIDE(t4) + RW_OUTSIDE(t5);
            out[i] = (int32_t)(uint32_t)t5;
        }
        wraps += w2;
    }
    return wraps;
}

ISA_FN static int RW_NAME(linear_split_rows_)(const int32_t *x0, ptrdiff_t n, int rows, double *norms,
                                              int16_t *a0, int16_t *b40) {
    // -2^29 <= x < 2^29 - 2^13 for every value (inPairRange in FixedEmulationKernels.swift).
    const int32_t lo_ok = -(1 << 29), hi_ok = (1 << 29) - (1 << 13) - 1;
    int in_range = 1;
    for (int r = 0; r < rows; r++) {
        const int32_t *x = x0 + r * n;
        // Squares summed in 8 interleaved partial sums: the norm only feeds no-wrap bounds whose
        // slack (n + 1 raw units) dwarfs any difference of rounding order.
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int32_t lo = INT32_MAX, hi = INT32_MIN;
        for (ptrdiff_t i = 0; i < n; i++) {   // integer min/max: a reduction the vectoriser takes
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        ptrdiff_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) {
                const double d = (double)x[i + l];
                s[l] += d * d;
            }
        for (; i < n; i++) s[0] += (double)x[i] * (double)x[i];
        norms[r] = sqrt(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
        in_range &= n == 0 || (lo >= lo_ok && hi <= hi_ok);
    }
    if (!in_range) return 0;
    // a' = (x >> 14) + [b >= 2^13], b4 = low 16 bits of 4b (b = x & 0x3FFF): splitPairRow.
    for (ptrdiff_t i = 0; i < rows * n; i++) {
        const int32_t v = x0[i];
        const int32_t b = v & 0x3FFF;
        a0[i] = (int16_t)((v >> 14) + (b >> 13));
        b40[i] = (int16_t)(uint16_t)(b << 2);
    }
    return 1;
}

#undef RW_OUTSIDE
#undef RW_NAME
#undef RW_CAT
#undef RW_CAT2
