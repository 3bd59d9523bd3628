"""Logit soft-capping (softcap=, issue 10): scores become softcap * tanh(scores / softcap) before
the mask, bias and band, forward and backward, on every tier, against the long-double oracle
(tests/attn_reference.py) and central finite differences; the fast tiers' vectorised tanh against
np.longdouble; the same bits for every thread count; the argument's validation."""
import numpy as np
import pytest

import selfattn
from selfattn import (
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    self_attention_layer,
    self_attention_layer_backward,
)
from selfattn import _core, _numpy_core

from attn_reference import (
    LD,
    assert_close,
    numeric_grad,
    ref_attention,
    ref_attention_grads,
    ref_layer,
)

# the backward's own tolerance: dS = P (dP - D) loses a few digits to cancellation, as in
# test_gradients.py
GRAD_RTOL = {np.float64: 1e-10, np.float32: 2e-4}
SUPPORTED = list(_core.supported_isas())


def sum_to(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    return g


def operands(rng, dtype=np.float64, batch=(2,), n_q=37, n_k=29, d_k=8, d_v=5, spread=3.0):
    """Q, K, V with scores spread over several softcaps (so tanh is far from linear)."""
    Q = rng.standard_normal(batch + (n_q, d_k)) * spread
    K = rng.standard_normal(batch + (n_k, d_k)) * spread
    V = rng.standard_normal(batch + (n_k, d_v))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


# ---- the fast tiers' tanh ----------------------------------------------------------------------

@pytest.mark.c_backend
@pytest.mark.parametrize("tier", SUPPORTED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_tanh_within_a_few_ulp(tier, dtype):
    """Measured <= 2.04 ulp on every tier (the reference's libm tanh included): assert 2.5, over
    both branches (below and above |x| = 1/2), their seam, tiny and saturated arguments."""
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(-1, 1, 200_001), rng.standard_normal(200_000) * 6,
                        np.geomspace(1e-30, 45, 50_000), np.nextafter(0.5, [0, 1]),
                        -np.geomspace(1e-30, 45, 50_000)]).astype(dtype)
    out = np.empty_like(x)
    _core.vexp(out, x, _core.isa_code(tier), 4)
    exact = np.tanh(x.astype(LD))
    ulp = np.abs(out.astype(LD) - exact) / np.spacing(np.abs(exact).astype(dtype)).astype(LD)
    assert float(ulp.max()) <= 2.5
    # odd, bit for bit
    neg = np.empty_like(x)
    _core.vexp(neg, -x, _core.isa_code(tier), 4)
    np.testing.assert_array_equal(neg, -out)


@pytest.mark.c_backend
@pytest.mark.parametrize("tier", SUPPORTED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_tanh_edges(tier, dtype):
    big = np.finfo(dtype).max
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, big, -big, 1e4, -1e4], dtype)
    out = np.empty_like(x)
    _core.vexp(out, x, _core.isa_code(tier), 4)
    np.testing.assert_array_equal(out, np.array([0, -0.0, 1, -1, np.nan, 1, -1, 1, -1], dtype))
    assert np.signbit(out[1]) and not np.signbit(out[0])


# ---- forward -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weights", [False, True], ids=["fused", "with-weights"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_oracle(isa, rng, dtype, weights, causal):
    Q, K, V = operands(rng, dtype, n_q=29)
    got = scaled_dot_product_attention(Q, K, V, softcap=1.5, is_causal=causal,
                                       return_weights=weights)
    want_out, want_w = ref_attention(Q, K, V, is_causal=causal, softcap=1.5)
    if weights:
        assert_close(got[1], want_w)
        got = got[0]
    assert_close(got, want_out)
    # the cap changes the answer (a test of something): without it the output differs
    plain = scaled_dot_product_attention(Q, K, V, is_causal=causal)
    assert np.abs(plain - got).max() > 1e-2


