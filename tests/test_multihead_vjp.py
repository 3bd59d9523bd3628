"""multi_head_attention_vjp: the forward's output with the same bits as multi_head_attention, and
a backward that returns what multi_head_attention_backward returns (to rounding: dW_o is summed
from the forward's heads' output, where the stateless backward rebuilds it), from the
projections and heads' output it kept; against the long-double oracle; with every option of the
layer; the seed it drew for dropout; called twice; O(n d) kept; bad dY."""
import inspect
import tracemalloc

import numpy as np
import pytest

import selfattn
from selfattn import multi_head_attention, multi_head_attention_backward, multi_head_attention_vjp
from test_gradients import assert_close
from test_multihead_backward import oracle, problem


def close(got, want, dtype):
    """Equal to rounding: float64 to ~1e-12 of the largest entry, float32 to ~1e-5."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        tol = (1e-12 if dtype == np.float64 else 2e-5) * max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradients_match_the_oracle(dtype, isa):
    rng = np.random.default_rng(5)
    (dY, X, W_q, W_k, W_v, W_o), biases = problem(rng, (2,), 70, 60, 4, 15, dtype=dtype)
    b_q, b_k, b_v, b_o = biases
    kw = dict(num_heads=4, b_q=b_q, b_k=b_k, b_v=b_v, b_o=b_o, is_causal=True)
    Y, backward = multi_head_attention_vjp(X, W_q, W_k, W_v, W_o, **kw)
    np.testing.assert_array_equal(Y, multi_head_attention(X, W_q, W_k, W_v, W_o, **kw))
    got = backward(dY)
    want = oracle(dY, X, W_q, W_k, W_v, W_o, biases, 4, True)
    assert len(got) == len(want) == 9
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for i, (g, w, a) in enumerate(zip(got, want, [X, W_q, W_k, W_v, W_o] + biases)):
        assert g.shape == a.shape and g.dtype == dtype
        if i == 6:    # db_k is 0 (the softmax ignores a shift shared by a row's scores): rounding
            assert np.abs(g).max() <= rtol * np.abs(want[2]).max()     # on dW_k's scale
        else:
            assert_close(g, w, rtol)


RNG = np.random.default_rng(0)
# keyword arguments (X: 2 sequences of 9 tokens, d_model 4; 3 heads of 2; kv: 11 tokens of 5)
VARIANTS = {
    "plain": {},
    "causal, window": {"is_causal": "bottom_right", "window": (3, 0)},
    "mask and bias": {"mask": RNG.random((2, 1, 9, 9)) < 0.8,
                      "bias": RNG.standard_normal((3, 9, 9)) / 2},
    "cross-attention, biases": {"kv": RNG.standard_normal((2, 11, 5)), "b_q": RNG.random(6),
                                "b_v": RNG.random(6), "b_o": RNG.random(4)},
    "GQA": {"num_kv_heads": 1},
    "lengths": {"query_lengths": [9, 4], "key_lengths": [3, 9]},
    "softcap, scale": {"softcap": 2.0, "scale": 0.7},
    "dropout": {"dropout_p": 0.3, "seed": 17},
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_same_as_the_forward_and_the_stateless_backward(variant, dtype):
    rng = np.random.default_rng(1)
    kw = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
          for k, v in VARIANTS[variant].items()}
    kdim = kw["kv"].shape[-1] if "kv" in kw else 4
    kv_width = 2 * kw.get("num_kv_heads", 3)
    args = [rng.standard_normal(s).astype(dtype) for s in
            ((2, 9, 4), (4, 6), (kdim, kv_width), (kdim, kv_width), (6, 4))]
    Y, backward = multi_head_attention_vjp(*args, num_heads=3, **kw)
    np.testing.assert_array_equal(Y, multi_head_attention(*args, num_heads=3, **kw))
    dY = rng.standard_normal(Y.shape).astype(dtype)
    close(backward(dY), multi_head_attention_backward(dY, *args, num_heads=3, **kw), dtype)


def test_dropout_keeps_the_seed_the_forward_drew():
    """Without a seed the forward draws one from np.random (as multi_head_attention does), and
    the backward drops the same weights with it, where the stateless backward needs it passed."""
    rng = np.random.default_rng(2)
    args = [rng.standard_normal(s) for s in ((7, 8), (8, 8), (8, 8), (8, 8), (8, 8))]
    dY = rng.standard_normal((7, 8))
    np.random.seed(11)
    drawn = multi_head_attention(*args, num_heads=2, dropout_p=0.4)
    np.random.seed(11)
    seed = int(np.random.randint(0, 2 ** 63, dtype=np.int64))
    np.testing.assert_array_equal(
        drawn, multi_head_attention(*args, num_heads=2, dropout_p=0.4, seed=seed))
    np.random.seed(11)
    Y, backward = multi_head_attention_vjp(*args, num_heads=2, dropout_p=0.4)
    np.testing.assert_array_equal(Y, drawn)
    want = multi_head_attention_backward(dY, *args, num_heads=2, dropout_p=0.4, seed=seed)
    close(backward(dY), want, np.float64)
    other = multi_head_attention_backward(dY, *args, num_heads=2, dropout_p=0.4, seed=seed + 1)
    assert not np.allclose(backward(dY)[1], other[1])      # the seed matters: it was kept


def test_backward_twice_gives_the_same_bits_and_leaves_its_inputs():
    rng = np.random.default_rng(3)
    args = [rng.standard_normal(s) for s in ((2, 10, 8), (8, 8), (8, 8), (8, 8), (8, 8))]
    copies = [a.copy() for a in args]
    Y, backward = multi_head_attention_vjp(*args, num_heads=4, is_causal=True)
    dY = rng.standard_normal(Y.shape)
    dY_copy = dY.copy()
    first, second = backward(dY), backward(dY)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for a, c in zip(args + [dY], copies + [dY_copy]):
        np.testing.assert_array_equal(a, c)


def test_keeps_o_of_n_d_not_the_weights():
    """What the backward keeps is the projections, the heads' output and a copy of X (the caller
    may change X in place before calling it): 5 n d_model reals here (2.5 MiB), where the weights
    would be 8 heads x n^2 (128 MiB); the backward itself, as the
    stateless one, holds no (n, n) array either (32 MiB): beside arrays of n d_model, each thread
    keeps a panel of scores, 2 x 64 query rows x n keys (2 MiB)."""
    n, d_model = 2048, 32
    rng = np.random.default_rng(4)
    X = rng.standard_normal((n, d_model))
    Ws = [rng.standard_normal((d_model, d_model)) / 6 for _ in range(4)]
    dY = rng.standard_normal((n, d_model))
    tracemalloc.start()
    try:
        Y, backward = multi_head_attention_vjp(X, *Ws, num_heads=8, is_causal=True)
        kept, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        grads = backward(dY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one = n * d_model * 8
    assert kept < 7 * one, f"the vjp keeps {kept / 2 ** 20:.1f} MiB"
    panels = selfattn.get_num_threads() * 2 * 64 * n * 8
    assert peak < kept + 16 * one + panels, f"its backward peaked at {peak / 2 ** 20:.1f} MiB"
    assert len(grads) == 5


def test_backward_rejects_a_dY_of_another_shape():
    X, W = np.ones((5, 4)), np.ones((4, 4))
    Y, backward = multi_head_attention_vjp(X, W, W, W, W, num_heads=2)
    # named as the call that raised: the backward, perhaps far from its forward
    with pytest.raises(ValueError, match=r"^multi_head_attention_vjp's backward: dY must have the "
                                         r"shape of the forward output, \(5, 4\), got "
                                         r"dY.shape=\(4, 5\)") as info:
        backward(np.ones((4, 5)))
    assert info.traceback[-1].frame.code.name == "call"   # the public wrapper's frame alone
    with pytest.raises(TypeError, match="^multi_head_attention_vjp's backward: "):
        backward(np.ones((5, 4), complex))
    with pytest.raises(TypeError, match="return_weights"):
        multi_head_attention_vjp(X, W, W, W, W, num_heads=2, return_weights=True)


def test_exported_and_documented():
    assert "multi_head_attention_vjp" in selfattn.__all__
    assert "jax.vjp" in multi_head_attention_vjp.__doc__
    Y, backward = multi_head_attention_vjp(np.ones((3, 4)), *[np.eye(4)] * 4, num_heads=1)
    assert "multi_head_attention_backward" in backward.__doc__


def test_backward_recomputes_no_projection_and_no_heads_output(monkeypatch):
    """What the vjp saves: its backward runs neither the projections nor a forward pass, and
    asks the attention backward for the gradients alone (not for the heads' output, which it
    kept), where multi_head_attention_backward does the first and the last."""
    from selfattn import _backward, _kernels, _layer

    rng = np.random.default_rng(6)
    args = [rng.standard_normal(s) for s in ((2, 12, 8), (8, 8), (8, 8), (8, 8), (8, 8))]
    dY = rng.standard_normal((2, 12, 8))
    Y, backward = multi_head_attention_vjp(*args, num_heads=2, is_causal=True)
    want = multi_head_attention_backward(dY, *args, num_heads=2, is_causal=True)
    real_grads = _kernels._attention_grads
    asked = []

    def refuse(*_):
        raise AssertionError("recomputed in the backward")

    def attention_grads(*a, **kw):
        asked.append(inspect.signature(real_grads).bind(*a, **kw).arguments.get("out"))
        return real_grads(*a, **kw)

    monkeypatch.setattr(_layer._Layer, "project", refuse)
    monkeypatch.setattr(_layer._Layer, "attend", refuse)
    monkeypatch.setattr(_backward, "_attention_grads", attention_grads)
    close(backward(dY), want, np.float64)
    assert asked == [None]


def test_backward_uses_the_arguments_as_they_were_at_the_forward():
    """An optimizer step (W -= lr * dW) or a new batch written into X between the forward and
    backward(): the gradients are those at the forward's arrays (they were neither, silently),
    for the weights, the inputs, the biases and the mask alike, whatever their layout."""
    rng = np.random.default_rng(4)
    X, kv = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 6, 8))
    W_q, W_k, W_v, W_o = (rng.standard_normal((8, 8)) for _ in range(4))
    b_q = rng.standard_normal(8)
    raw = rng.random((1, 1, 5, 6)) < 0.7
    mask = np.broadcast_to(raw, (2, 2, 5, 6))   # stride 0: a view
    kw = dict(num_heads=2, kv=kv, b_q=b_q, mask=mask)
    dY = rng.standard_normal((2, 5, 8))
    want = multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, **kw)
    Y, backward = multi_head_attention_vjp(X, W_q, W_k, W_v, W_o, **kw)
    for a in (X, kv, W_q, W_k, W_v, W_o, b_q):
        a *= 1.5
    raw[...] = ~raw
    got = backward(dY)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_backward_copies_buffers_the_caller_can_change_too():
    """Not only ndarrays: a memoryview (or a torch tensor) shares its memory with the array it
    reads as, and a change to it between the forward and backward() changes no gradient."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 8))
    Ws = [rng.standard_normal((8, 8)) for _ in range(4)]
    dY = rng.standard_normal((5, 8))
    want = multi_head_attention_backward(dY, X, *Ws, num_heads=2)
    view = memoryview(X)
    _, backward = multi_head_attention_vjp(view, *(W.tolist() for W in Ws), num_heads=2)
    X[...] = 0
    for g, w in zip(backward(dY), want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
