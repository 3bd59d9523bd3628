"""Value tests of every instruction-set tier this CPU supports.

Each tier's kernels (reference, generic, avx2, avx512, neon) are checked against an independent
extended-precision NumPy computation (np.longdouble) and against the reference tier, across
awkward sizes (edges of every micro-tile and block), strided and broadcast batch operands, masks
of every kind and stride, causal attention with n_q != n_k, fully masked rows and NaN rows.
"""
import numpy as np
import pytest

import selfattn
from selfattn import _core
from attn_reference import ref_attention, ref_scores, ref_softmax

pytestmark = pytest.mark.c_backend  # about the C extension itself (conftest.py)

TIERS = list(_core.supported_isas())
FAST_TIERS = [t for t in TIERS if t != "reference"]
DTYPES = [np.float32, np.float64]
SIZES = [1, 3, 15, 16, 17, 31, 33, 63, 65, 127, 129, 255, 256]
HEAD_DIMS = [1, 3, 8, 63, 64, 65, 128, 255, 256]
LD = np.longdouble


def tol(dtype):
    return 3e-5 if dtype == np.float32 else 1e-12


def assert_close(got, want, dtype, what=""):
    """NaN and +-inf exactly where the reference has them; elsewhere within tol(dtype) times
    the reference's magnitude (at least 1)."""
    want = np.asarray(want)
    assert got.shape == want.shape, what
    assert got.dtype == dtype, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN places {what}")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)],
                                  err_msg=f"inf places {what}")
    if finite.any():
        size = max(1.0, float(np.abs(want[finite]).max()))
        err = float(np.abs(got[finite].astype(LD) - want[finite]).max())
        assert err <= tol(dtype) * size, f"{what}: max error {err:.3g} > {tol(dtype) * size:.3g}"


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def cases(count=None):
    """(n_q, n_k, d) triples pairing every awkward size with every head dim."""
    out = []
    for idx, n in enumerate(SIZES):
        d = HEAD_DIMS[idx % len(HEAD_DIMS)]
        n_k = SIZES[(idx + 5) % len(SIZES)]
        out.append((n, n_k, d))
    for idx, d in enumerate(HEAD_DIMS):
        out.append((SIZES[(3 * idx + 2) % len(SIZES)], SIZES[(3 * idx + 7) % len(SIZES)], d))
    return out


CASES = cases()


# ---- matmul ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 17, 15), (16, 33, 63), (65, 31, 129),
                                   (127, 255, 3), (129, 64, 256), (256, 65, 255), (200, 300, 520),
                                   (17, 1, 64), (1, 129, 33)])
