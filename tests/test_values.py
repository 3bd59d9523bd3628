"""Values against the extended-precision reference, on every instruction-set tier."""
import numpy as np
import pytest

import selfattn as sa
from attn_reference import (assert_close, ref_attention, ref_layer, ref_output, ref_scores,
                            ref_softmax)

DTYPES = [np.float64, np.float32]
# (n_q, n_k, d_k, d_v): unequal on purpose so that a swapped axis cannot hide
SHAPES = [(1, 1, 1, 1), (3, 5, 4, 2), (8, 8, 4, 4), (17, 33, 7, 5), (64, 40, 64, 16),
          (33, 130, 65, 3)]


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_k,d_k,d_v", SHAPES)
def test_every_function_matches_reference(isa, rng, dtype, n_q, n_k, d_k, d_v):
    Q, K, V = rand(rng, (n_q, d_k), dtype), rand(rng, (n_k, d_k), dtype), rand(rng, (n_k, d_v), dtype)
    scores = sa.compute_self_attention_scores(Q, K)
    assert scores.dtype == dtype
    assert_close(scores, ref_scores(Q, K))
    weights = sa.softmax_attention_weights(scores)
    assert_close(weights, ref_softmax(scores))
    assert_close(sa.compute_attention_output(weights, V), ref_output(weights, V))
    out, w = sa.scaled_dot_product_attention(Q, K, V, return_weights=True)
    ref_out, ref_w = ref_attention(Q, K, V)
    assert_close(out, ref_out)
    assert_close(w, ref_w)
    assert_close(sa.scaled_dot_product_attention(Q, K, V), ref_out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_matches_reference_and_composition(isa, rng, dtype):
    X = rand(rng, (2, 11, 12), dtype)
    W_q, W_k, W_v = rand(rng, (12, 6), dtype), rand(rng, (12, 6), dtype), rand(rng, (12, 5), dtype)
    out, w = sa.self_attention_layer(X, W_q, W_k, W_v, return_weights=True)
    ref_out, ref_w = ref_layer(X, W_q, W_k, W_v)
    assert_close(out, ref_out)
    assert_close(w, ref_w)
    steps = sa.compute_attention_output(
        sa.softmax_attention_weights(sa.compute_self_attention_scores(X @ W_q, X @ W_k)), X @ W_v)
    assert_close(out, steps.astype(np.longdouble))
    assert_close(sa.self_attention_layer(X, W_q, W_k, W_v), ref_out)


def test_default_scale_is_inverse_sqrt_dk_and_scale_one_is_raw(rng):
    Q, K = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    np.testing.assert_allclose(sa.compute_self_attention_scores(Q, K), Q @ K.T / 4.0, rtol=1e-13)
    np.testing.assert_allclose(sa.compute_self_attention_scores(Q, K, scale=1.0), Q @ K.T,
                               rtol=1e-13)
    np.testing.assert_allclose(sa.compute_self_attention_scores(Q, K, scale=0.5), Q @ K.T / 2,
                               rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_and_causal(isa, rng, dtype):
    n_q, n_k, d = 6, 9, 5
    Q, K, V = rand(rng, (n_q, d), dtype), rand(rng, (n_k, d), dtype), rand(rng, (n_k, 3), dtype)
    bool_mask = rng.random((n_q, n_k)) < 0.7
    add_mask = np.where(rng.random((n_q, n_k)) < 0.3, -np.inf, rng.standard_normal((n_q, n_k)))
    for mask in (bool_mask, add_mask.astype(dtype), bool_mask[0], bool_mask[:, :1],
                 add_mask[None, 0].astype(dtype)):
        for causal in (False, True):
            want_s = ref_scores(Q, K, mask=mask, is_causal=causal)
            assert_close(sa.compute_self_attention_scores(Q, K, mask=mask, is_causal=causal), want_s)
            want_out, want_w = ref_attention(Q, K, V, mask=mask, is_causal=causal)
            out, w = sa.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal,
                                                     return_weights=True)
            assert_close(w, want_w)
            assert_close(out, want_out)
            assert_close(sa.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal),
                         want_out)


@pytest.mark.parametrize("n_q,n_k", [(3, 7), (7, 3), (5, 5)])
def test_causal_is_top_left_aligned(n_q, n_k, rng):
    Q, K = rng.standard_normal((n_q, 4)), rng.standard_normal((n_k, 4))
    s = sa.compute_self_attention_scores(Q, K, is_causal=True)
    visible = np.tril(np.ones((n_q, n_k), bool))
    assert np.isneginf(s[~visible]).all()
    assert np.isfinite(s[visible]).all()


