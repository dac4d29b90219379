// One instruction set's form of moepack_patch_embed (patch_embed.c includes this file once per form
// with ISA_SUFFIX and ISA_FN defined). Integer loops over independent output dims: the
// vectoriser's choices cannot change a bit.

#define PE_CAT2(a, b) a##b
#define PE_CAT(a, b) PE_CAT2(a, b)
#define PE_NAME(name) PE_CAT(name, ISA_SUFFIX)
/// Output dims per register block: PE_WIDE (12 AVX2 registers) while they last, then PE_BLOCK
/// (dims is a multiple of 16).
#define PE_WIDE 96
#define PE_BLOCK 16

/// One patch row's addends for output dims d0 .. d0+block: addend_dim += pixel * weight, each
/// product floored from 24 to 22 fraction bits (|each| < 2^21, so the row sum of 16 stays inside
/// fm_t); then acc_dim += addend_dim, assigned to fm_t (wrapped, counted). block is a constant at
/// every call, so the addends stay in registers and each pixel is broadcast once per block.
ISA_FN static inline __attribute__((always_inline)) void
PE_NAME(patch_row_)(const uint8_t *src, const int16_t *wrow, ptrdiff_t patch, ptrdiff_t dims, ptrdiff_t d0,
                    const int block, int32_t *acc, int64_t *wraps) {
    int32_t add[PE_WIDE];
    for (int l = 0; l < block; l++) add[l] = 0;
    for (ptrdiff_t j = 0; j < patch; j++) {
        const int32_t pix = src[j];
        const int16_t *w = wrow + j * dims + d0;
        for (int l = 0; l < block; l++) add[l] += (pix * (int32_t)w[l]) >> 2;
    }
    int64_t n = 0;
    for (int l = 0; l < block; l++) {
        const int32_t a = acc[d0 + l];
        const int32_t s = (int32_t)((uint32_t)a + (uint32_t)add[l]);
        n += ((a ^ s) & (add[l] ^ s)) < 0;
        acc[d0 + l] = s;
    }
    *wraps += n;
}

ISA_FN static int64_t PE_NAME(patch_embed_)(const uint8_t *pixels, ptrdiff_t chans, ptrdiff_t height,
                                            ptrdiff_t width, ptrdiff_t patch, const int16_t *weights_t,
                                            ptrdiff_t dims, const int32_t *bias, const int32_t *pos,
                                            int32_t *out, int32_t *scratch, int64_t *pos_wraps) {
    const ptrdiff_t gw = width / patch, gh = height / patch;
    int32_t *acc = scratch;
    int64_t wraps = 0, pw = 0;
    for (ptrdiff_t d = 0; d < dims; d++) out[d] = pos[d];   // token 0: pos_embed[0] (cls + position 0)
    for (ptrdiff_t py = 0; py < gh; py++) {
        for (ptrdiff_t px = 0; px < gw; px++) {
            const ptrdiff_t token = 1 + py * gw + px;
            for (ptrdiff_t d = 0; d < dims; d++) acc[d] = bias[d];
            for (ptrdiff_t ch = 0; ch < chans; ch++) {
                for (ptrdiff_t yy = 0; yy < patch; yy++) {
                    const uint8_t *src = pixels + (ch * height + py * patch + yy) * width + px * patch;
                    const int16_t *wrow = weights_t + (ch * patch + yy) * patch * dims;
                    ptrdiff_t d0 = 0;
                    for (; d0 + PE_WIDE <= dims; d0 += PE_WIDE)
                        PE_NAME(patch_row_)(src, wrow, patch, dims, d0, PE_WIDE, acc, &wraps);
                    for (; d0 < dims; d0 += PE_BLOCK)
                        PE_NAME(patch_row_)(src, wrow, patch, dims, d0, PE_BLOCK, acc, &wraps);
                }
            }
            const int32_t *prow = pos + token * dims;
            int32_t *orow = out + token * dims;
            for (ptrdiff_t d = 0; d < dims; d++) {
                const int64_t s = (int64_t)acc[d] + (int64_t)prow[d];
                pw += (s < INT32_MIN) | (s > INT32_MAX);
                orow[d] = (int32_t)(uint32_t)s;
            }
        }
    }
    *pos_wraps = pw;
    return wraps;
}

#undef PE_BLOCK
#undef PE_WIDE
#undef PE_NAME
#undef PE_CAT
#undef PE_CAT2
