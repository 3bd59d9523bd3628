/*
 * isa_avx2.c -- the AVX2 + FMA tier: the fast kernels (isa_tier.inc) compiled for 256-bit vectors.
 * 16 ymm registers: a 6 x 2-vector micro-tile (12 accumulators, 2 B vectors, 1 broadcast), as
 * in BLIS's Haswell kernels, for every product.
 */
#include "attn.h"

/* x86 only, and only where the fast tiers are built (SA_VECTOR_TIERS: gcc and clang) */
#if SA_VECTOR_TIERS && (defined(__x86_64__) || defined(__i386__))
/* The tier's instruction sets, for this file only: gcc takes them for every function below;
   clang, which ignores that pragma, applies them as an attribute once the headers are in. */
#if !defined(__clang__)
#pragma GCC target("avx2,fma,bmi,bmi2")
#endif

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2"))), apply_to = function)
#endif

#define VBYTES 32                  /* bytes per vector */
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));

static inline vf32 vsplat_f32(float s) { return (vf32)_mm256_set1_ps(s); }
static inline vf32 fma_f32(vf32 a, vf32 b, vf32 c)
{
    return (vf32)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
static inline vf32 max_f32(vf32 a, vf32 b) { return (vf32)_mm256_max_ps((__m256)a, (__m256)b); }
static inline vf32 min_f32(vf32 a, vf32 b) { return (vf32)_mm256_min_ps((__m256)a, (__m256)b); }
static inline float hmax_f32(vf32 v)
{
    __m128 h = _mm_max_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}
static inline int any_gt_f32(vf32 a, vf32 b)
{
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_GT_OQ)) != 0;
}
static inline vf64 vsplat_f64(double s) { return (vf64)_mm256_set1_pd(s); }
static inline vf64 fma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
static inline vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm256_max_pd((__m256d)a, (__m256d)b); }
static inline vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm256_min_pd((__m256d)a, (__m256d)b); }
static inline double hmax_f64(vf64 v)
{
    __m128d h = _mm_max_pd(_mm256_castpd256_pd128((__m256d)v),
                           _mm256_extractf128_pd((__m256d)v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
}
static inline int any_gt_f64(vf64 a, vf64 b)
{
    return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)a, (__m256d)b, _CMP_GT_OQ)) != 0;
}

/* A VL x VL tile held as VL vectors, transposed in registers (see isa_avx512.c's) */
#define HAS_TRANSPOSE 1
static inline void transpose_f32(vf32 rows[8])
{
    __m256 t[8], r[8];
    /* 1. pairs of rows interleaved; 2. then pairs of pairs: r[4i + j]'s 128-bit lane L holds
          column 4L + j of rows 4i .. 4i + 3; 3. the lanes gathered */
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps((__m256)rows[2 * i], (__m256)rows[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps((__m256)rows[2 * i], (__m256)rows[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            __m256d a = _mm256_castps_pd(t[4 * i + j]), b = _mm256_castps_pd(t[4 * i + j + 2]);
            r[4 * i + 2 * j] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
            r[4 * i + 2 * j + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
        }
    for (int j = 0; j < 4; j++) {
        rows[j] = (vf32)_mm256_permute2f128_ps(r[j], r[4 + j], 0x20);
        rows[4 + j] = (vf32)_mm256_permute2f128_ps(r[j], r[4 + j], 0x31);
    }
}
static inline void transpose_f64(vf64 rows[4])
{
    __m256d t0 = _mm256_unpacklo_pd((__m256d)rows[0], (__m256d)rows[1]);
    __m256d t1 = _mm256_unpackhi_pd((__m256d)rows[0], (__m256d)rows[1]);
    __m256d t2 = _mm256_unpacklo_pd((__m256d)rows[2], (__m256d)rows[3]);
    __m256d t3 = _mm256_unpackhi_pd((__m256d)rows[2], (__m256d)rows[3]);
    rows[0] = (vf64)_mm256_permute2f128_pd(t0, t2, 0x20);
    rows[1] = (vf64)_mm256_permute2f128_pd(t1, t3, 0x20);
    rows[2] = (vf64)_mm256_permute2f128_pd(t0, t2, 0x31);
    rows[3] = (vf64)_mm256_permute2f128_pd(t1, t3, 0x31);
}

#define MM_MR 6
#define MM_NV 2
#define FA_MR 6
#define FA_NV 2
#define FA_QT_F32 6
#define FA_QT_F64 12
/* Key blocks whose scores (FA_BK x 96 queries: 25 KiB float, 27 KiB double) stay in the 32 KiB
   L1 of an AMD Zen 3 while steps 3 and 4 read them back: 252 and 126 keys (96 KiB, in L2) ran
   2-4% slower on one thread at n = 2048-4096, d = 64 and 128 (CPU time, interleaved builds;
   ViT and BERT batches unchanged) */
#define FA_BK_F32 66
#define FA_BK_F64 36
/* Tuning constants: the defaults of tuning_defaults.h but for these, measured on AMD Zen 3 (EPYC,
   2 vCPUs, no AVX-512). The scores are cut into at least 8 tasks like a matmul, so that two
   threads can share n = 512 (2 tiles of 256 columns with the defaults) and n = 2048 (4) evenly
   however late one of them starts; the shared K^T pack (gemm_run) keeps the extra row tiles from
   transposing K again. (Matmul tasks were 4e7 flops here while each task packed its own B panel:
   the attention output, k = n, spent a third of its time copying V with the default's small
   tasks. Since the tiles share one pack of B, the default's tasks ran 0.93-1.04x the time of
   4e7's, within the noise, on the step, projection and multi-head products.) */
#define GEMM_SCORES_MIN_TASKS 8
/* The fused backward's partial sums of dK, dV at most 20 MiB: at f32 n = 4096, d = 128 its 8
   chunks' partials were 35 MB (4 chunks: 17 MB). On this tier's test machine (AMD EPYC Zen 3,
   32 MiB L3, glibc) a scratch block past 32 MB is mapped afresh by malloc on every call, so its
   ~10^4 pages were faulted in and cleared each time (~5% of the call in the profile), and the
   reduction read them from memory; with 4 chunks 2 or 4 threads still take equal shares. */
#define BWF_PARTIALS_BYTES (20L << 20)
#include "tuning_defaults.h"
#define TIER avx2
#define TIER_TABLE sa_kernels_avx2
#define TIER_NAME "avx2"
#include "isa_tier.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
