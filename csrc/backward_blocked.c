/* backward_blocked.c -- the blocked attention backward: backward_blocked.inc in both precisions. */
#include "attn.h"

#include <math.h>

#define real float
#define BWD(name) blocked_##name##_f32
#define BWD_ENTRY sa_attention_backward_blocked_f32
#define EXP expf
#define LOG logf
#define PREC SA_F32
#include "backward_blocked.inc"
#undef real
#undef BWD
#undef BWD_ENTRY
#undef EXP
#undef LOG
#undef PREC
#undef BWD_BQ
#undef BWD_BK
#undef BWD_TASKS

#define real double
#define BWD(name) blocked_##name##_f64
#define BWD_ENTRY sa_attention_backward_blocked_f64
#define EXP exp
#define LOG log
#define PREC SA_F64
#include "backward_blocked.inc"
