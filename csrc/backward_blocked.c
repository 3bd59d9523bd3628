/* backward_blocked.c -- the blocked attention backward: backward_blocked.inc in both precisions. */
#include "attn.h"

#include <math.h>

/* Plan A keeps its dK/dV partials under this many bytes (64 MiB); see backward_blocked.inc. */
long sa_backward_partial_bytes = 64L << 20;
/* Plan A caches each query block's panel of S and dP if it fits this (8 MiB) per worker. */
long sa_backward_cache_bytes = 8L << 20;

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
