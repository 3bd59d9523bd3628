"""The attention variants together (issue 10): GQA, per-sequence lengths, bottom-right causal,
windows, bias, soft-capping, dropout and the log-sum-exp in one call, on every tier, against the long-double oracle,
and the multi-head layer with grouped K/V heads and padded sequences."""
import numpy as np
import pytest

import selfattn
from attn_reference import (LD, assert_close, ref_attention, ref_attention_grads, ref_lse,
                            ref_scores, repeat_kv_heads)

QL, KL = [7, 3], [9, 4]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("is_causal, window", [("bottom_right", (2, 0)), (True, (None, 1)),
                                               (False, (3, 3))])
def test_gqa_lengths_band_and_lse_together(isa, dtype, is_causal, window):
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((2, 4, 7, 8)).astype(dtype)
    K, V = (rng.standard_normal((2, 2, 9, w)).astype(dtype) for w in (8, 5))
    bias = rng.standard_normal((4, 7, 9)).astype(dtype)
    kw = dict(query_lengths=QL, key_lengths=KL, is_causal=is_causal, window=window, softcap=2.5)
    out, lse = selfattn.scaled_dot_product_attention(Q, K, V, bias=bias, enable_gqa=True,
                                                     return_lse=True, **kw)
    Kr, Vr = (repeat_kv_heads(A, 4) for A in (K, V))
    want, _ = ref_attention(Q, Kr, Vr, mask=bias, **kw)
    assert_close(out, want, dtype)
    assert_close(lse, ref_lse(ref_scores(Q, Kr, mask=bias, **kw)), dtype)
    assert not out[1, :, QL[1]:].any()                   # padded query rows give 0
    assert np.isneginf(lse[1, :, QL[1]:]).all()

    dO = rng.standard_normal(out.shape).astype(dtype)
    dQ, dK, dV = selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, bias=bias,
                                                                enable_gqa=True, **kw)
    wQ, wK, wV = ref_attention_grads(dO, Q, Kr, Vr, mask=bias, **kw)
    assert_close(dQ, wQ, dtype)
    for got, want in ((dK, wK), (dV, wV)):               # each K/V head sums its query heads'
        assert_close(got, want.reshape(2, 2, 2, *want.shape[-2:]).sum(axis=2, dtype=LD), dtype)
    assert not dK[1, :, KL[1]:].any() and not dV[1, :, KL[1]:].any()


def test_multi_head_with_kv_heads_lengths_and_window_matches_its_padding_free_parts():
    """Each sequence of a padded batch gives, on its real tokens, what it gives alone."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 6, 8))
    W_q, W_o = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    W_k, W_v = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    lengths = [6, 2]
    kw = dict(num_heads=4, num_kv_heads=2, window=(1, 0), is_causal=True)
    Y = selfattn.multi_head_attention(X, W_q, W_k, W_v, W_o, query_lengths=lengths,
                                      key_lengths=lengths, **kw)
    for b, n in enumerate(lengths):
        alone = selfattn.multi_head_attention(X[b, :n], W_q, W_k, W_v, W_o, **kw)
        assert_close(Y[b, :n], alone, np.float64)
    assert not Y[1, 2:].any()
    grads = selfattn.multi_head_attention_backward(np.ones_like(Y), X, W_q, W_k, W_v, W_o,
                                                   query_lengths=lengths, key_lengths=lengths, **kw)
    assert not grads[0][1, 2:].any()                     # padded tokens get no gradient


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dropout_with_grouped_heads_drops_what_repeated_heads_drop(isa, dtype):
    """Dropout is indexed by (seed, batch item, query, key): a query head keeps its item whether
    its K/V head is shared (GQA) or repeated, so both calls give the same bits, gradients too."""
    rng = np.random.default_rng(7)
    Q = rng.standard_normal((2, 4, 6, 8)).astype(dtype)
    K, V = (rng.standard_normal((2, 2, 9, 8)).astype(dtype) for _ in range(2))
    kw = dict(dropout_p=0.3, seed=11, query_lengths=[6, 2], key_lengths=[9, 5], softcap=3.0)
    grouped = selfattn.scaled_dot_product_attention(Q, K, V, enable_gqa=True, **kw)
    Kr, Vr = (np.repeat(A, 2, axis=1) for A in (K, V))
    np.testing.assert_array_equal(grouped, selfattn.scaled_dot_product_attention(Q, Kr, Vr, **kw))
    dO = rng.standard_normal(grouped.shape).astype(dtype)
    dQ, dK, dV = selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, enable_gqa=True, **kw)
    rQ, rK, rV = selfattn.scaled_dot_product_attention_backward(dO, Q, Kr, Vr, **kw)
    np.testing.assert_array_equal(dQ, rQ)
    assert_close(dK, rK.reshape(2, 2, 2, 9, 8).sum(axis=2, dtype=LD), dtype)
    assert_close(dV, rV.reshape(2, 2, 2, 9, 8).sum(axis=2, dtype=LD), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decoding_with_cache_lengths_and_the_other_variants(isa, dtype):
    """Few queries against a long cache (the decode kernel's shape) with per-sequence cache
    lengths, bottom-right causality and a window; with return_lse, softcap or dropout the call
    takes the fused kernel instead: every route agrees with the oracle."""
    rng = np.random.default_rng(8)
    Q = rng.standard_normal((3, 2, 2, 16)).astype(dtype)
    K, V = (rng.standard_normal((3, 2, 700, 16)).astype(dtype) for _ in range(2))
    base = dict(key_lengths=[700, 333, 0], is_causal="bottom_right", window=(300, 0))
    for extra in ({}, {"return_lse": True}, {"softcap": 4.0}, {"dropout_p": 0.2, "seed": 3}):
        got = selfattn.scaled_dot_product_attention(Q, K, V, **base, **extra)
        out = got[0] if extra.get("return_lse") else got
        ref_kw = {k: v for k, v in extra.items() if k != "return_lse"}
        assert_close(out, ref_attention(Q, K, V, **base, **ref_kw)[0], dtype)
        assert not out[2].any()                          # an empty cache gives 0
        if extra.get("return_lse"):
            assert_close(got[1], ref_lse(ref_scores(Q, K, **base)), dtype)
