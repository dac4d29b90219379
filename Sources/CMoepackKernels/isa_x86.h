// MOEPACK_X86: 1 when the AVX2 and AVX-512 forms of moepack's kernels are compiled (x86 targets),
// 0 elsewhere (portable C only). One definition for every kernel file.
#ifndef MOEPACK_ISA_X86_H
#define MOEPACK_ISA_X86_H
#if defined(__x86_64__) || defined(__i386__)
#define MOEPACK_X86 1
#else
#define MOEPACK_X86 0
#endif
#endif
