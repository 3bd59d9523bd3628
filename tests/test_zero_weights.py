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


def test_zero_projection_inputs_take_nothing_from_non_finite_weights(isa):
    # the layer's projections are the same matmul: X's zero entry takes nothing from W_v's inf row
    X = np.array([[1.0, 0.0], [2.0, 0.0]])
    W = np.array([[1.0, 0.5], [np.inf, np.nan]])
    out = selfattn.self_attention_layer(X, np.eye(2), np.eye(2), W)
    assert np.isfinite(out).all()