def test_matmul(isa, dtype, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A, B = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype)
    C = np.full((m, n), np.nan, dtype)
    _core.matmul(C, A, B, _core.isa_code(isa))
    assert_close(C, A.astype(LD) @ B.astype(LD), dtype, f"{isa} {m}x{n}x{k}")
    ref = np.empty_like(C)
    _core.matmul(ref, A, B, _core.isa_code("reference"))
    assert_close(C, ref, dtype, "vs reference tier")


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inner_dimension(isa, dtype):
    """k = 0: products of nothing are 0; scores of d_k = 0 are 0 plus the mask."""
    got = selfattn.compute_attention_output(np.ones((5, 0), dtype), np.ones((0, 7), dtype))
    np.testing.assert_array_equal(got, np.zeros((5, 7), dtype))
    S = selfattn.compute_self_attention_scores(np.ones((3, 0), dtype), np.ones((4, 0), dtype),
                                               is_causal=True)
    np.testing.assert_array_equal(S, np.triu(np.full((3, 4), -np.inf, dtype), 1))
    out = selfattn.scaled_dot_product_attention(np.ones((3, 4), dtype), np.ones((0, 4), dtype),
                                                np.ones((0, 5), dtype))
    np.testing.assert_array_equal(out, np.zeros((3, 5), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_strided_and_broadcast_batch(isa, dtype):
    rng = np.random.default_rng(7)
    A = rand(rng, (3, 1, 70, 2 * 45), dtype)[:, :, ::1, ::2]        # rows strided by 2*45*2
    B = rand(rng, (1, 4, 45, 130), dtype)[..., 3:123]                # rows with a longer stride
    got = selfattn.compute_attention_output(A, B)
    assert_close(got, np.matmul(A.astype(LD), B.astype(LD)), dtype, "batched matmul")


# ---- scores ----------------------------------------------------------------------------------

def make_mask(kind, rng, n_q, n_k, dtype, batch=()):
    if kind is None:
        return None
    if kind == "bool":
        return rng.random(batch + (n_q, n_k)) < 0.7
    if kind == "add":
        m = rng.standard_normal(batch + (n_q, n_k)).astype(dtype)
        m[rng.random(m.shape) < 0.2] = -np.inf
        return m
    if kind == "keys":                 # key padding: one row broadcast over queries (stride 0)
        return rng.random(batch + (1, n_k)) < 0.8
    if kind == "queries":              # one column broadcast over keys (column stride 0)
        return rng.standard_normal(batch + (n_q, 1)).astype(dtype)
    if kind == "scalar":               # both strides 0
        return np.array([[True]])
    if kind == "transposed":           # a view with row stride 1 and column stride n_q
        return (rng.random(batch + (n_k, n_q)) < 0.7).swapaxes(-1, -2)
    raise AssertionError(kind)


MASKS = [None, "bool", "add", "keys", "queries", "scalar", "transposed"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_k,d", CASES)
def test_scores(isa, dtype, n_q, n_k, d):
    rng = np.random.default_rng(n_q * 7 + n_k * 3 + d)
    Q, K = rand(rng, (n_q, d), dtype), rand(rng, (n_k, d), dtype)
    for kind in (None, "bool", "add"):
        for causal in (False, True):
            mask = make_mask(kind, rng, n_q, n_k, dtype)
            got = selfattn.compute_self_attention_scores(Q, K, mask=mask, is_causal=causal)
            want = ref_scores(Q, K, 1 / np.sqrt(d), mask, causal)
            assert_close(got, want, dtype, f"{isa} {kind} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
def test_scores_masks_and_strides(isa, dtype, kind):
    rng = np.random.default_rng(11)
    n_q, n_k, d = 37, 290, 40
    Q = rand(rng, (2, 1, n_q, 2 * d), dtype)[..., ::2]              # elements strided: copied
    K = rand(rng, (1, 3, n_k + 5, d), dtype)[:, :, 5:, :]            # offset view, broadcast
    mask = make_mask(kind, rng, n_q, n_k, dtype, batch=(3,))
    got = selfattn.compute_self_attention_scores(Q, K, mask=mask, is_causal=True, scale=0.3)
    assert_close(got, ref_scores(Q, K, 0.3, mask, True), dtype, kind)


# ---- softmax ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + [1000, 4097])
def test_softmax(isa, dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((9, n)) * 30).astype(dtype)
    x[1, ::3] = -np.inf                       # some keys masked
    x[2, :] = -np.inf                         # every key masked: zeros
    x[3, n // 2] = np.nan                     # NaN: the whole row NaN
    x[4, :] = -np.inf
    x[4, -1] = np.nan                         # NaN among -inf: still NaN
    x[5] += dtype(1000)                        # large offsets cancel
    x[6] -= dtype(1000)
    x[7, 0] = 80 if dtype == np.float32 else 700   # one dominant entry
    got = selfattn.softmax_attention_weights(x)
    assert_close(got, ref_softmax(x), dtype, f"{isa} softmax n={n}")
    np.testing.assert_array_equal(got[2], 0)
    assert np.isnan(got[3]).all() and np.isnan(got[4]).all()
    ref = np.empty_like(x)
    _core.softmax(ref, x, _core.isa_code("reference"))
    assert_close(got, ref, dtype, "vs reference tier")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_in_place_and_strided(isa, dtype):
    rng = np.random.default_rng(5)
    base = rand(rng, (2, 3, 40, 100), dtype)
    x = base[:, :, ::2, 7:90]                  # strided rows, offset columns
    want = ref_softmax(x)
    x_copy = x.copy()
    out = np.empty(x.shape, dtype)
    _core.softmax(out, np.ascontiguousarray(x), _core.isa_code(isa))
    assert_close(out, want, dtype, "contiguous")
    got = selfattn.softmax_attention_weights(x)
    assert_close(got, want, dtype, "strided")
    np.testing.assert_array_equal(x, x_copy)   # input untouched
    inplace = np.ascontiguousarray(x)
    _core.softmax(inplace, inplace, _core.isa_code(isa))
    assert_close(inplace, want, dtype, "in place")


# ---- attention -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_k,d", CASES)
def test_attention(isa, dtype, n_q, n_k, d):
    rng = np.random.default_rng(n_q * 13 + n_k * 5 + d)
    Q, K = rand(rng, (n_q, d), dtype), rand(rng, (n_k, d), dtype)
    d_v = max(1, (d * 3) // 4)
    V = rand(rng, (n_k, d_v), dtype)
    for kind in (None, "bool", "add"):
        for causal in (False, True):
            mask = make_mask(kind, rng, n_q, n_k, dtype)
            want, W = ref_attention(Q, K, V, 1 / np.sqrt(d), mask, causal)
            got = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal)
            assert_close(got, want, dtype, f"{isa} fused {kind} causal={causal}")
            got2, weights = selfattn.scaled_dot_product_attention(
                Q, K, V, mask=mask, is_causal=causal, return_weights=True)
            assert_close(got2, want, dtype, f"{isa} weights path {kind} causal={causal}")
            assert_close(weights, W, dtype, f"{isa} weights {kind} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("n_q,n_k", [(300, 77), (77, 300), (97, 97), (1, 513)])
def test_attention_masks_causal_batches(isa, dtype, kind, n_q, n_k):
    rng = np.random.default_rng(n_q + n_k)
    d, d_v = 24, 40
    Q = rand(rng, (2, 1, n_q, d), dtype)
    K = rand(rng, (1, 3, n_k, 2 * d), dtype)[..., ::2]               # strided: copied by the API
    V = rand(rng, (n_k + 3, d_v), dtype)[3:]                         # broadcast over the batch
    mask = make_mask(kind, rng, n_q, n_k, dtype, batch=(3,))
    for causal in (False, True):
        want, _ = ref_attention(Q, K, V, 0.2, mask, causal)
        got = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal,
                                                    scale=0.2)
        assert_close(got, want, dtype, f"{isa} {kind} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,n_q,n_k,causal", [
    (1, 1000, 300, False),  # 8 blocks of 128 (AVX-512), the last of 104 queries
    (3, 300, 300, False),   # 9 blocks of 128 over 3 items
    (1, 700, 300, False),   # 6 blocks of 128: few, so blocks of 96
    (1, 1000, 120, False),  # one key block: blocks of 96
    (1, 1000, 1000, True),  # a band: blocks of 96
])
def test_attention_block_plans(isa, dtype, batch, n_q, n_k, causal):
    """The fused forward cuts the queries into blocks whose size depends on the call
    (attention_fused.inc's FAST(fa_plan): on AVX-512, 128 queries where a call has many blocks
    and more than one key block, 96 elsewhere, each with its own row stride). Every plan, with
    each kind of mask and an output width off the micro-tile, agrees with the reference."""
    rng = np.random.default_rng(n_q + n_k + batch)
    d, d_v = 40, 77
    Q, K, V = (rand(rng, (batch, n, w), dtype) for n, w in ((n_q, d), (n_k, d), (n_k, d_v)))
    for kind in (None, "bool", "add"):
        mask = make_mask(kind, rng, n_q, n_k, dtype)
        want, _ = ref_attention(Q, K, V, 0.15, mask, causal)
        got = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal,
                                                    scale=0.15)
        assert_close(got, want, dtype, f"{isa} {kind} {batch}x{n_q}x{n_k} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_tiles_and_edges_give_the_same_bits(isa, dtype):
    """The fused forward packs its queries and writes its outputs, and the scores pack K^T,
    through VL x VL tiles in registers and a lane at a time past the last whole tile: a query,
    an output column or a key gives the same bits whichever way it went. 48 queries and columns are whole tiles for every vector
    width (2 to 16 lanes); dropping the last query (column) sends its neighbours to the edge."""
    rng = np.random.default_rng(48)
    Q, K, V = rand(rng, (2, 48, 48), dtype), rand(rng, (2, 80, 48), dtype), rand(rng, (2, 80, 48), dtype)
    full = selfattn.scaled_dot_product_attention(Q, K, V)
    want, _ = ref_attention(Q, K, V, 1 / np.sqrt(48), None, False)
    assert_close(full, want, dtype, f"{isa} whole tiles")
    fewer_queries = selfattn.scaled_dot_product_attention(Q[:, :47], K, V)
    np.testing.assert_array_equal(fewer_queries, full[:, :47])
    fewer_columns = selfattn.scaled_dot_product_attention(Q, K, V[..., :47])
    np.testing.assert_array_equal(fewer_columns, full[..., :47])
    # a strided query row (ld > d_k) read through the tiles
    wide = np.zeros((2, 48, 64), dtype)
    wide[..., :48] = Q
    np.testing.assert_array_equal(selfattn.scaled_dot_product_attention(wide[..., :48], K, V), full)
    # the scores' pack of K^T goes through the same tiles
    scores = selfattn.compute_self_attention_scores(Q, K[:, :48])
    np.testing.assert_array_equal(selfattn.compute_self_attention_scores(Q, K[:, :47]),
                                  scores[..., :47])


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_fully_masked_and_nan_rows(isa, dtype):
    rng = np.random.default_rng(3)
    n_q, n_k, d = 130, 300, 64
    Q, K, V = rand(rng, (n_q, d), dtype), rand(rng, (n_k, d), dtype), rand(rng, (n_k, d), dtype)
    mask = rng.standard_normal((n_q, n_k)).astype(dtype)
    mask[5, :] = -np.inf                       # every key hidden: output 0
    mask[100, :260] = -np.inf                  # hidden up to the last block only
    mask[100, 260:] = -np.inf
    mask[17, 290] = np.nan                     # NaN score: that row NaN
    mask[18, :] = -np.inf
    mask[18, 3] = np.nan                       # NaN among -inf: NaN
    mask[40, 256:] = -np.inf                   # a row whose last block is fully masked
    Q[60, 0] = np.nan                          # NaN query: that row NaN
    for tier_out in [selfattn.scaled_dot_product_attention(Q, K, V, mask=mask),
                     selfattn.scaled_dot_product_attention(Q, K, V, mask=mask,
                                                           return_weights=True)[0]]:
        want, _ = ref_attention(Q, K, V, 1 / np.sqrt(d), mask)
        assert_close(tier_out, want, dtype, isa)
        np.testing.assert_array_equal(tier_out[5], 0)
        np.testing.assert_array_equal(tier_out[100], 0)
        for row in (17, 18, 60):
            assert np.isnan(tier_out[row]).all(), row
        assert np.isfinite(np.delete(tier_out, [17, 18, 60], axis=0)).all()
    boolmask = np.ones((n_q, n_k), bool)
    boolmask[7] = False
    got = selfattn.scaled_dot_product_attention(Q, K, V, mask=boolmask, is_causal=True)
    np.testing.assert_array_equal(got[7], 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masked_with_finfo_min(isa, dtype):
    """torch users mask with finfo(dtype).min instead of -inf: a row hidden that way gets the
    (uniform) weights the definition gives, not zeros, and partly hidden rows ignore those keys."""
    rng = np.random.default_rng(4)
    n_q, n_k, d = 100, 300, 32
    Q, K, V = rand(rng, (n_q, d), dtype), rand(rng, (n_k, d), dtype), rand(rng, (n_k, d), dtype)
    mask = np.zeros((n_q, n_k), dtype)
    lowest = np.finfo(dtype).min
    mask[3, :] = lowest
    mask[4, 100:] = lowest
    mask[5, ::2] = lowest
    for causal in (False, True):
        want, W = ref_attention(Q, K, V, 1 / np.sqrt(d), mask, causal)
        got = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal)
        assert_close(got, want, dtype, f"fused causal={causal}")
        got2, weights = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask,
                                                              is_causal=causal,
                                                              return_weights=True)
        assert_close(got2, want, dtype, "weights path")
        assert_close(weights, W, dtype, "weights")
    uniform = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask)[3]
    assert_close(uniform, V.astype(LD).mean(axis=0), dtype, "uniform row")


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_past_the_log2_range_keep_their_order_and_the_lse(isa, dtype):
    """The fast tiers score in log2 units, where a mask value past ln 2 x the largest float
    saturated at the largest float: two such values in a row that sees nothing else tied
    (-0.9 max and -0.7 max gave both keys weight, where the second takes all of it; +0.9 max and
    +0.8 max the same), and a row masked with finfo.min had the log-sum-exp -0.69 max, not
    -max. A block of queries holding such a row runs in natural units, forward and
    backward."""
    from attn_reference import ref_attention_grads, ref_lse
    from attn_reference import assert_close as assert_ref_close
    rng = np.random.default_rng(12)
    n_q, n_k, d = 150, 260, 16
    big = float(np.finfo(dtype).max)
    Q, K, V, dO = (rand(rng, (n, d), dtype) for n in (n_q, n_k, n_k, n_q))
    mask = rng.standard_normal((n_q, n_k))
    mask[3, :] = -big                                   # finfo.min: uniform, lse -max + log n_k
    mask[4, :] = -0.9 * big
    mask[4, 17] = -0.7 * big                            # key 17 takes row 4
    mask[100, 5], mask[100, 90] = 0.9 * big, 0.8 * big  # key 5 takes row 100
    mask[120, :] = -0.8 * big
    mask[120, 100:] = -0.75 * big                       # keys 100.. share row 120
    mask = mask.astype(dtype)
    for causal in (False, True):
        want, _ = ref_attention(Q, K, V, None, mask, causal)
        got, lse = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal,
                                                         return_lse=True)
        assert_close(got, want, dtype, f"causal={causal}")
        if not causal:
            np.testing.assert_allclose(got[4], V[17], rtol=tol(dtype), atol=tol(dtype))
        np.testing.assert_allclose(got[100], V[5], rtol=tol(dtype), atol=tol(dtype))
        want_lse = ref_lse(ref_scores(Q, K, None, mask, causal))
        np.testing.assert_allclose(lse.astype(LD), want_lse, rtol=tol(dtype))
        assert lse[3] == np.float64(-big) or abs(lse[3] / -big - 1) < 1e-6, lse[3]
        grads = selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask,
                                                              is_causal=causal)
        for g, w in zip(grads, ref_attention_grads(dO, Q, K, V, None, mask, causal)):
            assert_ref_close(g, w, dtype, 5e-5 if dtype == np.float32 else 1e-11)
        # the composed path (weights asked for) agrees
        got2, W = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal,
                                                        return_weights=True)
        assert_close(got2, want, dtype, f"weights path, causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_mask_plus_a_score_past_the_log2_range(isa, dtype):
    """A large finite mask value plus a large score overflowed to +-inf in log2 units: a row
    whose largest went to +inf was NaN, one whose every key went to -inf was taken for a row
    masked out (output 0, lse -inf), where every value is finite in natural units."""
    from attn_reference import ref_attention_grads, ref_lse
    from attn_reference import assert_close as assert_ref_close
    big = float(np.finfo(dtype).max)
    ulp = 2 * float(np.spacing(np.asarray(big / 2, dtype)))     # the spacing at the largest
    a, b = np.sqrt(0.17 * big), 8 * np.sqrt(ulp)     # b * b: 64 ulps, far past rounding
    V, dO = np.array([[1.0], [2.0]], dtype), np.ones((1, 1), dtype)
    cases = {  # Q (1, 1), K (2, 1), mask (1, 2)
        "+inf max": ([[a]], [[a], [a / 2]], [[0.6 * big, 0]]),
        "-inf row": ([[a]], [[-a], [-0.9 * a]], [[-0.6 * big, -0.6 * big]]),
        "saturated -inf row": ([[b]], [[-b], [-b / 2]], [[-0.9 * big, -0.9 * big]]),
        "saturated +inf max": ([[b]], [[b], [0]], [[0.9 * big, 0]]),
    }
    for name, (Q, K, mask) in cases.items():
        Q, K, mask = (np.array(x, dtype) for x in (Q, K, mask))
        want, _ = ref_attention(Q, K, V, 1.0, mask)
        got, lse = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, scale=1.0,
                                                         return_lse=True)
        assert_close(got, want, dtype, name)
        want_lse = ref_lse(ref_scores(Q, K, 1.0, mask))
        assert np.isfinite(lse).all(), name
        np.testing.assert_allclose(lse.astype(LD), want_lse, rtol=tol(dtype), err_msg=name)
        grads = selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, mask=mask, scale=1.0)
        _, _, want_dV = ref_attention_grads(dO, Q, K, V, 1.0, mask)
        assert_ref_close(grads[2], want_dV, dtype)
    # a row masked out with -inf (and one of a boolean mask) stays so: 0 and -inf
    Q, K = np.ones((2, 1), dtype), np.ones((2, 1), dtype)
    mask = np.array([[-np.inf, -np.inf], [0, -np.inf]], dtype)
    got, lse = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, return_lse=True)
    assert got[0, 0] == 0 and lse[0] == -np.inf and got[1, 0] == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_extreme_scores(isa, dtype):
    """Scores far apart (weights that underflow) and all equal (uniform weights)."""
    rng = np.random.default_rng(9)
    n, d = 200, 16
    Q, K, V = rand(rng, (n, d), dtype) * 30, rand(rng, (n, d), dtype) * 30, rand(rng, (n, d), dtype)
    want, _ = ref_attention(Q, K, V, 1.0, None, False)
    assert_close(selfattn.scaled_dot_product_attention(Q, K, V, scale=1.0), want, dtype, "far")
    Z = np.zeros((n, d), dtype)
    got = selfattn.scaled_dot_product_attention(Z, Z, V)
    assert_close(got, np.broadcast_to(V.astype(LD).mean(axis=0), (n, d)), dtype, "uniform")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d_model,d", [(1, 4, 4), (8, 4, 4), (65, 32, 17), (300, 64, 64)])
