// Compiles one kernel file's loops (ISA_FORMS_FILE, a quoted file name) once per instruction set:
// portable C, and on x86 AVX2 and AVX-512 F+BW, each function named with ISA_SUFFIX and compiled
// with the target attributes in ISA_FN. Included once by exact.c, patch_embed.c, rows.c and
// softmax.c, whose forms need nothing but these two names; ISA_FORMS_AVX2_TARGET (default "avx2")
// widens the AVX2 form's target, e.g. "avx2,fma" (kernels.c and float_gemm.c also define vector
// primitives per form: they spell their forms out).
#ifndef ISA_FORMS_FILE
#error "define ISA_FORMS_FILE before including isa_forms.h"
#endif
#include "isa_x86.h"

#define ISA_SUFFIX portable
#define ISA_FN
#include ISA_FORMS_FILE
#undef ISA_SUFFIX
#undef ISA_FN

#ifndef ISA_FORMS_AVX2_TARGET
#define ISA_FORMS_AVX2_TARGET "avx2"
#endif

#if MOEPACK_X86
#define ISA_SUFFIX avx2
#define ISA_FN __attribute__((target(ISA_FORMS_AVX2_TARGET)))
#include ISA_FORMS_FILE
#undef ISA_SUFFIX
#undef ISA_FN

#define ISA_SUFFIX avx512
#define ISA_FN __attribute__((target("avx512f,avx512bw")))
#include ISA_FORMS_FILE
#undef ISA_SUFFIX
#undef ISA_FN
#endif
