"""The fast tiers' fused backward (csrc/backward_fused.inc) at the edges of its blocks: query blocks
of 64 or 66 rows in float32, 32 or 36 in float64 (whole micro-tiles), key panels padded to whole
tiles of 4 to 32 keys, the dQ product's steps of keys, head sizes padded to micro-tile rows; masks
with zero strides, causal with n_q != n_k, several chunks of query blocks, and chunks whose first
block sees fewer keys than the next, or none (their bits for every thread count: here and
test_thread_count.py). Every result is checked against the extended-precision reference of
test_gradients.py; the reference tier is checked too, so a wrong case shows which side is wrong."""
import numpy as np
import pytest

import selfattn
from selfattn import _core, scaled_dot_product_attention_backward as sdpa_backward
from test_gradients import assert_close, rand, ref_backward

ISAS = list(_core.supported_isas())
SIZES = [1, 31, 32, 33, 36, 37, 63, 64, 65, 66, 67, 127, 129]


@pytest.mark.parametrize("n_q", SIZES)
@pytest.mark.parametrize("n_k", [1, 31, 33, 64, 65, 129, 256])
def test_block_boundary_sequence_lengths(n_q, n_k, isa):
    rng = np.random.default_rng(n_q * 1000 + n_k)
    Q, K, V, dO = rand(rng, n_q, 5), rand(rng, n_k, 5), rand(rng, n_k, 3), rand(rng, n_q, 3)
    for causal in (False, True):
        want = ref_backward(dO, Q, K, V, 0.6, None, causal)
        got = sdpa_backward(dO, Q, K, V, scale=0.6, is_causal=causal)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)
        f32 = sdpa_backward(*(a.astype(np.float32) for a in (dO, Q, K, V)), scale=0.6,
                            is_causal=causal)
        for g, w in zip(f32, want):
            assert_close(g, w, 2e-5)


@pytest.mark.parametrize("d_k, d_v", [(1, 1), (63, 65), (64, 64), (65, 63), (128, 8), (8, 128)])
def test_head_sizes(d_k, d_v, isa):
    rng = np.random.default_rng(d_k * 1000 + d_v)
    n_q, n_k = 70, 90
    Q, K, V, dO = (rand(rng, n_q, d_k) / 4, rand(rng, n_k, d_k) / 4, rand(rng, n_k, d_v),
                   rand(rng, n_q, d_v))
    mask = rng.random((n_q, n_k)) < 0.8
    want = ref_backward(dO, Q, K, V, 0.3, mask, True)
    got = sdpa_backward(dO, Q, K, V, scale=0.3, mask=mask, is_causal=True)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12)
    f32 = sdpa_backward(*(a.astype(np.float32) for a in (dO, Q, K, V)), scale=0.3, mask=mask,
                        is_causal=True)
    for g, w in zip(f32, want):
        assert g.dtype == np.float32
        assert_close(g, w, 2e-5)


def _zero_stride_masks(rng, n_q, n_k):
    row = rng.random((1, n_k)) < 0.7
    row[0, 0] = True
    col = np.ones((n_q, 1), bool)
    col[3] = False                                  # one query sees nothing
    add_row = np.where(rng.random(n_k) < 0.2, -np.inf, rng.standard_normal(n_k))
    return {
        "row broadcast (row stride 0)": np.broadcast_to(row, (n_q, n_k)),
        "column broadcast (column stride 0)": np.broadcast_to(col, (n_q, n_k)),
        "scalar broadcast (both 0)": np.broadcast_to(np.array(True), (n_q, n_k)),
        "additive row": np.broadcast_to(add_row, (n_q, n_k)),
        "transposed": np.ascontiguousarray((rng.random((n_k, n_q)) < 0.6)).T,
        "float min": np.where(rng.random((n_q, n_k)) < 0.3,
                              np.finfo(np.float64).min, 0.0),
    }