def test_self_attention_layer(isa, dtype, n, d_model, d):
    rng = np.random.default_rng(n + d)
    X = rand(rng, (2, n, d_model), dtype)
    Wq, Wk, Wv = (rand(rng, (d_model, d), dtype) for _ in range(3))
    for causal in (False, True):
        Xl = X.astype(LD)
        want, _ = ref_attention(Xl @ Wq.astype(LD), Xl @ Wk.astype(LD), Xl @ Wv.astype(LD),
                               1 / np.sqrt(d), None, causal)
        got = selfattn.self_attention_layer(X, Wq, Wk, Wv, is_causal=causal)
        assert_close(got, want, dtype, f"{isa} layer causal={causal}")


def test_every_fast_tier_has_its_own_kernels():
    """The fast tiers are real: they differ from the reference in rounding somewhere."""
    rng = np.random.default_rng(1)
    A, B = rand(rng, (64, 300), np.float32), rand(rng, (300, 64), np.float32)
    ref = np.empty((64, 64), np.float32)
    _core.matmul(ref, A, B, _core.isa_code("reference"))
    for t in FAST_TIERS:
        got = np.empty_like(ref)
        _core.matmul(got, A, B, _core.isa_code(t))
        assert not np.array_equal(got, ref), t


@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_row_strides(isa, dtype):
    """Views with reversed rows reach the kernels as negative row strides (no copy)."""
    rng = np.random.default_rng(21)
    n_q, n_k, d = 70, 130, 33
    Q = rand(rng, (n_q, d), dtype)[::-1]
    K = rand(rng, (2, n_k, d), dtype)[:, ::-1]
    V = rand(rng, (n_k, d), dtype)[::-1]
    mask = (rng.random((n_q, n_k)) < 0.8)[::-1, ::-1]
    assert Q.strides[0] < 0 and K.strides[1] < 0
    assert_close(selfattn.compute_self_attention_scores(Q, K, mask=mask),
                 ref_scores(Q, K, 1 / np.sqrt(d), mask), dtype, "scores")
    for causal in (False, True):
        want, W = ref_attention(Q, K, V, 1 / np.sqrt(d), mask, causal)
        assert_close(selfattn.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal),
                     want, dtype, f"attention causal={causal}")
    assert_close(selfattn.compute_attention_output(W.astype(dtype)[::-1], V),
                 np.matmul(W.astype(dtype)[::-1].astype(LD), V.astype(LD)), dtype, "output")
    S = rand(rng, (40, 90), dtype)[::-1]
    assert_close(selfattn.softmax_attention_weights(S), ref_softmax(S), dtype, "softmax")
