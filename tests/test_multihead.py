"""multi_head_attention against a per-head loop of scaled_dot_product_attention."""
import numpy as np
import pytest

from attn_reference import LD, assert_close, ref_output
from selfattn import (
    multi_head_attention,
    padding_mask,
    scaled_dot_product_attention,
    self_attention_layer,
)

# The `isa` fixture (every supported tier) comes from conftest.py.


def per_head(X, W_q, W_k, W_v, W_o, H, scale=None, mask=None, is_causal=False):
    """The definition: slice each head's columns, attend, concatenate, project."""
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    dh, dv = Q.shape[-1] // H, V.shape[-1] // H
    outs, weights = [], []
    for h in range(H):
        m = mask
        if mask is not None and np.ndim(mask) >= 3:   # (..., H or 1, n, n): this head's mask
            m = np.take(mask, h if np.shape(mask)[-3] == H else 0, axis=-3)
        o, w = scaled_dot_product_attention(Q[..., h * dh:(h + 1) * dh], K[..., h * dh:(h + 1) * dh],
                                            V[..., h * dv:(h + 1) * dv], scale=scale, mask=m,
                                            is_causal=is_causal, return_weights=True)
        outs.append(o)
        weights.append(w)
    return np.concatenate(outs, axis=-1) @ W_o, np.stack(weights, axis=-3)


def weights_for(rng, d_model, H, dh, dv, d_out, wbatch=()):
    return (rng.standard_normal(wbatch + (d_model, H * dh)) / 3,
            rng.standard_normal(wbatch + (d_model, H * dh)) / 3,
            rng.standard_normal(wbatch + (d_model, H * dv)) / 3,
            rng.standard_normal((H * dv, d_out)) / 3)


@pytest.mark.parametrize("H,dh,dv,d_out", [(1, 8, 8, 8), (2, 4, 4, 8), (4, 3, 5, 6), (8, 2, 2, 16)])
def test_matches_per_head_loop(H, dh, dv, d_out, isa):
    rng = np.random.default_rng(H)
    X = rng.standard_normal((3, 70, 8))
    Ws = weights_for(rng, 8, H, dh, dv, d_out)
    got, w = multi_head_attention(X, *Ws, num_heads=H, return_weights=True)
    want, want_w = per_head(X, *Ws, H)
    assert got.shape == (3, 70, d_out) and w.shape == (3, H, 70, 70)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-15)
    # the weights are not needed for the output: the fused path gives the same
    np.testing.assert_allclose(multi_head_attention(X, *Ws, num_heads=H), got, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("mask_shape", ["shared", "per-sequence", "per-head", "padding"])
def test_masks_and_causal(mask_shape, isa):
    rng = np.random.default_rng(5)
    B, H, n = 2, 4, 20
    X = rng.standard_normal((B, n, 12))
    Ws = weights_for(rng, 12, H, 3, 3, 12)
    if mask_shape == "shared":
        mask = rng.random((n, n)) < 0.7
    elif mask_shape == "per-sequence":
        mask = rng.random((B, 1, n, n)) < 0.7
    elif mask_shape == "per-head":
        mask = np.where(rng.random((B, H, n, n)) < 0.3, -np.inf, rng.standard_normal((B, H, n, n)))
    else:
        mask = padding_mask([n, 7], n, head_axis=True)
    got, w = multi_head_attention(X, *Ws, num_heads=H, mask=mask, is_causal=True,
                                  return_weights=True)
    want, want_w = per_head(X, *Ws, H, mask=mask, is_causal=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-15)


def test_one_head_is_the_single_head_layer_times_W_o():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 6))
    W_q, W_k, W_v, W_o = (rng.standard_normal((6, 6)) for _ in range(4))
    got = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=1, scale=0.3, is_causal=True)
    want = self_attention_layer(X, W_q, W_k, W_v, scale=0.3, is_causal=True) @ W_o
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_batched_weights_and_dtypes():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((10, 8))
    Ws = weights_for(rng, 8, 2, 4, 4, 8, wbatch=(3,))
    got = multi_head_attention(X, *Ws, num_heads=2)
    assert got.shape == (3, 10, 8)
    for b in range(3):
        want, _ = per_head(X, Ws[0][b], Ws[1][b], Ws[2][b], Ws[3], 2)
        np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=1e-12)
    f32 = multi_head_attention(X.astype(np.float32), *(W.astype(np.float32) for W in Ws),
                               num_heads=2)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, got, rtol=1e-4, atol=1e-5)
    assert multi_head_attention(np.ones((2, 4), int), *(np.ones((4, 4), int),) * 4,
                                num_heads=2).dtype == np.float64


def test_fully_masked_sequence_gives_zeros():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((2, 6, 4))
    Ws = weights_for(rng, 4, 2, 2, 2, 4)
    out = multi_head_attention(X, *Ws, num_heads=2, mask=padding_mask([6, 0], 6, head_axis=True))
    assert np.all(out[1] == 0) and np.isfinite(out).all()


