"""Dropout on the attention weights (dropout_p=, seed=; issue 10): Philox4x32-10 against the
paper's known-answer vectors; the package's dropped weights are exactly the oracle's
(tests/attn_reference.py) on every tier, forward and gradients; the same bits for every thread
count and tier; p = 0 and p = 1; the drop fraction; the seed policy and validation."""
import numpy as np
import pytest

import selfattn
from selfattn import (
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    self_attention_layer,
    self_attention_layer_backward,
)
from selfattn import _core

from attn_reference import (
    assert_close,
    dropout_keep,
    numeric_grad,
    philox4x32_10,
    ref_attention,
    ref_attention_grads,
)

GRAD_RTOL = {np.float64: 1e-10, np.float32: 2e-4}


def operands(rng, dtype=np.float64, batch=(2,), n_q=37, n_k=29, d_k=8, d_v=5):
    Q, K = (rng.standard_normal(batch + (n, d_k)).astype(dtype) for n in (n_q, n_k))
    return Q, K, rng.standard_normal(batch + (n_k, d_v)).astype(dtype)


# ---- the generator -------------------------------------------------------------------------------

@pytest.mark.parametrize("counter, key, expected", [
    # Random123's kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    """The oracle's Philox (which the package's dropout is compared with, bit for bit, below)."""
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


# ---- forward -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropped_weights_are_the_oracles(isa, rng, dtype, causal):
    Q, K, V = operands(rng, dtype)
    out, w = scaled_dot_product_attention(Q, K, V, dropout_p=0.4, seed=1234, is_causal=causal,
                                          return_weights=True)
    fused = scaled_dot_product_attention(Q, K, V, dropout_p=0.4, seed=1234, is_causal=causal)
    want_out, want_w = ref_attention(Q, K, V, is_causal=causal, dropout_p=0.4, seed=1234)
    keep = dropout_keep((2,), 37, 29, 0.4, 1234)
    visible = np.tril(np.ones((37, 29), bool)) if causal else np.ones((37, 29), bool)
    np.testing.assert_array_equal(w != 0, keep & visible)
    assert_close(w, want_w)
    assert_close(out, want_out)
    assert_close(fused, want_out)


def test_heads_and_layers_drop_per_batch_item(isa, rng):
    """The heads are batch items: each drops its own weights; the layer's output is the dropped
    attention of its projections."""
    X = rng.standard_normal((3, 9, 6))
    W_q, W_k, W_v = rng.standard_normal((3, 6, 8))
    W_o = rng.standard_normal((8, 4))
    layer = self_attention_layer(X, W_q, W_k, W_v, dropout_p=0.25, seed=9)
    assert_close(layer, ref_attention(X @ W_q, X @ W_k, X @ W_v, dropout_p=0.25, seed=9)[0])
    Y, w = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2, dropout_p=0.25, seed=9,
                                return_weights=True)
    np.testing.assert_array_equal(w != 0, dropout_keep((3, 2), 9, 9, 0.25, 9))
    assert w.shape == (3, 2, 9, 9)


def test_dropout_zero_is_no_dropout(isa, rng):
    """p = 0 gives the plain call's bits, whatever the seed (the generator is never called)."""
    Q, K, V = operands(rng)
    plain = scaled_dot_product_attention(Q, K, V)
    for seed in (None, 0, 77):
        np.testing.assert_array_equal(
            scaled_dot_product_attention(Q, K, V, dropout_p=0.0, seed=seed), plain)
    dO = rng.standard_normal(plain.shape)
    for a, b in zip(scaled_dot_product_attention_backward(dO, Q, K, V, dropout_p=0),
                    scaled_dot_product_attention_backward(dO, Q, K, V)):
        np.testing.assert_array_equal(a, b)


def test_dropout_one_gives_zeros(isa, rng):
    Q, K, V = operands(rng)
    out, w = scaled_dot_product_attention(Q, K, V, dropout_p=1.0, seed=3, return_weights=True)
    assert (out == 0).all() and (w == 0).all()
    assert (scaled_dot_product_attention(Q, K, V, dropout_p=1, seed=3) == 0).all()
    dO = rng.standard_normal(out.shape)
    for g in scaled_dot_product_attention_backward(dO, Q, K, V, dropout_p=1, seed=3):
        assert (g == 0).all()


def test_drop_fraction_is_p():
    """Over 4 million weights the fraction dropped is p within 5 standard deviations, and the
    kept ones average 1 (E[Z] = 1: the scaling keeps the expected output)."""
    n = 2048
    Q = np.zeros((1, n, 1))
    V = np.ones((n, 1))
    for p in (0.1, 0.5, 0.9):
        out, w = scaled_dot_product_attention(Q, Q, V, dropout_p=p, seed=2026,
                                              return_weights=True)
        dropped = float((w == 0).mean())
        assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / w.size)
        assert abs(float(out.mean()) - 1) < 5 * np.sqrt(p / (1 - p) / w.size) + 1e-12


