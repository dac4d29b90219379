// Exact step-by-step replays of the kernel's fixed-point accumulations, with the count of every
// assignment that wraps (AP_WRAP): the slow path of the emulation, taken where no bound can prove
// that no partial sum leaves fm_t. Same forms and per-process choice as moepack_kernels.h
// (portable C, AVX2, AVX-512; MOEPACK_SIMD), except that an AVX-512 CPU takes the hand-written AVX2
// forms of exact.c where one covers the replay (they are faster); every form gives the same values
// and counts.
#ifndef MOEPACK_EXACT_H
#define MOEPACK_EXACT_H

#include <stddef.h>
#include <stdint.h>

#include "moepack_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// How the products of one dot product are assigned (FixedEmulationKernels.swift `DotForm`).
typedef enum {
    /// linear.cpp: `addend = in * w` (floored by `shift`, wrapped to fm_t), then `acc += addend`.
    MOEPACK_REPLAY_PER_PRODUCT = 0,
    /// moe.cpp gating: per block of 8 inputs `addend += in * w` (the exact floored product added,
    /// the sum wrapped), then `acc += addend`.
    MOEPACK_REPLAY_BLOCK8 = 1,
    /// attention.cpp Q·K: as BLOCK8, with `addend = addend * scale` (floored by `scale_shift`,
    /// wrapped) before `acc += addend`.
    MOEPACK_REPLAY_BLOCK8_SCALED = 2,
} moepack_replay_form;

/// `lanes` x `outs` independent dot products replayed step by step in the kernel's order.
/// Lane l's input i is x[i*ldx + l] (int32 raw); output o's weight i is w16[o*ldw + i] or
/// w32[o*ldw + i] (exactly one of w16, w32 is not NULL). For every o < outs, l < lanes,
/// acc[o*ld_acc + l] holds the start value on entry (the bias, or the sum of a previous segment)
/// and the wrapped result on return, bit for bit what FixedEmulationKernels.swift `dotReplay`
/// (and, for BLOCK8_SCALED, attention's Q·K replay) computes. Every product is formed exactly in
/// 64 bits (|x|, |w| <= 2^31, 0 <= shift <= 31) and floored by an arithmetic shift.
/// Returns the number of assignments whose exact value was outside fm_t (int32), summed over all
/// lanes and outputs.
int64_t moepack_replay_lanes(moepack_isa isa, const int32_t *x, ptrdiff_t ldx, ptrdiff_t lanes,
                             const int16_t *w16, const int32_t *w32, ptrdiff_t ldw, ptrdiff_t outs,
                             ptrdiff_t n, int shift, moepack_replay_form form, int32_t scale, int scale_shift,
                             int32_t *acc, ptrdiff_t ld_acc);

#ifdef __cplusplus
}
#endif
#endif
