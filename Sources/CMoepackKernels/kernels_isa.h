// One instruction set's form of the kernels declared in include/moepack_kernels.h. kernels.c
// includes this file three times with ISA_SUFFIX, ISA_TARGET and the vector primitives defined for
// portable C, AVX2 and AVX-512; the arithmetic is the same text in all three, so they differ only
// in vector width. All sums are uint32 (mod 2^32, AP_WRAP): their order does not change a bit.
//
// Expected definitions: ISA_SUFFIX, ISA_FN (function attributes), and for the vector forms
// ISA_VEC (1 when V_* exist), V (vector type), V_LANES16 (int16 lanes), V_LOAD, V_ZERO, V_ADD32,
// V_ADD16, V_MADD (pairwise int16 products summed to int32), V_MULHI (signed high half), V_ONES16,
// V_HSUM32, and optionally V_SUMS2X2(v00, v01, v10, v11, d0, d1) (d0[0], d0[1], d1[0], d1[1] = the
// lane sums of v00, v01, v10, v11, as int32).

#define ISA_CAT2(a, b) a##b
#define ISA_CAT(a, b) ISA_CAT2(a, b)
#define ISA_NAME(name) ISA_CAT(name, ISA_SUFFIX)

/// Scalar remainder of one dot product (the portable form's whole loop).
ISA_FN static inline uint32_t ISA_NAME(dot_tail_)(const int16_t *a, const int16_t *b4, const int16_t *w,
                                                  ptrdiff_t from, ptrdiff_t n) {
    uint32_t s = 0;
    for (ptrdiff_t i = from; i < n; i++) {
        int32_t wi = w[i];
        s += (uint32_t)((int32_t)a[i] * wi) + (uint32_t)(((int32_t)b4[i] * wi) >> 16);
    }
    return s;
}

#if ISA_VEC
/// One chunk (V_LANES16 values from i) of the NR x NO tile: the a' products added to acc (32-bit
/// lanes), the b4 high halves to h (16-bit lanes); `first` (a constant) sets them instead. a' then
/// b4 are loaded, so that one input vector and one product are live at a time.
ISA_FN static inline __attribute__((always_inline)) void
ISA_NAME(chunk_)(const int16_t *a, const int16_t *b4, ptrdiff_t n, const int16_t *w, ptrdiff_t i, const int NR,
                 const int NO, const int first, V acc[TILE_MAX_R][2], V h[TILE_MAX_R][2]) {
    V wv[2];
    for (int o = 0; o < NO; o++) wv[o] = V_LOAD(w + o * n + i);
    for (int r = 0; r < NR; r++) {
        const V av = V_LOAD(a + r * n + i);
        for (int o = 0; o < NO; o++) acc[r][o] = first ? V_MADD(av, wv[o]) : V_ADD32(acc[r][o], V_MADD(av, wv[o]));
        const V bv = V_LOAD(b4 + r * n + i);
        for (int o = 0; o < NO; o++) h[r][o] = first ? V_MULHI(bv, wv[o]) : V_ADD16(h[r][o], V_MULHI(bv, wv[o]));
    }
}

