"""bias= (a float added to the scaled scores) beside mask=: values against the long-double oracle
on every tier, in every function that takes a mask, and gradients with the bias held constant."""
import numpy as np
import pytest

from attn_reference import LD, assert_close, numeric_grad, ref_attention, ref_layer, ref_scores
from selfattn import (
    compute_self_attention_scores,
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    self_attention_layer,
    self_attention_layer_backward,
)

# The `isa` fixture (every supported tier) comes from conftest.py.


def merged(mask, bias):
    """The definition, in long double: bias where the (bool) mask allows, -inf where it does not;
    a float mask is added."""
    bias = np.asarray(bias).astype(LD)
    if mask is None:
        return bias
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return np.where(mask, bias, LD(-np.inf))
    return mask.astype(LD) + bias


def operands(rng, B=2, n_q=9, n_k=11, d=5, dv=3):
    return (rng.standard_normal((B, n_q, d)), rng.standard_normal((B, n_k, d)),
            rng.standard_normal((B, n_k, dv)))


MASKS = {
    "none": lambda rng, n_q, n_k: None,
    "bool": lambda rng, n_q, n_k: rng.random((n_q, n_k)) < 0.7,
    "bool, one row hidden": lambda rng, n_q, n_k: np.arange(n_q)[:, None] != 3,
    "float": lambda rng, n_q, n_k: np.where(rng.random((2, 1, n_k)) < 0.2, -np.inf,
                                            rng.standard_normal((2, 1, n_k))),
}
BIASES = {
    "full": lambda rng, n_q, n_k: rng.standard_normal((n_q, n_k)),
    "per-batch row": lambda rng, n_q, n_k: rng.standard_normal((2, 1, n_k)),
    "scalar": lambda rng, n_q, n_k: 1.5,
    "with -inf": lambda rng, n_q, n_k: np.where(rng.random((n_q, n_k)) < 0.2, -np.inf,
                                                rng.standard_normal((n_q, n_k))),
}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attention_with_bias_matches_oracle(mask_kind, bias_kind, dtype, isa):
    rng = np.random.default_rng(1)
    Q, K, V = (a.astype(dtype) for a in operands(rng))
    mask, bias = MASKS[mask_kind](rng, 9, 11), BIASES[bias_kind](rng, 9, 11)
    for causal in (False, True):
        out, w = scaled_dot_product_attention(Q, K, V, mask=mask, bias=bias, is_causal=causal,
                                              return_weights=True)
        want, want_w = ref_attention(Q, K, V, mask=merged(mask, bias), is_causal=causal)
        assert out.dtype == dtype
        assert_close(out, want)
        assert_close(w, want_w)
        assert_close(scaled_dot_product_attention(Q, K, V, mask=mask, bias=bias,
                                                  is_causal=causal), want)   # fused kernel
        assert_close(compute_self_attention_scores(Q, K, mask=mask, bias=bias, is_causal=causal),
                     ref_scores(Q, K, mask=merged(mask, bias), is_causal=causal))


def test_bias_alone_is_a_float_mask_and_zero_bias_changes_nothing(isa):
    rng = np.random.default_rng(2)
    Q, K, V = operands(rng)
    bias = rng.standard_normal((9, 11))
    np.testing.assert_array_equal(scaled_dot_product_attention(Q, K, V, bias=bias),
                                  scaled_dot_product_attention(Q, K, V, mask=bias))
    mask = rng.random((9, 11)) < 0.5
    np.testing.assert_array_equal(
        scaled_dot_product_attention(Q, K, V, mask=mask, bias=np.zeros((1, 1))),
        scaled_dot_product_attention(Q, K, V, mask=mask))


def test_layers_with_bias_match_oracle(isa):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 7, 6))
    W_q, W_k, W_v, W_o = (rng.standard_normal((6, 6)) / 2 for _ in range(4))
    mask = rng.random((7, 7)) < 0.7
    bias = rng.standard_normal((2, 7, 7))
    got = self_attention_layer(X, W_q, W_k, W_v, mask=mask, bias=bias, is_causal=True)
    assert_close(got, ref_layer(X, W_q, W_k, W_v, mask=merged(mask, bias), is_causal=True)[0])
    # multi-head: a per-head bias (H, n, n), the heads being the batch axis before (n, n)
    H = 3
    head_bias = rng.standard_normal((H, 7, 7))
    got = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=H, mask=mask, bias=head_bias)
    Q, K, V = (np.asarray(X).astype(LD) @ np.asarray(W).astype(LD) for W in (W_q, W_k, W_v))
    heads = [ref_attention(Q[..., 2 * h:2 * h + 2], K[..., 2 * h:2 * h + 2], V[..., 2 * h:2 * h + 2],
                           mask=merged(mask, head_bias[h]))[0] for h in range(H)]
    assert_close(got, np.concatenate(heads, axis=-1) @ W_o.astype(LD))


