"""multi_head_attention's cross-attention (kv=) and projection biases (b_q, b_k, b_v, b_o):
values against the long-double oracle on every tier, gradients by finite differences."""
import numpy as np
import pytest

from attn_reference import LD, assert_close, numeric_grad, ref_attention
from selfattn import multi_head_attention, multi_head_attention_backward, self_attention_layer

# The `isa` fixture (every supported tier) comes from conftest.py.

BIASES = ("b_q", "b_k", "b_v", "b_o")


def oracle(X, W_q, W_k, W_v, W_o, H, kv=None, b_q=0, b_k=0, b_v=0, b_o=0, mask=None,
           is_causal=False):
    """The definition in long double: project (bias added), one head at a time, concatenate."""
    ld = lambda a: np.asarray(a).astype(LD)                      # noqa: E731
    row = lambda b: ld(b)[..., None, :] if np.ndim(b) else ld(b)   # noqa: E731  (added to rows)
    kv = X if kv is None else kv
    Q, K, V = (ld(X) @ ld(W_q) + row(b_q), ld(kv) @ ld(W_k) + row(b_k),
               ld(kv) @ ld(W_v) + row(b_v))
    dh, dv = Q.shape[-1] // H, V.shape[-1] // H
    outs = []
    for h in range(H):
        m = mask
        if mask is not None and np.ndim(mask) >= 3:
            m = np.take(mask, h if np.shape(mask)[-3] == H else 0, axis=-3)
        outs.append(ref_attention(Q[..., h * dh:(h + 1) * dh], K[..., h * dh:(h + 1) * dh],
                                  V[..., h * dv:(h + 1) * dv], mask=m, is_causal=is_causal)[0])
    return np.concatenate(outs, axis=-1) @ ld(W_o) + row(b_o)


def problem(rng, B=2, n=5, n_k=7, d_model=6, kdim=4, H=2, dh=3, dv=2, d_out=5, wbatch=()):
    X = rng.standard_normal((B, n, d_model))
    kv = rng.standard_normal((B, n_k, kdim))
    Ws = (rng.standard_normal(wbatch + (d_model, H * dh)) / 2,
          rng.standard_normal(wbatch + (kdim, H * dh)) / 2,
          rng.standard_normal(wbatch + (kdim, H * dv)) / 2,
          rng.standard_normal((H * dv, d_out)) / 2)
    biases = dict(b_q=rng.standard_normal(H * dh), b_k=rng.standard_normal(H * dh),
                  b_v=rng.standard_normal(wbatch + (H * dv,)), b_o=rng.standard_normal(d_out))
    return X, kv, Ws, biases


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_with_biases_matches_oracle(dtype, causal, isa):
    rng = np.random.default_rng(1)
    X, kv, Ws, biases = problem(rng)
    mask = rng.random((2, 1, 5, 7)) < 0.8
    cast = lambda a: np.asarray(a, dtype)                        # noqa: E731
    got, w = multi_head_attention(cast(X), *map(cast, Ws), num_heads=2, kv=cast(kv), mask=mask,
                                  is_causal=causal, return_weights=True,
                                  **{k: cast(b) for k, b in biases.items()})
    assert got.dtype == dtype and got.shape == (2, 5, 5) and w.shape == (2, 2, 5, 7)
    want = oracle(*(cast(a) for a in (X,) + Ws), 2, kv=cast(kv), mask=mask, is_causal=causal,
                  **{k: cast(b) for k, b in biases.items()})
    assert_close(got, want)


@pytest.mark.parametrize("given", [(), ("b_q",), ("b_k", "b_o"), BIASES])
def test_self_attention_biases_match_oracle(given, isa):
    rng = np.random.default_rng(2)
    X, _, Ws, biases = problem(rng, kdim=6)
    chosen = {k: biases[k] for k in given}
    got = multi_head_attention(X, *Ws, num_heads=2, **chosen)
    assert_close(got, oracle(X, *Ws, 2, **chosen))


def test_batched_weights_and_biases_broadcast(isa):
    rng = np.random.default_rng(3)
    X, kv, Ws, biases = problem(rng, B=1, wbatch=(3,))    # 3 weight sets over one sequence
    got = multi_head_attention(X, *Ws, num_heads=2, kv=kv, **biases)
    assert got.shape == (3, 5, 5)
    assert_close(got, oracle(X, *Ws, 2, kv=kv, **biases))


def test_no_bias_and_kv_is_x_are_the_plain_layer(isa):
    rng = np.random.default_rng(4)
    X, _, Ws, _ = problem(rng, kdim=6)
    plain = multi_head_attention(X, *Ws, num_heads=2)
    np.testing.assert_array_equal(multi_head_attention(X, *Ws, num_heads=2, kv=X), plain)
    one = multi_head_attention(X[0], *Ws[:3], np.eye(4), num_heads=1, kv=X[0])
    np.testing.assert_array_equal(one, self_attention_layer(X[0], *Ws[:3], scale=1 / 6 ** 0.5))


