// One instruction set's form of the kernels of rows.c (included once per form with ISA_SUFFIX and
// ISA_FN defined).

#define RW_CAT2(a, b) a##b
#define RW_CAT(a, b) RW_CAT2(a, b)
#define RW_NAME(name) RW_CAT(name, ISA_SUFFIX)

#define RW_OUTSIDE(v) (((v) < INT32_MIN) | ((v) > INT32_MAX))

ISA_FN static int64_t RW_NAME(layer_norm_)(const int32_t *x0, ptrdiff_t rows, ptrdiff_t n, int32_t inv_dim,
                                           int64_t eps, const int32_t *weight, int weight_frac,
                                           const int32_t *bias, int32_t *out0) {
    int64_t wraps = 0;
    for (ptrdiff_t r = 0; r < rows; r++) {
        const int32_t *x = x0 + r * n;
        int32_t *out = out0 + r * n;
        // mean and E[x^2] per block of 8 dims, every assignment to fm_t wrapped and counted
        // (layerNormRow in FixedEmulation.swift).
        int32_t mean = 0, mean_sq = 0;
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
        const int64_t sq = ((int64_t)mean * mean) >> 22;
        wraps += RW_OUTSIDE(sq);
        const int64_t var = (int64_t)mean_sq - (int64_t)(int32_t)(uint32_t)sq + eps;
        wraps += RW_OUTSIDE(var);
        const int32_t rstd = rows_recip_fm(rows_sqrt_fm((int32_t)(uint32_t)var, &wraps), &wraps);
        // y = ((x - mean) * rstd) * weight + bias, each step assigned to fm_t: independent per dim.
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
