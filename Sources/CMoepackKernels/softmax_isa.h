// One instruction set's form of the softmax kernels of softmax.c, which includes this file once per
// form with ISA_SUFFIX and ISA_FN (function attributes) defined. Plain loops over independent
// lanes: the vectoriser decides the width; the exponential's result does not depend on how its
// floating-point steps are rounded or fused (the bound in softmax.c covers every order).

#define SM_CAT2(a, b) a##b
#define SM_CAT(a, b) SM_CAT2(a, b)
#define SM_NAME(name) SM_CAT(name, ISA_SUFFIX)

/// E(x) for EXP_ZERO_BELOW <= x < 0 where the polynomial decides it, else -1 (see softmax.c).
ISA_FN static inline __attribute__((always_inline)) int32_t SM_NAME(exp_fm_poly_)(int32_t x) {
    const double inv_ln2 = 0x1.71547652b82fep0, shifter = 0x1.8p52;
    const double ln2_hi = 0x1.62e42feep-1, ln2_lo = 0x1.a39ef35793c76p-33;   // LN2_HI: 33 significant bits
    const double delta = 0x1p-20;
    const double xd = (double)x * 0x1p-22;
    const double t = xd * inv_ln2 + shifter;   // k in the low bits of t
    const double kd = t - shifter;
    uint64_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint64_t sb = (tb + 1023 + 22) << 52;   // 2^(k+22)
    double scale;
    memcpy(&scale, &sb, sizeof scale);
    const double r = (xd - kd * ln2_hi) - kd * ln2_lo;
    // sum_{i<=12} r^i / i! in Estrin's order (4 dependent steps instead of Horner's 12).
    const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const double a0 = 1.0 + r, a1 = 0.5 + r * (1.0 / 6.0), a2 = 1.0 / 24.0 + r * (1.0 / 120.0),
                 a3 = 1.0 / 720.0 + r * (1.0 / 5040.0), a4 = 1.0 / 40320.0 + r * (1.0 / 362880.0),
                 a5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0), a6 = 1.0 / 479001600.0;
    const double b0 = a0 + r2 * a1, b1 = a2 + r2 * a3, b2 = a4 + r2 * a5;
    const double p = (b0 + r4 * b1) + r8 * (b2 + r4 * a6);
    const double h = p * scale + delta;
    const double f = floor(h);
    return h - f >= 2 * delta ? (int32_t)f : -1;
}

/// e[i] = E(x[i]) where the fast formula decides it (see softmax.c), else -1 (E is never
/// negative): the caller then asks the C library. An argument at or below EXP_ZERO_BELOW is
/// computed as EXP_ZERO_BELOW, whose E is 0 like theirs.
ISA_FN static void SM_NAME(exp_fm_batch_)(const int32_t *x, ptrdiff_t n, int32_t *e) {
    // Eight lanes per step: the polynomial's constants are loaded once for two AVX2 vectors.
#pragma clang loop vectorize_width(8)
    for (ptrdiff_t i = 0; i < n; i++) {
        const int32_t xi = x[i];
        const int32_t xc = xi < EXP_ZERO_BELOW ? EXP_ZERO_BELOW : (xi > 0 ? -1 : xi);
        const int32_t f = SM_NAME(exp_fm_poly_)(xc);
        e[i] = xi == 0 ? FM_ONE : (xi > 0 ? -1 : f);
    }
}

/// One step of RunningSoftmax.update (FixedEmulationKernels.swift) after the exponential e of its
/// argument (-1: ask the C library): the argument's and the exponential's wraps count only while
/// sum != 0; new maximum (flag bit 0): sum = fm_t(sum * e) + 1, else sum += e.
ISA_FN static inline __attribute__((always_inline)) int32_t
SM_NAME(sum_step_)(int32_t sum, int32_t e, int32_t arg, int32_t flag, int64_t *wraps) {
    int64_t ew = 0;
    if (e < 0) e = exp_fm_libm(arg, &ew);
    if (sum != 0) *wraps += ((flag >> 1) & 1) + ew;
    int64_t s;
    if (flag & 1) {
        const int64_t p = ((int64_t)sum * (int64_t)e) >> 22;
        *wraps += (p < INT32_MIN) | (p > INT32_MAX);
        s = (int64_t)(int32_t)(uint32_t)p + FM_ONE;
    } else {
        s = (int64_t)sum + (int64_t)e;
    }
    *wraps += (s < INT32_MIN) | (s > INT32_MAX);
    return (int32_t)(uint32_t)s;
}