def test_cap_bounds_the_scores(isa):
    """Every capped score lies within (-softcap, softcap): identical keys whose raw scores differ
    by 1e6 get weights within a factor e^(2 softcap) of each other."""
    Q = np.array([[1.0, 0.0]])
    K = np.array([[1e6, 0.0], [-1e6, 0.0]])
    V = np.array([[1.0], [0.0]])
    out, w = scaled_dot_product_attention(Q, K, V, scale=1.0, softcap=2.0, return_weights=True)
    np.testing.assert_allclose(w[0, 0] / w[0, 1], np.exp(4.0), rtol=1e-12)
    np.testing.assert_allclose(out[0, 0], w[0, 0], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_huge_scores_natural_units(isa, dtype):
    """Scores near the float range (the fused kernel's natural units) are capped exactly too."""
    rng = np.random.default_rng(3)
    Q, K, V = operands(rng, dtype, spread=1.0)
    Q = Q * dtype(1e18 if dtype == np.float32 else 1e150)
    got = scaled_dot_product_attention(Q, K, V, scale=1.0, softcap=4.0)
    assert np.isfinite(got).all()
    assert_close(got, ref_attention(Q, K, V, scale=1.0, softcap=4.0)[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_caps_near_the_largest_value(isa, dtype):
    """A cap near the dtype's largest value, or beyond float32's in a float32 call, is a cap like
    any other: the fast tiers held it times log2 e, which overflowed past about 2.4e38 in float32
    (1.2e308 in float64) and gave NaN."""
    rng = np.random.default_rng(4)
    big = float(np.finfo(dtype).max)
    # about the boundary: the largest value over log2 e as the kernels hold log2 e, and its
    # neighbours (the rule's first form missed the float64 one exactly there)
    edge = big / float(dtype(1.4426950408889634))
    caps = [big, big * 0.69, big * 0.71, big / 4, edge, np.nextafter(edge, 0),
            np.nextafter(edge, np.inf)]
    if dtype == np.float32:
        caps += [1e39, 1e300]
    for spread in (1.0, 0.03):
        Q, K, V = operands(rng, dtype, spread=spread)
        dO = rng.standard_normal(V.shape[:-2] + (Q.shape[-2], V.shape[-1])).astype(dtype)
        for cap in caps:
            out, w = scaled_dot_product_attention(Q, K, V, softcap=cap, return_weights=True)
            want_out, want_w = ref_attention(Q, K, V, softcap=cap)
            assert np.isfinite(out).all(), (cap, spread)
            assert_close(out, want_out)
            assert_close(w, want_w)
            fused = scaled_dot_product_attention(Q, K, V, softcap=cap)
            assert_close(fused, want_out)
            got = scaled_dot_product_attention_backward(dO, Q, K, V, softcap=cap)
            for g, want in zip(got, ref_attention_grads(dO, Q, K, V, softcap=cap)):
                assert_close(g, want, rtol=GRAD_RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_caps_below_float32s_normal_range(isa, dtype):
    """A cap too small for a float32 normal number is a cap too: the fast tiers held it as a
    float32, which rounded caps below about 7e-46 to 0, no cap (the call ran uncapped, silently),
    and kept few bits of a subnormal one. Every capped score is about 0: the weights uniform."""
    rng = np.random.default_rng(5)
    tiny = float(np.finfo(np.float32).tiny)
    caps = [1e-300, 1e-46, 1e-45, 1e-40, tiny / 2, np.nextafter(tiny, 0), tiny,
            np.nextafter(tiny, 1)]
    Q, K, V = operands(rng, dtype)
    dO = rng.standard_normal(V.shape[:-2] + (Q.shape[-2], V.shape[-1])).astype(dtype)
    for cap in caps:
        out, w = scaled_dot_product_attention(Q, K, V, softcap=cap, return_weights=True)
        want_out, want_w = ref_attention(Q, K, V, softcap=cap)
        assert_close(out, want_out)
        assert_close(w, want_w)
        np.testing.assert_allclose(w, 1 / K.shape[-2], rtol=1e-3)
        assert_close(scaled_dot_product_attention(Q, K, V, softcap=cap), want_out)
        got = scaled_dot_product_attention_backward(dO, Q, K, V, softcap=cap)
        for g, want in zip(got, ref_attention_grads(dO, Q, K, V, softcap=cap)):
            assert_close(g, want, rtol=GRAD_RTOL.get(dtype))


def test_masks_apply_after_the_cap(isa, rng):
    """-inf masks stay -inf (weight exactly 0, even next to inf in V), a fully masked row gives 0,
    a float mask and a bias are added to the capped scores (not capped themselves)."""
    Q, K, V = operands(rng, n_q=12, n_k=12)
    bool_mask = rng.random((2, 12, 12)) < 0.6
    bool_mask[:, 3] = False                                      # a fully masked row
    bool_mask[:, :, 7] = False                                   # a key nobody sees ...
    V = V.copy()
    V[:, 7, 0] = np.inf                                          # ... holding inf
    float_mask = np.where(bool_mask, rng.standard_normal((2, 12, 12)) * 5, -np.inf)
    # a bias beside a boolean mask applies where the mask allows: float_mask, as the oracle sees it
    for kw, merged in (({"mask": bool_mask}, bool_mask), ({"mask": float_mask}, float_mask),
                       ({"mask": bool_mask, "bias": float_mask}, float_mask)):
        out, w = scaled_dot_product_attention(Q, K, V, softcap=0.75, return_weights=True, **kw)
        fused = scaled_dot_product_attention(Q, K, V, softcap=0.75, **kw)
        want_out, want_w = ref_attention(Q, K, V, mask=merged, softcap=0.75)
        assert (w[~bool_mask] == 0).all()
        assert (out[:, 3] == 0).all() and (fused[:, 3] == 0).all()
        assert_close(w, want_w)
        assert_close(fused, want_out)
        assert_close(out, want_out)


def test_positive_infinite_score_is_capped(isa):
    """A score of +inf (an inf in Q) is capped to softcap, so its row's weights stay finite; the
    same call without a cap gives NaN (the overflow policy), so the cap acts before the softmax."""
    Q = np.array([[np.inf, 0.0]])
    K = np.array([[1.0, 0.0], [0.0, 1.0]])
    V = np.array([[1.0], [2.0]])
    out, w = scaled_dot_product_attention(Q, K, V, scale=1.0, softcap=1.0, return_weights=True)
    # the second score is inf * 0 = NaN: a NaN row, as without a cap
    assert np.isnan(w).all() and np.isnan(out).all()
    K = np.array([[1.0, 0.0], [1.0, 0.0]])
    out, w = scaled_dot_product_attention(Q, K, V, scale=1.0, softcap=1.0, return_weights=True)
    np.testing.assert_array_equal(w, [[0.5, 0.5]])


def test_layer_and_multi_head_forward(isa, rng):
    X = rng.standard_normal((2, 9, 6)) * 2
    W_q, W_k, W_v = rng.standard_normal((3, 6, 8))
    W_o = rng.standard_normal((8, 3))
    got = self_attention_layer(X, W_q, W_k, W_v, softcap=1.0, is_causal=True)
    assert_close(got, ref_layer(X, W_q, W_k, W_v, is_causal=True, softcap=1.0)[0])
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        heads.append(scaled_dot_product_attention(X @ W_q[:, cols], X @ W_k[:, cols],
                                                  X @ W_v[:, cols], softcap=1.0))
    want = np.concatenate(heads, axis=-1) @ W_o
    np.testing.assert_allclose(multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2,
                                                    softcap=1.0), want, rtol=1e-12, atol=1e-13)


# ---- backward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("masking", ["none", "causal", "bool", "float"])
def test_backward_matches_oracle(isa, rng, dtype, masking):
    Q, K, V = operands(rng, dtype, n_q=29)
    dO = rng.standard_normal((2, 29, 5)).astype(dtype)
    kw = {}
    if masking == "causal":
        kw["is_causal"] = True
    elif masking == "bool":
        kw["mask"] = rng.random((29, 29)) < 0.7
        kw["mask"][4] = False
    elif masking == "float":
        kw["mask"] = np.where(rng.random((29, 29)) < 0.7, rng.standard_normal((29, 29)), -np.inf)
    got = scaled_dot_product_attention_backward(dO, Q, K, V, softcap=1.5, **kw)
    want = ref_attention_grads(dO, Q, K, V, softcap=1.5, **kw)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=GRAD_RTOL[dtype])


def test_backward_against_finite_differences(isa, rng):
    """The package's own forward, differentiated numerically (float64, central differences)."""
    Q, K, V = operands(rng, n_q=6, n_k=7, d_k=3, d_v=2, batch=())
    dO = rng.standard_normal((6, 2))
    mask = rng.random((6, 7)) < 0.8
    kw = dict(softcap=0.8, mask=mask)
    grads = scaled_dot_product_attention_backward(dO, Q, K, V, **kw)
    for X, g in zip((Q, K, V), grads):
        fd = numeric_grad(lambda: (scaled_dot_product_attention(Q, K, V, **kw) * dO).sum(), X)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_backward_saturated_scores_slope(isa):
    """Far past the cap, the slope 1 - tanh^2 is tiny but must keep its relative accuracy (no
    1 - t^2 cancellation): dQ against the oracle, normwise on the gradient itself."""
    Q = np.array([[30.0, 0.0], [-0.5, 0.2]])
    K = np.array([[1.0, 0.3], [0.5, -1.0], [-1.0, 0.0]])
    V = np.array([[1.0], [2.0], [-1.0]])
    dO = np.ones((2, 1))
    got = scaled_dot_product_attention_backward(dO, Q, K, V, scale=1.0, softcap=2.0)
    want = ref_attention_grads(dO, Q, K, V, scale=1.0, softcap=2.0)
    np.testing.assert_allclose(got[0][0], np.asarray(want[0][0], np.float64), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_infinite_key_or_query_whose_capped_score_saturates_adds_nothing(isa, dtype):
    """Key 0's K row holds inf: query 0's score with it is +inf, capped to the cap, so its weight
    is finite, and its slope 1 - tanh^2 is 0 (as for a score past about 355 caps). A dS of
    0 then takes nothing from the inf in K (dQ) or in Q (dK), as a weight of 0 takes nothing
    from V: the gradient is that of a key so large that its score saturates, whose limit is 0
    (the slope falls faster than K grows), where 0 * inf is NaN. The reference tier (such a
    call's) made query 0's dQ NaN in column 0, and dK NaN where Q held inf."""
    big = {np.float64: 1e300, np.float32: 1e30}[dtype]
    Q = np.array([[1.0, 0.5], [-0.5, 0.2], [0.3, 1.0]], dtype)
    K = np.array([[np.inf, 0.0], [0.5, -1.0], [-1.0, 0.0]], dtype)
    V = np.array([[1.0, 0.0], [2.0, 1.0], [-1.0, 3.0]], dtype)
    dO = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 1.0]], dtype)
    kw = {"scale": 1.0, "softcap": 2.0}
    # (want runs on the fast tiers, whose dS = P (dP - D) cancels to 3e-8 where it is 0 here)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-6}
    # query 0 sees key 0 (capped to 2, slope 0); queries 1 and 2 see -inf (weight 0)
    got = scaled_dot_product_attention_backward(dO, Q, K, V, **kw)
    K_big = np.where(np.isinf(K), big, K)
    want = scaled_dot_product_attention_backward(dO, Q, K_big, V, **kw)
    assert np.isfinite(got[0]).all()
    np.testing.assert_allclose(got[0], want[0], **tol)
    np.testing.assert_allclose(got[2], want[2], **tol)
    # dK: Q's row 0 holds inf, every score of that row saturates (K's column 0 > 0 here)
    K = np.abs(K_big[[1, 2, 1]]) + 0.5
    Q_inf = Q.copy()
    Q_inf[0, 0] = np.inf
    got = scaled_dot_product_attention_backward(dO, Q_inf, K, V, **kw)
    want = scaled_dot_product_attention_backward(dO, np.where(np.isinf(Q_inf), big, Q_inf), K, V,
                                                 **kw)
    assert np.isfinite(got[1]).all() and (got[0][0] == 0).all()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