/// NR input rows x NO weight rows (NR, NO constants after inlining): dots[r*ld + o] for r < NR,
/// o < NO, over the first n - n % V_LANES16 values (linear_dots_ adds the rest). The high halves
/// are summed in int16 lanes over runs of `run` values (a multiple of V_LANES16: one chunk when the
/// caller's bound allows no more), each run then widened by one pairwise sum against ones. With
/// NR = 3, NO = 2 (AVX2) the 6 + 6 accumulators, 2 weight vectors and 2 temporaries fill the 16
/// registers: 8 loads and 24 vector operations per 96 products (8 cycles on Zen 4, which issues
/// 3 vector integer operations a cycle). The first chunk sets the accumulators: no adds to zeros.
ISA_FN static inline __attribute__((always_inline)) void
ISA_NAME(tile_)(const int16_t *a, const int16_t *b4, ptrdiff_t n, const int16_t *w, const int NR, const int NO,
                ptrdiff_t run, int32_t *dots, ptrdiff_t ld) {
    V acc[TILE_MAX_R][2], h[TILE_MAX_R][2];
    const ptrdiff_t full = n - n % V_LANES16;
    ptrdiff_t i = 0;
    if (full > 0) {
        ISA_NAME(chunk_)(a, b4, n, w, 0, NR, NO, 1, acc, h);
        i = V_LANES16;
    } else {
        for (int r = 0; r < NR; r++) for (int o = 0; o < NO; o++) acc[r][o] = h[r][o] = V_ZERO;
    }
    ptrdiff_t end = full > run ? run : full;
    for (;;) {
        for (; i < end; i += V_LANES16) ISA_NAME(chunk_)(a, b4, n, w, i, NR, NO, 0, acc, h);
        const V ones = V_ONES16;
        for (int r = 0; r < NR; r++) for (int o = 0; o < NO; o++) acc[r][o] = V_ADD32(acc[r][o], V_MADD(h[r][o], ones));
        if (i >= full) break;
        for (int r = 0; r < NR; r++) for (int o = 0; o < NO; o++) h[r][o] = V_ZERO;
        end = full - i > run ? i + run : full;
    }
    int r = 0;
#ifdef V_SUMS2X2
    if (NO == 2) {
        for (; r + 2 <= NR; r += 2)
            V_SUMS2X2(acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1], dots + r * ld, dots + (r + 1) * ld);
        if (r < NR)   // a last odd row: its pair stored twice
            V_SUMS2X2(acc[r][0], acc[r][1], acc[r][0], acc[r][1], dots + r * ld, dots + r * ld);
        r = NR;
    }
#endif
    for (; r < NR; r++)
        for (int o = 0; o < NO; o++) dots[r * ld + o] = (int32_t)V_HSUM32(acc[r][o]);
}

/// Tiles of NO weight rows over the input rows [r, r1): TILE_MAX_R rows at a time, then the rest.
ISA_FN static inline __attribute__((always_inline)) void
ISA_NAME(tile_rows_)(const int16_t *a, const int16_t *b4, ptrdiff_t n, ptrdiff_t r, ptrdiff_t r1, const int16_t *w,
                     const int NO, ptrdiff_t run, int32_t *dots, ptrdiff_t ld) {
    for (; r + TILE_MAX_R <= r1; r += TILE_MAX_R)
        ISA_NAME(tile_)(a + r * n, b4 + r * n, n, w, TILE_MAX_R, NO, run, dots + r * ld, ld);
    if (TILE_MAX_R > 2 && r + 2 <= r1) {
        ISA_NAME(tile_)(a + r * n, b4 + r * n, n, w, 2, NO, run, dots + r * ld, ld);
        r += 2;
    }
    if (r < r1) ISA_NAME(tile_)(a + r * n, b4 + r * n, n, w, 1, NO, run, dots + r * ld, ld);
}

/// Rows per block of linear_dots_: the block's a' / b4 parts (4n bytes a row) stay within 16 KiB of
/// L1 while every weight row passes over them; a whole number of tiles.
ISA_FN static inline ptrdiff_t ISA_NAME(row_block_)(ptrdiff_t n) {
    const ptrdiff_t fit = n > 0 ? 16384 / (4 * n) : TILE_MAX_R;
    return fit < TILE_MAX_R ? TILE_MAX_R : fit - fit % TILE_MAX_R;
}
#endif

