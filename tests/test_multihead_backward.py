"""multi_head_attention_backward at sizes where its fast paths run (the weight gradients as one
product on the packed [dQ | dK | dV], the transposed operands in C): against a long-double
oracle, for every thread count, and for any layout of the inputs."""
import os

import numpy as np
import pytest

import selfattn
from selfattn import multi_head_attention_backward
from test_gradients import LD, assert_close, ref_backward, sum_to


def oracle(dY, X, W_q, W_k, W_v, W_o, biases, heads, causal):
    """(dX, dW_q, dW_k, dW_v, dW_o, db_q, db_k, db_v, db_o), one head at a time in long double."""
    dY, X, W_q, W_k, W_v, W_o = (np.asarray(a, LD) for a in (dY, X, W_q, W_k, W_v, W_o))
    b_q, b_k, b_v, b_o = (np.asarray(b, LD) for b in biases)
    Q, K, V = X @ W_q + b_q, X @ W_k + b_k, X @ W_v + b_v
    dh, dv = Q.shape[-1] // heads, V.shape[-1] // heads
    scale = 1 / np.sqrt(dh)
    dH = dY @ np.swapaxes(W_o, -1, -2)
    dQ, dK, dV = np.zeros_like(Q), np.zeros_like(K), np.zeros_like(V)
    outs = []
    for h in range(heads):
        c, v = slice(h * dh, (h + 1) * dh), slice(h * dv, (h + 1) * dv)
        dQ[..., c], dK[..., c], dV[..., v] = ref_backward(dH[..., v], Q[..., c], K[..., c],
                                                          V[..., v], scale, None, causal)
        P = ref_backward.__globals__["ref_weights"](Q[..., c], K[..., c], scale, None, causal)
        outs.append(P @ V[..., v])
    Hcat = np.concatenate(outs, axis=-1)
    T = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    dX = dQ @ T(W_q) + dK @ T(W_k) + dV @ T(W_v)
    weight_grads = [sum_to(T(A) @ G, W.shape) for A, G, W in
                    ((X, dQ, W_q), (X, dK, W_k), (X, dV, W_v), (Hcat, dY, W_o))]
    bias_grads = [sum_to(G.sum(axis=-2), b.shape) for G, b in
                  ((dQ, b_q), (dK, b_k), (dV, b_v), (dY, b_o))]
    return [dX] + weight_grads + bias_grads


def problem(rng, batch, n, d_model, heads, d_head, w_batches=((), (), ()), dtype=np.float64):
    width = heads * d_head
    X, dY = (rng.standard_normal(batch + (n, d_model)) for _ in range(2))
    Ws = [rng.standard_normal(wb + (d_model, width)) / np.sqrt(d_model) for wb in w_batches]
    W_o = rng.standard_normal((width, d_model)) / np.sqrt(width)
    biases = [rng.standard_normal((w,)) / 4 for w in (width, width, width, d_model)]
    return [a.astype(dtype) for a in [dY, X] + Ws + [W_o]], [b.astype(dtype) for b in biases]


@pytest.mark.parametrize("heads,d_head,w_batches", [
    (4, 15, ((), (), ())),             # odd head size; one product for dW_q, dW_k, dW_v
    (5, 8, ((2,), (2,), (2,))),        # weights per sequence: still one product
    (3, 7, ((2,), (), (1,))),          # weights of different batch shapes: one product each
])
def test_gradients_match_the_oracle(heads, d_head, w_batches, isa):
    rng = np.random.default_rng(heads)
    arrays, biases = problem(rng, (2,), 70, 60, heads, d_head, w_batches)
    b_q, b_k, b_v, b_o = biases
    got = multi_head_attention_backward(*arrays, num_heads=heads, b_q=b_q, b_k=b_k, b_v=b_v,
                                        b_o=b_o, is_causal=True)
    want = oracle(*arrays, biases, heads, True)
    assert len(got) == len(want) == 9
    for i, (g, w, a) in enumerate(zip(got, want, arrays[1:] + biases)):
        assert g.shape == a.shape and g.dtype == np.float64
        if i == 6:    # db_k is 0 (the softmax ignores a shift shared by a row's scores): rounding
            assert np.abs(g).max() <= 1e-12 * np.abs(want[2]).max()     # on dW_k's scale
        else:
            assert_close(g, w, 1e-12)


def test_the_same_bits_for_every_thread_count(threads):
    """float32 at sizes where the products, the attention and the transposes all run on several
    threads, with biases, grouped K/V heads and cross-attention."""
    rng = np.random.default_rng(7)
    arrays, biases = problem(rng, (2,), 300, 96, 6, 16, dtype=np.float32)
    dY, X, W_q, W_k, W_v, W_o = arrays
    kv = rng.standard_normal((2, 260, 40)).astype(np.float32)
    Wk2, Wv2 = (rng.standard_normal((40, 32)).astype(np.float32) / 6 for _ in range(2))
    calls = [
        lambda: multi_head_attention_backward(*arrays, num_heads=6, is_causal=True,
                                              b_q=biases[0], b_o=biases[3]),
        lambda: multi_head_attention_backward(dY, X, W_q, Wk2, Wv2, W_o, num_heads=6, kv=kv,
                                              num_kv_heads=2, b_k=biases[1][:32]),
    ]
    for call in calls:
        selfattn.set_num_threads(1)
        want = call()
        for n in (2, 3, max(4, os.cpu_count() or 1)):
            selfattn.set_num_threads(n)
            for g, w in zip(call(), want):
                assert g.dtype == np.float32 and g.tobytes() == w.tobytes(), n


