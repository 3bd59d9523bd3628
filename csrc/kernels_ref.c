/* kernels_ref.c -- the scalar reference tier: kernels_ref.inc instantiated for float and double. */
#include "attn.h"

#include <math.h>

#define real float
#define REF(name) ref_##name##_f32
#define EXP expf
#include "kernels_ref.inc"
#include "backward_ref.inc"
#undef real
#undef REF
#undef EXP
#undef REF_ROWS_PER_TASK

#define real double
#define REF(name) ref_##name##_f64
#define EXP exp
#include "kernels_ref.inc"
#include "backward_ref.inc"
#undef real
#undef REF
#undef EXP

const sa_kernels sa_kernels_reference = {
    .name = "reference",
    .scores = {ref_scores_f32, ref_scores_f64},
    .softmax = {ref_softmax_f32, ref_softmax_f64},
    .matmul = {ref_matmul_f32, ref_matmul_f64},
    .attention = {ref_attention_f32, ref_attention_f64},
    .attention_backward = {ref_attention_backward_f32, ref_attention_backward_f64},
};

/* What the other tiers run until their own kernels land: the reference forward kernels and the
   blocked backward (which calls the tier's matmul, so it speeds up with it). */
const sa_kernels sa_kernels_interim = {
    .name = "interim",
    .scores = {ref_scores_f32, ref_scores_f64},
    .softmax = {ref_softmax_f32, ref_softmax_f64},
    .matmul = {ref_matmul_f32, ref_matmul_f64},
    .attention = {ref_attention_f32, ref_attention_f64},
    .attention_backward = {sa_attention_backward_blocked_f32, sa_attention_backward_blocked_f64},
};