/// Any row (see moepack_attn_softmax; scratch: 3 * keys values), every wrap counted.
///
/// When the scores spread far (most exp arguments at or below EXP_ZERO_BELOW, where E = 0), only
/// the steps that can change anything are computed: a step of the running sum whose exponential is
/// 0 and that is no new maximum adds 0 (no wrap; its argument did not wrap either, since a wrapped
/// argument is positive), and a weight fm_t(0 * recip) is 0. The steps that remain are gathered
/// (at most a quarter of them, else every step is computed as is), so the bits are the same.
ISA_FN static int64_t SM_NAME(attn_softmax_general_)(const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                                                     int32_t *weights, int32_t *scratch, int64_t *abs_sum,
                                                     int *all_nonneg) {
    int32_t *arg = scratch, *ev = scratch + keys, *flag = scratch + 2 * keys;
    // Gathered steps, when at most a quarter: their indices, arguments and exponentials in ev.
    int32_t *at = ev;
    int64_t wraps = 0;
    // Running update in the kernel's key order: the argument -|bias - s| against the running
    // maximum, whether s is a new maximum (bit 0) and whether the argument wraps (bit 1).
    int32_t bias = INT32_MIN;
    ptrdiff_t ki = first, m = 0, last_new = -1;
    for (ptrdiff_t step = 0; step < keys; step++) {
        const int32_t s = scores[ki];
        const int64_t d = (int64_t)bias - (int64_t)s;
        const int is_new = d < 0;
        const int64_t a = is_new ? d : -d;
        const int32_t x = (int32_t)(uint32_t)a;
        arg[step] = x;
        flag[step] = is_new | ((a < INT32_MIN) << 1);
        at[m] = (int32_t)step;
        m += is_new | (x > EXP_ZERO_BELOW);
        if (is_new) {
            bias = s;
            last_new = step;
        }
        if (++ki == keys) ki = 0;
    }
    int32_t sum = 0;
    // Whether ev keeps every step's exponential (the library's where the formula did not decide;
    // flag bit 2: that call wrapped), for the weights below.
    const int dense = 4 * m >= keys;
    if (!dense) {
        int32_t *xc = at + m, *ec = at + 2 * m;
        for (ptrdiff_t j = 0; j < m; j++) xc[j] = arg[at[j]];
        SM_NAME(exp_fm_batch_)(xc, m, ec);
        for (ptrdiff_t j = 0; j < m; j++) sum = SM_NAME(sum_step_)(sum, ec[j], xc[j], flag[at[j]], &wraps);
    } else {
        SM_NAME(exp_fm_batch_)(arg, keys, ev);
        for (ptrdiff_t step = 0; step < keys; step++) {
            if (ev[step] < 0) {
                int64_t ew = 0;
                ev[step] = exp_fm_libm(arg[step], &ew);
                flag[step] |= (int32_t)(ew != 0) << 2;
                if (sum != 0) wraps += ew;   // as sum_step_ counts it
            }
            sum = SM_NAME(sum_step_)(sum, ev[step], arg[step], flag[step], &wraps);
        }
    }
    // recipFm
    int32_t recip;
    if (sum <= 0) {
        wraps++;
        recip = INT32_MAX;
    } else {
        const int64_t q = ((int64_t)1 << 44) / sum;
        wraps += (q < INT32_MIN) | (q > INT32_MAX);
        recip = (int32_t)(uint32_t)q;
    }
    // weight_k = fm_t(exp(fm_t(s_k - bias)) * recip): independent per key, so in index order.
    ptrdiff_t nonzero = 0;
    for (ptrdiff_t k = 0; k < keys; k++) {
        const int64_t d = (int64_t)scores[k] - (int64_t)bias;
        wraps += (d < INT32_MIN) | (d > INT32_MAX);
        arg[k] = (int32_t)(uint32_t)d;
        nonzero += arg[k] > EXP_ZERO_BELOW;
    }
    int64_t total = 0, pw = 0;
    int negative = 0;
    if (4 * nonzero < keys) {
        // Gather the keys whose exponential is not 0; every other weight is 0.
        ptrdiff_t j = 0;
        for (ptrdiff_t k = 0; k < keys; k++) {
            at[j] = (int32_t)k;
            j += arg[k] > EXP_ZERO_BELOW;
            weights[k] = 0;
        }
        int32_t *xc = at + nonzero, *ec = at + 2 * nonzero;
        for (j = 0; j < nonzero; j++) xc[j] = arg[at[j]];
        SM_NAME(exp_fm_batch_)(xc, nonzero, ec);
        for (j = 0; j < nonzero; j++) {
            const int32_t e = ec[j] < 0 ? exp_fm_libm(xc[j], &wraps) : ec[j];
            const int64_t p = ((int64_t)e * (int64_t)recip) >> 22;
            pw += (p < INT32_MIN) | (p > INT32_MAX);
            const int32_t a = (int32_t)(uint32_t)p;
            weights[at[j]] = a;
            total += a < 0 ? -(int64_t)a : (int64_t)a;
            negative |= a < 0;
        }
    } else if (dense) {
        // By step (key first + step mod keys): a step after the last new maximum ran against the
        // final bias, so its argument s_k - bias and exponential are the running pass's, in ev (the
        // library's wraps counted again, as a second call would). Steps up to it are computed, their
        // arguments gathered in step order into flag once its bits are read.
        for (ptrdiff_t step = last_new + 1; step < keys; step++) wraps += (flag[step] >> 2) & 1;
        ki = first;
        for (ptrdiff_t step = 0; step <= last_new; step++) {
            flag[step] = arg[ki];
            if (++ki == keys) ki = 0;
        }
        SM_NAME(exp_fm_batch_)(flag, last_new + 1, ev);
        for (ptrdiff_t step = 0; step <= last_new; step++)
            if (ev[step] < 0) ev[step] = exp_fm_libm(flag[step], &wraps);
        for (ptrdiff_t k = 0; k < keys; k++) {
            const int32_t e = ev[k >= first ? k - first : k + keys - first];
            const int64_t p = ((int64_t)e * (int64_t)recip) >> 22;
            pw += (p < INT32_MIN) | (p > INT32_MAX);
            const int32_t a = (int32_t)(uint32_t)p;
            weights[k] = a;
            total += a < 0 ? -(int64_t)a : (int64_t)a;
            negative |= a < 0;
        }
    } else {
        SM_NAME(exp_fm_batch_)(arg, keys, ev);
        for (ptrdiff_t k = 0; k < keys; k++)
            if (ev[k] < 0) ev[k] = exp_fm_libm(arg[k], &wraps);
        for (ptrdiff_t k = 0; k < keys; k++) {
            const int64_t p = ((int64_t)ev[k] * (int64_t)recip) >> 22;
            pw += (p < INT32_MIN) | (p > INT32_MAX);
            const int32_t a = (int32_t)(uint32_t)p;
            weights[k] = a;
            total += a < 0 ? -(int64_t)a : (int64_t)a;
            negative |= a < 0;
        }
    }
    *abs_sum = total;
    *all_nonneg = !negative;
    return wraps + pw;
}