def test_any_layout_gives_the_same_bits():
    """Strided views, Fortran order and broadcast batch axes go to the kernels as they are or
    as row-contiguous copies: the same gradients, bit for bit, as C-ordered inputs."""
    rng = np.random.default_rng(8)
    arrays, biases = problem(rng, (2,), 90, 48, 4, 12, dtype=np.float32)
    want = multi_head_attention_backward(*arrays, num_heads=4, b_v=biases[2])
    dY, X, W_q, W_k, W_v, W_o = arrays
    wide = np.zeros((2, 90, 96), np.float32)
    wide[..., ::2] = X                                       # X with columns 8 bytes apart
    odd = [dY[:, ::-1][:, ::-1], wide[..., ::2], np.asfortranarray(W_q),
           np.ascontiguousarray(W_k.T).T, W_v, np.asfortranarray(W_o)]
    got = multi_head_attention_backward(*odd, num_heads=4, b_v=biases[2][::-1][::-1])
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()
    # a weight shared by both sequences, given as a broadcast view, sums over them as one would
    shared = multi_head_attention_backward(dY, X, np.broadcast_to(W_q, (2,) + W_q.shape), W_k,
                                           W_v, W_o, num_heads=4)
    plain = multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=4)
    assert shared[1].shape == (2,) + W_q.shape
    np.testing.assert_allclose(shared[1].sum(axis=0), plain[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,d_head,n", [(np.float64, 32, 80), (np.float32, 64, 80),
                                             (np.float64, 32, 128), (np.float32, 64, 256)])
def test_rows_of_a_kib_padded_inside(dtype, d_head, n, threads):
    """Projections 1 KiB wide (4 heads): [Q | K | V], the heads' output and [dQ | dK | dV] get
    a padded row stride inside (_kernels._empty_rows), and with n rows of 1 KiB so do the
    transposed copies X^T and out^T that the weights' gradients read; the gradients still match
    the oracle, the same bits for every thread count, and what the user gets is C-ordered."""
    rng = np.random.default_rng(9)
    arrays, biases = problem(rng, (), n, 48, 4, d_head, dtype=dtype)
    dY, X, W_q, W_k, W_v, W_o = arrays
    assert W_q.shape[-1] * W_q.itemsize == 1024
    Y = selfattn.multi_head_attention(*arrays[1:], num_heads=4, b_q=biases[0], is_causal=True)
    assert Y.flags.c_contiguous
    selfattn.set_num_threads(1)
    got = multi_head_attention_backward(*arrays, num_heads=4, b_q=biases[0], is_causal=True)
    assert got[0].flags.c_contiguous
    zero = [np.zeros_like(b) for b in biases]
    want = oracle(*arrays, [biases[0]] + zero[1:], 4, True)
    for g, w in zip(got, want[:5] + want[5:6]):
        assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)
    for n in (2, 3):
        selfattn.set_num_threads(n)
        again = multi_head_attention_backward(*arrays, num_heads=4, b_q=biases[0],
                                              is_causal=True)
        for g, w in zip(again, got):
            assert g.tobytes() == w.tobytes(), n


