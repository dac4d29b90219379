// The patch embedding of conv.cpp (compute_patch_embed) for patch weights of at most 16 bits with
// 16 fraction bits, in three forms that give the same bits (patch_embed_isa.h compiled portable /
// AVX2 / AVX-512, chosen like the kernels of kernels.c). Vectorised across the D output dims of one
// patch: the weights are held transposed, [C*p*p][D], so one pixel times a run of D weights is one
// vector multiply. See include/moepack_kernels.h for the contract.
#include "moepack_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define MOEPACK_PE_X86 1
#else
#define MOEPACK_PE_X86 0
#endif

#define ISA_SUFFIX portable
#define ISA_FN
#include "patch_embed_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN

#if MOEPACK_PE_X86
#define ISA_SUFFIX avx2
#define ISA_FN __attribute__((target("avx2")))
#include "patch_embed_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN

#define ISA_SUFFIX avx512
#define ISA_FN __attribute__((target("avx512f,avx512bw")))
#include "patch_embed_isa.h"
#undef ISA_SUFFIX
#undef ISA_FN
#endif

int64_t moepack_patch_embed(moepack_isa isa, const uint8_t *pixels, ptrdiff_t chans, ptrdiff_t height,
                            ptrdiff_t width, ptrdiff_t patch, const int16_t *weights_t, ptrdiff_t dims,
                            const int32_t *bias, const int32_t *pos, int32_t *out, int32_t *scratch,
                            int64_t *pos_wraps) {
    while (isa > MOEPACK_ISA_PORTABLE && !moepack_kernels_cpu_supports(isa)) isa = (moepack_isa)(isa - 1);
    switch (isa) {
#if MOEPACK_PE_X86
    case MOEPACK_ISA_AVX512:
        return patch_embed_avx512(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
    case MOEPACK_ISA_AVX2:
        return patch_embed_avx2(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
#endif
    default:
        return patch_embed_portable(pixels, chans, height, width, patch, weights_t, dims, bias, pos, out, scratch, pos_wraps);
    }
}