def test_bad_num_heads_and_widths():
    X, W = np.ones((4, 6)), np.ones((6, 6))
    with pytest.raises(ValueError, match=r"multi_head_attention: W_q has width 6 "
                                         r"\(W_q.shape=\(6, 6\)\), which num_heads=4 does not divide"):
        multi_head_attention(X, W, W, W, W, num_heads=4)
    with pytest.raises(ValueError, match=r"W_v has width 5 .* num_heads=2"):
        multi_head_attention(X, W, W, np.ones((6, 5)), np.ones((5, 6)), num_heads=2)
    with pytest.raises(ValueError, match=r"num_heads must be at least 1, got num_heads=0"):
        multi_head_attention(X, W, W, W, W, num_heads=0)
    for bad in (2.0, True, "2", None):
        with pytest.raises(TypeError, match=r"multi_head_attention: num_heads must be an integer"):
            multi_head_attention(X, W, W, W, W, num_heads=bad)
    with pytest.raises(TypeError):
        multi_head_attention(X, W, W, W, W)          # num_heads is required
    with pytest.raises(ValueError, match=r"W_o has 4 rows .* W_o must be \(num_heads \* d_v_head"):
        multi_head_attention(X, W, W, W, np.ones((4, 6)), num_heads=2)
    with pytest.raises(ValueError, match=r"W_o looks transposed"):
        multi_head_attention(X, W, W, W, np.ones((3, 6)), num_heads=2)
    with pytest.raises(ValueError, match=r"X has d_model=6 .* W_k has 5 rows"):
        multi_head_attention(X, W, np.ones((5, 6)), W, W, num_heads=2)


def test_mask_without_head_axis_gets_a_hint():
    X, W = np.ones((3, 4, 6)), np.ones((6, 6))
    with pytest.raises(ValueError, match=r"mask.shape=\(3, 4, 4\) does not broadcast .* "
                                         r"\(3, 2, 4, 4\).*mask\[:, None\]"):
        multi_head_attention(X, W, W, W, W, num_heads=2, mask=np.ones((3, 4, 4), bool))


# ---- the projection path (csrc/module.c's project_impl: one product per W into its columns) ----

PROJECTION_THREADS = (1, 2, 3, 7)


def _same_for_every_thread_count(run):
    """run() with 1, 2, 3 and 7 threads, which must give the same bits; the 1-thread result."""
    import selfattn
    selfattn.set_num_threads(PROJECTION_THREADS[0])
    first = run()
    for n in PROJECTION_THREADS[1:]:
        selfattn.set_num_threads(n)
        for a, b in zip(run(), first):
            np.testing.assert_array_equal(a, b, err_msg=f"{n} threads differ from 1")
    return first


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d_model, widths, biased", [
    (97, 37, (5, 5, 7), (True, False, True)),   # widths below a vector, rows not whole slivers
    (64, 64, (64, 64, 64), (False,) * 3),       # whole micro-tiles
    (13, 300, (1, 13, 300), (True,) * 3),       # d_model beyond a k step, a one-column W
    (1, 8, (24,), (True,)),                     # one row, one projection (the output's)
    (33, 16, (0, 16, 8), (False, True, True)),  # an empty projection
])
def test_projections_are_the_bits_of_one_product_with_the_weights_side_by_side(
        isa, threads, dtype, n, d_model, widths, biased):
    """The layers' projection computes each X @ W_i into its own columns of one array, never
    copying the W's side by side: every column is the bits of one product X @ [W_1 | ... ] (plus
    the bias, added after the product), for weights shared by a batch and any thread count."""
    from selfattn import _kernels
    rng = np.random.default_rng(n + d_model + sum(widths))
    X = rng.standard_normal((2, 3, n, d_model)).astype(dtype)
    Ws = tuple(rng.standard_normal((2, 1, d_model, w)).astype(dtype) for w in widths)
    biases = tuple(rng.standard_normal((w,)).astype(dtype) if b else None
                   for w, b in zip(widths, biased))
    dt = np.dtype(dtype)
    views = _same_for_every_thread_count(
        lambda: _kernels._project("test", X, Ws, dt, (2, 3), (2, 1), biases))
    together = _kernels._matmul(X, np.concatenate(Ws, axis=-1), dt, (2, 3))
    together += np.concatenate([np.zeros(w, dtype) if b is None else b
                                for w, b in zip(widths, biases)])
    start = 0
    for view, W in zip(views, Ws):
        np.testing.assert_array_equal(view, together[..., start: start + W.shape[-1]])
        start += W.shape[-1]
    bias_row = np.concatenate([np.zeros(w) if b is None else b for w, b in zip(widths, biases)])
    assert_close(np.concatenate(views, axis=-1),
                 ref_output(X, np.concatenate(Ws, axis=-1)) + bias_row.astype(LD))


def test_a_bias_per_sequence_is_batch_by_width_as_the_docstring_says():
    """The docstring's rule for a batch of biases (a reviewer found NumPy's (batch, 1, width)
    reading a trap): (batch, width) is one bias per sequence; (batch, 1, width) has batch axes
    (batch, 1), which pair every bias with every sequence."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 5, 8))
    W_q, W_k, W_v = (rng.normal(size=(8, 8)) for _ in range(3))
    W_o = rng.normal(size=(8, 3))
    b = rng.normal(size=(2, 8))
    per_sequence = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2, b_q=b)
    paired = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2, b_q=b[:, None, :])
    assert per_sequence.shape == (2, 5, 3) and paired.shape == (2, 2, 5, 3)
    for i in range(2):
        one = multi_head_attention(X[i], W_q, W_k, W_v, W_o, num_heads=2, b_q=b[i])
        np.testing.assert_allclose(per_sequence[i], one, rtol=1e-12, atol=1e-12)
        for j in range(2):
            np.testing.assert_allclose(
                paired[i, j], multi_head_attention(X[j], W_q, W_k, W_v, W_o, num_heads=2, b_q=b[i]),
                rtol=1e-12, atol=1e-12)