def test_causal_and_mask_combine_by_and(rng):
    Q = rng.standard_normal((4, 3))
    mask = np.ones((4, 4), bool)
    mask[:, 0] = False
    w = sa.softmax_attention_weights(sa.compute_self_attention_scores(Q, Q, mask=mask,
                                                                      is_causal=True))
    visible = np.tril(mask)
    assert (w[~visible] == 0).all()
    np.testing.assert_array_equal(w[0], 0)                  # query 0 sees nothing: all zeros
    np.testing.assert_allclose(w[1:].sum(-1), 1, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_give_zero_weights_and_output(isa, rng, dtype):
    Q, K, V = rand(rng, (4, 3), dtype), rand(rng, (5, 3), dtype), rand(rng, (5, 2), dtype)
    mask = np.ones((4, 5), bool)
    mask[2] = False
    out, w = sa.scaled_dot_product_attention(Q, K, V, mask=mask, return_weights=True)
    np.testing.assert_array_equal(w[2], 0)
    np.testing.assert_array_equal(out[2], 0)
    np.testing.assert_array_equal(sa.scaled_dot_product_attention(Q, K, V, mask=mask)[2], 0)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(sa.softmax_attention_weights(np.full((2, 3), -np.inf, dtype)), 0)


def test_zero_weight_keys_contribute_nothing_even_if_v_is_not_finite(isa, rng):
    Q, K = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    V = rng.standard_normal((5, 2))
    V[4] = [np.inf, np.nan]
    mask = np.ones((3, 5), bool)
    mask[:, 4] = False
    out = sa.scaled_dot_product_attention(Q, K, V, mask=mask)
    assert np.isfinite(out).all()
    assert_close(out, ref_attention(Q, K, V, mask=mask)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_poisons_its_row_only(isa, dtype):
    s = np.array([[0.0, 1.0, 2.0], [np.nan, 1.0, 2.0], [3.0, -np.inf, 1.0]], dtype)
    w = sa.softmax_attention_weights(s)
    assert np.isnan(w[1]).all()
    assert np.isfinite(w[[0, 2]]).all()
    assert w[2, 1] == 0
    Q = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, 1.0]], dtype)
    K = np.eye(2, dtype=dtype)
    out = sa.scaled_dot_product_attention(Q, K, K)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("dtype,big", [(np.float64, 1e4), (np.float64, 1e300),
                                       (np.float32, 3e38), (np.float32, 1e4)])
def test_softmax_is_stable_for_large_scores(isa, dtype, big):
    s = np.array([[big, big, 0.0], [-big, -big, -big], [big, -big, big / 2]], dtype)
    w = sa.softmax_attention_weights(s)
    assert np.isfinite(w).all()
    assert_close(w, ref_softmax(s))
    np.testing.assert_allclose(w[0], [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(w[1], [1 / 3] * 3, rtol=1e-6)
    tiny = np.array([[-1e30, -1e30 + 1e14, 0.0]])
    assert_close(sa.softmax_attention_weights(tiny), ref_softmax(tiny))


def test_softmax_axis_and_1d(isa, rng):
    s = rng.standard_normal((3, 4, 5))
    for axis in (-1, 0, 1, 2, -2):
        w = sa.softmax_attention_weights(s, axis=axis)
        assert w.shape == s.shape
        assert_close(w, ref_softmax(s, axis=axis))
    v = rng.standard_normal(7)
    assert_close(sa.softmax_attention_weights(v), ref_softmax(v))
    assert_close(sa.softmax_attention_weights(list(v)), ref_softmax(v))


@pytest.mark.parametrize("n_q,n_k,d_k,d_v", [(0, 3, 2, 2), (3, 0, 2, 2), (3, 4, 0, 2),
                                             (3, 4, 2, 0), (0, 0, 0, 0)])
def test_empty_dimensions(isa, n_q, n_k, d_k, d_v):
    Q, K, V = np.ones((n_q, d_k)), np.ones((n_k, d_k)), np.arange(n_k * d_v, dtype=float).reshape(n_k, d_v)
    s = sa.compute_self_attention_scores(Q, K)
    assert s.shape == (n_q, n_k)
    np.testing.assert_array_equal(s, 0 if d_k == 0 else d_k / np.sqrt(d_k))
    w = sa.softmax_attention_weights(s)
    assert w.shape == (n_q, n_k)
    out, w2 = sa.scaled_dot_product_attention(Q, K, V, return_weights=True)
    assert out.shape == (n_q, d_v) and w2.shape == (n_q, n_k)
    assert_close(out, ref_attention(Q, K, V)[0])
    if n_k == 0 and n_q:
        np.testing.assert_array_equal(out, 0)      # no keys: nothing to attend to
    assert sa.compute_attention_output(w, V).shape == (n_q, d_v)
    X = np.ones((n_q, 3))
    assert sa.self_attention_layer(X, np.ones((3, d_k)), np.ones((3, d_k)),
                                   np.ones((3, d_v))).shape == (n_q, d_v)
    assert sa.compute_self_attention_scores(np.ones((0, 2, 3)), np.ones((2, 3))).shape == (0, 2, 2)


def test_single_token(isa):
    X = np.array([[1.0, 2.0]])
    out, w = sa.self_attention_layer(X, np.eye(2), np.eye(2), np.eye(2), return_weights=True)
    np.testing.assert_array_equal(w, [[1.0]])
    np.testing.assert_allclose(out, X, rtol=1e-15)