@pytest.mark.parametrize("which", range(6))
def test_masks_with_any_strides(which, isa):
    rng = np.random.default_rng(20 + which)
    n_q, n_k = 67, 129
    mask = list(_zero_stride_masks(rng, n_q, n_k).values())[which]
    Q, K, V, dO = rand(rng, n_q, 6), rand(rng, n_k, 6), rand(rng, n_k, 4), rand(rng, n_q, 4)
    want = ref_backward(dO, Q, K, V, 0.5, mask, False)
    got = sdpa_backward(dO, Q, K, V, scale=0.5, mask=mask)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12)


@pytest.mark.parametrize("n_q, n_k", [(130, 70), (70, 130), (1, 200), (200, 1), (300, 257)])
def test_causal_rectangles(n_q, n_k, isa):
    rng = np.random.default_rng(n_q + 7 * n_k)
    Q, K, V, dO = rand(rng, 2, n_q, 4), rand(rng, 2, n_k, 4), rand(rng, 2, n_k, 5), rand(rng, 2, n_q, 5)
    mask = rng.random((n_q, n_k)) < 0.85
    for m in (None, mask):
        want = ref_backward(dO, Q, K, V, 0.8, m, True)
        got = sdpa_backward(dO, Q, K, V, scale=0.8, mask=m, is_causal=True)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)


@pytest.mark.parametrize("scale", [-0.4, 0.0, 2.5])
def test_negative_zero_and_large_scales(scale, isa):
    rng = np.random.default_rng(30)
    Q, K, V, dO = rand(rng, 70, 4), rand(rng, 100, 4), rand(rng, 100, 3), rand(rng, 70, 3)
    for causal in (False, True):
        want = ref_backward(dO, Q, K, V, scale, None, causal)
        got = sdpa_backward(dO, Q, K, V, scale=scale, is_causal=causal)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)


@pytest.mark.parametrize("batch_q, batch_k", [((), ()), ((2,), (2,)), ((3,), ()), ((5,), (5,))])
def test_several_chunks_and_batches(batch_q, batch_k, isa):
    """n_q = 600 is ten query blocks: one item splits them into chunks whose partial dK, dV are
    summed; more items take fewer chunks each; a shared K, V is read by every item."""
    rng = np.random.default_rng(len(batch_q) * 10 + len(batch_k) + sum(batch_q))
    n_q, n_k = 600, 150
    Q, dO = rand(rng, *batch_q, n_q, 8), rand(rng, *batch_q, n_q, 8)
    K, V = rand(rng, *batch_k, n_k, 8), rand(rng, *batch_k, n_k, 8)
    for causal in (False, True):
        want = ref_backward(dO, Q, K, V, 0.35, None, causal)
        got = sdpa_backward(dO, Q, K, V, scale=0.35, is_causal=causal)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)


def _band_mask(n_q, n_k, band):
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    if band == "bottom_right":
        return j <= i - (n_q - n_k)
    left, right = band
    return (i - left <= j) & (j <= i + right)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("band", ["bottom_right", (100, 0), (30, 70)])