ISA_FN static void ISA_NAME(linear_dots_)(const int16_t *a, const int16_t *b4, ptrdiff_t n, ptrdiff_t rows,
                                          const int16_t *w, ptrdiff_t m, int high_chunks, int32_t *dots,
                                          ptrdiff_t ld) {
#if ISA_VEC
    const ptrdiff_t run = (ptrdiff_t)(high_chunks >= 2 ? high_chunks : 1) * V_LANES16;
    const ptrdiff_t block = ISA_NAME(row_block_)(n);
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += block) {
        const ptrdiff_t r1 = r0 + block < rows ? r0 + block : rows;
        ptrdiff_t o = 0;
        for (; o + 2 <= m; o += 2) {
            // The first row block reads the weights from memory (an expert's rows are often that
            // one block): the next pair is requested while this one is used.
            if (r0 == 0 && o + 4 <= m)
                for (ptrdiff_t p = 0; p < 2 * n; p += 32) __builtin_prefetch(w + (o + 2) * n + p, 0, 3);
            ISA_NAME(tile_rows_)(a, b4, n, r0, r1, w + o * n, 2, run, dots + o, ld);
        }
        if (o < m) ISA_NAME(tile_rows_)(a, b4, n, r0, r1, w + o * n, 1, run, dots + o, ld);
    }
    const ptrdiff_t full = n - n % V_LANES16;
    if (full < n)   // the last values of every dot product, one at a time
        for (ptrdiff_t r = 0; r < rows; r++)
            for (ptrdiff_t o = 0; o < m; o++)
                dots[r * ld + o] = (int32_t)((uint32_t)dots[r * ld + o] +
                                             ISA_NAME(dot_tail_)(a + r * n, b4 + r * n, w + o * n, full, n));
#else
    (void)high_chunks;
    for (ptrdiff_t o = 0; o < m; o++)
        for (ptrdiff_t r = 0; r < rows; r++)
            dots[r * ld + o] = (int32_t)ISA_NAME(dot_tail_)(a + r * n, b4 + r * n, w + o * n, 0, n);
#endif
}

ISA_FN static int64_t ISA_NAME(bias_gelu_)(int32_t *restrict y, ptrdiff_t rows, ptrdiff_t m, ptrdiff_t ld,
                                           const int32_t *restrict bias, const int32_t *restrict table,
                                           int32_t table_max) {
    int64_t wraps = 0;
    for (ptrdiff_t r = 0; r < rows; r++) {
        int32_t *row = y + r * ld;
        if (table == NULL) {
            for (ptrdiff_t o = 0; o < m; o++) row[o] = (int32_t)((uint32_t)row[o] + (uint32_t)bias[o]);
            continue;
        }
        // geluFm (FixedEmulationKernels.swift): relu(x) - delta, delta interpolated in the table at
        // |x| in steps of 1/32 (2^17 raw); |x| >= table_max: relu; x = INT32_MIN: 0, a wrap. Written
        // without branches so the loop vectorises (table reads gathered): the interpolation
        // floor(t * (hi - lo) / 2^22) with t = frac * 2^5 is floor(frac * (hi - lo) / 2^17), and
        // frac * (hi - lo) (< 2^17 * 2^32) is exact in a double, so its floor is the integer one.
        int64_t row_wraps = 0;
        ptrdiff_t o = 0;
#if ISA_VEC
        for (; o + 8 <= m; o += 8) {
            const __m256i x = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(row + o)),
                                               _mm256_loadu_si256((const __m256i *)(bias + o)));
            _mm256_storeu_si256((__m256i *)(row + o), gelu8_avx2(x, table, table_max, &row_wraps));
        }
#endif
        for (; o < m; o++) {
            const int32_t x = (int32_t)((uint32_t)row[o] + (uint32_t)bias[o]);
            const int32_t relu = x < 0 ? 0 : x;
            const int32_t ax = (int32_t)(x < 0 ? 0u - (uint32_t)x : (uint32_t)x);   // INT32_MIN stays negative
            const int in_table = ax >= 0 && ax < table_max;
            const int32_t index = in_table ? ax >> 17 : 0;
            const int32_t lo = table[index], hi = table[index + 1];
            const int32_t interp = (int32_t)floor((double)(ax & 0x1FFFF) * (double)(hi - lo) * 0x1p-17);
            const int32_t yv = in_table ? relu - (lo + interp) : relu;
            row_wraps += x == INT32_MIN;
            row[o] = x == INT32_MIN ? 0 : yv;
        }
        wraps += row_wraps;
    }
    return wraps;
}

