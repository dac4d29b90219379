// One instruction set's form of the exact replays declared in include/moepack_exact.h. exact.c
// includes this text once per form with ISA_SUFFIX and ISA_FN defined. The loops run over
// EXACT_LANES independent lanes with the steps in the kernel's order; every lane's arithmetic is
// the replay's, so the vectoriser's choices cannot change a value or a count.

#define EXACT_CAT2(a, b) a##b
#define EXACT_CAT(a, b) EXACT_CAT2(a, b)
#define EXACT_NAME(name) EXACT_CAT(name, ISA_SUFFIX)

/// One chunk of L lanes (L a constant after inlining for whole chunks) for one output. `wide`
/// and `form` are constants at every call, so each combination compiles to its own loop.
ISA_FN static inline __attribute__((always_inline)) int64_t
EXACT_NAME(replay_chunk_)(const int32_t *x, ptrdiff_t ldx, const int L, const int16_t *w16, const int32_t *w32,
                          const int wide, ptrdiff_t n, int shift, const int form, int32_t scale, int scale_shift,
                          int32_t *acc_io) {
    int32_t acc[EXACT_LANES];
    int32_t count[EXACT_LANES];
    for (int l = 0; l < L; l++) { acc[l] = acc_io[l]; count[l] = 0; }
    if (form == MOEPACK_REPLAY_PER_PRODUCT) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const int64_t wi = wide ? (int64_t)w32[i] : (int64_t)w16[i];
            // A zero weight adds 0 (a product that fits) to every lane: nothing changes, nothing wraps.
            if (wi == 0) continue;
            const int32_t *xi = x + i * ldx;
            for (int l = 0; l < L; l++) {
                // addend = fm_t(in * w): a wrap when the floored product leaves int32.
                const int64_t p = ((int64_t)xi[l] * wi) >> shift;
                const int32_t addend = (int32_t)p;
                // acc += addend: both int32, so the exact sum left int32 iff the operands share a
                // sign that the wrapped sum does not.
                const int32_t s = (int32_t)((uint32_t)acc[l] + (uint32_t)addend);
                count[l] += (int32_t)(p != (int64_t)addend)
                          + (int32_t)((uint32_t)((acc[l] ^ s) & (addend ^ s)) >> 31);
                acc[l] = s;
            }
        }
    } else {
        for (ptrdiff_t i0 = 0; i0 < n; i0 += 8) {
            const ptrdiff_t i1 = i0 + 8 < n ? i0 + 8 : n;
            int32_t addend[EXACT_LANES];
            for (int l = 0; l < L; l++) addend[l] = 0;
            for (ptrdiff_t i = i0; i < i1; i++) {
                const int64_t wi = wide ? (int64_t)w32[i] : (int64_t)w16[i];
                const int32_t *xi = x + i * ldx;
                for (int l = 0; l < L; l++) {
                    // addend += in * w with the exact floored product (|p| < 2^62, no int64 overflow).
                    const int64_t s = (int64_t)addend[l] + (((int64_t)xi[l] * wi) >> shift);
                    addend[l] = (int32_t)s;
                    count[l] += (int32_t)(s != (int64_t)addend[l]);
                }
            }
            if (form == MOEPACK_REPLAY_BLOCK8_SCALED) {
                for (int l = 0; l < L; l++) {
                    const int64_t p = ((int64_t)addend[l] * (int64_t)scale) >> scale_shift;
                    addend[l] = (int32_t)p;
                    count[l] += (int32_t)(p != (int64_t)addend[l]);
                }
            }
            for (int l = 0; l < L; l++) {
                const int32_t s = (int32_t)((uint32_t)acc[l] + (uint32_t)addend[l]);
                count[l] += (int32_t)((uint32_t)((acc[l] ^ s) & (addend[l] ^ s)) >> 31);
                acc[l] = s;
            }
        }
    }
    int64_t total = 0;
    for (int l = 0; l < L; l++) { acc_io[l] = acc[l]; total += count[l]; }
    return total;
}

