"""Batch broadcasting like np.matmul, and any strides: views, negative steps, Fortran order."""
import numpy as np
import pytest

import selfattn as sa
from attn_reference import assert_close, ref_attention, ref_layer, ref_scores, ref_softmax


def test_batch_dims_broadcast_like_matmul(isa, rng):
    Q = rng.standard_normal((2, 3, 5, 4))
    K = rng.standard_normal((7, 4))                  # shared by every batch item
    V = rng.standard_normal((3, 7, 6))               # one per head, broadcast over the first axis
    out = sa.scaled_dot_product_attention(Q, K, V)
    assert out.shape == np.matmul(np.matmul(Q, K.T), V).shape == (2, 3, 5, 6)
    assert_close(out, ref_attention(Q, K, V)[0])
    for b in range(2):
        for h in range(3):
            np.testing.assert_allclose(out[b, h], sa.scaled_dot_product_attention(Q[b, h], K, V[h]),
                                       rtol=1e-13, atol=1e-14)
    s = sa.compute_self_attention_scores(Q[:, :1], rng.standard_normal((3, 8, 4)))
    assert s.shape == (2, 3, 5, 8)
    assert sa.compute_attention_output(rng.standard_normal((4, 1, 2, 3)),
                                       rng.standard_normal((5, 3, 6))).shape == (4, 5, 2, 6)


def test_mask_batch_dims_join_the_broadcast(isa, rng):
    Q = rng.standard_normal((3, 5, 4))
    lengths = np.array([5, 3])
    pad = (np.arange(5) < lengths[:, None])[:, None, None, :]      # (2, 1, 1, n_k)
    out = sa.scaled_dot_product_attention(Q, Q, Q, mask=pad)
    assert out.shape == (2, 3, 5, 4)
    assert_close(out, ref_attention(Q, Q, Q, mask=pad)[0])


def test_layer_with_stacked_weights(isa, rng):
    X = rng.standard_normal((2, 6, 8))
    W_q = rng.standard_normal((3, 1, 8, 4))            # (heads, 1, d_model, d_k)
    W_k = rng.standard_normal((8, 4))
    W_v = rng.standard_normal((2, 8, 5))
    out = sa.self_attention_layer(X, W_q, W_k, W_v)
    assert out.shape == (3, 2, 6, 5)
    assert_close(out, ref_layer(X, W_q, W_k, W_v)[0])


def views(a):
    """The same values as `a` in awkward memory layouts."""
    yield a
    yield np.asfortranarray(a)
    yield a[::-1][::-1]
    padded = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    padded[::2, ::3] = a
    yield padded[::2, ::3]                                 # both axes strided
    flipped = np.ascontiguousarray(a[::-1, ::-1])
    yield flipped[::-1, ::-1]                              # negative strides
    ro = a.copy()
    ro.flags.writeable = False
    yield ro
    raw = np.zeros(a.size * a.itemsize + 1, np.uint8)[1:]  # misaligned buffer
    mis = raw.view(a.dtype).reshape(a.shape) if a.dtype.itemsize == 1 else \
        np.ndarray(a.shape, a.dtype, buffer=raw)
    mis[...] = a
    yield mis


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_any_strides_give_the_same_result(isa, rng, dtype):
    Q = rng.standard_normal((5, 3)).astype(dtype)
    K = rng.standard_normal((6, 3)).astype(dtype)
    V = rng.standard_normal((6, 4)).astype(dtype)
    want_s, want_out = ref_scores(Q, K), ref_attention(Q, K, V)[0]
    for q in views(Q):
        for k in views(K):
            assert_close(sa.compute_self_attention_scores(q, k), want_s)
        for v in views(V):
            assert_close(sa.scaled_dot_product_attention(q, K, v), want_out)
    for s in views(want_s.astype(dtype)):
        assert_close(sa.softmax_attention_weights(s), ref_softmax(want_s.astype(dtype)))


def test_broadcast_views_and_zero_strides(isa, rng):
    row = rng.standard_normal(4)
    Q = np.broadcast_to(row, (5, 4))                       # every query the same: stride 0
    K = rng.standard_normal((6, 4))
    out, w = sa.scaled_dot_product_attention(Q, K, K, return_weights=True)
    assert_close(w, ref_softmax(ref_scores(Q, K)))
    assert np.all(w == w[0])
    col = np.broadcast_to(rng.standard_normal((5, 1)), (5, 4))  # inner stride 0
    assert_close(sa.compute_self_attention_scores(col, K), ref_scores(col, K))
    mask = np.broadcast_to(np.array([True, False, True, True, True, True]), (5, 6))
    assert_close(sa.scaled_dot_product_attention(Q, K, K, mask=mask),
                 ref_attention(Q, K, K, mask=mask)[0])


def test_transposed_and_sliced_batches(isa, rng):
    base = rng.standard_normal((4, 6, 3))
    Q = base.transpose(1, 0, 2)[::2]                      # (3, 4, 3) non-contiguous batch
    K = base[:, ::-1].transpose(0, 2, 1).swapaxes(-1, -2)  # (4, 6, 3) negative row stride
    assert_close(sa.compute_self_attention_scores(Q[:, None], K), ref_scores(Q[:, None], K))
