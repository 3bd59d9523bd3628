/* kernels_ref.c -- the scalar reference tier: kernels_ref.inc instantiated for float and double. */
#include "attn.h"

#include <math.h>

/* A reference row runs over every key, and at millions of keys one row outlasts the half second a
   Ctrl-C may take: the loops over keys ask sa_interrupted() every REF_POLL_KEYS keys (under a
   millisecond of work between two asks; an ask is a clock read). */
#define REF_POLL_KEYS 4096

static int ref_stop_at(sa_int j)
{
    return j % REF_POLL_KEYS == REF_POLL_KEYS - 1 && sa_interrupted();
}

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

void sa_scores_lse(const sa_batch *batch, const sa_mat *scores, void *lse, sa_int n_q, sa_int n_k,
                   int is_f32)
{
    for (sa_int item = 0; item < batch->count; item++) {
        sa_int offset = sa_batch_offset(batch, scores->bstride, item);
        for (sa_int i = 0; i < n_q; i++) {
            sa_int at = offset + i * scores->ld;
            const void *row = is_f32 ? (const void *)((const float *)scores->data + at)
                                     : (const void *)((const double *)scores->data + at);
            double value = sa_row_lse(row, n_k, is_f32);
            if (is_f32)
                ((float *)lse)[item * n_q + i] = (float)value;
            else
                ((double *)lse)[item * n_q + i] = value;
        }
    }
}

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
