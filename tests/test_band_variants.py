"""The band-shaped variants: is_causal="top_left" | "bottom_right" and window=(left, right), in
every attention function and backward, against the long-double oracle (attn_reference's
hidden_keys states the rule) on every tier, forward and gradients, with their edge cases; the mask
helpers that draw the same bands; and the errors for bad values."""
import numpy as np
import pytest

from attn_reference import (
    LD,
    REFERENCES,
    assert_close,
    hidden_keys,
    mismatches,
    numeric_grad,
    ref_attention,
    ref_attention_grads,
    ref_scores,
)
import selfattn
from selfattn import (
    causal_mask,
    compute_self_attention_scores,
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    self_attention_layer,
    self_attention_layer_backward,
    window_mask,
)

# The `isa` fixture (every supported tier) comes from conftest.py.

# (n_q, n_k, is_causal, window): the edge cases the rule has
BANDS = [
    (7, 7, False, (2, 1)),
    (7, 7, True, (3, None)),                 # the causal sliding window of 4 keys
    (7, 7, "top_left", (2, 5)),              # causality caps the right side at 0
    (7, 7, False, (0, 0)),                   # window 0: only the diagonal
    (5, 5, False, (10, 10)),                 # a window wider than the sequence: everything
    (5, 5, False, (None, None)),             # unbounded on both sides: everything
    (4, 9, "bottom_right", None),            # decoding 4 tokens against 9 keys
    (9, 4, "bottom_right", None),            # the first 5 queries see nothing
    (4, 9, "bottom_right", (0, 0)),          # each query sees its own (bottom-right) key only
    (9, 4, "bottom_right", (1, None)),
    (4, 9, False, (1, 2)),                   # a top-left window with n_q < n_k
    (9, 4, True, (None, 1)),
    (6, 6, "bottom_right", (2, None)),       # n_q == n_k: bottom-right is top-left
    (1, 40, "bottom_right", (7, 0)),         # one decoded token over a long cache
    (40, 40, True, (16, 0)),                 # a band over several kernel blocks
]
IDS = [f"{n_q}x{n_k}-{c}-{w}" for n_q, n_k, c, w in BANDS]


def operands(rng, n_q, n_k, d=5, dv=3, B=2, dtype=np.float64):
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in ((B, n_q, d), (B, n_k, d), (B, n_k, dv)))


def test_the_oracles_rule_is_the_stated_one():
    # hidden_keys against hand-written cases, so the tests below rest on something checked
    assert (~hidden_keys(3, 3, True) == np.tri(3, dtype=bool)).all()
    assert (~hidden_keys(2, 4, "bottom_right") == np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)).all()
    assert (~hidden_keys(4, 4, False, (1, 0)) == np.array(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)).all()
    assert hidden_keys(3, 2, "bottom_right")[0].all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_q, n_k, is_causal, window", BANDS, ids=IDS)
def test_forward_matches_the_oracle(n_q, n_k, is_causal, window, dtype, isa):
    rng = np.random.default_rng(n_q * 100 + n_k)
    Q, K, V = operands(rng, n_q, n_k, dtype=dtype)
    kw = dict(is_causal=is_causal, window=window)
    want, want_w = ref_attention(Q, K, V, **kw)
    out, w = scaled_dot_product_attention(Q, K, V, return_weights=True, **kw)
    assert out.dtype == dtype
    assert_close(out, want)
    assert_close(w, want_w)
    assert_close(scaled_dot_product_attention(Q, K, V, **kw), want)          # fused kernel
    assert_close(scaled_dot_product_attention(Q[0], K[0], V[0], **kw), want[0])   # 2-d inputs
    assert_close(compute_self_attention_scores(Q, K, **kw), ref_scores(Q, K, **kw))
    blind = hidden_keys(n_q, n_k, is_causal, window).all(axis=-1)
    assert (out[:, blind] == 0).all()                  # a row that sees no key: output 0


@pytest.mark.parametrize("n_q, n_k, is_causal, window", BANDS, ids=IDS)
def test_gradients_match_the_oracle(n_q, n_k, is_causal, window, isa):
    rng = np.random.default_rng(n_q * 100 + n_k + 1)
    Q, K, V = operands(rng, n_q, n_k)
    dO = rng.standard_normal(Q.shape[:-1] + (V.shape[-1],))
    kw = dict(is_causal=is_causal, window=window)
    grads = scaled_dot_product_attention_backward(dO, Q, K, V, **kw)
    for got, want in zip(grads, ref_attention_grads(dO, Q, K, V, **kw)):
        assert_close(got, want)
    hidden = hidden_keys(n_q, n_k, is_causal, window)
    dQ, dK, dV = grads
    assert (dQ[:, hidden.all(axis=-1)] == 0).all()     # a row that sees nothing: gradient 0
    unseen = hidden.all(axis=0)                        # a key no row sees: gradient 0
    assert (dK[:, unseen] == 0).all() and (dV[:, unseen] == 0).all()