def test_a_hidden_key_whose_raw_score_is_nan_adds_nothing(isa):
    """Causal: query 0 sees key 0 only; key 1's K row holds NaN (its raw score and slope are NaN)
    and key 2's inf, both hidden. A hidden key's weight is 0 and takes nothing, with a cap too:
    the NumPy backend multiplied the hidden keys' dS of 0 by their NaN slope, so query 0's dQ
    was NaN. Query 0's -inf saturates its visible score: its dS of 0 takes nothing from that
    -inf either (the C tiers' dK of key 0 was 0 * -inf = NaN)."""
    Q = np.array([[0.2, -1.5, -np.inf]])
    K = np.array([[-0.1, -1.9, 2.4], [np.nan, 0.5, -0.5], [1.4, np.inf, 1.5]])
    V = np.array([[2.2, 0.7], [0.1, 0.9], [0.7, 0.7]])
    dO = np.array([[0.9, -0.4]])
    dQ, dK, dV = scaled_dot_product_attention_backward(dO, Q, K, V, softcap=50.0, is_causal=True)
    # one visible key: weight 1, dS = 1 * (dP - D) = 0 for it, so no gradient reaches Q or K
    np.testing.assert_array_equal(dQ, np.zeros_like(dQ))
    np.testing.assert_array_equal(dK, np.zeros_like(dK))
    np.testing.assert_array_equal(dV, [dO[0], [0, 0], [0, 0]])