/// e[i] = E(x[i]) for 0 >= x[i] >= INT32_MIN (no wrap: the library's value is at most 2^22).
ISA_FN static inline void SM_NAME(exp_fm_nonpos_)(const int32_t *x, ptrdiff_t n, int32_t *e) {
    SM_NAME(exp_fm_batch_)(x, n, e);
    int any = 0;
    for (ptrdiff_t i = 0; i < n; i++) any |= e[i] < 0;
    if (!any) return;
    int64_t none = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        if (e[i] < 0) e[i] = exp_fm_libm(x[i], &none);
}

/// The softmax of a row whose scores span at most 2^31 and of which at least a quarter lie within
/// 16 of the maximum (every row of a trained model): then no step wraps and the running pass can be
/// taken apart. Returns 0 (nothing written but scratch) when the row is not such a row or when the
/// running sum would leave fm_t; the caller then runs attn_softmax_general_.
///
/// Step t is key (first + t) mod keys. Step 0 leaves sum = fm_t(1) whatever its exponential (sum
/// was 0: the product is 0 and no wrap counts) and bias = its score. A later step is a new maximum
/// exactly when its score exceeds every earlier one; between two new maxima the bias is constant,
/// so the arguments of a segment are independent, and so are its exponentials, whose sum (all
/// >= 0, the partial sums increasing) is added at once when the total stays in fm_t. After the
/// last new maximum L the bias is the final one, so a step's running exponential is its weight's:
/// exponentials are computed for steps 1..L of the running pass and for every key of the weights.
/// With sum >= 2^22, recip <= 2^22 and every weight lies in [0, 2^22]: nothing wraps.
ISA_FN static int SM_NAME(attn_softmax_dense_)(const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                                               int32_t *weights, int32_t *scratch, int64_t *abs_sum) {
    // weights: the scores in step order until the weights are written. scratch: arguments, their
    // exponentials, the steps that are new maxima.
    int32_t *restrict rot = weights, *restrict arg = scratch, *restrict ex = scratch + keys,
                      *restrict newmax = scratch + 2 * keys;
    memcpy(rot, scores + first, (size_t)(keys - first) * sizeof *rot);
    memcpy(rot + (keys - first), scores, (size_t)first * sizeof *rot);
    int32_t bias = rot[0], lowest = rot[0];
    ptrdiff_t c = 0;
    for (ptrdiff_t t = 1; t < keys; t++) {
        const int32_t v = rot[t];
        newmax[c] = (int32_t)t;
        c += v > bias;
        bias = v > bias ? v : bias;
        lowest = v < lowest ? v : lowest;
    }
    if ((int64_t)bias - (int64_t)lowest > ((int64_t)1 << 31)) return 0;
    ptrdiff_t near = 0;
    for (ptrdiff_t t = 0; t < keys; t++) near += rot[t] - bias > EXP_ZERO_BELOW;
    if (4 * near < keys) return 0;
    // Running arguments of steps 1..L: -(b - s) within a segment of bias b, b - s at its new maximum.
    const ptrdiff_t last = c > 0 ? newmax[c - 1] : 0;
    for (ptrdiff_t j = 0, start = 1; j < c; j++) {
        const ptrdiff_t end = newmax[j];
        const int32_t b = rot[start - 1];
        for (ptrdiff_t t = start; t < end; t++) arg[t] = rot[t] - b;
        arg[end] = b - rot[end];
        start = end + 1;
    }
    SM_NAME(exp_fm_nonpos_)(arg + 1, last, ex + 1);
    const int64_t fm_max = INT32_MAX;
    int64_t sum = FM_ONE;
    for (ptrdiff_t j = 0, start = 1; j < c; j++) {
        const ptrdiff_t end = newmax[j];
        int64_t part = 0;
        for (ptrdiff_t t = start; t < end; t++) part += ex[t];
        sum += part;
        if (sum > fm_max) return 0;
        sum = ((sum * ex[end]) >> 22) + FM_ONE;
        if (sum > fm_max) return 0;
        start = end + 1;
    }
    // The weights' arguments s - max (in [-2^31, 0]) and exponentials, in step order.
    for (ptrdiff_t t = 0; t < keys; t++) arg[t] = rot[t] - bias;
    SM_NAME(exp_fm_nonpos_)(arg, keys, ex);
    int64_t part = 0;
    for (ptrdiff_t t = last + 1; t < keys; t++) part += ex[t];
    sum += part;
    if (sum > fm_max) return 0;
    const int64_t recip = ((int64_t)1 << 44) / sum;
    // Step t's weight is key first + t: two contiguous runs.
    int64_t total = 0;
    int32_t *restrict w1 = weights + first;
    for (ptrdiff_t t = 0; t < keys - first; t++) {
        const int32_t a = (int32_t)(((int64_t)ex[t] * recip) >> 22);
        w1[t] = a;
        total += a;
    }
    const int32_t *restrict ex2 = ex + (keys - first);
    for (ptrdiff_t k = 0; k < first; k++) {
        const int32_t a = (int32_t)(((int64_t)ex2[k] * recip) >> 22);
        weights[k] = a;
        total += a;
    }
    *abs_sum = total;
    return 1;
}

/// See moepack_attn_softmax. scratch: 3 * keys values.
ISA_FN static int64_t SM_NAME(attn_softmax_)(const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                                             int32_t *weights, int32_t *scratch, int64_t *abs_sum,
                                             int *all_nonneg) {
    if (SM_NAME(attn_softmax_dense_)(scores, keys, first, weights, scratch, abs_sum)) {
        *all_nonneg = 1;
        return 0;
    }
    return SM_NAME(attn_softmax_general_)(scores, keys, first, weights, scratch, abs_sum, all_nonneg);
}

#undef SM_NAME
#undef SM_CAT
#undef SM_CAT2