def test_fully_masked_rows_are_zero_before_the_output_bias():
    rng = np.random.default_rng(5)
    X, kv, Ws, biases = problem(rng)
    mask = np.ones((5, 7), bool)
    mask[2] = False
    got = multi_head_attention(X, *Ws, num_heads=2, kv=kv, mask=mask, **biases)
    np.testing.assert_allclose(got[:, 2], np.broadcast_to(biases["b_o"], (2, 5)), rtol=0, atol=0)


@pytest.mark.parametrize("with_kv", [False, True])
@pytest.mark.parametrize("wbatch", [(), (2,)])
def test_gradients_by_finite_differences(with_kv, wbatch):
    rng = np.random.default_rng(6)
    X, kv, Ws, biases = problem(rng, n=4, n_k=5, wbatch=wbatch, kdim=4 if with_kv else 6)
    Ws = [W.copy() for W in Ws]
    kw = dict(biases, kv=kv if with_kv else None)
    mask = rng.random((4, kv.shape[-2] if with_kv else 4)) < 0.8
    G = rng.standard_normal(multi_head_attention(X, *Ws, num_heads=2, mask=mask, **kw).shape)

    def loss():
        return float((multi_head_attention(X, *Ws, num_heads=2, mask=mask, **kw) * G).sum())

    grads = multi_head_attention_backward(G, X, *Ws, num_heads=2, mask=mask, **kw)
    inputs = [X, *Ws] + ([kv] if with_kv else []) + [biases[k] for k in BIASES]
    assert len(grads) == len(inputs)
    for g, x in zip(grads, inputs):
        assert g.shape == x.shape
        np.testing.assert_allclose(g, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)


def test_gradients_of_the_arguments_given_in_signature_order():
    rng = np.random.default_rng(7)
    X, kv, Ws, biases = problem(rng)
    dY = rng.standard_normal((2, 5, 5))
    full = multi_head_attention_backward(dY, X, *Ws, num_heads=2, kv=kv, **biases)
    some = multi_head_attention_backward(dY, X, *Ws, num_heads=2, kv=kv, b_k=biases["b_k"],
                                         b_o=biases["b_o"])
    assert len(full) == 10 and len(some) == 8
    assert [g.shape for g in some] == [a.shape for a in (X, *Ws, kv, biases["b_k"], biases["b_o"])]
    # b_o moves the output, not the attention: db_o = dY summed over batch and rows either way
    np.testing.assert_allclose(some[-1], dY.sum(axis=(0, 1)), rtol=1e-13)
    np.testing.assert_allclose(full[-1], some[-1], rtol=1e-13)
    # a bias on the keys shifts every query's scores by a constant: it gets no gradient
    np.testing.assert_allclose(full[7], 0, atol=1e-12)


def test_float32_gradients_close_to_float64(isa):
    rng = np.random.default_rng(8)
    X, kv, Ws, biases = problem(rng)
    dY = rng.standard_normal((2, 5, 5))
    g64 = multi_head_attention_backward(dY, X, *Ws, num_heads=2, kv=kv, **biases)
    f32 = lambda a: np.asarray(a, np.float32)                    # noqa: E731
    g32 = multi_head_attention_backward(f32(dY), f32(X), *map(f32, Ws), num_heads=2, kv=f32(kv),
                                        **{k: f32(b) for k, b in biases.items()})
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(b).max()))


def test_cross_attention_errors():
    X, kv, W6, W4 = np.ones((3, 6)), np.ones((5, 4)), np.ones((6, 4)), np.ones((4, 4))
    with pytest.raises(ValueError, match=r"kv has kdim=4 \(kv.shape=\(5, 4\)\) but W_k has 6 rows"):
        multi_head_attention(X, W6, W6, W4, W4, num_heads=2, kv=kv)
    with pytest.raises(ValueError, match=r"X has d_model=6 .* but W_q has 4 rows"):
        multi_head_attention(X, W4, W4, W4, W4, num_heads=2, kv=kv)
    with pytest.raises(ValueError, match=r"b_q.shape=\(3,\) but W_q has width 4"):
        multi_head_attention(X, W6, W4, W4, W4, num_heads=2, kv=kv, b_q=np.ones(3))
    with pytest.raises(ValueError, match=r"b_o.shape=\(\) but W_o has width 4"):
        multi_head_attention(X, W6, W4, W4, W4, num_heads=2, kv=kv, b_o=1.0)
    with pytest.raises(ValueError, match=r"mask.shape=\(3, 3\) does not broadcast .* \(\.\.\., 3, 5\)"):
        multi_head_attention(X, W6, W4, W4, W4, num_heads=2, kv=kv, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"kv must have at least 2 dimensions"):
        multi_head_attention(X, W6, W4, W4, W4, num_heads=2, kv=np.ones(4))
    with pytest.raises(TypeError, match=r"b_v has dtype complex128"):
        multi_head_attention(X, W6, W4, W4, W4, num_heads=2, kv=kv, b_v=np.ones(4, complex))