// The Q·K kernel is a plain loop over independent lanes (keys), compiled once per instruction set:
// integer arithmetic, so the vectoriser's choices cannot change a bit.

ISA_FN static int64_t ISA_NAME(qk_scores_)(const uint32_t *qu, const uint32_t *qblock9,
                                           const uint32_t *ku_t, ptrdiff_t ldk, const uint32_t *kblock9_t,
                                           ptrdiff_t keys, ptrdiff_t hd, int32_t scale, uint32_t *t,
                                           int32_t *scores) {
    // ku_t is K transposed: element (j, key) at ku_t[j*ldk + key]; kblock9_t is [blocks][ldk].
    int64_t wraps = 0;
    for (ptrdiff_t k = 0; k < keys; k++) scores[k] = 0;
    for (ptrdiff_t b = 0; b < hd / 8; b++) {
        // Per run of QK_KEYS keys the 8 floored products are summed in 64-bit lanes held in
        // registers (only the sum mod 2^32 is kept), so each product costs a widening load, a
        // 32 x 32 -> 64-bit multiply, a shift and an add.
        enum { QK_KEYS = 16 };
        ptrdiff_t k0 = 0;
        for (; k0 + QK_KEYS <= keys; k0 += QK_KEYS) {
            uint64_t acc[QK_KEYS];
            for (int l = 0; l < QK_KEYS; l++) acc[l] = 0;
            for (ptrdiff_t j = b * 8; j < b * 8 + 8; j++) {
                const uint64_t q = qu[j];
                const uint32_t *kj = ku_t + j * ldk + k0;
                for (int l = 0; l < QK_KEYS; l++) acc[l] += (q * (uint64_t)kj[l]) >> 22;
            }
            for (int l = 0; l < QK_KEYS; l++) t[k0 + l] = (uint32_t)acc[l];
        }
        for (ptrdiff_t k = k0; k < keys; k++) {
            uint32_t acc = 0;
            for (ptrdiff_t j = b * 8; j < b * 8 + 8; j++) acc += (uint32_t)(((uint64_t)qu[j] * ku_t[j * ldk + k]) >> 22);
            t[k] = acc;
        }
        // The block sum (fits fm_t by the caller's bound) times attn_scale assigned to fm_t, then
        // added to the score, each assignment wrapped and counted (mulFm, addFm).
        const uint32_t *kb = kblock9_t + b * ldk;
        const uint32_t qb = qblock9[b];
        // In 32-bit lanes so the loop vectorises: p = floor(blk * scale / 2^22) leaves fm_t exactly
        // when the product's high word lies outside [-2^21, 2^21); its low 32 bits are bits 22..53
        // of the product (the same for a logical shift); s = score + p wraps exactly when both
        // operands' signs differ from the sum's.
        uint32_t block_wraps = 0;
        for (ptrdiff_t k = 0; k < keys; k++) {
            const int32_t blk = (int32_t)(t[k] - qb - kb[k]);
            const int64_t prod = (int64_t)blk * (int64_t)scale;
            const int32_t high = (int32_t)(uint32_t)((uint64_t)prod >> 32);
            const uint32_t p = (uint32_t)((uint64_t)prod >> 22);
            block_wraps += (uint32_t)high + (1u << 21) >= (1u << 22);
            const uint32_t sc = (uint32_t)scores[k], s = sc + p;
            block_wraps += (uint32_t)(((sc ^ s) & (p ^ s)) >> 31);
            scores[k] = (int32_t)s;
        }
        wraps += block_wraps;
    }
    return wraps;
}

#undef ISA_NAME
#undef ISA_CAT
#undef ISA_CAT2