def test_chunks_whose_first_block_sees_other_keys(band, dtype, isa, threads):
    """1300 queries are 21 blocks in float32 (41 in float64): 7 chunks of 3 (6) blocks, the first
    of which sets the chunk's dK, dV sums (keys it does not see start at 0). Bottom-right causal
    over 600 keys: the first 700 queries see no key, so one chunk starts with a block that sees
    none and then blocks that see a few; a sliding window: each block sees keys the chunk's
    first block does not. 1030 keys: past a multiple of the dQ product's 128-key step. The same
    bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(7)
    n_q, n_k = 1300, 600 if band == "bottom_right" else 1030
    Q, K, V, dO = (rand(rng, n, 8) for n in (n_q, n_k, n_k, n_q))
    mask = _band_mask(n_q, n_k, band)
    want = _backward_f64(dO, Q, K, V, 0.4, mask)
    args = [a.astype(dtype) for a in (dO, Q, K, V)]
    kw = {"is_causal": "bottom_right"} if band == "bottom_right" else {"window": band}
    results = []
    for n in (1, 2, 3):
        selfattn.set_num_threads(n)
        results.append(sdpa_backward(*args, scale=0.4, **kw))
    for got in results[1:]:
        for g, s in zip(got, results[0]):
            assert np.array_equal(g, s)
    for g, w in zip(results[0], want):
        assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q", [7, 257, 1000, 2053])
def test_chunks_take_equal_shares_of_rows_in_blocks_of_unequal_sizes(n_q, dtype, isa, threads):
    """Each chunk takes an equal share of the micro-tile rows (slivers), cut into the fewest
    blocks of at most one query block, equal to within a sliver: 1000 queries are 7 chunks of 23
    or 24 slivers in float64 (blocks of 5 and 6 slivers of 6 rows on AVX2), 2053 a last sliver of
    one row; a row missed or counted twice at a chunk's or a block's edge shows in dQ and in the
    sums of dK, dV. The same bits for 1, 2, 3 and 7 threads, with and without causal."""
    rng = np.random.default_rng(n_q)
    n_k = 150
    Q, dO, K, V = rand(rng, n_q, 8), rand(rng, n_q, 8), rand(rng, n_k, 8), rand(rng, n_k, 8)
    args = [a.astype(dtype) for a in (dO, Q, K, V)]
    for causal in (False, True):
        results = []
        for n in (1, 2, 3, 7):
            selfattn.set_num_threads(n)
            results.append(sdpa_backward(*args, scale=0.3, is_causal=causal))
        for got in results[1:]:
            for g, s in zip(got, results[0]):
                assert np.array_equal(g, s)
        for g, w in zip(results[0], _backward_f64(dO, Q, K, V, 0.3, causal=causal)):
            assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("dtype, d", [(np.float32, 128), (np.float64, 64)])
def test_fewer_chunks_where_their_partial_sums_are_large(dtype, d, isa, threads):
    """480 queries by 2600 keys: 8 chunks' partial sums of dK, dV would be ~22 MB, past the AVX2
    tier's BWF_PARTIALS_BYTES (20 MiB), which halves them to 4 (other tiers keep 8); either way
    the gradients, and the same bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(d)
    n_q, n_k = 480, 2600
    Q, dO = rand(rng, n_q, d) / 4, rand(rng, n_q, d)
    K, V = rand(rng, n_k, d) / 4, rand(rng, n_k, d)
    args = [a.astype(dtype) for a in (dO, Q, K, V)]
    results = []
    for n in (1, 2, 3):
        selfattn.set_num_threads(n)
        results.append(sdpa_backward(*args, scale=0.2))
    for got in results[1:]:
        for g, s in zip(got, results[0]):
            assert np.array_equal(g, s)
    for g, w in zip(results[0], _backward_f64(dO, Q, K, V, 0.2)):
        assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_steps_that_a_band_starts_and_ends_inside(dtype, isa):
    """After the row statistics, P and dS, the dQ product and the dK, dV product run together
    over steps of 128 keys (BWF_DQ_KEYS) from the block's first visible tile. A window whose
    blocks' keys start and end inside a step, 389 keys (three steps and a partial tile), an
    additive mask with -inf entries."""
    rng = np.random.default_rng(11)
    n_q, n_k, window = 150, 389, (70, 90)
    Q, K, V, dO = rand(rng, n_q, 12), rand(rng, n_k, 12), rand(rng, n_k, 20), rand(rng, n_q, 20)
    add = np.where(rng.random((n_q, n_k)) < 0.1, -np.inf, rng.standard_normal((n_q, n_k)))
    want = ref_backward(dO, Q, K, V, 0.45, np.where(_band_mask(n_q, n_k, window), add, -np.inf))
    got = sdpa_backward(*(a.astype(dtype) for a in (dO, Q, K, V)), scale=0.45,
                        mask=add.astype(dtype), window=window)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)


# The fused backward's budgets (csrc/attn.h): each thread's panel of scores (a block of query rows
# by every key) under 8 MiB, the partial sums of dK, dV under 64 MiB. Long rows take blocks of
# fewer query rows (down to 16) and fewer chunks; past either budget even so the blocked backward
# runs. 66000 keys are past the panel budget on every tier in both precisions (2 x 16 x 66000
# floats is 8.4 MB).
PANEL_BYTES, PARTIAL_BYTES = 8 << 20, 64 << 20


