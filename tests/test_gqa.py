"""Grouped-query attention (scaled_dot_product_attention's enable_gqa, multi_head_attention's
num_kv_heads) and alibi_bias: against the long-double oracle (tests/attn_reference.py, whose
repeat_kv_heads is the definition), against the same call with K/V repeated, and by central finite
differences; every tier (the isa fixture), and the NumPy backend (SELFATTN_BACKEND=numpy)."""
import numpy as np
import pytest

import selfattn
from selfattn import (
    alibi_bias,
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
)
from selfattn._validate import _grouped_operands

from attn_reference import LD, assert_close, numeric_grad, ref_attention, repeat_kv_heads

# (Q heads, K/V heads, Q's batch, K/V's batch): GQA, MQA, equal heads, and broadcast batch axes
HEADS = [
    pytest.param(8, 2, (2,), (2,), id="gqa-8-over-2"),
    pytest.param(4, 1, (2,), (2,), id="mqa-4-over-1"),
    pytest.param(3, 3, (2,), (2,), id="equal-heads"),
    pytest.param(6, 3, (2,), (), id="kv-broadcast-over-batch"),
    pytest.param(4, 2, (1,), (3,), id="q-broadcast-over-batch"),
    pytest.param(4, 1, (2,), None, id="kv-2d-one-head"),
]


def _qkv(rng, heads, kv_heads, q_batch, kv_batch, n_q=5, n_k=7, d_k=4, d_v=3, dtype=np.float64):
    kv_lead = () if kv_batch is None else kv_batch + (kv_heads,)
    Q = rng.normal(size=q_batch + (heads, n_q, d_k)).astype(dtype)
    K = rng.normal(size=kv_lead + (n_k, d_k)).astype(dtype)
    V = rng.normal(size=kv_lead + (n_k, d_v)).astype(dtype)
    return Q, K, V


def _options(rng, heads, n_q=5, n_k=7):
    """mask=/bias=/is_causal variants, each with the merged float mask the oracle takes."""
    head_mask = rng.random((heads, n_q, n_k)) > 0.3
    bias = rng.normal(size=(heads, 1, n_k))
    shared = rng.random((n_q, n_k)) > 0.4
    merged = np.where(head_mask, bias, -np.inf)
    return [
        ({}, {}),
        ({"is_causal": True}, {"is_causal": True}),
        ({"mask": head_mask}, {"mask": head_mask}),
        ({"mask": shared[None], "is_causal": True}, {"mask": shared[None], "is_causal": True}),
        ({"bias": bias}, {"mask": bias}),
        ({"mask": head_mask, "bias": bias}, {"mask": merged}),
    ]


