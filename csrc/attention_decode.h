/*
 * attention_decode.h -- when attention runs the decode kernel (csrc/attention_decode.inc): few
 * queries against many keys (a KV cache), the output alone wanted. There the fused kernel would
 * fill a tile of FA_BQ query lanes with one to a few queries and scan K and V beforehand (the
 * units of its scores, the finiteness of V); the decode kernel reads K and V once, in place.
 * Both csrc/module.c (which then leaves the scan of V to the kernel) and the fast tiers'
 * attention entry (attention_fused.inc) ask this one predicate.
 */
#ifndef SELFATTN_ATTENTION_DECODE_H
#define SELFATTN_ATTENTION_DECODE_H

#include "attn.h"

/* Up to this many queries the decode kernel keeps pace with the memory: each key row, once read,
   serves every query from L1 (at 16 queries and d = 128 about as fast as the fused kernel). */
#define SA_DECODE_MAX_QUERIES 16
/* Fewer keys per query than this: a short call, which the fused kernel runs as well. */
#define SA_DECODE_MIN_KEYS_PER_QUERY 8

/* One condition per line: a feature the decode kernel does not support adds its own. */
static inline int sa_attention_decode_applies(sa_int n_q, sa_int n_k, int weights_wanted,
                                              int lse_wanted, const sa_score_mods *mods)
{
    if (weights_wanted)        /* the (n_q, n_k) weights exist anyway: the composed kernels */
        return 0;
    if (lse_wanted)            /* not computed by the decode kernel (yet): the fused one has it */
        return 0;
    if (mods && (mods->softcap > 0 || mods->dropout_p > 0))   /* score and weight steps: fused */
        return 0;
    if (n_q < 1 || n_q > SA_DECODE_MAX_QUERIES)
        return 0;
    if (n_k < SA_DECODE_MIN_KEYS_PER_QUERY * n_q)
        return 0;
    return 1;
}

#endif