def _peak_bytes(f):
    import tracemalloc
    tracemalloc.start()
    try:
        result = f()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _backward_f64(dO, Q, K, V, scale, mask=None, causal=False):
    """The gradients in float64 with NumPy (for sizes where the long-double reference is slow;
    its rounding, ~1e-15, is far inside the tolerances)."""
    S = Q @ K.T * scale
    if mask is not None:
        S = np.where(mask, S, -np.inf)
    if causal:
        S = np.where(np.tri(*S.shape, dtype=bool), S, -np.inf)
    m = S.max(axis=-1, keepdims=True)
    E = np.exp(S - np.where(np.isfinite(m), m, 0))
    total = E.sum(axis=-1, keepdims=True)
    P = np.where(total > 0, E / np.where(total > 0, total, 1), 0)
    dP = dO @ V.T
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))
    return dS @ K * scale, dS.T @ Q * scale, P.T @ dO


def _fused_backward_ran(peak, outputs, rows, n_k, d, itemsize):
    """Beside the gradients, the fused backward stores each thread's panels, 2 x rows x n_k reals,
    and K and V packed, 2 x n_k x d and more; the blocked backward stores neither (at most partial
    sums of dK, dV: below that with the chunks of these tests)."""
    return peak - outputs >= (2 * rows + 2 * d) * n_k * itemsize


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype, n_k, rows", [(np.float64, 12000, 32), (np.float32, 40000, 16)])
def test_long_rows_halve_the_blocks_and_keep_the_fused_backward(dtype, n_k, rows, isa, threads):
    """A block of 64 query rows by n_k keys would hold panels past the 8 MiB budget (2 x 64 x
    12000 doubles, 12 MB; 2 x 64 x 40000 floats, 20 MB), so the blocks halve until theirs fit
    (32 rows, 16 rows) and the fused backward still runs: the gradients, and the same bits for 1,
    2 and 3 threads."""
    if isa == "reference":
        pytest.skip("the reference tier has no fused backward")
    rng = np.random.default_rng(52)
    n_q, d = 100, 8
    Q, dO, K, V = rand(rng, n_q, d), rand(rng, n_q, d), rand(rng, n_k, d), rand(rng, n_k, d)
    args = [x.astype(dtype) for x in (dO, Q, K, V)]
    results = []
    for n in (1, 2, 3):
        selfattn.set_num_threads(n)
        got, peak = _peak_bytes(lambda: sdpa_backward(*args, scale=0.3))
        if n == 1:
            size = args[0].itemsize
            assert _fused_backward_ran(peak, (n_q + 2 * n_k) * d * size, rows, n_k, d, size), peak
        results.append(got)
    for got in results[1:]:
        for g, s in zip(got, results[0]):
            assert np.array_equal(g, s)
    for g, w in zip(results[0], _backward_f64(dO, Q, K, V, 0.3)):
        assert_close(g, w, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.c_backend
@pytest.mark.parametrize("items, n_q, n_k, rows", [(1, 512, 9000, 64), (2, 128, 17000, 32)])
def test_long_rows_take_fewer_chunks_and_keep_the_fused_backward(items, n_q, n_k, rows, isa):
    """d = 128, float32: 8 chunks' partial sums of dK, dV (8 x 9000 x 256 floats, 74 MB) would
    pass their 64 MiB budget, so one item takes 4 chunks; two items of 17000 keys would pass it
    with 2 chunks each (70 MB), so each item is one chunk (no partials). The fused backward still
    runs: the gradients, and the same bits for 1 and 2 threads."""
    if isa == "reference":
        pytest.skip("the reference tier has no fused backward")
    rng = np.random.default_rng(53)
    d = 128
    Q, dO = (rng.standard_normal((items, n_q, d)).astype(np.float32) for _ in range(2))
    K, V = (rng.standard_normal((items, n_k, d)).astype(np.float32) / 4 for _ in range(2))
    results = []
    for n in (1, 2):
        selfattn.set_num_threads(n)
        got, peak = _peak_bytes(lambda: sdpa_backward(dO, Q, K, V))
        if n == 1:
            outputs = items * (n_q + 2 * n_k) * d * 4
            assert _fused_backward_ran(peak, outputs, rows, n_k, d, 4), peak
        results.append(got)
    for g, s in zip(results[1], results[0]):
        assert np.array_equal(g, s)
    for b in range(items):
        f64 = [x[b].astype(np.float64) for x in (dO, Q, K, V)]
        for g, w in zip(results[0], _backward_f64(*f64, d ** -0.5)):
            assert_close(g[b], w, 2e-5)


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q", [50, 130])      # one query block, or three (partial sums)
def test_past_the_panel_budget_the_blocked_backward_gives_the_gradients(n_q, dtype, isa):
    """66000 keys: the fused backward's panel would pass its budget even with blocks of 16 rows,
    so the blocked backward runs (its plan A) with O(n d) memory; masks, fully masked rows and a
    NaN row as everywhere."""
    rng = np.random.default_rng(50)
    n_k, d = 66000, 4
    Q, dO = rand(rng, n_q, d), rand(rng, n_q, d)
    K, V = rand(rng, n_k, d), rand(rng, n_k, d)
    mask = rng.random((n_q, n_k)) < 0.7
    mask[[0, n_q - 1]] = False                 # two queries see no key
    args = [x.astype(dtype) for x in (dO, Q, K, V)]
    got, peak = _peak_bytes(lambda: sdpa_backward(*args, mask=mask))
    size = args[0].itemsize
    assert not _fused_backward_ran(peak, (n_q + 2 * n_k) * d * size, 16, n_k, d, size), peak
    want = _backward_f64(dO, Q, K, V, d ** -0.5, mask)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-5 if dtype == np.float32 else 1e-12)
    assert np.all(got[0][[0, n_q - 1]] == 0)
    for g, w in zip(sdpa_backward(*args, is_causal=True),
                    _backward_f64(dO, Q, K, V, d ** -0.5, causal=True)):
        assert_close(g, w, 1e-5 if dtype == np.float32 else 1e-12)
    args[1][3, 1] = np.nan                      # a NaN score row: NaN gradients, as the forward
    dQ, dK, dV = sdpa_backward(*args)
    assert np.isnan(dQ[3]).all() and np.isfinite(np.delete(dQ, 3, axis=0)).all()
    assert np.isnan(dK).any() and np.isnan(dV).any()


