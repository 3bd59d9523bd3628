"""The attention backward's copy of the forward's output O (attn.h's attention_backward `out`),
which multi_head_attention_backward's dW_o = O^T dY reads instead of running a forward pass: on
every path that computes a backward (the fast tiers' fused kernel with V read in place or padded,
their blocked kernel past its budgets and with a soft-cap or dropout, the reference tier, the
NumPy backend) it equals the forward's output to the precision of the dtype, with the forward's
rules (a query that sees no key gets 0, a NaN score a NaN row, a weight of 0 takes nothing from
an inf in V), and it never changes the gradients. Its bits for every thread count:
test_thread_count.py."""
import numpy as np
import pytest

import selfattn
from selfattn import _core
from selfattn._kernels import _attention_grads
from test_gradients import assert_close, rand, ref_backward, ref_weights

LD = np.longdouble


def backward_with_output(dO, Q, K, V, scale, mask=None, causal=False, lengths=None,
                         softcap=0.0, dropout=(0.0, 0)):
    """(dQ, dK, dV, out) from the backward kernel; `out` starts as NaN, so a row it leaves
    unwritten fails every comparison."""
    dtype = Q.dtype
    batch = np.broadcast_shapes(Q.shape[:-2], K.shape[:-2], V.shape[:-2], dO.shape[:-2])
    n_q, n_k, d_k, d_v = Q.shape[-2], K.shape[-2], Q.shape[-1], V.shape[-1]
    grads = [np.empty(batch + shape, dtype) for shape in ((n_q, d_k), (n_k, d_k), (n_k, d_v))]
    out = np.full(batch + (n_q, d_v), np.nan, dtype)
    visibility = ("top_left", None, 0) if causal else None
    _attention_grads(batch, *grads, dO, Q, K, V, mask, scale, visibility, dtype, lengths, softcap,
                     dropout, out)
    return (*grads, out)


def ref_output(Q, K, V, scale, mask=None, causal=False):
    return np.matmul(ref_weights(Q, K, scale, mask, causal), np.asarray(V, LD))


