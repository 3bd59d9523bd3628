"""Scores at the ends of the floating-point range, on every tier (issue 9, defects A and B).

A. Finite scores above ln 2 x the largest float (float32 from ~2.4e38, float64 from ~1.3e308) are
   attended exactly, by the fused kernels too, forward and backward: they may not scale the
   scores by log2(e) where that would overflow.
B. A score is scale * (q . k). Where that is +-inf or NaN although q and k are finite (the dot
   product, or its scaling, overflowed), the score is NaN, never a mask: its row's weights,
   output and gradients are NaN on every tier, whatever the CPU's FMA made of the overflow
   (fused, a -inf product plus a +inf product stays -inf; unfused it is NaN).
The expected values come from the long-double oracle of test_gradients.py, which computes the
scores without overflow.
"""
import numpy as np
import pytest

from selfattn import compute_self_attention_scores as scores
from selfattn import scaled_dot_product_attention as sdpa
from selfattn import scaled_dot_product_attention_backward as sdpa_backward
from test_gradients import assert_close, ref_backward, ref_weights

TOL = {np.float32: 1e-5, np.float64: 1e-12}
# c * 3c is finite but times log2(e) it is not: 3e38 (float32, max 3.4e38), 3e308 / 2 (float64)
BIG = {np.float32: 1e19, np.float64: 1e154}