@pytest.mark.slow
def test_past_the_partials_budget_the_blocked_backward_gives_the_gradients(isa):
    """288 query rows in 5 chunks, 33000 keys, d = 64, float64: past the fused backward's panel
    budget (blocks of 16 rows by 33000 keys), and the blocked backward's partial sums of dK, dV
    (5 x 33000 x 128 doubles) pass 64 MiB: it takes plan B (query blocks, then key blocks), whose
    scratch is a few blocks per thread."""
    rng = np.random.default_rng(51)
    n_q, n_k, d = 288, 33000, 64
    Q, dO, K, V = rand(rng, n_q, d), rand(rng, n_q, d), rand(rng, n_k, d), rand(rng, n_k, d)
    mask = rng.random((n_q, n_k)) < 0.9
    got, peak = _peak_bytes(lambda: sdpa_backward(dO, Q, K, V, mask=mask, is_causal=True))
    assert peak - (2 * n_k + n_q) * d * 8 < 4 << 20, peak
    want = _backward_f64(dO, Q, K, V, d ** -0.5, mask, causal=True)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-11)


def _drifting_masks(n_q, n_k):
    """Additive masks (natural units) that move a row's largest score along its keys, so that
    the fused backward's running reference (BWF_REF_SLACK) moves, once, on every tile, or
    never after the first, and masks that hide a row's first keys (the reference -inf, then
    finite)."""
    j = np.arange(n_k, dtype=float)
    hidden = np.zeros((n_q, n_k))
    hidden[::2, :100] = -np.inf                   # even rows see nothing before key 100
    hidden[5, :] = -np.inf                        # one row sees nothing at all
    return {
        "rising 0.5 a key (every tile moves)": np.broadcast_to(0.5 * j, (n_q, n_k)),
        "rising 0.1 a key (weights below the smallest normal float)":
            np.broadcast_to(0.1 * j, (n_q, n_k)),
        "falling 0.5 a key (the first tile's stays)": np.broadcast_to(-0.5 * j, (n_q, n_k)),
        "a step of 40 at key 150 (one move; the weights before it vanish)":
            np.broadcast_to(np.where(j < 150, 0.0, 40.0), (n_q, n_k)),
        "a step down at key 150, rows shifted": np.where(j[None, :] < 150 + np.arange(n_q)[:, None],
                                                         30.0, 0.0),
        "the first 100 keys hidden from even rows": hidden,
        "the first 100 keys hidden, then rising": hidden + 0.5 * j,
    }


