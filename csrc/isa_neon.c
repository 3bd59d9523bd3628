/*
 * isa_neon.c -- the AArch64 Advanced SIMD (NEON) tier: the fast kernels (isa_tier.inc) compiled
 * for 128-bit vectors (4 floats, 2 doubles) with fused multiply-add. NEON is part of the AArch64
 * base, so every aarch64 CPU runs it; dispatch.c still asks sa_cpu_has(SA_CPU_NEON).
 * 32 v registers. gcc turns each broadcast A element into the operand of a by-element FMLA and
 * keeps the MR of one k step live together, so a tile needs MR x NV accumulators + NV B vectors
 * + MR A elements <= 32. matmul/scores use 10 x 2 vectors (20 + 2 + 10 = 32); BLIS's ARMv8 shape,
 * 8 x 3 (24 + 3 + 8 = 35), spilled 3 accumulators to the stack on every k step in gcc 12's code
 * (objdump), and 12 x 2 (38) spilled too. The fused kernels use 8 x 2 (16 + 2 + 8 = 26): 8 rows
 * divide d_v, and 8 (float) or 4 (double) query lanes divide the usual sequence lengths.
 * SVE is not used (no SVE machine to tune on; NEON runs on every SVE CPU).
 */
#include "attn.h"

/* aarch64 only, and only where the fast tiers are built (SA_VECTOR_TIERS: gcc and clang; MSVC's
   ARM64 lacks vector_size) */
#if SA_VECTOR_TIERS && defined(__aarch64__)

#include <arm_neon.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define VBYTES 16                  /* bytes per vector */
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));

/* VMAX/VMIN must give b where a lane is unordered, as x86's MAXPS does (isa_tier.inc); NEON's
   FMAX returns NaN if either lane is NaN, and FMAXNM the number, so each is a compare and a
   bit-select here: a > b ? a : b. */
static inline vf32 vsplat_f32(float s) { return (vf32)vdupq_n_f32(s); }
static inline vf32 fma_f32(vf32 a, vf32 b, vf32 c)
{
    return (vf32)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
}
static inline vf32 max_f32(vf32 a, vf32 b)
{
    return (vf32)vbslq_f32(vcgtq_f32((float32x4_t)a, (float32x4_t)b), (float32x4_t)a,
                           (float32x4_t)b);
}
static inline vf32 min_f32(vf32 a, vf32 b)
{
    return (vf32)vbslq_f32(vcltq_f32((float32x4_t)a, (float32x4_t)b), (float32x4_t)a,
                           (float32x4_t)b);
}
static inline float hmax_f32(vf32 v) { return vmaxvq_f32((float32x4_t)v); }
static inline int any_gt_f32(vf32 a, vf32 b)
{
    return vmaxvq_u32(vcgtq_f32((float32x4_t)a, (float32x4_t)b)) != 0;
}
static inline vf64 vsplat_f64(double s) { return (vf64)vdupq_n_f64(s); }
static inline vf64 fma_f64(vf64 a, vf64 b, vf64 c)
{
    return (vf64)vfmaq_f64((float64x2_t)c, (float64x2_t)a, (float64x2_t)b);
}
static inline vf64 max_f64(vf64 a, vf64 b)
{
    return (vf64)vbslq_f64(vcgtq_f64((float64x2_t)a, (float64x2_t)b), (float64x2_t)a,
                           (float64x2_t)b);
}
static inline vf64 min_f64(vf64 a, vf64 b)
{
    return (vf64)vbslq_f64(vcltq_f64((float64x2_t)a, (float64x2_t)b), (float64x2_t)a,
                           (float64x2_t)b);
}

static inline double hmax_f64(vf64 v) { return vmaxvq_f64((float64x2_t)v); }
static inline int any_gt_f64(vf64 a, vf64 b)
{
    return vmaxvq_u32(vreinterpretq_u32_u64(vcgtq_f64((float64x2_t)a, (float64x2_t)b))) != 0;
}

/* A VL x VL tile held as VL vectors, transposed in registers (see isa_avx512.c's): pairs of
   rows interleaved (TRN1/TRN2 on 32-bit lanes), then pairs of pairs (on 64-bit lanes) */
#define HAS_TRANSPOSE 1
static inline void transpose_f32(vf32 rows[4])
{
    float32x4_t t0 = vtrn1q_f32((float32x4_t)rows[0], (float32x4_t)rows[1]);
    float32x4_t t1 = vtrn2q_f32((float32x4_t)rows[0], (float32x4_t)rows[1]);
    float32x4_t t2 = vtrn1q_f32((float32x4_t)rows[2], (float32x4_t)rows[3]);
    float32x4_t t3 = vtrn2q_f32((float32x4_t)rows[2], (float32x4_t)rows[3]);
    rows[0] = (vf32)vtrn1q_f64((float64x2_t)t0, (float64x2_t)t2);
    rows[1] = (vf32)vtrn1q_f64((float64x2_t)t1, (float64x2_t)t3);
    rows[2] = (vf32)vtrn2q_f64((float64x2_t)t0, (float64x2_t)t2);
    rows[3] = (vf32)vtrn2q_f64((float64x2_t)t1, (float64x2_t)t3);
}
static inline void transpose_f64(vf64 rows[2])
{
    float64x2_t r0 = (float64x2_t)rows[0], r1 = (float64x2_t)rows[1];
    rows[0] = (vf64)vtrn1q_f64(r0, r1);
    rows[1] = (vf64)vtrn2q_f64(r0, r1);
}

#define MM_MR 10
#define MM_NV 2
#define FA_MR 8
#define FA_NV 2
/* fused query blocks of 64 (8 x 8 float lanes, 16 x 4 double lanes), as the generic tier's */
#define FA_QT_F32 8
#define FA_QT_F64 16
/* fused key blocks: whole 8-row slivers, St (keys x 64 queries) 64 KiB in either precision */
#define FA_BK_F32 256
#define FA_BK_F64 128
/* the remaining tuning constants: csrc/tuning_defaults.h (the x86 tiers' values; no ARM machine
   has measured them yet) */
#include "tuning_defaults.h"
#define TIER neon
#define TIER_TABLE sa_kernels_neon
#define TIER_NAME "neon"
#include "isa_tier.inc"
#endif