@pytest.mark.parametrize("heads, kv_heads, q_batch, kv_batch", HEADS)
def test_sdpa_gqa_matches_the_oracle_and_the_repeated_call(heads, kv_heads, q_batch, kv_batch,
                                                          isa, rng):
    Q, K, V = _qkv(rng, heads, kv_heads, q_batch, kv_batch)
    K_rep, V_rep = (repeat_kv_heads(A, heads) for A in (K, V))
    for ours_kw, ref_kw in _options(rng, heads):
        out, w = scaled_dot_product_attention(Q, K, V, enable_gqa=True, return_weights=True,
                                              **ours_kw)
        ref_out, ref_w = ref_attention(Q, K, V, enable_gqa=True, **ref_kw)
        assert_close(out, ref_out)
        assert_close(w, np.broadcast_to(ref_w, w.shape))
        # the same kernels see the same numbers: the bits of the call with K/V repeated
        rep_out, rep_w = scaled_dot_product_attention(Q, K_rep, V_rep, return_weights=True,
                                                      **ours_kw)
        np.testing.assert_array_equal(out, rep_out)
        np.testing.assert_array_equal(w, rep_w)
        np.testing.assert_array_equal(
            scaled_dot_product_attention(Q, K, V, enable_gqa=True, **ours_kw),
            scaled_dot_product_attention(Q, K_rep, V_rep, **ours_kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sdpa_gqa_float32_and_shape(dtype, isa, rng):
    Q, K, V = _qkv(rng, 8, 2, (3,), (3,), n_q=9, n_k=6, dtype=dtype)
    out = scaled_dot_product_attention(Q, K, V, enable_gqa=True, is_causal=True)
    assert out.shape == (3, 8, 9, 3) and out.dtype == dtype
    assert_close(out, ref_attention(Q, K, V, enable_gqa=True, is_causal=True)[0])


def test_gqa_groups_without_copying_k_and_v(rng):
    Q, K, V = _qkv(rng, 8, 2, (2,), (2,))
    groups, Qg, Kg, Vg = _grouped_operands("f", Q, K, V, True)
    assert groups == (2, 4)
    assert Qg.shape == (2, 2, 4, 5, 4) and Kg.shape == (2, 2, 1, 7, 4)
    for view, base in ((Qg, Q), (Kg, K), (Vg, V)):
        assert np.shares_memory(view, base)


@pytest.mark.parametrize("heads, kv_heads, q_batch, kv_batch", HEADS)
def test_sdpa_gqa_backward_finite_differences(heads, kv_heads, q_batch, kv_batch, isa, rng):
    Q, K, V = _qkv(rng, heads, kv_heads, q_batch, kv_batch, n_q=3, n_k=4, d_k=2, d_v=2)
    mask = rng.random((heads, 3, 4)) > 0.25
    bias = rng.normal(size=(heads, 3, 1))
    kw = {"mask": mask, "bias": bias, "is_causal": True, "enable_gqa": True}
    G = rng.normal(size=scaled_dot_product_attention(Q, K, V, **kw).shape)
    dQ, dK, dV = scaled_dot_product_attention_backward(G, Q, K, V, **kw)
    assert (dQ.shape, dK.shape, dV.shape) == (Q.shape, K.shape, V.shape)

    def loss():
        return float((scaled_dot_product_attention(Q, K, V, **kw) * G).sum())

    for grad, x in ((dQ, Q), (dK, K), (dV, V)):
        np.testing.assert_allclose(grad, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_sdpa_gqa_backward_sums_the_repeated_gradients(isa, rng):
    Q, K, V = _qkv(rng, 8, 2, (2,), (2,))
    G = rng.normal(size=(2, 8, 5, 3))
    dQ, dK, dV = scaled_dot_product_attention_backward(G, Q, K, V, enable_gqa=True,
                                                       is_causal=True)
    rQ, rK, rV = scaled_dot_product_attention_backward(
        G, Q, repeat_kv_heads(K, 8), repeat_kv_heads(V, 8), is_causal=True)
    np.testing.assert_array_equal(dQ, rQ)
    assert_close(dK, rK.reshape(2, 2, 4, 7, 4).astype(LD).sum(axis=2))
    assert_close(dV, rV.reshape(2, 2, 4, 7, 3).astype(LD).sum(axis=2))


# ---- multi_head_attention(num_kv_heads=) -------------------------------------------------------

def _ref_mha(X, W_q, W_k, W_v, W_o, heads, kv_heads, kv=None, b_k=None, b_v=None, **kw):
    """The definition, in long double: project, split heads, attend with K/V heads repeated."""
    X, W_q, W_k, W_v, W_o = (np.asarray(A, LD) for A in (X, W_q, W_k, W_v, W_o))
    src = X if kv is None else np.asarray(kv, LD)
    Q = X @ W_q
    K = src @ W_k + (0 if b_k is None else np.asarray(b_k, LD))
    V = src @ W_v + (0 if b_v is None else np.asarray(b_v, LD))

    def split(A, h):
        return np.moveaxis(A.reshape(A.shape[:-1] + (h, A.shape[-1] // h)), -2, -3)

    O, W = ref_attention(split(Q, heads), split(K, kv_heads), split(V, kv_heads),
                         enable_gqa=True, **kw)
    O = np.moveaxis(O, -3, -2)
    return O.reshape(O.shape[:-2] + (-1,)) @ W_o, W


def _mha_inputs(rng, heads=6, kv_heads=2, d_head=3, d_v=2, d_model=5, kdim=4, n=4, n_k=6):
    X = rng.normal(size=(2, n, d_model))
    kv = rng.normal(size=(2, n_k, kdim))
    W_q = rng.normal(size=(d_model, heads * d_head)) / 2
    W_k = rng.normal(size=(kdim, kv_heads * d_head)) / 2
    W_v = rng.normal(size=(kdim, kv_heads * d_v)) / 2
    W_o = rng.normal(size=(heads * d_v, d_model)) / 2
    b_k, b_v = rng.normal(size=kv_heads * d_head), rng.normal(size=kv_heads * d_v)
    return X, kv, W_q, W_k, W_v, W_o, b_k, b_v


@pytest.mark.parametrize("kv_heads", [1, 2, 3, 6])
def test_multi_head_num_kv_heads_matches_the_oracle(kv_heads, isa, rng):
    X, kv, W_q, W_k, W_v, W_o, b_k, b_v = _mha_inputs(rng, kv_heads=kv_heads)
    mask = rng.random((6, 4, 6)) > 0.3
    bias = alibi_bias(6, 4, 6)
    out, w = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=6, num_kv_heads=kv_heads,
                                  kv=kv, b_k=b_k, b_v=b_v, mask=mask, bias=bias,
                                  return_weights=True)
    ref_out, ref_w = _ref_mha(X, W_q, W_k, W_v, W_o, 6, kv_heads, kv, b_k, b_v,
                              mask=np.where(mask, bias, -np.inf))
    assert w.shape == (2, 6, 4, 6)
    assert_close(out, ref_out)
    assert_close(w, ref_w)
    # self-attention, causal
    W_k, W_v = (rng.normal(size=(5, W.shape[-1])) / 2 for W in (W_k, W_v))
    out = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=6, num_kv_heads=kv_heads,
                               is_causal=True)
    assert_close(out, _ref_mha(X, W_q, W_k, W_v, W_o, 6, kv_heads, is_causal=True)[0])


def test_multi_head_num_kv_heads_equal_to_num_heads_is_plain_multi_head(rng):
    X, _, W_q, W_k, W_v, W_o, _, _ = _mha_inputs(rng, kv_heads=6, kdim=5)
    np.testing.assert_array_equal(
        multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=6, num_kv_heads=6),
        multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=6))


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_multi_head_num_kv_heads_backward_finite_differences(cross, isa, rng):
    X, kv, W_q, W_k, W_v, W_o, b_k, b_v = _mha_inputs(rng, heads=4, kv_heads=2, d_head=2,
                                                      d_model=3, kdim=3, n=3, n_k=4)
    kw = dict(num_heads=4, num_kv_heads=2, b_k=b_k, b_v=b_v, is_causal=not cross)
    if cross:
        kw["kv"] = kv
    G = rng.normal(size=multi_head_attention(X, W_q, W_k, W_v, W_o, **kw).shape)
    grads = multi_head_attention_backward(G, X, W_q, W_k, W_v, W_o, **kw)
    inputs = [X, W_q, W_k, W_v, W_o] + ([kv] if cross else []) + [b_k, b_v]
    assert [g.shape for g in grads] == [x.shape for x in inputs]

    def loss():
        return float((multi_head_attention(X, W_q, W_k, W_v, W_o, **kw) * G).sum())

    for grad, x in zip(grads, inputs):
        np.testing.assert_allclose(grad, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_gqa_is_bitwise_the_same_for_any_thread_count(isa, threads, rng):
    X, kv, W_q, W_k, W_v, W_o, b_k, b_v = _mha_inputs(rng, heads=8, kv_heads=2, n=70, n_k=90)
    kw = dict(num_heads=8, num_kv_heads=2, kv=kv, b_k=b_k, b_v=b_v, is_causal=True)
    dY = rng.normal(size=(2, 70, 5))
    runs = []
    for n in (1, 3):
        selfattn.set_num_threads(n)
        runs.append([multi_head_attention(X, W_q, W_k, W_v, W_o, **kw),
                     *multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, **kw)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ---- the errors --------------------------------------------------------------------------------

def test_errors_name_the_shapes_and_the_rule(rng):
    Q, K, V = _qkv(rng, 8, 2, (2,), (2,))
    with pytest.raises(ValueError, match=r"Q has 8 heads.*K has 2.*pass enable_gqa=True"):
        scaled_dot_product_attention(Q, K, V)
    with pytest.raises(ValueError, match=r"divide.*8 query heads.*3 key/value heads"):
        scaled_dot_product_attention(Q, K[:, :1].repeat(3, 1), V[:, :1].repeat(3, 1),
                                     enable_gqa=True)
    with pytest.raises(ValueError, match=r"K and V must have the same number of heads"):
        scaled_dot_product_attention(Q, K, V[:, :1], enable_gqa=True)
    with pytest.raises(ValueError, match=r"head axis \(-3\).*8 query heads"):
        scaled_dot_product_attention(Q, K, V, enable_gqa=True, mask=np.ones((2, 5, 7), bool))
    for args in ((Q, K, V), (Q[0, 0], K[0, 0], V[0, 0])):     # 2-d: the C fast path's inputs
        with pytest.raises(TypeError, match="enable_gqa must be True or False"):
            scaled_dot_product_attention(*args, enable_gqa=1)
    with pytest.raises(ValueError, match=r"dO must have the shape"):
        scaled_dot_product_attention_backward(np.ones((2, 2, 5, 3)), Q, K, V, enable_gqa=True)
    X, _, W_q, W_k, W_v, W_o, _, _ = _mha_inputs(rng, kv_heads=2, kdim=5)
    with pytest.raises(ValueError, match=r"num_kv_heads=4 does not divide num_heads=6"):
        multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match=r"d_head=3.*d_head=2.*num_kv_heads \* d_head"):
        multi_head_attention(X, W_q, W_k[:, :4], W_v, W_o, num_heads=6, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"W_q .*d_head=3.*W_k makes key heads of d_head=9"):
        multi_head_attention(X, W_q, W_q, W_v, W_o, num_heads=6, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"W_o must be \(num_heads \* d_v_head, d_out\)"):
        multi_head_attention(X, W_q, W_k, W_v, W_o[:4], num_heads=6, num_kv_heads=2)


# ---- alibi_bias --------------------------------------------------------------------------------

def test_alibi_bias_is_minus_slope_times_distance():
    b = alibi_bias(4, 3, 5)
    assert b.shape == (4, 3, 5) and b.dtype == np.float64
    slopes = 2.0 ** (-8.0 * np.arange(1, 5) / 4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert b[h, i, j] == -slopes[h] * abs(i - j)
    assert not np.signbit(b[:, np.arange(3), np.arange(3)]).any()    # +0.0 on the diagonal


def test_alibi_slopes_are_the_papers():
    # 8 heads: 1/2, 1/4, ..., 1/256 (the paper's example)
    np.testing.assert_array_equal(-alibi_bias(8, 2)[:, 1, 0], 2.0 ** -np.arange(1, 9))
    # not a power of two: the 4 slopes of 4 heads, then every other slope of 8 heads
    np.testing.assert_array_equal(-alibi_bias(6, 2)[:, 1, 0],
                                  2.0 ** -np.array([2, 4, 6, 8, 1, 3]))
    np.testing.assert_array_equal(-alibi_bias(1, 2)[:, 1, 0], [2.0 ** -8])
    np.testing.assert_allclose(-alibi_bias(12, 2)[8:, 1, 0], 2.0 ** -np.array([.5, 1.5, 2.5, 3.5]))
    assert alibi_bias(3, 0, 4).shape == (3, 0, 4) and alibi_bias(2, 3).shape == (2, 3, 3)


def test_alibi_bias_errors():
    with pytest.raises(ValueError, match="num_heads must be at least 1"):
        alibi_bias(0, 3)
    with pytest.raises(TypeError, match="n_q must be a non-negative integer"):
        alibi_bias(2, 3.0)
    with pytest.raises(ValueError, match="too large"):
        alibi_bias(2, 2 ** 40)


def test_alibi_slopes_are_correctly_rounded():
    """Each slope is 2 ** x correctly rounded (Python's pow, the C library's), the same bits on
    every CPU: np.power's SIMD loops were an ulp off for some of 133 heads or more."""
    from fractions import Fraction
    import math
    for num_heads in (133, 256, 300):
        slopes = -alibi_bias(num_heads, 2)[:, 1, 0]
        p = 1 << (num_heads.bit_length() - 1)
        ks = [Fraction(-8 * k, p) for k in range(1, p + 1)]
        ks += [Fraction(-8 * k, 2 * p) for k in range(1, 2 * (num_heads - p), 2)]
        for slope, x in zip(slopes, ks):
            # x as Python computes it (-8.0 * k / p, one rounding), then 2 ** x
            assert slope == 2.0 ** float(x) == math.pow(2.0, float(x))


def test_alibi_bias_of_no_positions_computes_no_slopes():
    """With no queries or keys the bias is empty however many heads: the slopes, one per head,
    were built first (as a Python list), 20 s and 6 GB for 2**27 heads."""
    import tracemalloc
    tracemalloc.start()
    try:
        b = alibi_bias(2 ** 27, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b.shape == (2 ** 27, 0, 0) and b.dtype == np.float64
    assert peak < 2 ** 20
    assert alibi_bias(5, 3, 0).shape == (5, 3, 0)


def test_alibi_bias_in_attention_and_plots(rng):
    Q, K, V = _qkv(rng, 4, 2, (1,), (1,))
    bias = alibi_bias(4, 5, 7)
    out = scaled_dot_product_attention(Q, K, V, bias=bias, is_causal=True, enable_gqa=True)
    assert_close(out, ref_attention(Q, K, V, mask=bias, is_causal=True, enable_gqa=True)[0])
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")    # weights (rows summing to 1): no warning
            ax = selfattn.plot_attention(selfattn.softmax_attention_weights(bias), head=3)
        assert ax.images[0].get_array().shape == (5, 7)
    finally:
        plt.close("all")


# ---- the learner's side: selfattn.testing with gqa=True ----------------------------------------

def _learner_gqa(Q, K, V):
    """A learner's grouped-query attention: each K/V head repeated for its group of query heads."""
    if Q.ndim >= 3 and K.ndim >= 3:
        group = Q.shape[-3] // K.shape[-3]
        K, V = np.repeat(K, group, axis=-3), np.repeat(V, group, axis=-3)
    s = Q @ np.swapaxes(K, -1, -2) / np.sqrt(Q.shape[-1])
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True) @ V


def _learner_tiled(Q, K, V):
    """A classic GQA mistake: np.tile (head h uses K/V head h % H_kv), not np.repeat."""
    if Q.ndim < 3 or K.ndim < 3:
        return _learner_gqa(Q, K, V)
    reps = (Q.shape[-3] // K.shape[-3], 1, 1)
    return _learner_gqa(Q, np.tile(K, reps), np.tile(V, reps))


def test_testing_knows_grouped_query_attention():
    from selfattn.testing import assert_implementation, cases, check
    grouped = [c for c in cases("scaled_dot_product_attention", gqa=True) if c.grouped]
    assert {c.id for c in grouped} == {"grouped-query-float64", "multi-query-float32"}
    for c in grouped:
        Q, K, V = c.args
        assert K.shape[-3] < Q.shape[-3] and not c.batched
        assert_close(c.expected, ref_attention(Q, K, V, scale=c.scale, enable_gqa=True)[0],
                     dtype=c.dtype)
    assert not any(c.grouped for c in cases("scaled_dot_product_attention"))
    assert_implementation(_learner_gqa, "scaled_dot_product_attention", gqa=True)
    report = check(_learner_tiled, "scaled_dot_product_attention", gqa=True)
    failed = [r for r in report.results if r.verdict == "FAIL"]
    assert [r.case.id for r in failed] == ["grouped-query-float64"]   # MQA cannot tell
    assert "h // (H / H_kv)" in failed[0].hints[-1]
    # the notebook's plain attention (no head groups) fails the grouped case with the hint;
    # selfattn's own passes, asked with enable_gqa=True
    def plain(Q, K, V):
        return selfattn.scaled_dot_product_attention(Q, K, V)
    report = check(plain, "scaled_dot_product_attention", gqa=True)
    assert not report and all("np.repeat(K" in r.hints[-1] for r in report.failures)
    assert check(selfattn.scaled_dot_product_attention, gqa=True)
    with pytest.raises(ValueError, match="gqa=True is for scaled_dot_product_attention"):
        cases("softmax_attention_weights", gqa=True)


def test_lengths_index_the_query_heads_as_without_gqa():
    """query_lengths / key_lengths index the caller's batch axes, the query heads among them, as
    they do with K and V repeated: they were checked against the kernels' grouped batch
    (..., kv_heads, group), so that (H,) lengths were refused and (H_kv,) ones were taken as one
    length per group."""
    rng = np.random.default_rng(7)
    Q = rng.standard_normal((2, 6, 5, 4))
    K, V = rng.standard_normal((2, 2, 7, 4)), rng.standard_normal((2, 2, 7, 3))
    K_rep, V_rep = np.repeat(K, 3, axis=1), np.repeat(V, 3, axis=1)
    dO = rng.standard_normal((2, 6, 5, 3))
    for lengths in ({"key_lengths": rng.integers(0, 8, size=(2, 6))},
                    {"key_lengths": [3, 7], "query_lengths": [[5], [2]]},
                    {"query_lengths": rng.integers(0, 6, size=(2, 6)), "key_lengths": 4}):
        got = scaled_dot_product_attention(Q, K, V, enable_gqa=True, **lengths)
        np.testing.assert_array_equal(got, scaled_dot_product_attention(Q, K_rep, V_rep, **lengths))
        dQ, dK, dV = scaled_dot_product_attention_backward(dO, Q, K, V, enable_gqa=True, **lengths)
        want = scaled_dot_product_attention_backward(dO, Q, K_rep, V_rep, **lengths)
        np.testing.assert_array_equal(dQ, want[0])
        for g, w in zip((dK, dV), want[1:]):
            np.testing.assert_allclose(g, w.reshape(2, 2, 3, *w.shape[-2:]).sum(axis=2),
                                       rtol=1e-12, atol=1e-12)
    for bad in ([[1, 7], [3, 4]], np.ones((2, 2), int)):  # one per K/V head: not the batch's
        with pytest.raises(ValueError, match=r"key_lengths.shape=\(2, 2\) must be a prefix of "
                                             r"the batch shape \(2, 6\)"):
            scaled_dot_product_attention(Q, K, V, enable_gqa=True, key_lengths=bad)
        with pytest.raises(ValueError, match=r"batch shape \(2, 6\)"):
            scaled_dot_product_attention_backward(dO, Q, K, V, enable_gqa=True, key_lengths=bad)