def _root(a):
    """The array that owns a view's memory."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


@pytest.mark.parametrize("single_head", [False, True])
def test_spent_arrays_are_freed_before_the_projection_gradients(monkeypatch, single_head):
    """The backward gives back the memory of Q, K, V (one array), of the heads' output and of its
    gradient as soon as they are spent, so that the projections' gradient products reuse it
    instead of fresh pages: at dX's products (dP @ W^T, one per W) none of them is alive; the
    heads' output comes from the attention backward (no forward pass runs); the gradients are
    unchanged."""
    import weakref

    from selfattn import _backward, _kernels, _layer, _multihead

    rng = np.random.default_rng(5)
    n, d_model, heads = 40, 24, 3
    X = rng.standard_normal((2, n, d_model))
    W_q, W_k, W_v, W_o = rng.standard_normal((4, d_model, d_model)) / 5
    dY = rng.standard_normal((2, n, d_model))
    if single_head:
        call = lambda: selfattn.self_attention_layer_backward(dY, X, W_q, W_k, W_v)
    else:
        call = lambda: multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=heads)
    want = call()
    alive = {}
    real_project, real_grads = _layer._Layer.project, _kernels._attention_grads
    real_matmul = _kernels._matmul
    products = []

    def project(self):
        views = real_project(self)
        alive["QKV"] = weakref.ref(_root(views[0]))
        return views

    def attend(self, *args):
        raise AssertionError("the backward ran a forward pass")

    def attention_grads(*args):
        out = args[-1]
        assert (out is None) == single_head, "the heads' output is wanted from the backward"
        if out is not None:
            alive["out"] = weakref.ref(_root(out))
        return real_grads(*args)

    def matmul(A, B, compute, batch, padded=False, **layout):
        result = real_matmul(A, B, compute, batch, padded, **layout)
        if padded:        # the heads' output's gradient, dY @ W_o^T
            alive["d_out"] = weakref.ref(_root(result))
        return result

    def projection_product(A, B, compute, batch, padded=False, **layout):
        if layout.get("b_t"):         # dX's dP @ W^T
            products.append(B.shape)
            for name, ref in alive.items():
                assert ref() is None, f"{name} is still alive at the projections' gradients"
        return real_matmul(A, B, compute, batch, padded, **layout)

    monkeypatch.setattr(_layer._Layer, "project", project)
    monkeypatch.setattr(_layer._Layer, "attend", attend)
    monkeypatch.setattr(_backward, "_attention_grads", attention_grads)
    monkeypatch.setattr(_multihead, "_matmul", matmul)
    monkeypatch.setattr(_backward, "_matmul", projection_product)
    got = call()
    assert "QKV" in alive and (single_head or {"d_out", "out"} <= set(alive))
    assert products == [W_q.shape, W_k.shape, W_v.shape]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_the_gradients_are_named_whatever_arguments_were_given():
    """The tuple's positions move when kv= or a bias is given (b_o's gradient is 6th alone, 10th
    with kv and every bias); its names do not, as jax.vjp gives one cotangent per input."""
    import copy
    import pickle
    rng = np.random.default_rng(8)
    X, kv = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 7, 6))
    W_q, W_o = rng.standard_normal((2, 8, 8))
    W_k, W_v = rng.standard_normal((2, 6, 8))
    b = {name: rng.standard_normal(8) for name in ("b_q", "b_k", "b_v", "b_o")}
    dY = rng.standard_normal((2, 5, 8))
    plain = multi_head_attention_backward(dY, X, W_q, W_q, W_q, W_o, num_heads=2)
    assert plain._fields == ("dX", "dW_q", "dW_k", "dW_v", "dW_o")
    full = multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=2, kv=kv, **b)
    assert full._fields == ("dX", "dW_q", "dW_k", "dW_v", "dW_o", "dkv", "db_q", "db_k", "db_v",
                            "db_o")
    only_b_o = multi_head_attention_backward(dY, X, W_q, W_q, W_q, W_o, num_heads=2, b_o=b["b_o"])
    assert only_b_o[5] is only_b_o.db_o and only_b_o.db_o.shape == (8,)
    np.testing.assert_allclose(only_b_o.db_o, dY.sum(axis=(0, 1)), rtol=1e-13)
    assert full.dkv.shape == kv.shape and full.db_k.shape == (8,)
    dX, dW_q, dW_k, dW_v, dW_o = plain                  # unpacking as before
    assert dX is plain.dX and isinstance(plain, tuple) and len(full) == 10
    _, backward = selfattn.multi_head_attention_vjp(X, W_q, W_k, W_v, W_o, num_heads=2, kv=kv,
                                                    **b)
    assert backward(dY)._fields == full._fields
    # an argument not given has the name, holding None (torch's .grad of a tensor given none)
    assert plain.dkv is None and plain.db_o is None and only_b_o.db_q is None
    assert len(plain) == 5 and all(g is not None for g in plain)
    again = pickle.loads(pickle.dumps(full))            # a plain tuple: the class is made at run time
    assert type(again) is tuple and all(np.array_equal(a, g) for a, g in zip(again, full))
    assert copy.copy(full) is full
    deep = copy.deepcopy(full)
    assert deep._fields == full._fields and deep.dX is not full.dX
    np.testing.assert_array_equal(deep.dX, full.dX)


def test_each_gradient_is_its_own_c_contiguous_array():
    """dW_q, dW_k and dW_v were column slices of one (d_model, 3 d) buffer: not C-contiguous
    (.resize refused them), each keeping the others' memory alive."""
    rng = np.random.default_rng(9)
    X, dY = rng.standard_normal((2, 2, 5, 8))
    kv = rng.standard_normal((2, 7, 6))
    W_q, W_o = rng.standard_normal((2, 8, 8))
    W_k, W_v = rng.standard_normal((2, 6, 8))
    b = {name: rng.standard_normal(8) for name in ("b_q", "b_k", "b_v", "b_o")}
    _, backward = selfattn.multi_head_attention_vjp(X, W_q, W_q, W_q, W_o, num_heads=2, **b)
    results = [
        selfattn.self_attention_layer_backward(dY, X, W_q, W_q, W_q),
        multi_head_attention_backward(dY, X, W_q, W_q, W_q, W_o, num_heads=2, **b),
        multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=2, kv=kv, **b),
        backward(dY),
    ]
    for grads in results:
        for i, g in enumerate(grads):
            assert g.flags.c_contiguous and g.flags.writeable, i
            assert g.base is None or g.base.nbytes == g.nbytes, i
            assert not any(np.shares_memory(g, h) for h in grads[i + 1:]), i
        grads[1].resize(grads[1].size, refcheck=False)     # single-segment
