"""The rule "a key whose weight is exactly 0 contributes nothing", in every function and tier.

compute_attention_output follows it too, so the three notebook steps composed equal
scaled_dot_product_attention even where a masked key's row of V holds inf or NaN (a plain
`weights @ V` would give NaN there: 0 * inf is NaN).
"""
import numpy as np
import pytest

import selfattn

V_BAD = np.array([[1.0, 2.0], [np.inf, np.nan], [3.0, -4.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_of_zero_weights_is_finite(isa, dtype):
    weights = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], dtype)
    V = V_BAD.astype(dtype)
    expected = np.array([[1.0, 2.0], [2.0, -1.0], [3.0, -4.0]], dtype)
    np.testing.assert_array_equal(selfattn.compute_attention_output(weights, V), expected)
    # the general path too: a batch, and V with strided rows
    Vs = np.repeat(V, 2, axis=1)[:, ::2]
    out = selfattn.compute_attention_output(np.stack([weights, weights]), Vs)
    np.testing.assert_array_equal(out, np.stack([expected, expected]))


def test_a_nonzero_weight_still_takes_inf_and_nan(isa):
    out = selfattn.compute_attention_output(np.array([[0.5, 0.5, 0.0]]), V_BAD)
    assert np.isinf(out[0, 0]) and np.isnan(out[0, 1])


def test_a_column_with_inf_sums_its_finite_products_without_overflow(isa):
    # the exact sum is inf: float32's -2 * 3e38 is -inf, which the NumPy backend's recomputed
    # column added to the infs (NaN) where the C tiers form the products in double
    weights = np.array([[1.0, -2.0, 1.0]], np.float32)
    V = np.array([[np.inf], [3e38], [np.inf]], np.float32)
    for w in (weights, weights[None]):
        np.testing.assert_array_equal(selfattn.compute_attention_output(w, V).ravel(), [np.inf])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_steps_composed_equal_sdpa_with_a_masked_non_finite_key(isa, dtype):
    rng = np.random.default_rng(0)
    Q, K = rng.normal(size=(2, 3, 4)).astype(dtype)
    V = V_BAD.astype(dtype)
    mask = np.array([True, False, True])
    weights = selfattn.softmax_attention_weights(
        selfattn.compute_self_attention_scores(Q, K, mask=mask))
    steps = selfattn.compute_attention_output(weights, V)
    fused = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask)
    assert np.isfinite(steps).all()
    np.testing.assert_allclose(steps, fused, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_projections_stay_plain_products(isa):
    # the rule is about attention weights: X @ W_v is NumPy's product on every tier (0 * inf is
    # NaN), so the layer equals X @ W_v fed to the three steps
    X = np.array([[1.0, 0.0], [2.0, 0.0]])
    W_v = np.array([[1.0, 0.5], [np.inf, 2.0]])
    out = selfattn.self_attention_layer(X, np.eye(2), np.eye(2), W_v)
    assert np.isnan(out[:, 0]).all() and np.isfinite(out[:, 1]).all()


def test_finite_columns_keep_the_tiers_bits(isa):
    # only the columns of V holding inf or NaN are recomputed; the others are the tier's product
    rng = np.random.default_rng(1)
    weights = rng.random((5, 40))
    weights[:, 3] = 0
    V = rng.normal(size=(40, 6))
    clean = selfattn.compute_attention_output(weights, V)
    V[3, 2] = np.nan
    out = selfattn.compute_attention_output(weights, V)
    np.testing.assert_array_equal(np.delete(out, 2, axis=1), np.delete(clean, 2, axis=1))
    np.testing.assert_allclose(out[:, 2], clean[:, 2], rtol=1e-13)


def _gradients_with(dO, Q, K, V, **kw):
    return selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [4, 70])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_backward_ignores_a_hidden_keys_k_and_a_masked_querys_q(isa, dtype, n, bad):
    """dQ = dS K and dK = dS^T Q: a hidden key's dS is 0, so inf or NaN in its row of K (fed to
    the forward, finite there) must reach no gradient, nor one in the Q row of a query that sees
    no key. The fast tiers' products made 0 * inf a NaN in every row of dQ (or dK); they now
    leave such calls to the reference tier, as they do for V and dO. The gradients are those of
    the same call with the bad rows set to 0."""
    rng = np.random.default_rng(n)
    dO, Q, K, V = (rng.normal(size=(n, 3)).astype(dtype) for _ in range(4))
    mask = np.ones((n, n), bool)
    mask[:, 1] = False                      # key 1: hidden from every query
    mask[2] = False                         # query 2: sees no key
    tol = 1e-5 if dtype == np.float32 else 1e-12
    # causal from the top left with one query fewer than keys: the last key is hidden
    for kw, n_q, row_K, row_Q in [({"mask": mask}, n, 1, 2), ({"is_causal": True}, n - 1, n - 1,
                                                                 None)]:
        K_bad, K_zero = K.copy(), K.copy()
        Q_bad, Q_zero, dO_q = Q[:n_q].copy(), Q[:n_q].copy(), dO[:n_q]
        K_bad[row_K, 1] = bad
        K_zero[row_K] = 0
        if row_Q is not None:
            Q_bad[row_Q, 0] = bad
            Q_zero[row_Q] = 0
        got = _gradients_with(dO_q, Q_bad, K_bad, V, **kw)
        want = _gradients_with(dO_q, Q_zero, K_zero, V, **kw)
        for name, g, w in zip(("dQ", "dK", "dV"), got, want):
            assert np.isfinite(g).all(), (name, kw)
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{name} {kw}")
        # the forward agrees: the hidden row reaches no output
        out = selfattn.scaled_dot_product_attention(Q_bad, K_bad, V, **kw)
        np.testing.assert_allclose(out, selfattn.scaled_dot_product_attention(Q_zero, K_zero, V,
                                                                              **kw),
                                   rtol=tol, atol=tol)
