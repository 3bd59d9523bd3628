/*
 * isa_generic.c -- the portable tier: the fast kernels (isa_tier.inc) with 16-byte GCC/Clang
 * vectors and no target options, so it runs on any x86-64 (SSE2 is the baseline) and on other
 * architectures.
 * Without FMA in the baseline, a*b+c is two roundings here (the -std=c11 build does not contract).
 */
#include "attn.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float vf32 __attribute__((vector_size(16)));
typedef int32_t vi32 __attribute__((vector_size(16)));
typedef double vf64 __attribute__((vector_size(16)));
typedef int64_t vi64 __attribute__((vector_size(16)));

/* a > b ? a : b per lane, b where unordered (as MAXPS), written with masks as C vectors allow */
static inline vf32 max_f32(vf32 a, vf32 b)
{
    vi32 m = a > b;
    return (vf32)((m & (vi32)a) | (~m & (vi32)b));
}
static inline vf32 min_f32(vf32 a, vf32 b)
{
    vi32 m = a < b;
    return (vf32)((m & (vi32)a) | (~m & (vi32)b));
}
static inline vf32 vsplat_f32(float s) { return (vf32){s, s, s, s}; }
static inline vf32 fma_f32(vf32 a, vf32 b, vf32 c) { return a * b + c; }
static inline vf64 max_f64(vf64 a, vf64 b)
{
    vi64 m = a > b;
    return (vf64)((m & (vi64)a) | (~m & (vi64)b));
}
static inline vf64 min_f64(vf64 a, vf64 b)
{
    vi64 m = a < b;
    return (vf64)((m & (vi64)a) | (~m & (vi64)b));
}
static inline vf64 vsplat_f64(double s) { return (vf64){s, s}; }
static inline vf64 fma_f64(vf64 a, vf64 b, vf64 c) { return a * b + c; }

#define MM_MR 6
#define MM_NV 2
#define FA_MR 6
#define FA_NV 2
#define FA_QT_F32 8
#define FA_QT_F64 16
#define FA_BK_F32 252
#define FA_BK_F64 126
/* Tuning, measured on the machines of README's benchmarks (the same on every tier so far): */
/* GEMM k step: an A sliver and a B panel of this depth stay in L2 */
#define MM_KC 256
/* GEMM tile columns: a packed B panel, MM_KC x MM_NC, is 256 KiB (float) or 256 KiB (double) */
#define MM_NC_F32 256
#define MM_NC_F64 128
/* GEMM task rows come in steps of 8 slivers */
#define MM_MC (MM_MR * 8)
/* a GEMM task's work: amortises packing B, yet a few ms so that Ctrl-C is polled; at most 64
   steps of rows, so that a huge m still makes many tasks */
#define GEMM_TASK_FLOPS 2.0e7
#define GEMM_MAX_MC_STEPS 64
/* a softmax task's elements: amortises the hand-out, short enough to poll */
#define SOFTMAX_TASK_ELEMENTS 65536
/* the fused kernel's mask step works on this much of its scores at once (in L1) */
#define FA_MASK_CHUNK_BYTES 16384
/* fused backward query rows per block: the S and dP panels of 2048 keys stay near 1 MiB (L2) */
#define BWF_ROWS_F32 64
#define BWF_ROWS_F64 32
/* fused backward chunks per call: at n = 2048, 4 and 8 cost the same, 16 about 10% more */
#define BWF_TASKS 8
/* keys per packing task, and per reduction task (whose row buffer stays in L1), of the backward */
#define BWF_PACK_KEYS 256
#define BWF_RED_KEYS 256
/* keys the backward's packing transposes at a time: the strided side stays in L1 */
#define BWF_PACK_TILE 16
/* backward panel rows this many bytes apart share L1 sets: one more tile of stride (10% faster) */
#define BWF_PAD_BYTES 1024
#define TIER generic
#define TIER_TABLE sa_kernels_generic
#define TIER_NAME "generic"
#include "isa_tier.inc"
