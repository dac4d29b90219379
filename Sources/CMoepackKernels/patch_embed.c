// The patch embedding of conv.cpp (compute_patch_embed) for patch weights of at most 16 bits with
// 16 fraction bits, in three forms that give the same bits (patch_embed_isa.h compiled portable /
// AVX2 / AVX-512, chosen like the kernels of kernels.c). Vectorised across the D output dims of one
// patch: the weights are held transposed, [C*p*p][D], so one pixel times a run of D weights is one
// vector multiply. See include/moepack_kernels.h for the contract.
#include "moepack_kernels.h"

#include "isa_x86.h"

#define ISA_FORMS_FILE "patch_embed_isa.h"
#include "isa_forms.h"

int64_t moepack_patch_embed(moepack_isa isa, const uint8_t *pixels, ptrdiff_t chans, ptrdiff_t height,
                            ptrdiff_t width, ptrdiff_t patch, const int16_t *weights_t, ptrdiff_t dims,
                            const int32_t *bias, const int32_t *pos, int32_t *out, int32_t *scratch,
                            int64_t *pos_wraps) {
    switch (moepack_kernels_runnable(isa)) {
#if MOEPACK_X86
    case MOEPACK_ISA_AVX512:
        return patch_embed_avx512(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
    case MOEPACK_ISA_AVX2:
        return patch_embed_avx2(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
#endif
    default:
        return patch_embed_portable(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
    }
}
