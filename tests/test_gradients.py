"""The backward functions against an analytic reference (materialised weights, extended precision)
and central finite differences; masks, causal, batches, broadcasting, every tier (the same bits for
every thread count: test_thread_count.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selfattn
from selfattn import (
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    self_attention_layer,
    self_attention_layer_backward,
)
from selfattn import _core

ISAS = list(_core.supported_isas())   # (the isa and threads fixtures: conftest.py)
LD = np.longdouble


# ---- the reference: every weight materialised, in extended precision ---------------------------

def ref_weights(Q, K, scale, mask=None, causal=False):
    Q, K = np.asarray(Q, LD), np.asarray(K, LD)
    S = np.matmul(Q, np.swapaxes(K, -1, -2)) * LD(scale)
    if mask is not None:
        mask = np.asarray(mask)
        S = np.where(mask, S, -np.inf) if mask.dtype == bool else S + mask.astype(LD)
    if causal:
        n_q, n_k = S.shape[-2:]
        S = np.where(np.tri(n_q, n_k, dtype=bool), S, -np.inf)
    if S.shape[-1] == 0:
        return np.zeros(S.shape, LD)
    m = S.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    E = np.exp(S - m)
    total = E.sum(axis=-1, keepdims=True)
    return np.where(total > 0, E / np.where(total > 0, total, 1), 0)


def sum_to(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def ref_backward(dO, Q, K, V, scale, mask=None, causal=False, reduce=True):
    P = ref_weights(Q, K, scale, mask, causal)
    dO, Q, K, V = (np.asarray(a, LD) for a in (dO, Q, K, V))
    T = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    dV = np.matmul(T(P), dO)
    dP = np.matmul(dO, T(V))
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))
    dQ = np.matmul(dS, K) * LD(scale)
    dK = np.matmul(T(dS), Q) * LD(scale)
    if not reduce:                      # with the broadcast batch shape
        return dQ, dK, dV
    return sum_to(dQ, Q.shape), sum_to(dK, K.shape), sum_to(dV, V.shape)


def assert_close(got, want, rtol):
    want = np.asarray(want, LD)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    err = float(np.abs(np.asarray(got, LD) - want).max()) if want.size else 0.0
    assert err <= rtol * scale, f"max abs error {err:.3g} vs scale {scale:.3g}"


def rand(rng, *shape):
    return rng.standard_normal(shape)


# ---- scaled_dot_product_attention_backward --------------------------------------------------------

CASES = {
    # name: (batch Q, batch K, batch V, n_q, n_k, d_k, d_v, mask kind, causal)
    "plain": ((), (), (), 5, 7, 3, 4, None, False),
    "blocks": ((2,), (2,), (2,), 130, 70, 9, 5, None, False),
    "bool-mask": ((2,), (2,), (2,), 67, 129, 8, 8, "bool", False),
    "add-mask": ((3,), (3,), (3,), 20, 30, 4, 6, "add", False),
    "broadcast-mask": ((2, 3), (2, 3), (2, 3), 70, 66, 4, 4, "row", False),
    "causal-square": ((2,), (2,), (2,), 100, 100, 8, 8, None, True),
    "causal-wide": ((), (), (), 40, 150, 5, 3, None, True),
    "causal-tall": ((), (), (), 150, 40, 5, 3, "bool", True),
    "shared-KV": ((4,), (), (), 33, 65, 6, 2, None, False),
    "broadcast-batches": ((3, 1), (1, 2), (3, 2), 17, 80, 4, 4, "add", True),
    "many-items": ((33,), (33,), (), 100, 90, 4, 3, "bool", True),   # one chunk per item
}


def make_case(name, rng):
    bq, bk, bv, n_q, n_k, d_k, d_v, mask_kind, causal = CASES[name]
    Q, K, V = rand(rng, *bq, n_q, d_k), rand(rng, *bk, n_k, d_k), rand(rng, *bv, n_k, d_v)
    mask = None
    if mask_kind == "bool":
        mask = rng.random((n_q, n_k)) < 0.7
    elif mask_kind == "add":
        mask = np.where(rng.random((n_q, n_k)) < 0.2, -np.inf, rng.standard_normal((n_q, n_k)))
    elif mask_kind == "row":            # one key mask per sequence, broadcast over the queries
        mask = rng.random((2, 1, 1, n_k)) < 0.6
        mask[..., 0] = True
    batch = np.broadcast_shapes(bq, bk, bv, () if mask is None else mask.shape[:-2])
    dO = rand(rng, *batch, n_q, d_v)
    return dO, Q, K, V, mask, causal


@pytest.mark.parametrize("name", sorted(CASES))
def test_sdpa_backward_matches_reference(name, isa):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    dO, Q, K, V, mask, causal = make_case(name, rng)
    got = scaled_dot_product_attention_backward(dO, Q, K, V, scale=0.4, mask=mask,
                                                is_causal=causal)
    want = ref_backward(dO, Q, K, V, 0.4, mask, causal)
    for g, w, x in zip(got, want, (Q, K, V)):
        assert g.dtype == np.float64 and g.shape == x.shape
        assert_close(g, w, 1e-12)


@pytest.mark.parametrize("name", ["plain", "bool-mask", "causal-tall", "shared-KV"])
def test_sdpa_backward_float32_within_tolerance_of_float64(name, isa):
    rng = np.random.default_rng(1)
    dO, Q, K, V, mask, causal = make_case(name, rng)
    want = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, is_causal=causal)
    f32 = [a.astype(np.float32) for a in (dO, Q, K, V)]
    got = scaled_dot_product_attention_backward(*f32, mask=mask, is_causal=causal)
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        assert_close(g, w, 2e-5)


def test_sdpa_backward_default_scale_and_finite_differences():
    rng = np.random.default_rng(2)
    Q, K, V = rand(rng, 2, 6, 3), rand(rng, 2, 9, 3), rand(rng, 2, 9, 2)
    mask = rng.random((6, 9)) < 0.8
    mask[:, 0] = True
    R = rand(rng, 2, 6, 2)                       # loss = sum(out * R), so dO = R

    def loss(Q, K, V):
        return float((scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=True) * R).sum())

    grads = scaled_dot_product_attention_backward(R, Q, K, V, mask=mask, is_causal=True)
    eps = 1e-6
    for which, g in enumerate(grads):
        args = [Q, K, V]
        for idx in np.ndindex(*args[which].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(fd - g[idx]) <= 1e-7 * max(1.0, abs(fd)), (which, idx, fd, g[idx])


def test_fully_masked_rows_give_zero_gradients(isa):
    rng = np.random.default_rng(3)
    Q, K, V, dO = rand(rng, 70, 4), rand(rng, 90, 4), rand(rng, 90, 3), rand(rng, 70, 3)
    mask = rng.random((70, 90)) < 0.5
    mask[[0, 5, 69]] = False                      # these queries see no key at all
    dQ, dK, dV = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask)
    assert np.all(dQ[[0, 5, 69]] == 0)
    # they contribute nothing to dK, dV: the same as dropping them
    keep = np.setdiff1d(np.arange(70), [0, 5, 69])
    _, dK2, dV2 = scaled_dot_product_attention_backward(dO[keep], Q[keep], K, V, mask=mask[keep])
    assert_close(dK, dK2, 1e-13)
    assert_close(dV, dV2, 1e-13)
    # a float mask of -inf is the same
    add = np.where(mask, 0.0, -np.inf)
    for g, h in zip(scaled_dot_product_attention_backward(dO, Q, K, V, mask=add), (dQ, dK, dV)):
        assert_close(g, h, 1e-13)
    # every key masked: everything is zero, never NaN
    for g in scaled_dot_product_attention_backward(dO, Q, K, V, mask=np.zeros((70, 90), bool)):
        assert np.all(g == 0)


def test_masked_key_with_nonfinite_value_contributes_nothing(isa):
    rng = np.random.default_rng(4)
    Q, K, V, dO = rand(rng, 8, 3), rand(rng, 6, 3), rand(rng, 6, 2), rand(rng, 8, 2)
    mask = np.ones((8, 6), bool)
    mask[:, 2] = False
    V_bad = V.copy()
    V_bad[2] = [np.nan, np.inf]
    clean = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask)
    bad = scaled_dot_product_attention_backward(dO, Q, K, V_bad, mask=mask)
    for g, h in zip(bad, clean):         # (the non-finite V runs on the reference tier)
        assert np.isfinite(g).all()
        assert_close(g, h, 1e-13)


def test_nan_score_row_gives_nan_like_the_forward(isa):
    rng = np.random.default_rng(5)
    Q, K, V, dO = rand(rng, 70, 3), rand(rng, 80, 3), rand(rng, 80, 2), rand(rng, 70, 2)
    Q[3, 1] = np.nan
    out = scaled_dot_product_attention(Q, K, V)
    assert np.isnan(out[3]).all() and np.isfinite(np.delete(out, 3, axis=0)).all()
    dQ, dK, dV = scaled_dot_product_attention_backward(dO, Q, K, V)
    assert np.isnan(dQ[3]).all()
    assert np.isfinite(np.delete(dQ, 3, axis=0)).all()
    assert np.isnan(dK).any() and np.isnan(dV).any()


@pytest.mark.c_backend
def test_tiers_agree_with_the_reference_tier():
    rng = np.random.default_rng(7)
    dO, Q, K, V, mask, causal = make_case("broadcast-batches", rng)
    before = selfattn.get_isa()
    try:
        selfattn.set_isa("reference")
        want = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, is_causal=causal)
        for name in ISAS:
            selfattn.set_isa(name)
            got = scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, is_causal=causal)
            for g, w in zip(got, want):
                assert_close(g, w, 1e-13)
    finally:
        selfattn.set_isa(before)


def test_inputs_are_not_modified_and_dtypes():
    rng = np.random.default_rng(8)
    args = [rand(rng, 4, 3) for _ in range(4)]
    copies = [a.copy() for a in args]
    scaled_dot_product_attention_backward(*args)
    for a, c in zip(args, copies):
        assert np.array_equal(a, c)
    grads = scaled_dot_product_attention_backward(*(a.astype(np.float16) for a in args))
    assert all(g.dtype == np.float16 for g in grads)
    grads = scaled_dot_product_attention_backward(*(np.ones((2, 2), int) for _ in range(4)))
    assert all(g.dtype == np.float64 for g in grads)


def test_empty_sizes():
    Q, K, V = np.zeros((0, 3)), np.ones((4, 3)), np.ones((4, 2))
    dQ, dK, dV = scaled_dot_product_attention_backward(np.zeros((0, 2)), Q, K, V)
    assert dQ.shape == (0, 3) and np.all(dK == 0) and np.all(dV == 0) and dV.shape == (4, 2)
    dQ, dK, dV = scaled_dot_product_attention_backward(np.ones((3, 2)), np.ones((3, 3)),
                                                       np.zeros((0, 3)), np.zeros((0, 2)))
    assert np.all(dQ == 0) and dQ.shape == (3, 3) and dK.shape == (0, 3)


# ---- the layers -------------------------------------------------------------------------------------

def layer_reference(dY, X, W_q, W_k, W_v, scale, mask=None, causal=False):
    X, W_q, W_k, W_v = (np.asarray(a, LD) for a in (X, W_q, W_k, W_v))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    dQ, dK, dV = ref_backward(dY, Q, K, V, scale, mask, causal, reduce=False)
    T = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    dX = dQ @ T(W_q) + dK @ T(W_k) + dV @ T(W_v)
    return (sum_to(dX, X.shape), sum_to(T(X) @ dQ, W_q.shape), sum_to(T(X) @ dK, W_k.shape),
            sum_to(T(X) @ dV, W_v.shape))


@pytest.mark.parametrize("shapes", [
    ((5, 4), (4, 3), (4, 3), (4, 2)),
    ((3, 70, 6), (6, 5), (6, 5), (6, 4)),                    # weights shared by the batch
    ((2, 3, 9, 4), (2, 1, 4, 4), (4, 4), (3, 4, 2)),         # weights broadcast along some axes
    ((9, 4), (2, 4, 3), (2, 4, 3), (4, 3)),                  # X shared by a batch of weights
])
def test_layer_backward_matches_reference(shapes, isa):
    rng = np.random.default_rng(9)
    X, W_q, W_k, W_v = (rand(rng, *s) for s in shapes)
    n = X.shape[-2]
    mask = rng.random((n, n)) < 0.8
    out = self_attention_layer(X, W_q, W_k, W_v, mask=mask, is_causal=True)
    dY = rand(rng, *out.shape)
    got = self_attention_layer_backward(dY, X, W_q, W_k, W_v, mask=mask, is_causal=True)
    want = layer_reference(dY, X, W_q, W_k, W_v, 1 / np.sqrt(W_q.shape[-1]), mask, True)
    for g, w, x in zip(got, want, (X, W_q, W_k, W_v)):
        assert g.shape == x.shape
        assert_close(g, w, 1e-12)


def test_layer_backward_finite_differences():
    rng = np.random.default_rng(10)
    X, W_q, W_k, W_v = rand(rng, 2, 5, 3), rand(rng, 3, 3), rand(rng, 3, 3), rand(rng, 3, 2)
    R = rand(rng, 2, 5, 2)
    mask = np.array([[0.0, -1.0, 0.5, 0.0, -np.inf]])          # additive, broadcast over rows

    def loss(*args):
        return float((self_attention_layer(*args, mask=mask) * R).sum())

    grads = self_attention_layer_backward(R, X, W_q, W_k, W_v, mask=mask)
    eps = 1e-6
    args = [X, W_q, W_k, W_v]
    for which, g in enumerate(grads):
        for idx in np.ndindex(*args[which].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(fd - g[idx]) <= 1e-7 * max(1.0, abs(fd)), (which, idx, fd, g[idx])


def test_multi_head_backward_finite_differences_and_reference(isa):
    rng = np.random.default_rng(11)
    H, d_model = 2, 4
    X = rand(rng, 2, 6, d_model)
    W_q, W_k = rand(rng, d_model, 6), rand(rng, d_model, 6)
    W_v, W_o = rand(rng, d_model, 4), rand(rng, 4, 3)
    mask = rng.random((2, 1, 6, 6)) < 0.8
    R = rand(rng, 2, 6, 3)
    kw = dict(num_heads=H, mask=mask, is_causal=True)

    def loss(*args):
        return float((multi_head_attention(*args, **kw) * R).sum())

    args = [X, W_q, W_k, W_v, W_o]
    grads = multi_head_attention_backward(R, *args, **kw)
    eps = 1e-6
    for which, g in enumerate(grads):
        assert g.shape == args[which].shape
        for idx in list(np.ndindex(*args[which].shape))[::3]:
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(fd - g[idx]) <= 1e-7 * max(1.0, abs(fd)), (which, idx, fd, g[idx])

    # the analytic reference, one head at a time
    Xl = np.asarray(X, LD)
    Q, K, V = Xl @ W_q, Xl @ W_k, Xl @ W_v
    heads = []
    for h in range(H):
        cols = slice(3 * h, 3 * h + 3)
        P = ref_weights(Q[..., cols], K[..., cols], 1 / np.sqrt(3), mask[:, 0], True)
        heads.append(P @ V[..., 2 * h: 2 * h + 2])
    Hcat = np.concatenate(heads, axis=-1)
    dH = np.asarray(R, LD) @ np.asarray(W_o, LD).T
    dQ, dK, dV = np.zeros_like(Q), np.zeros_like(K), np.zeros_like(V)
    for h in range(H):
        cols, vcols = slice(3 * h, 3 * h + 3), slice(2 * h, 2 * h + 2)
        dQ[..., cols], dK[..., cols], dV[..., vcols] = ref_backward(
            dH[..., vcols], Q[..., cols], K[..., cols], V[..., vcols], 1 / np.sqrt(3),
            mask[:, 0], True)
    want = (dQ @ np.asarray(W_q, LD).T + dK @ np.asarray(W_k, LD).T + dV @ np.asarray(W_v, LD).T,
            sum_to(np.swapaxes(Xl, -1, -2) @ dQ, W_q.shape),
            sum_to(np.swapaxes(Xl, -1, -2) @ dK, W_k.shape),
            sum_to(np.swapaxes(Xl, -1, -2) @ dV, W_v.shape),
            sum_to(np.swapaxes(Hcat, -1, -2) @ np.asarray(R, LD), W_o.shape))
    for g, w in zip(grads, want):
        assert_close(g, w, 1e-12)


def test_multi_head_backward_float32():
    # (its bits for every thread count: tests/test_thread_count.py)
    rng = np.random.default_rng(12)
    X = rand(rng, 2, 150, 32)
    Ws = [rand(rng, 32, 32) / 6 for _ in range(4)]
    dY = rand(rng, 2, 150, 32)
    want = multi_head_attention_backward(dY, X, *Ws, num_heads=4, is_causal=True)
    f32 = [a.astype(np.float32) for a in [dY, X] + Ws]
    for g, w in zip(multi_head_attention_backward(*f32, num_heads=4, is_causal=True), want):
        assert g.dtype == np.float32
        assert_close(g, w, 1e-4)


# ---- bad inputs -----------------------------------------------------------------------------------

def test_wrong_gradient_shape_is_a_clear_error():
    Q, K, V = np.ones((4, 3)), np.ones((5, 3)), np.ones((5, 2))
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention_backward: dO must have "
                                         r"the shape of the forward output, \(4, 2\), got "
                                         r"dO.shape=\(4, 3\)"):
        scaled_dot_product_attention_backward(np.ones((4, 3)), Q, K, V)
    with pytest.raises(ValueError, match=r"dO.shape=\(1, 4, 2\)"):
        scaled_dot_product_attention_backward(np.ones((1, 4, 2)), Q, K, V)
    X, W = np.ones((2, 4, 3)), np.ones((3, 3))
    with pytest.raises(ValueError, match=r"self_attention_layer_backward: dY must have the shape "
                                         r"of the forward output, \(2, 4, 3\), got dY.shape=\(4, 3\)"):
        self_attention_layer_backward(np.ones((4, 3)), X, W, W, W)
    with pytest.raises(ValueError, match=r"multi_head_attention_backward: dY .*\(2, 4, 3\).*"
                                         r"dY.shape=\(2, 4, 2\)"):
        multi_head_attention_backward(np.ones((2, 4, 2)), X, W, W, W, W, num_heads=3)
    with pytest.raises(ValueError, match=r"dO must have at least 2 dimensions"):
        scaled_dot_product_attention_backward(np.ones(2), Q, K, V)


def test_bad_inputs_name_the_function():
    Q, K, V = np.ones((4, 3)), np.ones((5, 2)), np.ones((5, 2))
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention_backward: Q has d_k=3"):
        scaled_dot_product_attention_backward(np.ones((4, 2)), Q, K, V)
    with pytest.raises(TypeError, match=r"scaled_dot_product_attention_backward: .*integer dtype"):
        scaled_dot_product_attention_backward(np.ones((4, 2)), K[:4], K, V, mask=np.ones((4, 5), int))
    X, W = np.ones((4, 6)), np.ones((6, 6))
    with pytest.raises(ValueError, match=r"multi_head_attention_backward: W_q has width 6 .* "
                                         r"num_heads=4 does not divide"):
        multi_head_attention_backward(np.ones((4, 6)), X, W, W, W, W, num_heads=4)
    with pytest.raises(ValueError, match=r"self_attention_layer_backward: X has d_model=6 .* "
                                         r"W_k has 5 rows"):
        self_attention_layer_backward(np.ones((4, 6)), X, W, np.ones((5, 6)), W)


def test_any_layout_gives_the_same_gradients_and_inputs_stay_untouched():
    rng = np.random.default_rng(13)
    X = rand(rng, 2, 7, 6)
    Ws = [rand(rng, 6, 6) / 2 for _ in range(4)]
    dY = rand(rng, 2, 7, 6)
    mask = rng.random((7, 7)) < 0.8
    want_layer = self_attention_layer_backward(dY, X, *Ws[:3], mask=mask)
    want_mh = multi_head_attention_backward(dY, X, *Ws, num_heads=3, mask=mask)
    # Fortran order, negative steps, read-only views, lists
    odd = [np.asfortranarray(dY), X[:, ::-1][:, ::-1], np.asfortranarray(Ws[0])] + \
        [W[::-1][::-1] for W in Ws[1:]]
    for a in odd:
        a.flags.writeable = False
    copies = [a.copy() for a in odd]
    got_layer = self_attention_layer_backward(odd[0], odd[1], *odd[2:5], mask=mask.T.T)
    got_mh = multi_head_attention_backward(odd[0].tolist(), *odd[1:], num_heads=3,
                                           mask=np.asfortranarray(mask))
    for g, w in zip(got_layer + got_mh, want_layer + want_mh):
        assert_close(g, w, 1e-14)
    for a, c in zip(odd, copies):
        assert np.array_equal(a, c)


@settings(deadline=None)
@given(n_q=st.integers(0, 100), n_k=st.integers(0, 100), d_k=st.integers(0, 5),
       d_v=st.integers(0, 4), causal=st.booleans(), masked=st.sampled_from([None, "bool", "add"]),
       seed=st.integers(0, 2**32 - 1))
def test_random_shapes_match_the_reference(n_q, n_k, d_k, d_v, causal, masked, seed):
    rng = np.random.default_rng(seed)
    Q, K, V, dO = rand(rng, n_q, d_k), rand(rng, n_k, d_k), rand(rng, n_k, d_v), rand(rng, n_q, d_v)
    mask = None
    if masked == "bool":
        mask = rng.random((n_q, n_k)) < 0.6
    elif masked == "add":
        mask = np.where(rng.random((n_q, n_k)) < 0.3, -np.inf, rng.standard_normal((n_q, n_k)))
    want = ref_backward(dO, Q, K, V, 0.7, mask, causal)
    before = selfattn.get_isa()
    try:
        for name in ISAS:
            selfattn.set_isa(name)
            got = scaled_dot_product_attention_backward(dO, Q, K, V, scale=0.7, mask=mask,
                                                        is_causal=causal)
            for g, w in zip(got, want):
                assert_close(g, w, 1e-12)
    finally:
        selfattn.set_isa(before)


def test_memory_stays_linear_in_the_sequence_length(threads):
    """The (n, n) weights are never stored: peak scratch is far below n^2 floats (the fused
    backward's panels and its partial sums grow like n * d). Past the budgets (very long
    sequences) the blocked backward is tested in test_backward_fast.py."""
    import tracemalloc

    rng = np.random.default_rng(14)
    n, d = 4096, 8
    Q, K, V, dO = (rand(rng, n, d).astype(np.float32) for _ in range(4))
    selfattn.set_num_threads(2)
    tracemalloc.start()
    try:
        scaled_dot_product_attention_backward(dO, Q, K, V, is_causal=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outputs = 3 * n * d * 4
    assert peak - outputs < n * n * 4 // 4, peak


def test_multi_head_backward_with_batched_weights_is_the_sum_over_items(isa):
    rng = np.random.default_rng(15)
    B, H, n, d = 3, 2, 9, 6
    X = rand(rng, B, n, d)
    W_q, W_k, W_v = (rand(rng, d, H * 3) / 2 for _ in range(3))
    W_o = rand(rng, B, H * 3, 5) / 2                      # one output projection per item
    mask = np.where(rng.random((B, H, n, n)) < 0.2, -np.inf, rand(rng, B, H, n, n))
    dY = rand(rng, B, n, 5)
    got = multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=H, mask=mask)
    per_item = [multi_head_attention_backward(dY[b], X[b], W_q, W_k, W_v, W_o[b], num_heads=H,
                                              mask=mask[b]) for b in range(B)]
    assert_close(got[0], np.stack([g[0] for g in per_item]), 1e-13)
    for k in (1, 2, 3):                                   # shared weights: summed over the items
        assert_close(got[k], sum(g[k] for g in per_item), 1e-13)
    assert_close(got[4], np.stack([g[4] for g in per_item]), 1e-13)
