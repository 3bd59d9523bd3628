/* backward_blocked.c -- the blocked attention backward: backward_blocked.inc in both precisions. */
#include "attn.h"

#include <math.h>

/* Tuning: */
/* query and key rows per block: the block products are 64 x 64 x d GEMMs */
#define BWD_BQ 64
#define BWD_BK 64
/* tasks per call, so that threads balance. More chunks balance bands (causal) better but each
   needs its own partial dK, dV: 16 keeps them (n_k * (d_k + d_v) each) small enough to be reused
   between calls rather than mapped afresh (a third of the time at n = 2048, d = 64 went to page
   faults with 32) */
#define BWD_TASKS 16

#define real float
#define BWD(name) blocked_##name##_f32
#define BWD_ENTRY sa_attention_backward_blocked_f32
#define EXP expf
#define PREC SA_F32
#include "backward_blocked.inc"
#undef real
#undef BWD
#undef BWD_ENTRY
#undef EXP
#undef PREC

#define real double
#define BWD(name) blocked_##name##_f64
#define BWD_ENTRY sa_attention_backward_blocked_f64
#define EXP exp
#define PREC SA_F64
#include "backward_blocked.inc"