@pytest.mark.parametrize("which", list(_drifting_masks(8, 8)))
def test_rows_whose_largest_score_moves_along_the_keys(which, isa):
    rng = np.random.default_rng(17)
    n_q, n_k = 70, 300
    Q, K, V, dO = rand(rng, n_q, 16), rand(rng, n_k, 16), rand(rng, n_k, 8), rand(rng, n_q, 8)
    mask = _drifting_masks(n_q, n_k)[which]
    for causal in (False, True):
        want = ref_backward(dO, Q, K, V, 0.25, mask, causal)
        got = sdpa_backward(dO, Q, K, V, scale=0.25, mask=mask, is_causal=causal)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)
        f32 = sdpa_backward(*(a.astype(np.float32) for a in (dO, Q, K, V)), scale=0.25,
                            mask=mask.astype(np.float32), is_causal=causal)
        for g, w in zip(f32, want):
            assert_close(g, w, 2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_additive_mask_read_in_whole_tiles_or_one_value_at_a_time(dtype, isa):
    """A mask whose rows are contiguous is read a vector at a time over whole tiles of keys (and
    one value at a time over a row's last partial tile); the same mask in Fortran order is read one
    value at a time everywhere. Both apply the saturation rule (a finite value whose scaling
    overflows becomes the largest finite number: a row masked with finfo.min keeps the
    reference's weights), -inf, and NaN (its row's gradients NaN) the same way: the same bits, and
    the reference's values where the row is finite."""
    rng = np.random.default_rng(43)
    n_q, n_k = 40, 200
    info = np.finfo(dtype)
    Q, K, V, dO = rand(rng, n_q, 8), rand(rng, n_k, 8), rand(rng, n_k, 4), rand(rng, n_q, 4)
    mask = rng.standard_normal((n_q, n_k))
    where = rng.random((n_q, n_k))
    mask[where < 0.15] = float(info.min)            # scaled by log2 e: overflows, saturates
    mask[(where >= 0.15) & (where < 0.2)] = -0.6 * float(info.max)   # 0.87 max once scaled
    mask[(where >= 0.2) & (where < 0.25)] = -np.inf
    mask[5] = float(info.min)                       # a whole row masked with finfo.min
    mask[7, 3::5] = np.nan
    mask = mask.astype(dtype)
    args = [a.astype(dtype) for a in (dO, Q, K, V)]
    by_tiles = sdpa_backward(*args, scale=0.5, mask=np.ascontiguousarray(mask))
    one_by_one = sdpa_backward(*args, scale=0.5, mask=np.asfortranarray(mask))
    for g, w in zip(by_tiles, one_by_one):
        assert g.tobytes() == w.tobytes()
    dQ, dK, dV = by_tiles
    assert np.isnan(dQ[7]).all() and np.isfinite(np.delete(dQ, 7, axis=0)).all()
    finite = np.arange(n_q) != 7
    want = ref_backward(dO[finite], Q[finite], K, V, 0.5, mask[finite].astype(np.float64))
    got = sdpa_backward(*(a[finite] for a in args[:2]), *args[2:], scale=0.5, mask=mask[finite])
    for g, w in zip(got, want):
        assert_close(g, w, 2e-5 if dtype == np.float32 else 1e-12)