def test_masked_keys_stay_masked_and_nonfinite_values(isa, rng):
    """Dropout after the mask: a hidden key keeps weight 0 and its inf V row reaches nothing."""
    Q, K, V = operands(rng, n_q=10, n_k=10)
    mask = rng.random((10, 10)) < 0.7
    mask[:, 4] = False
    mask[2] = False
    V = V.copy()
    V[:, 4, 0] = np.inf
    out, w = scaled_dot_product_attention(Q, K, V, mask=mask, dropout_p=0.3, seed=5,
                                          return_weights=True)
    assert np.isfinite(out).all() and (w[:, ~mask] == 0).all() and (out[:, 2] == 0).all()
    assert_close(out, ref_attention(Q, K, V, mask=mask, dropout_p=0.3, seed=5)[0])


# ---- backward ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("extra", [{}, {"is_causal": True}, {"softcap": 1.5}])
def test_backward_matches_oracle(isa, rng, dtype, extra):
    Q, K, V = operands(rng, dtype)
    dO = rng.standard_normal((2, 37, 5)).astype(dtype)
    got = scaled_dot_product_attention_backward(dO, Q, K, V, dropout_p=0.3, seed=42, **extra)
    want = ref_attention_grads(dO, Q, K, V, dropout_p=0.3, seed=42, **extra)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=GRAD_RTOL[dtype])