TOL = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q, n_k", [(1, 1), (37, 65), (130, 129), (200, 31)])
@pytest.mark.parametrize("d_v", [3, 16, 32, 65])
def test_the_output_is_the_forwards(n_q, n_k, d_v, dtype, isa):
    """Whole and partial micro-tiles of queries and keys, and head sizes that the fast tiers'
    product reads in place (16, 32) or padded (3, 65), with a fully masked query, causal or not;
    the gradients are those without `out`."""
    rng = np.random.default_rng(n_q * 7 + n_k + d_v)
    Q, K = rand(rng, 2, n_q, 8), rand(rng, 2, n_k, 8)
    V, dO = rand(rng, 2, n_k, d_v), rand(rng, 2, n_q, d_v)
    mask = rng.random((n_q, n_k)) < 0.8
    mask[n_q // 2] = False                                  # this query sees no key
    for causal in (False, True):
        args = [a.astype(dtype) for a in (dO, Q, K, V)]
        *grads, out = backward_with_output(*args, 0.4, mask, causal)
        want = ref_output(Q, K, V, 0.4, mask, causal)
        assert out.dtype == dtype
        assert_close(out, want, TOL[dtype])
        assert np.all(out[:, n_q // 2] == 0)
        forward = selfattn.scaled_dot_product_attention(*args[1:], scale=0.4, mask=mask,
                                                        is_causal=causal)
        assert_close(out, forward.astype(LD), TOL[dtype])
        for g, w in zip(grads, ref_backward(dO, Q, K, V, 0.4, mask, causal)):
            assert_close(g, w, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lengths_rows_past_the_query_length_are_zero(dtype, isa):
    rng = np.random.default_rng(3)
    n_q, n_k, d = 70, 90, 16
    Q, K, V, dO = (rand(rng, 3, n, d).astype(dtype) for n in (n_q, n_k, n_k, n_q))
    lengths = (np.array([70, 33, 0], np.intp), np.array([90, 40, 5], np.intp))
    *_, out = backward_with_output(dO, Q, K, V, 0.3, lengths=lengths)
    want = selfattn.scaled_dot_product_attention(Q, K, V, scale=0.3, query_lengths=lengths[0],
                                                 key_lengths=lengths[1])
    assert_close(out, want.astype(LD), TOL[dtype])
    assert np.all(out[1, 33:] == 0) and np.all(out[2] == 0)


def test_a_nan_score_gives_a_nan_row_as_the_forward(isa):
    rng = np.random.default_rng(4)
    Q, K, V, dO = rand(rng, 40, 8), rand(rng, 50, 8), rand(rng, 50, 5), rand(rng, 40, 5)
    Q[7, 2] = np.nan
    *_, out = backward_with_output(dO, Q, K, V, 0.5)
    assert np.isnan(out[7]).all()
    rows = np.delete(np.arange(40), 7)
    assert_close(out[rows], ref_output(Q[rows], K, V, 0.5), 1e-12)


def test_a_zero_weight_takes_nothing_from_inf_in_v(isa):
    """An inf in V's row of a masked key: the weight of 0 takes nothing from it, as in the
    forward (the call runs on the reference tier, which keeps that rule exactly)."""
    rng = np.random.default_rng(5)
    Q, K, V, dO = rand(rng, 30, 4), rand(rng, 45, 4), rand(rng, 45, 6), rand(rng, 30, 6)
    V[10, 3] = np.inf
    mask = np.ones((30, 45), bool)
    mask[:, 10] = False
    *_, out = backward_with_output(dO, Q, K, V, 0.5, mask)
    assert np.isfinite(out).all()
    assert_close(out, ref_output(Q, K, np.where(np.isfinite(V), V, 0), 0.5, mask), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_cap_and_dropout_paths(dtype, isa):
    """The fast tiers hand a soft-cap or dropout to their blocked backward: its O is the
    forward's, of the dropped weights with dropout, and 0 past a sequence's query length."""
    rng = np.random.default_rng(6)
    Q, K, V, dO = (rand(rng, 2, n, 12).astype(dtype) for n in (150, 97, 97, 150))
    *_, out = backward_with_output(dO, Q, K, V, 0.3, causal=True, softcap=2.0)
    want = selfattn.scaled_dot_product_attention(Q, K, V, scale=0.3, is_causal=True, softcap=2.0)
    assert_close(out, want.astype(LD), TOL[dtype])
    *_, out = backward_with_output(dO, Q, K, V, 0.3, dropout=(0.25, 77))
    want = selfattn.scaled_dot_product_attention(Q, K, V, scale=0.3, dropout_p=0.25, seed=77)
    assert_close(out, want.astype(LD), TOL[dtype])
    lengths = (np.array([150, 41], np.intp), np.array([97, 60], np.intp))
    *_, out = backward_with_output(dO, Q, K, V, 0.3, lengths=lengths, softcap=2.0)
    want = selfattn.scaled_dot_product_attention(Q, K, V, scale=0.3, softcap=2.0,
                                                 query_lengths=lengths[0], key_lengths=lengths[1])
    assert_close(out, want.astype(LD), TOL[dtype])
    assert np.all(out[1, 41:] == 0)


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_past_the_panel_budget(dtype, isa):
    """66000 keys: the blocked backward (plan A) gives O from its first sweep."""
    rng = np.random.default_rng(7)
    n_q, n_k, d = 70, 66000, 8
    Q, dO, K, V = rand(rng, n_q, d), rand(rng, n_q, d), rand(rng, n_k, d), rand(rng, n_k, d)
    mask = rng.random((n_q, n_k)) < 0.7
    mask[5] = False
    *_, out = backward_with_output(*(a.astype(dtype) for a in (dO, Q, K, V)), 0.35, mask)
    assert_close(out, ref_output(Q, K, V, 0.35, mask), TOL[dtype])
    assert np.all(out[5] == 0)


@pytest.mark.c_backend
def test_the_core_entry_checks_out():
    Q = np.zeros((4, 3))
    grads = [np.empty((4, 3)) for _ in range(3)]
    with pytest.raises(ValueError, match="out has the wrong shape"):
        _core.attention_backward(*grads, Q, Q, Q, Q, None, 1.0, (-4, 4), -1, 0.0, 0.0, 0,
                                 np.empty((4, 2)))
    with pytest.raises(TypeError, match="out must be an aligned native float64 array"):
        _core.attention_backward(*grads, Q, Q, Q, Q, None, 1.0, (-4, 4), -1, 0.0, 0.0, 0,
                                 np.empty((4, 3), np.float32))


def test_multi_head_dW_o_is_unchanged_by_where_o_comes_from(isa):
    """dW_o = O^T dY with O from the backward equals the product with the forward's O, to the
    precision of the dtype (grouped heads and cross-attention too)."""
    rng = np.random.default_rng(8)
    n, d_model, heads = 45, 24, 4
    X, kv = rand(rng, 2, n, d_model), rand(rng, 2, 30, d_model)
    W_q, W_o = rand(rng, d_model, d_model) / 5, rand(rng, d_model, d_model) / 5
    for dtype in (np.float64, np.float32):
        for extra in ({}, {"num_kv_heads": 2}, {"kv": kv}):
            width = d_model // 2 if "num_kv_heads" in extra else d_model
            W_k, W_v = rand(rng, d_model, width) / 5, rand(rng, d_model, width) / 5
            args = [a.astype(dtype) for a in (X, W_q, W_k, W_v, W_o)]
            kw = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in extra.items()}
            dY = rand(rng, 2, n, d_model).astype(dtype)
            got = selfattn.multi_head_attention_backward(dY, *args, num_heads=heads, **kw)[4]
            heads_out = _heads_output(*args[:4], heads, **kw)
            want = np.einsum("bni,bnj->ij", heads_out.astype(LD), dY.astype(LD))
            assert_close(got, want, TOL[dtype] * 10)


def _heads_output(X, W_q, W_k, W_v, heads, num_kv_heads=None, kv=None):
    """The heads' output side by side, from the forward of multi_head_attention with W_o = I."""
    eye = np.eye(W_v.shape[1] * heads // (num_kv_heads or heads), dtype=X.dtype)
    return selfattn.multi_head_attention(X, W_q, W_k, W_v, eye, num_heads=heads,
                                         num_kv_heads=num_kv_heads, kv=kv)