def test_gradients_with_bias_by_finite_differences():
    rng = np.random.default_rng(4)
    Q, K, V = operands(rng, B=1, n_q=4, n_k=5, d=3, dv=2)
    mask = rng.random((4, 5)) < 0.8
    bias = rng.standard_normal((4, 5)) * 2
    dO = rng.standard_normal((1, 4, 2))

    def loss():
        return float((scaled_dot_product_attention(Q, K, V, mask=mask, bias=bias,
                                                   is_causal=True) * dO).sum())

    grads = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, bias=bias,
                                                  is_causal=True)
    for g, x in zip(grads, (Q, K, V)):
        np.testing.assert_allclose(g, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    # the layers pass the bias through to the same backward
    X = rng.standard_normal((4, 3))
    Ws = [rng.standard_normal((3, 4)) / 2 for _ in range(3)] + [rng.standard_normal((4, 4)) / 2]
    layer_bias = rng.standard_normal((2, 4, 4))
    dY = rng.standard_normal((4, 4))

    def layer_loss():
        return float((multi_head_attention(X, *Ws, num_heads=2, bias=layer_bias) * dY).sum())

    grads = multi_head_attention_backward(dY, X, *Ws, num_heads=2, bias=layer_bias)
    for g, x in zip(grads, [X] + Ws):
        np.testing.assert_allclose(g, numeric_grad(layer_loss, x), rtol=1e-6, atol=1e-8)
    dX = self_attention_layer_backward(dY[:, :3] * 0 + 1, X, Ws[0], Ws[1], Ws[2][:, :3],
                                       bias=layer_bias[0])[0]
    dX_mask = self_attention_layer_backward(dY[:, :3] * 0 + 1, X, Ws[0], Ws[1], Ws[2][:, :3],
                                            mask=layer_bias[0])[0]
    np.testing.assert_array_equal(dX, dX_mask)


def test_bias_errors():
    Q = np.ones((3, 4))
    with pytest.raises(TypeError, match=r"scaled_dot_product_attention: bias has dtype bool; "
                                        r"bias= is a float .* goes in mask="):
        scaled_dot_product_attention(Q, Q, Q, bias=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"bias.shape=\(3, 4\) does not broadcast to the scores' "
                                         r"shape \(\.\.\., n_q, n_k\) = \(\.\.\., 3, 3\)"):
        scaled_dot_product_attention(Q, Q, Q, bias=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 3, 3\) and bias.shape=\(4, 1, 3\) do "
                                         r"not broadcast together"):
        compute_self_attention_scores(Q, Q, mask=np.ones((2, 3, 3), bool), bias=np.ones((4, 1, 3)))
    with pytest.raises(ValueError, match=r"bias.shape=\(3, 3, 3\) does not broadcast against .* use bias\[:, None\]") as info:
        multi_head_attention(np.ones((3, 4)), *(np.ones((4, 4)),) * 4, num_heads=2,
                             bias=np.ones((3, 3, 3)))
    # padding_mask makes a bool mask, which bias= refuses: offered for a mask only
    assert "padding_mask" not in str(info.value), info.value
    with pytest.raises(ValueError, match=r"use mask\[:, None\] .* or padding_mask"):
        multi_head_attention(np.ones((3, 4)), *(np.ones((4, 4)),) * 4, num_heads=2,
                             mask=np.ones((3, 3, 3), bool))
    with pytest.raises(TypeError, match=r"bias has dtype complex128"):
        self_attention_layer(Q, *(np.eye(4),) * 3, bias=np.ones((3, 3), complex))


def test_minus_inf_mask_plus_inf_bias_is_nan_without_a_numpy_warning():
    """-inf + inf is NaN, as the scores' sum makes it; adding the two terms warned "invalid
    value encountered in add" from inside selfattn, and raised a bare FloatingPointError under
    np.errstate(all="raise") (a reviewer's case). The row is NaN, silently as the kernels do."""
    import warnings
    Q = np.zeros((1, 2))
    K = np.zeros((2, 2))
    V = np.eye(2)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = scaled_dot_product_attention(
            Q, K, V, mask=np.array([[-np.inf, 0.0]]), bias=np.array([[np.inf, 0.0]]))
    assert np.isnan(out).all()
