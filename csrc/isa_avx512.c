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
static inline float hmax_f32(vf32 v) { return _mm512_reduce_max_ps((__m512)v); }
static inline int any_gt_f32(vf32 a, vf32 b)
{
    return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ) != 0;
}
static inline vf64 vsplat_f64(double s) { return (vf64)_mm512_set1_pd(s); }
static inline vf64 fma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
}
static inline vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm512_max_pd((__m512d)a, (__m512d)b); }
static inline vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm512_min_pd((__m512d)a, (__m512d)b); }
static inline double hmax_f64(vf64 v) { return _mm512_reduce_max_pd((__m512d)v); }
static inline int any_gt_f64(vf64 a, vf64 b)
{
    return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ) != 0;
}
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

/* A VL x VL tile held as VL vectors, transposed in registers: rows[i][j] becomes rows[j][i].
   The fused forward packs its queries and writes its outputs through this (a lane at a time,
   those were a sixth of a batch of BERT-sized heads). Moves only: the same bits. */
#define HAS_TRANSPOSE 1
static inline void transpose_f32(vf32 rows[16])
{
    __m512 t[16], r[16];
    for (int i = 0; i < 16; i++)
        r[i] = (__m512)rows[i];
    /* 1. pairs of rows interleaved; 2. then pairs of pairs: r[4i + j]'s 128-bit lane L holds
          column 4L + j of rows 4i .. 4i + 3 */
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) {
            __m512d a = _mm512_castps_pd(t[4 * i + j]), b = _mm512_castps_pd(t[4 * i + j + 2]);
            r[4 * i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[4 * i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    /* 3., 4. the 128-bit lanes gathered: lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of two vectors */
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        rows[j] = (vf32)_mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        rows[8 + j] = (vf32)_mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
        rows[4 + j] = (vf32)_mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        rows[12 + j] = (vf32)_mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
    }
}
static inline void transpose_f64(vf64 rows[8])
{
    __m512d t[8];
    /* 1. pairs of rows interleaved: t[2i + j]'s 128-bit lane L holds column 2L + j of rows 2i,
          2i + 1; 2., 3. the 128-bit lanes gathered as in transpose_f32 */
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_pd((__m512d)rows[2 * i], (__m512d)rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_pd((__m512d)rows[2 * i], (__m512d)rows[2 * i + 1]);
    }
    for (int j = 0; j < 2; j++) {
        __m512d a0 = _mm512_shuffle_f64x2(t[j], t[2 + j], 0x88);
        __m512d a1 = _mm512_shuffle_f64x2(t[j], t[2 + j], 0xdd);
        __m512d b0 = _mm512_shuffle_f64x2(t[4 + j], t[6 + j], 0x88);
        __m512d b1 = _mm512_shuffle_f64x2(t[4 + j], t[6 + j], 0xdd);
        rows[j] = (vf64)_mm512_shuffle_f64x2(a0, b0, 0x88);
        rows[4 + j] = (vf64)_mm512_shuffle_f64x2(a0, b0, 0xdd);
        rows[2 + j] = (vf64)_mm512_shuffle_f64x2(a1, b1, 0x88);
        rows[6 + j] = (vf64)_mm512_shuffle_f64x2(a1, b1, 0xdd);
    }
}

#define MM_MR 12
#define MM_NV 2
#define FA_MR 8
#define FA_NV 2
/* fused blocks of 128 queries (4 and 8 micro-tiles) where a call has many: each key block, read
   from L2, then serves a third more queries. On a Xeon, 2 threads, sdpa at n = 1024-8192 took
   0.97-0.99 (float, d = 64), 0.965-0.99 (float, d = 128) and 0.91-0.97 (double) of the time of
   blocks of 96; 8 heads of n = 1024 read as views, 1.01. Blocks of 96 stay where a call has few
   blocks (one more or less unbalances the threads: n = 200 took 1.2x the time), one key block
   (BERT-sized heads: 1.03x) or a band (causal n = 1000: 1.07x, the edge blocks' hidden pairs) */
#define FA_QT_F32 4
#define FA_QT_F64 8
#define FA_QT_FEW_F32 3
#define FA_QT_FEW_F64 6
#define FA_BK_F32 256
#define FA_BK_F64 128
/* the fused attention's step 4 in runs of 64 float keys: a run's rows of V and P (40 KiB at
   d_v = 64) stay in L1. On a Xeon, 2 threads: 0.92-0.98 of the time of whole blocks on 8 heads of
   n = 512-1024 read as strided views of [Q|K|V], 0.97 on contiguous heads and sdpa at n = 4096
   (d = 64 and 128), 0.98 on BERT-sized batches; float64, whose runs do not fit: 0.98-1.02 */
#define FA_PV_KEYS_F32 64
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
