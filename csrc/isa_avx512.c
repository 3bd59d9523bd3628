/*
 * isa_avx512.c -- the AVX-512 tier (F, DQ, BW, VL, with FMA): the fast kernels (isa_tier.inc)
 * compiled for 512-bit vectors. dispatch.c only hands it out when CPUID reports all of those
 * features.
 * 32 zmm registers: matmul/scores use a 12 x 2-vector micro-tile (24 accumulators, 32 columns, a
 * divisor of the usual head sizes); the fused kernel uses 8 x 2 vectors, whose 8 rows divide d_v
 * and whose 32 (float) or 16 (double) query columns divide the usual sequence lengths (8 x 3 was
 * measured slower: short sequences wasted a third of a 48-query tile).
 */
#if defined(__x86_64__) || defined(__i386__)   /* elsewhere the tier does not exist */
/* The tier's instruction sets, for this file only: gcc takes them for every function below;
   clang, which ignores that pragma, applies them as an attribute once the headers are in. */
#if !defined(__clang__)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2")
#endif
#include "attn.h"

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2"))), apply_to = function)
#endif

typedef float vf32 __attribute__((vector_size(64)));
typedef int32_t vi32 __attribute__((vector_size(64)));
typedef double vf64 __attribute__((vector_size(64)));
typedef int64_t vi64 __attribute__((vector_size(64)));

static inline vf32 vsplat_f32(float s) { return (vf32)_mm512_set1_ps(s); }
static inline vf32 fma_f32(vf32 a, vf32 b, vf32 c)
{
    return (vf32)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
static inline vf32 max_f32(vf32 a, vf32 b) { return (vf32)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf32 min_f32(vf32 a, vf32 b) { return (vf32)_mm512_min_ps((__m512)a, (__m512)b); }
static inline vf64 vsplat_f64(double s) { return (vf64)_mm512_set1_pd(s); }
static inline vf64 fma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
}
static inline vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm512_max_pd((__m512d)a, (__m512d)b); }
static inline vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm512_min_pd((__m512d)a, (__m512d)b); }

#define MM_MR 12
#define MM_NV 2
#define FA_MR 8
#define FA_NV 2
#define FA_QT_F32 3
#define FA_QT_F64 6
#define FA_BK_F32 256
#define FA_BK_F64 128
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
#define TIER avx512
#define TIER_TABLE sa_kernels_avx512
#define TIER_NAME "avx512"
#include "isa_tier.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