def test_layer_and_multi_head_backward(isa, rng):
    """Each backward is the derivative of its forward (central finite differences)."""
    X = rng.standard_normal((5, 4)) * 2
    W_q, W_k, W_v = rng.standard_normal((3, 4, 4))
    W_o = rng.standard_normal((4, 3))
    dY1, dY2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer = self_attention_layer_backward(dY1, X, W_q, W_k, W_v, softcap=0.9, is_causal=True)
    mha = multi_head_attention_backward(dY2, X, W_q, W_k, W_v, W_o, num_heads=2, softcap=0.9)
    for A, g_layer, g_mha in ((X, layer[0], mha[0]), (W_q, layer[1], mha[1]),
                              (W_k, layer[2], mha[2])):
        fd_layer = numeric_grad(lambda: (self_attention_layer(
            X, W_q, W_k, W_v, softcap=0.9, is_causal=True) * dY1).sum(), A)
        fd_mha = numeric_grad(lambda: (multi_head_attention(
            X, W_q, W_k, W_v, W_o, num_heads=2, softcap=0.9) * dY2).sum(), A)
        np.testing.assert_allclose(g_layer, fd_layer, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(g_mha, fd_mha, rtol=1e-6, atol=1e-8)


# ---- determinism, backends ----------------------------------------------------------------

@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_bits_for_every_thread_count(isa, dtype, threads):
    rng = np.random.default_rng(11)
    Q, K, V = operands(rng, dtype, batch=(3,), n_q=150, n_k=140, d_k=16, d_v=16)
    dO = rng.standard_normal((3, 150, 16)).astype(dtype)
    results = []
    for n in (1, 2, 3):
        selfattn.set_num_threads(n)
        results.append((scaled_dot_product_attention(Q, K, V, softcap=2.0, is_causal=True),
                        *scaled_dot_product_attention_backward(dO, Q, K, V, softcap=2.0,
                                                               is_causal=True)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.c_backend
def test_numpy_backend_takes_softcap(rng):
    """selfattn/_numpy_core.py mirrors the C entry points' softcap argument."""
    Q, K, V = operands(rng, n_q=20, n_k=20)
    dO = rng.standard_normal((2, 20, 5))
    band = (-20, 0)
    out_c, out_np = np.empty((2, 20, 5)), np.empty((2, 20, 5))
    _core.attention(out_c, None, Q, K, V, None, 0.5, band, -1, None, 1.25)
    _numpy_core.attention(out_np, None, Q, K, V, None, 0.5, band, -1, None, 1.25)
    np.testing.assert_allclose(out_np, out_c, rtol=1e-13, atol=1e-15)
    grads = [[np.empty_like(a) for a in (Q, K, V)] for _ in range(2)]
    for core, g in zip((_core, _numpy_core), grads):
        core.attention_backward(*g, dO, Q, K, V, None, 0.5, band, -1, 1.25)
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


# ---- the argument --------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1.0, ValueError), (np.nan, ValueError),
                                        (np.inf, ValueError), (10 ** 400, ValueError),
                                        (True, TypeError), ("2", TypeError), ([2.0], TypeError)])
def test_invalid_softcap(bad, error):
    Q = np.ones((2, 2))
    X, W = np.ones((3, 2)), np.eye(2)
    with pytest.raises(error, match="softcap"):
        scaled_dot_product_attention(Q, Q, Q, softcap=bad)
    with pytest.raises(error, match="softcap"):
        scaled_dot_product_attention_backward(Q, Q, Q, Q, softcap=bad)
    with pytest.raises(error, match="softcap"):
        self_attention_layer(X, W, W, W, softcap=bad)
    with pytest.raises(error, match="softcap"):
        multi_head_attention(X, W, W, W, W, num_heads=1, softcap=bad)


def test_none_and_numbers(rng):
    """None is no cap (the same bits as leaving it out); ints, NumPy scalars and 0-d arrays are
    accepted; a cap far above every score changes the result by rounding only."""
    Q, K, V = operands(rng, n_q=10, n_k=10)
    plain = scaled_dot_product_attention(Q, K, V)
    np.testing.assert_array_equal(scaled_dot_product_attention(Q, K, V, softcap=None), plain)
    capped = scaled_dot_product_attention(Q, K, V, softcap=2)
    for same in (np.float32(2), np.int64(2), np.array(2.0)):
        np.testing.assert_array_equal(scaled_dot_product_attention(Q, K, V, softcap=same), capped)
    np.testing.assert_allclose(scaled_dot_product_attention(Q, K, V, softcap=1e12), plain,
                               rtol=1e-9)