@pytest.mark.parametrize("is_causal, window, n_k", [
    ("bottom_right", (1, None), 4), (True, (2, 0), 6), (False, (1, 1), 6),
    ("bottom_right", None, 3), ("bottom_right", (0, 0), 8)])
def test_gradients_by_finite_differences(is_causal, window, n_k):
    rng = np.random.default_rng(5)
    Q, K, V = operands(rng, 6, n_k, d=3, dv=2, B=1)
    dO = rng.standard_normal((1, 6, 2))
    kw = dict(is_causal=is_causal, window=window)

    def loss():
        return float((scaled_dot_product_attention(Q, K, V, **kw) * dO).sum())

    grads = scaled_dot_product_attention_backward(dO, Q, K, V, **kw)
    for g, x in zip(grads, (Q, K, V)):
        np.testing.assert_allclose(g, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("is_causal, window", [(True, (2, 0)), ("bottom_right", (1, 1)),
                                               (False, (0, 1))])
def test_layer_gradients_by_finite_differences(is_causal, window):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 4))
    Ws = [rng.standard_normal((4, 4)) / 2 for _ in range(4)]
    kv = rng.standard_normal((7, 3))
    W_kv = [rng.standard_normal((3, 4)) / 2 for _ in range(2)]
    dY = rng.standard_normal((5, 4))
    kw = dict(is_causal=is_causal, window=window)

    def layer_loss():
        return float((self_attention_layer(X, *Ws[:3], **kw) * dY).sum())

    for g, x in zip(self_attention_layer_backward(dY, X, *Ws[:3], **kw), [X] + Ws[:3]):
        np.testing.assert_allclose(g, numeric_grad(layer_loss, x), rtol=1e-6, atol=1e-8)

    # multi-head cross-attention: 5 queries over 7 keys, where bottom-right differs from top-left
    args = (X, Ws[0], W_kv[0], W_kv[1], Ws[3])

    def mha_loss():
        return float((multi_head_attention(*args, num_heads=2, kv=kv, **kw) * dY).sum())

    grads = multi_head_attention_backward(dY, *args, num_heads=2, kv=kv, **kw)
    for g, x in zip(grads, list(args) + [kv]):
        np.testing.assert_allclose(g, numeric_grad(mha_loss, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["self_attention_layer", "multi_head_attention"])
@pytest.mark.parametrize("is_causal, window", [("bottom_right", (2, None)), (True, (1, 0)),
                                               (False, (0, 0)), (None, (None, 2))])
def test_layers_match_the_oracle(name, is_causal, window, isa):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((2, 8, 6))
    Ws = [rng.standard_normal((6, 6)) / 2 for _ in range(4)]
    kw = dict(is_causal=is_causal, window=window, return_weights=True)
    if name == "self_attention_layer":
        args = (X, *Ws[:3])
    else:
        args, kw["num_heads"] = (X, *Ws), 3
    got = getattr(selfattn, name)(*args, **kw)
    result, refs = REFERENCES[name](*args, **kw)
    for g, r in zip(got, refs):
        assert mismatches(g, r, result) == []


@pytest.mark.parametrize("is_causal, window", [(True, (3, 0)), ("bottom_right", (1, 2)),
                                               (False, (2, 2))])
def test_combines_with_mask_and_bias(is_causal, window, isa):
    """A key is visible only where the band and the mask both allow it; the bias is added there."""
    rng = np.random.default_rng(8)
    Q, K, V = operands(rng, 6, 9)
    mask = rng.random((6, 9)) < 0.7
    bias = rng.standard_normal((2, 1, 9))
    kw = dict(is_causal=is_causal, window=window)
    out, w = scaled_dot_product_attention(Q, K, V, mask=mask, bias=bias, return_weights=True, **kw)
    merged = np.where(mask, bias.astype(LD), LD(-np.inf))
    want, want_w = ref_attention(Q, K, V, mask=merged, **kw)
    assert_close(out, want)
    assert_close(w, want_w)
    dO = rng.standard_normal(out.shape)
    grads = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, bias=bias, **kw)
    for got, want in zip(grads, ref_attention_grads(dO, Q, K, V, mask=merged, **kw)):
        assert_close(got, want)


