/*
 * isa_generic.c -- the portable tier: the fast kernels (isa_tier.inc) with 16-byte GCC/Clang
 * vectors and no target options, so it runs on any x86-64 (SSE2 is the baseline) and on other
 * architectures.
 * Without FMA in the baseline, a*b+c is two roundings here (the -std=c11 build does not contract).
 */
#include "attn.h"
#if SA_VECTOR_TIERS   /* GCC vector extensions: gcc and clang */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define VBYTES 16                  /* bytes per vector */
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));

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
static inline float hmax_f32(vf32 v)
{
    float m01 = v[1] > v[0] ? v[1] : v[0], m23 = v[3] > v[2] ? v[3] : v[2];
    return m23 > m01 ? m23 : m01;
}
static inline int any_gt_f32(vf32 a, vf32 b)
{
    vi32 m = a > b;
    return (m[0] | m[1] | m[2] | m[3]) != 0;
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
static inline double hmax_f64(vf64 v) { return v[1] > v[0] ? v[1] : v[0]; }
static inline int any_gt_f64(vf64 a, vf64 b)
{
    vi64 m = a > b;
    return (m[0] | m[1]) != 0;
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
/* Tuning constants: the defaults of tuning_defaults.h (none overridden on this tier). */
#include "tuning_defaults.h"
#define TIER generic
#define TIER_TABLE sa_kernels_generic
#define TIER_NAME "generic"
#include "isa_tier.inc"

#endif
