/*
 * isa_avx512.c -- the AVX-512 tier (F, DQ, BW, VL, with FMA): the fast kernels (isa_tier.inc)
 * compiled for 512-bit vectors. dispatch.c only hands it out when CPUID reports all of those
 * features.
 * 32 zmm registers: matmul/scores use a 12 x 2-vector micro-tile (24 accumulators, 32 columns, a
 * divisor of the usual head sizes); the fused kernel uses 8 x 2 vectors, whose 8 rows divide d_v
 * and whose 32 (float) or 16 (double) query columns divide the usual sequence lengths (8 x 3 was
 * measured slower: short sequences wasted a third of a 48-query tile).
 */
#include "attn.h"

/* x86 only, and only where the fast tiers are built (SA_VECTOR_TIERS: gcc and clang) */
#if SA_VECTOR_TIERS && (defined(__x86_64__) || defined(__i386__))
/* The tier's instruction sets, for this file only: gcc takes them for every function below;
   clang, which ignores that pragma, applies them as an attribute once the headers are in. */
#if !defined(__clang__)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2")
#endif

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2"))), apply_to = function)
#endif

#define VBYTES 64                  /* bytes per vector */
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));

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
/* p * 2^n in the lanes where y is not below lo (or is NaN), +0 in the others: the fast exps' last
   step as one VSCALEFPS where the other tiers build 2^n in the exponent bits, mask the flushed
   lanes and add back the NaNs (vexp_fast.inc's exp_finish: the same bits, two operations a
   vector where those take six) */
#define HAS_SCALE2 1
static inline vf32 scale2_f32(vf32 p, vf32 n, vf32 y, float lo)
{
    __mmask16 keep = _mm512_cmp_ps_mask((__m512)y, _mm512_set1_ps(lo), _CMP_NLT_UQ);
    return (vf32)_mm512_maskz_scalef_ps(keep, (__m512)p, (__m512)n);
}
static inline vf64 scale2_f64(vf64 p, vf64 n, vf64 y, double lo)
{
    __mmask8 keep = _mm512_cmp_pd_mask((__m512d)y, _mm512_set1_pd(lo), _CMP_NLT_UQ);
    return (vf64)_mm512_maskz_scalef_pd(keep, (__m512d)p, (__m512d)n);
}

#define MM_MR 12
#define MM_NV 2
#define FA_MR 8
#define FA_NV 2
#define FA_QT_F32 3
#define FA_QT_F64 6
#define FA_BK_F32 256
#define FA_BK_F64 128
/* 16 vectors of V sums of the decode kernel in registers (8 queries x 2 vectors); the rest of
   the tuning constants as in tuning_defaults.h */
#define DECODE_SUMS 16
#include "tuning_defaults.h"
#define TIER avx512
#define TIER_TABLE sa_kernels_avx512
#define TIER_NAME "avx512"
#include "isa_tier.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