def huge_case(dtype, tie=True):
    """Scores near the largest float: gaps of ~1e37 (weights exactly 0), both signs, and with
    `tie` two equal largest scores in rows 0 and 1 (else one weight of 1 per row)."""
    c = BIG[dtype]
    Q = np.array([[c, 0], [1, 0], [-c, 0], [c, c * 1e-3]], dtype)
    K = np.array([[3 * c, 0], [2.9 * c, 1], [-3 * c, 0], [3 * c if tie else 2.8 * c, -1]], dtype)
    if dtype == np.float64:
        K[:, 0] /= 2                    # 1.5e308: finite, above ln 2 x 1.8e308
    rng = np.random.default_rng(1)
    V = rng.standard_normal((4, 3)).astype(dtype)
    dO = rng.standard_normal((4, 3)).astype(dtype)
    return dO, Q, K, V


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_finite_scores_are_attended_exactly(dtype, isa):
    dO, Q, K, V = huge_case(dtype)
    want = ref_weights(Q, K, 1.0) @ np.asarray(V, np.longdouble)
    assert_close(sdpa(Q, K, V, scale=1.0), want, TOL[dtype])                     # fused
    assert_close(sdpa(Q, K, V, scale=1.0, return_weights=True)[0], want, TOL[dtype])
    for mask in (np.ones((4, 4), bool), np.zeros((4, 4), dtype)):                # masked paths
        assert_close(sdpa(Q, K, V, scale=1.0, mask=mask), want, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q", [1, 4, 64])
def test_a_scale_near_the_largest_float_with_small_scores(dtype, n_q, isa):
    """scale log2(e) overflows (float32 scale 3e38) though every score is small (|Q K^T| << 1):
    the fast tiers took log2 units from the scores alone, and scale log2(e), rounded to inf,
    times 0 made every weight, output, lse and gradient NaN."""
    big = {np.float32: 3e38, np.float64: 1.5e308}[dtype]
    rng = np.random.default_rng(3)
    Q = np.zeros((n_q, 2), dtype)
    Q[:, 0] = 1e-3
    K = np.array([[1, 0], [0, 1], [0.5, 0]], dtype)
    V, dO = rng.standard_normal((3, 2)).astype(dtype), rng.standard_normal((n_q, 2)).astype(dtype)
    want = ref_weights(Q, K, big) @ np.asarray(V, np.longdouble)
    out, lse = sdpa(Q, K, V, scale=big, return_lse=True)
    assert_close(out, want, TOL[dtype])
    assert_close(sdpa(Q[None], K[None], V[None], scale=big)[0], want, TOL[dtype])
    np.testing.assert_allclose(lse, float(big) * 1e-3, rtol=TOL[dtype])
    for got, ref in zip(sdpa_backward(dO, Q, K, V, scale=big), ref_backward(dO, Q, K, V, big)):
        assert_close(got, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keys_made_huge_in_place_between_calls(dtype, isa):
    """The same key array, at the same address, first ordinary and then overwritten with keys
    whose scores pass the float range times log2(e): the second call must pick its units from
    the new keys (the fused kernel remembers a worker's last scan of keys within a call only)."""
    dO, Q, K, V = huge_case(dtype)
    keys = np.ones_like(K)
    first = sdpa(Q, keys, V, scale=1.0)
    assert_close(first, ref_weights(Q, keys, 1.0) @ np.asarray(V, np.longdouble), TOL[dtype])
    keys[...] = K
    want = ref_weights(Q, K, 1.0) @ np.asarray(V, np.longdouble)
    assert_close(sdpa(Q, keys, V, scale=1.0), want, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_finite_scores_give_exact_gradients(dtype, isa):
    """One weight of 1 per row (the rest e^-1e37 = 0): dS = 0, so dQ = dK = 0 and dV = P^T dO.
    (With ties, dQ = dS K cancels terms of 3e38: too ill-conditioned to check.)"""
    dO, Q, K, V = huge_case(dtype, tie=False)
    for mask in (None, np.ones((4, 4), bool)):
        dQ, dK, dV = sdpa_backward(dO, Q, K, V, scale=1.0, mask=mask)
        assert np.all(dQ == 0) and np.all(dK == 0)
        assert_close(dV, ref_backward(dO, Q, K, V, 1.0)[2], TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_huge_negative_scores_share_the_weight(dtype, isa):
    """Every score -3e38 (or -1.5e308): uniform weights, not "every key masked"."""
    c = BIG[dtype]
    Q = np.array([[c]], dtype)
    K = np.full((2, 1), -3 * c if dtype == np.float32 else -1.5 * c, dtype)
    V = np.array([[1.0, 2.0], [3.0, 6.0]], dtype)
    assert np.array_equal(sdpa(Q, K, V, scale=1.0), np.array([[2.0, 4.0]], dtype))
    # dP = (3, 9), D = 6, dS = (-1.5, 1.5): dQ = dS K = 0, dK = dS^T Q
    dQ, dK, dV = sdpa_backward(np.ones((1, 2), dtype), Q, K, V, scale=1.0)
    assert np.array_equal(dV, np.full((2, 2), 0.5, dtype))
    assert abs(dQ[0, 0]) <= TOL[dtype] * 4.5 * c        # 0, up to the cancellation of 4.5 c
    assert_close(dK, np.array([[-1.5], [1.5]]) * c, TOL[dtype])


def overflow_case(dtype, both_signs):
    """Row 0 of Q against key 0: every product overflows; with both signs (the issue's case;
    the exact dot product, -2 big^2, overflows too) or all negative (-inf everywhere)."""
    big = 1e200 if dtype == np.float64 else 1e30
    Q = np.full((3, 8), big, dtype)
    Q[1:] = np.random.default_rng(2).standard_normal((2, 8))
    K = np.random.default_rng(3).standard_normal((5, 8)).astype(dtype)
    K[0] = -big
    if both_signs:
        K[0, 1::2] = big / 2
    V = np.random.default_rng(4).standard_normal((5, 3)).astype(dtype)
    dO = np.random.default_rng(5).standard_normal((3, 3)).astype(dtype)
    return dO, Q, K, V


@pytest.mark.parametrize("both_signs", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_overflowed_dot_product_is_nan_not_a_mask(dtype, both_signs, isa):
    dO, Q, K, V = overflow_case(dtype, both_signs)
    S = scores(Q, K)
    assert np.isnan(S[0, 0]) and np.isfinite(np.delete(S.ravel(), 0)).all()
    # rows 1 and 2 are finite and Q row 0 against key 0 is NaN; row 0 is NaN however computed
    for out in (sdpa(Q, K, V), sdpa(Q, K, V, return_weights=True)[0],
                sdpa(Q, K, V, mask=np.zeros((3, 5), dtype))):
        assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()
    dQ, dK, dV = sdpa_backward(dO, Q, K, V)
    assert np.isnan(dQ[0]).all() and np.isfinite(dQ[1:]).all()
    assert np.isnan(dK).any() and np.isnan(dV).any()


def exact_score(q, k, scale):
    """scale * (q . k) in exact rational arithmetic, rounded once to a Python float."""
    from fractions import Fraction
    return float(Fraction(float(scale)) * sum(Fraction(float(x)) * Fraction(float(y))
                                              for x, y in zip(q, k)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_score_whose_products_overflow_on_the_way_is_computed_exactly(dtype, isa):
    """A product or a partial sum of q . k overflows, or the raw dot product does before the scale
    brings it back into range, but the score itself fits: it is the exact score, on every tier.
    The FMA tiers gave the first (the fused product never rounded to inf) and the others NaN;
    the second was NaN on every tier (torch gives both calls' weights of 1)."""
    c = 1.2e19 if dtype == np.float32 else 8e153      # 2 c^2 fits, 4 c^2 does not
    largest = float(np.finfo(dtype).max)
    V = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    # 1. terms -2c^2 and +4c^2 (alone past the largest value): q . k = 2c^2
    Q = np.array([[-c, 2 * c]], dtype)
    K = np.array([[2 * c, 2 * c], [0.0, 1.0]], dtype)
    want = exact_score(Q[0], K[0], 1.0)
    assert 4 * float(c) ** 2 > largest > want > largest / 2
    np.testing.assert_allclose(scores(Q, K, scale=1.0)[0, 0], want, rtol=TOL[dtype])
    np.testing.assert_array_equal(sdpa(Q, K, V, scale=1.0), V[:1])     # weight 1 on key 0
    dQ, dK, dV = sdpa_backward(np.ones((1, 2), dtype), Q, K, V, scale=1.0)
    np.testing.assert_array_equal(dV, [[1, 1], [0, 0]])
    assert np.isfinite(dQ).all() and np.isfinite(dK).all()
    # 2. the raw q . k = 4c^2 passes the largest value, times 0.5 it does not
    Q = np.array([[2 * c, 2 * c]], dtype)
    K = np.array([[c, c], [0.0, 1.0]], dtype)
    want = exact_score(Q[0], K[0], 0.5)
    assert largest > want > largest / 2
    np.testing.assert_allclose(scores(Q, K, scale=0.5)[0, 0], want, rtol=TOL[dtype])
    np.testing.assert_array_equal(sdpa(Q, K, V, scale=0.5), V[:1])
    # 3. products of +-4c^2 that cancel exactly: the score is 0, as key 1's, so equal weights
    Q = np.full((1, 4), 2 * c, dtype)
    K = np.array([[2 * c, -2 * c, 2 * c, -2 * c], [0.0, 0.0, 0.0, 0.0]], dtype)
    assert scores(Q, K, scale=1.0)[0, 0] == 0
    np.testing.assert_array_equal(sdpa(Q, K, V, scale=1.0), [[2.0, 3.0]])
    # 4. products that cancel beside a small one: the small one is the score (a recomputation
    #    that scaled every element below 1 lost it to underflow in float64, and the double sum of
    #    1 + 9e76 - 9e76 in float32 lost it to rounding)
    small = {np.float32: ([1.0, 3e38, 3e38], [1.0, 3e38, -3e38], 1.0),
             np.float64: ([1e308, 1e308, 1e100], [1e308, -1e308, 1e100], 1e200)}[dtype]
    got = scores(np.array([small[0]], dtype), np.array([small[1]], dtype), scale=1.0)[0, 0]
    want = exact_score(np.array(small[0], dtype), np.array(small[1], dtype), 1.0)
    assert want == pytest.approx(small[2], rel=1e-6)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype])
    # 5. the scale as the call's dtype holds it, as the kernels multiply by it: in float32 this
    #    one rounds up, and the score passes the largest float32 (the NumPy backend used the
    #    double scale, and gave 3.4028235e38 where the C tiers gave NaN)
    if dtype == np.float32:
        x = np.array([[3.3135788e19]], dtype)
        assert np.isnan(scores(x, x, scale=0.30991658131711747)).all()
    # past the range itself still NaN: q . k = 8c^2 (products of 2c^2, each in range)
    K[0] = 2 * c
    assert np.isnan(scores(Q, K[:1] / 2, scale=1.0)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_overflowed_dot_product_of_a_masked_key_changes_nothing(dtype, isa):
    """The NaN score is masked like any other: the row equals the row without that key."""
    dO, Q, K, V = overflow_case(dtype, True)
    mask = np.ones((3, 5), bool)
    mask[:, 0] = False
    tol = TOL[dtype]
    want = sdpa(Q, K[1:], V[1:])
    assert_close(sdpa(Q, K, V, mask=mask), want, tol)
    assert_close(sdpa(Q, K, V, mask=mask, return_weights=True)[0], want, tol)
    dQ, dK, dV = sdpa_backward(dO, Q, K, V, mask=mask)
    dQ1, dK1, dV1 = sdpa_backward(dO, Q, K[1:], V[1:])
    for g, w in ((dQ, dQ1), (dK[1:], dK1), (dV[1:], dV1)):
        assert_close(g, w, tol)
    assert np.all(dK[0] == 0) and np.all(dV[0] == 0)


# ---- weights far below their row's largest, and rows holding +inf ---------------------------------

GAP = {np.float32: 80.0, np.float64: 700.0}   # e^-80 = 1.8e-35, e^-700 = 9.9e-305: both normal


@pytest.mark.parametrize("largest", ["in the first keys", "after tiles of smaller ones"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_key_whose_weight_is_tiny_in_every_row_keeps_its_gradients(dtype, largest, isa):
    """A weight e^-80 (float32) or e^-700 (float64) of its row's largest is a normal number: the
    forward keeps it, and so must the backward. Key 101's weight is that small in every row, so
    its dK and dV come from those weights alone and are tiny, not 0; checked against the oracle
    value by value, not against the largest gradient. The rows' largest score is in the first
    keys, or comes only at key 100, after tiles of smaller scores (where the fused backward's
    running reference moves a second time: it used to move 2^24 above, flushing key 101)."""
    rng = np.random.default_rng(7)
    n_q, n_k, d, tiny = 3, 150, 2, 101
    dO, Q, V = (rng.standard_normal((r, d)).astype(dtype) for r in (n_q, n_q, n_k))
    K = np.zeros((n_k, d), dtype)                   # raw scores 0: the bias sets them
    bias = np.zeros((n_q, n_k), dtype)
    top = 30.0 if largest == "after tiles of smaller ones" else 0.0
    bias[:, 100] = top
    bias[:, tiny] = top - GAP[dtype]
    weights = np.exp(np.asarray(bias, np.longdouble) - top)
    weights /= weights.sum(axis=1, keepdims=True)
    dO_, Q_, V_ = (np.asarray(a, np.longdouble) for a in (dO, Q, V))
    dP = dO_ @ V_.T
    dS = weights * (dP - (weights * dP).sum(axis=1, keepdims=True))
    want_dV, want_dK = weights.T @ dO_, dS.T @ Q_
    assert 0 < np.abs(want_dV[tiny]).max() < 1e-30 * np.abs(want_dV).max()
    dQ, dK, dV = sdpa_backward(dO, Q, K, V, scale=1.0, mask=bias)
    assert_close(dV, want_dV, TOL[dtype])     # (dK's other rows cancel: dS ~ 0 beside a weight ~1)
    for got, want in ((dV[tiny], want_dV[tiny]), (dK[tiny], want_dK[tiny])):
        np.testing.assert_allclose(np.asarray(got, np.longdouble), want, rtol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_holding_plus_inf_gives_nan_gradients_even_to_keys_it_masks(dtype, isa):
    """A row holding +inf (here from its bias) has NaN weights, those of the keys it masks with
    -inf too: the forward's softmax gives them so, as torch's does. So every key's dK and dV are
    NaN, key 2 (which only that row masks) and key 3 (which every row masks) included, on every
    tier; the other rows' dQ stay finite."""
    rng = np.random.default_rng(8)
    dO, Q = (rng.standard_normal((3, 2)).astype(dtype) for _ in range(2))
    K, V = (rng.standard_normal((4, 2)).astype(dtype) for _ in range(2))
    bias = np.zeros((3, 4), dtype)
    bias[0, 0], bias[0, 2], bias[:, 3] = np.inf, -np.inf, -np.inf
    S = scores(Q, K, scale=1.0, bias=bias)
    from selfattn import softmax_attention_weights
    assert np.isnan(softmax_attention_weights(S)[0]).all()
    assert np.isnan(sdpa(Q, K, V, scale=1.0, mask=bias)[0]).all()
    dQ, dK, dV = sdpa_backward(dO, Q, K, V, scale=1.0, mask=bias)
    assert np.isnan(dQ[0]).all() and np.isfinite(dQ[1:]).all()
    assert np.isnan(dK).all() and np.isnan(dV).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_output_whose_products_all_round_to_zero_is_zero(dtype, isa):
    """Output column 0 sums 1 x -0 (key 0, the largest weight) and weights of 2^-70 times a V
    value so small that each product rounds to zero: the exact sum is negative but below the
    smallest number, so the output is zero on every path and tier. Its sign is the arithmetic's:
    +0 where each product is rounded before it is added to a sum that starts from +0 (the
    reference and portable tiers), -0 where a fused multiply-add rounds the exact sum once (the
    SIMD tiers' products, fused or composed, as the exact sum's sign). Column 1 (V = 1) is 1."""
    n = 40
    small = {np.float32: -1e-30, np.float64: -1e-305}[dtype]   # x 2^-70: below the subnormals
    Q = np.ones((n, 1), dtype)
    K = np.full((n, 1), -70 * np.log(2), dtype)                 # scores -70 ln 2: weights 2^-70
    K[0] = 0
    V = np.column_stack([np.full(n, small), np.ones(n)]).astype(dtype)
    V[0, 0] = -0.0
    fused = sdpa(Q, K, V, scale=1.0)
    composed = sdpa(Q, K, V, scale=1.0, return_weights=True)[0]
    for out in (fused, composed):
        assert (out[:, 0] == 0).all()
        np.testing.assert_allclose(out[:, 1], 1, rtol=TOL[dtype])
    # one sign on a tier, whichever path computed it
    assert (np.signbit(fused[:, 0]) == np.signbit(composed[:, 0])).all()


@pytest.fixture
def numpy_raises_on_every_fp_error():
    """A learner's np.seterr(all="raise"), restored after the test."""
    old = np.seterr(all="raise")
    yield
    np.seterr(**old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_np_seterr_raise_changes_nothing(numpy_raises_on_every_fp_error, dtype):
    """Every entry point computes by the IEEE rules whatever np.seterr says, as the C kernels do:
    the NumPy backend (SELFATTN_BACKEND=numpy) raised FloatingPointError on a softmax's underflow
    in exp, a hidden key's exp(-inf) or a score that overflows, and the gradients' own NumPy
    steps (a cast of dO, sums over a batch or over rows) on either backend. Same results as
    without it."""
    import selfattn
    rng = np.random.default_rng(0)
    n, d = 6, 4
    X = (rng.standard_normal((n, d)) * 60).astype(dtype)   # weights that underflow to 0
    W = rng.standard_normal((3, d, d)).astype(dtype)
    dO = rng.standard_normal((n, d)).astype(dtype)
    W_o = rng.standard_normal((d, d)).astype(dtype)
    _, Qh, Kh, Vh = huge_case(dtype, tie=False)            # scores that overflow
    big = float(np.finfo(dtype).max) / 2                   # two of them overflow
    calls = {
        "softmax": lambda: selfattn.softmax_attention_weights(
            np.array([[0, -1e4, 1e4], [1, 2, 3]], dtype)),
        "scores": lambda: scores(X, X),
        "layer": lambda: selfattn.self_attention_layer(X, *W, return_weights=True),
        "sdpa masked": lambda: sdpa(X, X, X, is_causal=True, mask=~np.eye(n, dtype=bool)),
        "sdpa huge": lambda: sdpa(Qh, Kh, Vh),
        "backward": lambda: sdpa_backward(dO, X, X, X, is_causal=True),
        "layer backward": lambda: selfattn.self_attention_layer_backward(dO, X, *W),
        "multi-head": lambda: selfattn.multi_head_attention(
            X, *W, W_o, num_heads=2, is_causal=True),
        # the gradients' NumPy steps: a float64 dO beyond float32's range cast to the inputs'
        # float32 (inf), a gradient summed over a broadcast batch that overflows, bias gradients
        # (row sums) that do
        "backward, dO beyond the dtype": lambda: sdpa_backward(
            np.full((n, d), 1e300), X, X, X),
        "backward, batch sum overflows": lambda: sdpa_backward(
            np.ones((40, 1, 1), dtype), np.full((40, 1, 1), big, dtype),
            np.array([[1 / big], [0]], dtype), np.array([[1], [0]], dtype), scale=1.0),
        "multi-head backward, bias sums overflow": lambda: selfattn.multi_head_attention_backward(
            np.full((n, d), big, dtype), X, *W, W_o, num_heads=2, b_q=W_o[0], b_o=W_o[1]),
    }
    got = {name: call() for name, call in calls.items()}
    np.seterr(all="ignore")
    for name, call in calls.items():
        want = call()
        for g, w in zip(*(v if isinstance(v, tuple) else (v,) for v in (got[name], want))):
            np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dropout", [{}, {"dropout_p": 0.5, "seed": 3}])
def test_a_nan_row_under_a_band_gives_the_gradients_it_gives_under_the_same_mask(dtype, dropout,
                                                                                 isa):
    """Query 0's score +inf (Q holds inf) makes its weights NaN, for every key, those causality,
    a window or key_lengths hide too (the forward's weights are, and torch's causal mask gives
    the same): so every key's dK is NaN, and dV where the dropout keeps the weight, as under the
    boolean mask that draws the same band. The reference tier, which such a call runs on, gave
    NaN only to the keys query 0 sees."""
    rng = np.random.default_rng(0)
    n = 6
    Q, V = rng.normal(size=(2, n, 2)).astype(dtype)
    K = np.abs(rng.normal(size=(n, 2))).astype(dtype)
    dO = np.ones((n, 2), dtype)
    Q[0, 1] = np.inf                                      # score +inf for every key
    import selfattn
    for kw, mask in [({"is_causal": True}, selfattn.causal_mask(n)),
                     ({"window": (1, 1)}, selfattn.window_mask(n, n, 1, 1)),
                     ({"key_lengths": 2}, selfattn.lengths_mask(None, 2, n, n))]:
        band = sdpa_backward(dO, Q, K, V, **kw, **dropout)
        masked = sdpa_backward(dO, Q, K, V, mask=mask, **dropout)
        for name, b, m in zip(("dQ", "dK", "dV"), band, masked):
            np.testing.assert_array_equal(np.isnan(b), np.isnan(m), err_msg=f"{name} {kw}")
        assert np.isnan(band[1]).all(), kw                # every key's dK
        assert np.isnan(band[0][0]).all() and np.isfinite(band[0][1:]).all(), kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("source", ["nan bias", "inf bias", "overflow"])
@pytest.mark.parametrize("mods", [{}, {"dropout_p": 0.5, "seed": 3}, {"softcap": 30.0}],
                         ids=["fused", "dropout", "softcap"])
def test_a_nan_row_with_finite_inputs_under_a_long_band_gives_nan_to_every_key(dtype, source,
                                                                               mods, isa):
    """Query 300 of 600 holds a NaN score (its bias), +inf (its bias) or scores that overflow
    from finite Q and K: its weights are NaN for every key, so every key's dK is NaN (dV where
    the dropout keeps the weight), as under the boolean mask that draws the same band. Q, K, V
    and dO are finite, so the fast tiers run; their blocks reach only the keys a block's band
    does (with causality, keys past about query 300's block), and gave those beyond finite dK
    and dV: 368 NaN rows of 600 on AVX2, 384 on AVX-512. The other rows' dQ stay finite."""
    if source != "nan bias" and "softcap" in mods:
        pytest.skip("a soft-cap makes +inf scores finite (the cap)")
    rng = np.random.default_rng(30)
    n, d = 600, 8
    dO, Q, K, V = (rng.standard_normal((n, d)).astype(dtype) for _ in range(4))
    bias = np.zeros((n, n), dtype)
    if source == "overflow":
        K = np.abs(K) + 1                                 # query 300's every score overflows
        Q[300] = np.finfo(dtype).max / 4
    else:
        bias[300, 5] = np.nan if source == "nan bias" else np.inf
    import selfattn
    for kw, mask in [({"is_causal": True}, selfattn.causal_mask(n)),
                     ({"window": (400, 0), "is_causal": True}, selfattn.window_mask(n, n, 400, 0))]:
        band = sdpa_backward(dO, Q, K, V, mask=bias, **kw, **mods)
        masked = sdpa_backward(dO, Q, K, V, mask=np.where(mask, bias, -np.inf), **mods)
        for name, b, m in zip(("dQ", "dK", "dV"), band, masked):
            np.testing.assert_array_equal(np.isnan(b), np.isnan(m), err_msg=f"{name} {kw}")
            np.testing.assert_allclose(b, m, rtol=TOL[dtype] * 10, atol=TOL[dtype], err_msg=name)
        assert np.isnan(band[1]).all(), kw                # every key's dK
        assert np.isnan(band[0][300]).all() and np.isfinite(np.delete(band[0], 300, 0)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mods", [{"softcap": 1e9}, {"dropout_p": 0.3, "seed": 5}],
                         ids=["softcap", "dropout"])
def test_large_scores_give_the_gradients_of_the_same_scores_shifted(dtype, mods, isa):
    """Scores of 1e7 + (1, 0, -38) in float32 (1e15 + ... in float64, every one exact) have the
    softmax of (1, 0, -38): a row's scores shifted together change no weight. With a soft-cap or
    dropout the fast tiers run the blocked backward, which rebuilt each weight as e^(s - lse) from
    the log-sum-exp rounded to the scores' precision (an ulp of 1 at 1e7): weights off by up to
    e^0.5, gradients off by 2x. It keeps the row's max and 1 / sum, as the reference does."""
    big = 1e7 if dtype == np.float32 else 1e15
    rng = np.random.default_rng(6)
    n_k = 3
    Q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype)
    K = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]], dtype)     # scores (1, 0, 2), (0, 0, 1)
    V = rng.standard_normal((n_k, 4)).astype(dtype)
    dO = rng.standard_normal((2, 4)).astype(dtype)
    shift = np.array([[0.0, 0.0, -40.0], [0.0, 0.0, -40.0]], dtype)
    near = sdpa_backward(dO, Q, K, V, scale=1.0, mask=shift, **mods)
    far = sdpa_backward(dO, Q, K, V, scale=1.0, mask=shift + dtype(big), **mods)
    for name, g, w in zip(("dQ", "dK", "dV"), far, near):
        np.testing.assert_allclose(g, w, rtol=TOL[dtype] * 10, atol=TOL[dtype], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_row_with_no_key_width_under_a_band_gives_nan_to_every_keys_dv(dtype, isa):
    """d_k = 0 (every raw score 0) and a NaN bias at query 0, key 0, causal, 200 keys: row 0's
    weights are NaN for every key, so every dV row is NaN. dQ has no element to show the NaN row,
    so the fast tiers' gradients (NaN only for the keys of row 0's block: 64 of 200) were kept."""
    n = 200
    rng = np.random.default_rng(9)
    Q, K = np.zeros((n, 0), dtype), np.zeros((n, 0), dtype)
    V, dO = (rng.standard_normal((n, 3)).astype(dtype) for _ in range(2))
    bias = np.zeros((n, n), dtype)
    bias[0, 0] = np.nan
    dQ, dK, dV = sdpa_backward(dO, Q, K, V, mask=bias, is_causal=True)
    assert dQ.shape == (n, 0) and dK.shape == (n, 0)
    assert np.isnan(dV).all(axis=1).all()
