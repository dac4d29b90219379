// One instruction set's form of the softmax kernels of softmax.c, which includes this file once per
// form with ISA_SUFFIX and ISA_FN (function attributes) defined. Plain loops over independent
// lanes: the vectoriser decides the width; the exponential's result does not depend on how its
// floating-point steps are rounded or fused (the bound in softmax.c covers every order).

#define SM_CAT2(a, b) a##b
#define SM_CAT(a, b) SM_CAT2(a, b)
#define SM_NAME(name) SM_CAT(name, ISA_SUFFIX)

/// e[i] = E(x[i]) where the fast formula decides it (see softmax.c), else -1 (E is never
/// negative): the caller then asks the C library.
ISA_FN static void SM_NAME(exp_fm_batch_)(const int32_t *x, ptrdiff_t n, int32_t *e) {
    const double inv_ln2 = 0x1.71547652b82fep0, shifter = 0x1.8p52;
    const double ln2_hi = 0x1.62e42feep-1, ln2_lo = 0x1.a39ef35793c76p-33;   // LN2_HI: 33 significant bits
    const double delta = 0x1p-20;
    for (ptrdiff_t i = 0; i < n; i++) {
        const int32_t xi = x[i];
        const int fast = xi > EXP_ZERO_BELOW && xi < 0;
        const double xd = fast ? (double)xi * 0x1p-22 : -1.0;
        const double t = xd * inv_ln2 + shifter;   // k in the low bits of t
        const double kd = t - shifter;
        uint64_t tb;
        memcpy(&tb, &t, sizeof tb);
        const uint64_t sb = (tb + 1023 + 22) << 52;   // 2^(k+22)
        double scale;
        memcpy(&scale, &sb, sizeof scale);
        const double r = (xd - kd * ln2_hi) - kd * ln2_lo;
        double p = 1.0 / 479001600.0;   // 1/12!
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        const double y = p * scale;
        const double lo = floor(y - delta), hi = floor(y + delta);
        const int32_t f = lo == hi ? (int32_t)lo : -1;
        e[i] = fast ? f : (xi == 0 ? FM_ONE : (xi <= EXP_ZERO_BELOW ? 0 : -1));
    }
}

/// See moepack_attn_softmax. scratch: 3 * keys values.
ISA_FN static int64_t SM_NAME(attn_softmax_)(const int32_t *scores, ptrdiff_t keys, ptrdiff_t first,
                                             int32_t *weights, int32_t *scratch, int64_t *abs_sum,
                                             int *all_nonneg) {
    int32_t *arg = scratch, *ev = scratch + keys, *flag = scratch + 2 * keys;
    int64_t wraps = 0;
    // Running update in the kernel's key order: the argument -|bias - s| against the running
    // maximum, whether s is a new maximum (bit 0) and whether the argument wraps (bit 1).
    int32_t bias = INT32_MIN;
    ptrdiff_t ki = first, last_new = -1;
    for (ptrdiff_t step = 0; step < keys; step++) {
        const int32_t s = scores[ki];
        const int64_t d = (int64_t)bias - (int64_t)s;
        const int is_new = d < 0;
        const int64_t a = is_new ? d : -d;
        arg[step] = (int32_t)(uint32_t)a;
        flag[step] = is_new | ((a < INT32_MIN) << 1);
        if (is_new) {
            bias = s;
            last_new = step;
        }
        if (++ki == keys) ki = 0;
    }
    SM_NAME(exp_fm_batch_)(arg, keys, ev);
    // RunningSoftmax.update (FixedEmulationKernels.swift): the argument's and the exponential's
    // wraps count only while sum != 0; new maximum: sum = fm_t(sum * e) + 1, else sum += e.
    // ev keeps each step's exponential and flag bit 2 its library wraps, for the weights below.
    int32_t sum = 0;
    for (ptrdiff_t step = 0; step < keys; step++) {
        int64_t ew = 0;
        int32_t e = ev[step];
        if (e < 0) {
            e = exp_fm_libm(arg[step], &ew);
            ev[step] = e;
            flag[step] |= (int32_t)(ew != 0) << 2;
        }
        if (sum != 0) wraps += ((flag[step] >> 1) & 1) + ew;
        int64_t s;
        if (flag[step] & 1) {
            const int64_t p = ((int64_t)sum * (int64_t)e) >> 22;
            wraps += (p < INT32_MIN) | (p > INT32_MAX);
            s = (int64_t)(int32_t)(uint32_t)p + FM_ONE;
        } else {
            s = (int64_t)sum + (int64_t)e;
        }
        wraps += (s < INT32_MIN) | (s > INT32_MAX);
        sum = (int32_t)(uint32_t)s;
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
    // weight_k = fm_t(exp(fm_t(s_k - bias)) * recip), by step (key first + step mod keys). A step
    // after the last new maximum ran against the final bias, so its argument s_k - bias and its
    // exponential are already in arg / ev (the library's wraps counted again, as a second call
    // would); the steps up to it are computed here.
    ki = first;
    for (ptrdiff_t step = 0; step < keys; step++) {
        const int64_t d = (int64_t)scores[ki] - (int64_t)bias;
        wraps += (d < INT32_MIN) | (d > INT32_MAX);
        if (step <= last_new) arg[step] = (int32_t)(uint32_t)d;
        else wraps += (flag[step] >> 2) & 1;
        if (++ki == keys) ki = 0;
    }
    SM_NAME(exp_fm_batch_)(arg, last_new + 1, ev);
    for (ptrdiff_t step = 0; step <= last_new; step++)
        if (ev[step] < 0) ev[step] = exp_fm_libm(arg[step], &wraps);
    int64_t total = 0, pw = 0;
    int negative = 0;
    for (ptrdiff_t k = 0; k < keys; k++) {
        const ptrdiff_t step = k >= first ? k - first : k + keys - first;
        const int64_t p = ((int64_t)ev[step] * (int64_t)recip) >> 22;
        pw += (p < INT32_MIN) | (p > INT32_MAX);
        const int32_t a = (int32_t)(uint32_t)p;
        weights[k] = a;
        total += a < 0 ? -(int64_t)a : (int64_t)a;
        negative |= a < 0;
    }
    *abs_sum = total;
    *all_nonneg = !negative;
    return wraps + pw;
}

#undef SM_NAME
#undef SM_CAT
#undef SM_CAT2
