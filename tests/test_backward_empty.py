"""The layers' backwards with a zero dimension (d_model, d_k or d_v = 0): gradients of the right
shapes, like the forward, instead of NumPy's "cannot reshape array of size 0"."""
import numpy as np
import pytest

import selfattn

N, D_MODEL, D, D_OUT = 5, 4, 4, 3


def _inputs(d_model, d_k, d_v, rng):
    X = rng.normal(size=(N, d_model))
    W_q, W_k = rng.normal(size=(2, d_model, d_k))
    W_v = rng.normal(size=(d_model, d_v))
    return X, W_q, W_k, W_v


def _check(grads, inputs):
    assert [g.shape for g in grads] == [x.shape for x in inputs]
    for g in grads:
        assert np.isfinite(g).all()


@pytest.mark.parametrize("batched", [False, True])
def test_single_head_d_model_0(rng, batched):
    X, W_q, W_k, W_v = _inputs(0, D, D, rng)
    if batched:
        X = np.stack([X, X])
    dY = rng.normal(size=X.shape[:-1] + (D,))
    grads = selfattn.self_attention_layer_backward(dY, X, W_q, W_k, W_v)
    _check(grads, (X, W_q, W_k, W_v))


def test_single_head_d_k_0(rng):
    # with d_k = 0 every score is 0: the same as zero projections of width 1
    X, W_q, W_k, W_v = _inputs(D_MODEL, 0, D, rng)
    dY = rng.normal(size=(N, D))
    grads = selfattn.self_attention_layer_backward(dY, X, W_q, W_k, W_v)
    _check(grads, (X, W_q, W_k, W_v))
    zero = np.zeros((D_MODEL, 1))
    same = selfattn.self_attention_layer_backward(dY, X, zero, zero, W_v, scale=1.0)
    np.testing.assert_allclose(grads[0], same[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[3], same[3], rtol=1e-12, atol=1e-14)


def test_single_head_d_v_0(rng):
    X, W_q, W_k, W_v = _inputs(D_MODEL, D, 0, rng)
    grads = selfattn.self_attention_layer_backward(np.zeros((N, 0)), X, W_q, W_k, W_v)
    _check(grads, (X, W_q, W_k, W_v))
    assert not np.any(grads[0]) and not np.any(grads[1])


@pytest.mark.parametrize("which", ["d_model", "d_k", "d_v"])
def test_multi_head(rng, which):
    d_model, d_k, d_v = (0 if which == name else size
                         for name, size in (("d_model", D_MODEL), ("d_k", D), ("d_v", D)))
    X, W_q, W_k, W_v = _inputs(d_model, d_k, d_v, rng)
    W_o = rng.normal(size=(d_v, D_OUT))
    forward = selfattn.multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2)
    dY = rng.normal(size=forward.shape)
    grads = selfattn.multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=2)
    _check(grads, (X, W_q, W_k, W_v, W_o))
    if which == "d_k":    # uniform weights, as with zero projections of width 1 per head
        zero = np.zeros((D_MODEL, 2))
        same = selfattn.multi_head_attention_backward(dY, X, zero, zero, W_v, W_o, num_heads=2,
                                                      scale=1.0)
        for g, s in zip(grads, same):
            if g.shape == s.shape:
                np.testing.assert_allclose(g, s, rtol=1e-12, atol=1e-14)