/// All outputs for one chunk of L lanes, one (wide, form) combination.
ISA_FN static inline __attribute__((always_inline)) int64_t
EXACT_NAME(replay_outs_)(const int32_t *x, ptrdiff_t ldx, const int L, const int16_t *w16, const int32_t *w32,
                         const int wide, ptrdiff_t ldw, ptrdiff_t outs, ptrdiff_t n, int shift, const int form,
                         int32_t scale, int scale_shift, int32_t *acc, ptrdiff_t ld_acc) {
    int64_t total = 0;
    for (ptrdiff_t o = 0; o < outs; o++)
        total += EXACT_NAME(replay_chunk_)(x, ldx, L, wide ? NULL : w16 + o * ldw, wide ? w32 + o * ldw : NULL, wide,
                                           n, shift, form, scale, scale_shift, acc + o * ld_acc);
    return total;
}

#define EXACT_DISPATCH_FORM(L, WIDE)                                                                       \
    (form == MOEPACK_REPLAY_PER_PRODUCT                                                                    \
         ? EXACT_NAME(replay_outs_)(xc, ldx, L, w16, w32, WIDE, ldw, outs, n, shift,                       \
                                    MOEPACK_REPLAY_PER_PRODUCT, scale, scale_shift, ac, ld_acc)            \
     : form == MOEPACK_REPLAY_BLOCK8                                                                       \
         ? EXACT_NAME(replay_outs_)(xc, ldx, L, w16, w32, WIDE, ldw, outs, n, shift, MOEPACK_REPLAY_BLOCK8, \
                                    scale, scale_shift, ac, ld_acc)                                        \
         : EXACT_NAME(replay_outs_)(xc, ldx, L, w16, w32, WIDE, ldw, outs, n, shift,                       \
                                    MOEPACK_REPLAY_BLOCK8_SCALED, scale, scale_shift, ac, ld_acc))

ISA_FN static int64_t EXACT_NAME(replay_whole_)(const int32_t *xc, ptrdiff_t ldx, const int16_t *w16,
                                                const int32_t *w32, ptrdiff_t ldw, ptrdiff_t outs, ptrdiff_t n,
                                                int shift, moepack_replay_form form, int32_t scale, int scale_shift,
                                                int32_t *ac, ptrdiff_t ld_acc) {
    return w32 != NULL ? EXACT_DISPATCH_FORM(EXACT_LANES, 1) : EXACT_DISPATCH_FORM(EXACT_LANES, 0);
}

ISA_FN static int64_t EXACT_NAME(replay_tail_)(const int32_t *xc, ptrdiff_t ldx, int tail, const int16_t *w16,
                                               const int32_t *w32, ptrdiff_t ldw, ptrdiff_t outs, ptrdiff_t n,
                                               int shift, moepack_replay_form form, int32_t scale, int scale_shift,
                                               int32_t *ac, ptrdiff_t ld_acc) {
    return w32 != NULL ? EXACT_DISPATCH_FORM(tail, 1) : EXACT_DISPATCH_FORM(tail, 0);
}

#undef EXACT_DISPATCH_FORM

/// Whole chunks of EXACT_LANES lanes, then the remaining lanes.
ISA_FN static int64_t EXACT_NAME(replay_lanes_)(const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes, const int16_t *w16,
                                                const int32_t *w32, ptrdiff_t ldw, ptrdiff_t outs, ptrdiff_t n,
                                                int shift, moepack_replay_form form, int32_t scale, int scale_shift,
                                                int32_t *acc, ptrdiff_t ld_acc) {
    int64_t total = 0;
    ptrdiff_t l0 = 0;
    for (; l0 + EXACT_LANES <= lanes; l0 += EXACT_LANES)
        total += EXACT_NAME(replay_whole_)(x + l0, ldx, w16, w32, ldw, outs, n, shift, form, scale, scale_shift,
                                           acc + l0, ld_acc);
    if (l0 < lanes)
        total += EXACT_NAME(replay_tail_)(x + l0, ldx, (int)(lanes - l0), w16, w32, ldw, outs, n, shift, form, scale,
                                          scale_shift, acc + l0, ld_acc);
    return total;
}

#undef EXACT_NAME
#undef EXACT_CAT
#undef EXACT_CAT2