def test_the_keywords_equal_the_helpers_masks(isa):
    """is_causal and window mean what causal_mask & window_mask draw (and hidden_keys states)."""
    rng = np.random.default_rng(9)
    for n_q, n_k, is_causal, window in BANDS:
        align = is_causal if isinstance(is_causal, str) else "top_left"
        mask = np.ones((n_q, n_k), bool)
        if is_causal:
            mask &= causal_mask(n_q, n_k, align=align)
        if window is not None:
            mask &= window_mask(n_q, n_k, *window, align=align)
        np.testing.assert_array_equal(mask, ~hidden_keys(n_q, n_k, is_causal, window))
        Q, K, V = operands(rng, n_q, n_k)
        assert_close(scaled_dot_product_attention(Q, K, V, is_causal=is_causal, window=window),
                     scaled_dot_product_attention(Q, K, V, mask=mask).astype(LD))


def test_mask_helpers():
    np.testing.assert_array_equal(causal_mask(3, 5), np.tri(3, 5, dtype=bool))
    np.testing.assert_array_equal(causal_mask(3, 5, align="bottom_right"),
                                  np.tri(3, 5, 2, dtype=bool))
    np.testing.assert_array_equal(causal_mask(5, 3, align="bottom_right"),
                                  np.tri(5, 3, -2, dtype=bool))
    np.testing.assert_array_equal(window_mask(4, 4, 0, 0), np.eye(4, dtype=bool))
    np.testing.assert_array_equal(window_mask(3, 3, None, None), np.ones((3, 3), bool))
    np.testing.assert_array_equal(window_mask(2, 5, 1, 1, align="bottom_right"),
                                  [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    assert window_mask(0, 4, 1, 1).shape == (0, 4) and window_mask(3, 0, 1, 1).shape == (3, 0)
    assert window_mask(3, 3, 10**30, 10**30).all()      # beyond any index: no overflow
    with pytest.raises(ValueError, match="causal_mask: align must be"):
        causal_mask(3, align="bottom")
    with pytest.raises(ValueError, match=r"window_mask: window\[0\] \(left\)"):
        window_mask(3, 3, -1, 0)
    with pytest.raises(TypeError, match=r"window_mask: window\[1\] \(right\)"):
        window_mask(3, 3, 1, 0.5)


def _calls():
    """Every public function that takes is_causal and window, as (name, call(**kw))."""
    rng = np.random.default_rng(10)
    Q, K, V = operands(rng, 4, 4, d=4, dv=4, B=1)
    X, W = Q[0], np.eye(4)
    return [
        ("compute_self_attention_scores", lambda **kw: compute_self_attention_scores(Q, K, **kw)),
        ("scaled_dot_product_attention", lambda **kw: scaled_dot_product_attention(Q, K, V, **kw)),
        ("scaled_dot_product_attention_backward",
         lambda **kw: scaled_dot_product_attention_backward(V, Q, K, V, **kw)),
        ("self_attention_layer", lambda **kw: self_attention_layer(X, W, W, W, **kw)),
        ("self_attention_layer_backward",
         lambda **kw: self_attention_layer_backward(X, X, W, W, W, **kw)),
        ("multi_head_attention",
         lambda **kw: multi_head_attention(X, W, W, W, W, num_heads=2, **kw)),
        ("multi_head_attention_backward",
         lambda **kw: multi_head_attention_backward(X, X, W, W, W, W, num_heads=2, **kw)),
        ("explain", lambda **kw: selfattn.explain(X, W, W, W, **kw)),
    ]


@pytest.mark.parametrize("kw, error, words", [
    (dict(is_causal="bottom"), ValueError, "is_causal must be True, False, None, 'top_left'"),
    (dict(is_causal=1), TypeError, "is_causal must be True, False, None, 'top_left'"),
    (dict(is_causal=[True]), TypeError, "is_causal must be"),
    (dict(window=3), TypeError, "window must be a pair"),
    (dict(window="ab"), TypeError, "window must be a pair"),
    (dict(window=(1, 2, 3)), ValueError, "window must be a pair"),
    (dict(window=(-1, 0)), ValueError, r"window\[0\] \(left\) must be a non-negative integer"),
    (dict(window=(0, -2)), ValueError, r"window\[1\] \(right\) must be a non-negative integer"),
    (dict(window=(1.0, 0)), TypeError, r"window\[0\] \(left\) must be a non-negative integer"),
    (dict(window=(True, 0)), TypeError, r"window\[0\] \(left\)"),
])
def test_bad_values_are_clear_errors(kw, error, words):
    for name, call in _calls():
        with pytest.raises(error, match=f"^{name}: {words}"):
            call(**kw)


def test_every_function_takes_both():
    """Each accepts the new values, and the trivial ones change nothing."""
    for name, call in _calls():
        plain = call()
        for kw in (dict(window=(None, None)), dict(window=[9, 9]), dict(is_causal=None),
                   dict(window=np.array([4, 4]))):
            got = call(**kw)
            if name == "explain":
                got, plain_out = got.output, plain.output
            else:
                plain_out = plain
            for g, p in zip(got if isinstance(got, tuple) else (got,),
                            plain_out if isinstance(plain_out, tuple) else (plain_out,)):
                np.testing.assert_array_equal(g, p, err_msg=f"{name} {kw}")
        call(is_causal="bottom_right", window=(1, 0))
        call(is_causal=np.True_, window=(np.int64(2), None))


def test_explain_shows_the_band():
    X, W = np.random.default_rng(11).standard_normal((5, 3)), np.eye(3)
    text = " ".join(str(selfattn.explain(X, W, W, W, window=(2, 0), is_causal=True)).split())
    assert "window=(2, 0), is_causal=True" in text and "i - 2 <= j <= i" in text
    t = selfattn.explain(X, W, W, W, window=(None, 1))
    assert "j <= i + 1" in " ".join(str(t).split())
    assert np.isneginf(t.scores[0, 2:]).all() and np.isfinite(t.scores[4]).all()
    assert "band" not in str(selfattn.explain(X, W, W, W, is_causal=True))


# ---- the learner's side: selfattn.testing.check and cases ------------------------------------

def learner_attention(Q, K, V, is_causal=False, window=None):
    """How a learner writes causal / windowed attention: an explicit band of -inf, raw scores."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    d = i + (n_k - n_q if is_causal == "bottom_right" else 0)
    visible = (j <= d) if is_causal else np.ones((n_q, n_k), bool)
    if window is not None:
        left, right = window
        visible = visible & (j >= d - left) & (j <= d + right)
    scores = np.where(visible, Q @ np.swapaxes(K, -1, -2), -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ V


@pytest.mark.parametrize("kw", [dict(window=(1, 0)), dict(is_causal="bottom_right"),
                                dict(is_causal="bottom_right", window=(1, 1)),
                                dict(is_causal=True, window=(0, 3))])
def test_check_knows_a_learners_banded_attention(kw):
    from selfattn.testing import assert_implementation, cases, check

    def scaled_dot_product_attention(Q, K, V, **given):
        assert given == kw                          # check passes the keywords on
        return learner_attention(Q, K, V, **given)

    report = check(scaled_dot_product_attention, **kw)
    assert report, report
    for case in cases("scaled_dot_product_attention", scale="raw", **kw):
        assert case.kwargs == kw and "with " in case.label
        np.testing.assert_allclose(learner_attention(*case.args, **kw), case.expected,
                                   rtol=1e-5, atol=1e-6)
    # the same learner ignoring the band fails where the band hides keys
    assert not check(lambda Q, K, V, **given: learner_attention(Q, K, V),
                     "scaled_dot_product_attention", **kw)
    # and a grader's one line says the same (it took no is_causal or window before)
    assert_implementation(scaled_dot_product_attention, **kw)
    with pytest.raises(AssertionError, match="FAILED"):
        assert_implementation(lambda Q, K, V, **given: learner_attention(Q, K, V),
                              "scaled_dot_product_attention", **kw)


def test_check_refuses_the_band_where_no_learner_writes_it():
    from selfattn.testing import cases, check
    with pytest.raises(ValueError, match="cases: is_causal and window apply to the functions"):
        cases("softmax_attention_weights", window=(1, 0))
    with pytest.raises(ValueError, match=r"check: window\[0\] \(left\)"):
        check(learner_attention, "scaled_dot_product_attention", window=(-1, 0))
    assert all(case.kwargs == {} for case in cases("compute_self_attention_scores"))


def test_the_bench_case_compares_like_with_like():
    """python -m selfattn bench's window case: the dense band mask computes what window= does,
    and the memory figures are measured for both ways."""
    from selfattn import _bench
    case = _bench._window_case(300, (20, 0), 16, np.float32, True)
    state = case["setup"](np.random.default_rng(0))
    ours, dense = case["ours"](state), case["peers"]["dense band mask"](state)
    assert ours.dtype == dense.dtype == np.float32
    np.testing.assert_allclose(ours, dense, rtol=1e-5, atol=1e-6)
    assert case["flops"] == 4.0 * 16 * (~hidden_keys(300, 300, True, (20, 0))).sum()
    assert any(c["group"] == "window" for c in _bench.build_cases(quick=True, torch=None))


@pytest.mark.c_backend
def test_the_bench_case_measures_the_bytes_of_both_ways():
    """The C kernels' window needs O(n d) scratch; the dense way holds the n x n mask."""
    from selfattn import _bench
    case = _bench._window_case(1000, (20, 0), 16, np.float32, True)
    state = case["setup"](np.random.default_rng(0))
    memory = case["memory"](state)
    assert memory["ours"] >= 1000 * 16 * 4                   # the output at least
    assert memory["dense band mask"] > max(memory["ours"], 1000 * 1000)
