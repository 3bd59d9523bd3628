/* kernels_ref.c -- the scalar reference tier: kernels_ref.inc instantiated for float and double. */
#include "attn.h"

#include <math.h>

#define real float
#define REF(name) ref_##name##_f32
#define EXP expf
#include "kernels_ref.inc"
#include "backward_reference.inc"
#undef real
#undef REF
#undef EXP
#undef REF_ROWS_PER_TASK

#define real double
#define REF(name) ref_##name##_f64
#define EXP exp
#include "kernels_ref.inc"
#include "backward_reference.inc"
#undef real
#undef REF
#undef EXP

/* libm's exp (and the soft-cap's tanh, in double as the kernels take it), for _core.vexp on the
   reference tier */
static void ref_vexp_f32(void *out, const void *in, sa_int n, int mode)
{
    int base2 = mode == SA_VEXP_EXP2 || mode == SA_VEXP_EXP2_NONPOS;
    for (sa_int j = 0; j < n; j++) {
        float x = ((const float *)in)[j];
        ((float *)out)[j] = mode == SA_VEXP_TANH ? (float)tanh(x) : base2 ? exp2f(x) : expf(x);
    }
}

static void ref_vexp_f64(void *out, const void *in, sa_int n, int mode)
{
    int base2 = mode == SA_VEXP_EXP2 || mode == SA_VEXP_EXP2_NONPOS;
    for (sa_int j = 0; j < n; j++) {
        double x = ((const double *)in)[j];
        ((double *)out)[j] = mode == SA_VEXP_TANH ? tanh(x) : base2 ? exp2(x) : exp(x);
    }
}

const sa_kernels sa_kernels_reference = {
    .name = "reference",
    .scores = {ref_scores_f32, ref_scores_f64},
    .softmax = {ref_softmax_f32, ref_softmax_f64},
    .matmul = {ref_matmul_f32, ref_matmul_f64},
    .attention = {ref_attention_f32, ref_attention_f64},
    .attention_backward = {ref_attention_backward_f32, ref_attention_backward_f64},
    .vexp = {ref_vexp_f32, ref_vexp_f64},
};