def test_backward_against_finite_differences(isa, rng):
    """With the same seed the forward is a smooth function of Q, K, V; the backward is its
    derivative."""
    Q, K, V = operands(rng, batch=(), n_q=6, n_k=7, d_k=3, d_v=2)
    dO = rng.standard_normal((6, 2))
    kw = dict(dropout_p=0.35, seed=11)
    grads = scaled_dot_product_attention_backward(dO, Q, K, V, **kw)
    for X, g in zip((Q, K, V), grads):
        fd = numeric_grad(lambda: (scaled_dot_product_attention(Q, K, V, **kw) * dO).sum(), X)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_layer_and_multi_head_backward(isa, rng):
    X = rng.standard_normal((5, 4))
    W_q, W_k, W_v = rng.standard_normal((3, 4, 4))
    W_o = rng.standard_normal((4, 3))
    dY1, dY2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    kw = dict(dropout_p=0.3, seed=8)
    layer = self_attention_layer_backward(dY1, X, W_q, W_k, W_v, **kw)
    mha = multi_head_attention_backward(dY2, X, W_q, W_k, W_v, W_o, num_heads=2, **kw)
    fd_layer = numeric_grad(lambda: (self_attention_layer(X, W_q, W_k, W_v, **kw) * dY1).sum(), X)
    fd_mha = numeric_grad(
        lambda: (multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2, **kw) * dY2).sum(), W_k)
    np.testing.assert_allclose(layer[0], fd_layer, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(mha[2], fd_mha, rtol=1e-6, atol=1e-8)


# ---- reproducibility -----------------------------------------------------------------------------

@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_pattern_every_thread_count_and_tier(dtype, threads):
    """The same seed drops the same weights on every thread count and tier (the values may differ
    between tiers by rounding only); on one tier, every thread count gives the same bits."""
    rng = np.random.default_rng(5)
    Q, K, V = operands(rng, dtype, batch=(3,), n_q=150, n_k=140, d_k=16, d_v=16)
    dO = rng.standard_normal((3, 150, 16)).astype(dtype)
    before = selfattn.get_isa()
    try:
        for tier in _core.supported_isas():
            selfattn.set_isa(tier)
            runs = []
            for n in (1, 3):
                selfattn.set_num_threads(n)
                _, w = scaled_dot_product_attention(Q, K, V, dropout_p=0.2, seed=99,
                                                    return_weights=True)
                np.testing.assert_array_equal(w != 0, dropout_keep((3,), 150, 140, 0.2, 99))
                runs.append((scaled_dot_product_attention(Q, K, V, dropout_p=0.2, seed=99),
                             *scaled_dot_product_attention_backward(dO, Q, K, V, dropout_p=0.2,
                                                                    seed=99)))
            for a, b in zip(*runs):
                np.testing.assert_array_equal(a, b)
    finally:
        selfattn.set_isa(before)


def test_seeds(rng):
    """Different seeds drop different weights; without a seed the forward draws one from
    np.random, so np.random.seed makes it reproducible; the backward requires the seed."""
    Q, K, V = operands(rng)
    a = scaled_dot_product_attention(Q, K, V, dropout_p=0.5, seed=1)
    b = scaled_dot_product_attention(Q, K, V, dropout_p=0.5, seed=2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, scaled_dot_product_attention(Q, K, V, dropout_p=0.5, seed=1))
    np.random.seed(123)
    c = scaled_dot_product_attention(Q, K, V, dropout_p=0.5)
    d = scaled_dot_product_attention(Q, K, V, dropout_p=0.5)
    np.random.seed(123)
    np.testing.assert_array_equal(scaled_dot_product_attention(Q, K, V, dropout_p=0.5), c)
    assert not np.array_equal(c, d)
    # 64-bit seeds use both key words
    e = scaled_dot_product_attention(Q, K, V, dropout_p=0.5, seed=1 + 2 ** 40)
    assert not np.array_equal(a, e)
    with pytest.raises(ValueError, match="seed"):
        scaled_dot_product_attention_backward(np.ones_like(a), Q, K, V, dropout_p=0.5)
    X, W = np.ones((3, 2)), np.eye(2)
    with pytest.raises(ValueError, match="seed"):
        self_attention_layer_backward(np.ones((3, 2)), X, W, W, W, dropout_p=0.5)
    with pytest.raises(ValueError, match="seed"):
        multi_head_attention_backward(np.ones((3, 2)), X, W, W, W, W, num_heads=1, dropout_p=0.5)


@pytest.mark.parametrize("kw, error", [
    ({"dropout_p": -0.1}, ValueError), ({"dropout_p": 1.5}, ValueError),
    ({"dropout_p": np.nan}, ValueError), ({"dropout_p": True}, TypeError),
    ({"dropout_p": "0.1"}, TypeError), ({"dropout_p": None}, TypeError),
    ({"dropout_p": 0.1, "seed": -1}, ValueError), ({"dropout_p": 0.1, "seed": 2 ** 64}, ValueError),
    ({"dropout_p": 0.1, "seed": 1.5}, TypeError), ({"dropout_p": 0.1, "seed": True}, TypeError),
    # without dropout too: the 2-D fast path took any seed ("abc", -5, 2**70) unchecked
    ({"seed": "abc"}, TypeError), ({"seed": -5}, ValueError), ({"seed": 2 ** 70}, ValueError),
    ({"dropout_p": 0, "seed": 1.5}, TypeError),
])
def test_invalid_arguments(kw, error):
    Q = np.ones((2, 2))
    X, W = np.ones((3, 2)), np.eye(2)
    with pytest.raises(error, match="dropout_p|seed"):
        scaled_dot_product_attention(Q, Q, Q, **kw)
    with pytest.raises(error, match="dropout_p|seed"):
        self_attention_layer(X, W, W, W, **kw)
    with pytest.raises(error, match="dropout_p|seed"):
        multi_head_attention(X, W, W, W, W, num_heads=1, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_row_whose_keys_are_all_dropped_gives_zero(isa, dtype):
    """A NaN score makes its row's weights NaN; the dropout then sets the dropped ones to
    exactly 0, so a row with every key dropped has weights 0 and output 0, as it has without
    the NaN. The fused fast tiers gave NaN there (their output is a sum over the row divided by
    its NaN sum of exponentials), but 0 when the weights were asked for too."""
    Q = np.ones((3, 4), dtype)
    Q[0, 0] = np.nan
    K, V = np.ones((5, 4), dtype), np.ones((5, 2), dtype)
    out = scaled_dot_product_attention(Q, K, V, dropout_p=1.0, seed=0)
    out_w, w = scaled_dot_product_attention(Q, K, V, dropout_p=1.0, seed=0, return_weights=True)
    assert (out == 0).all() and (out_w == 0).all() and (w == 0).all()
    # p < 1: a seed that drops every key of the NaN row, and one that keeps some (NaN output)
    Q1, K1, V1 = Q[:1, :1], K[:2, :1], V[:2]
    outcomes = set()
    for seed in range(40):
        out, w = scaled_dot_product_attention(Q1, K1, V1, dropout_p=0.5, seed=seed,
                                              return_weights=True)
        fused = scaled_dot_product_attention(Q1, K1, V1, dropout_p=0.5, seed=seed)
        np.testing.assert_array_equal(fused, out)
        outcomes.add("zero" if (w == 0).all() else "nan")
        assert np.isnan(out).all() != (w == 0).all()
    assert outcomes == {"zero", "nan"}
