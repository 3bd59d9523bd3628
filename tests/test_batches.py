"""Many small problems (batch x heads large, n of a few hundred at most), as encoders run them:
the fused kernel's task split, and the non-finite check that reads every value operand once.

The fused kernel cuts a banded (causal, sliding-window) call of few queries into blocks of one
micro-tile of queries, and every other call into blocks of the tier's full query block; a small
problem in a batch of many is one task holding all its blocks, else each block is a task
(attention_fused.inc's FAST(fa_plan)). A block's last micro-tile is a single vector when that
holds its rest, and each block picks its own units from its rows. Either way the bits must not
depend on the thread count nor on the other items of the batch, and the results must stay within
the oracle's tolerance on both sides of every cut.
"""
import numpy as np
import pytest

import selfattn
from selfattn import _core

from test_thread_count import same_for_every_thread_count

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}

# query counts on both sides of the micro-tile (8, 16 or 32 lanes by tier and precision), of the
# full query block (up to 96) and of the small-band limit (8 blocks)
EDGE_QUERIES = [1, 15, 16, 17, 31, 32, 33, 95, 96, 97, 767, 768, 769]


def oracle(Q, K, V, band, scale):
    """softmax(scale Q K^T, keys outside the band hidden) V in long double, 0 for a row that
    sees no key; Q, K, V (..., n, d)."""
    Q, K, V = (np.asarray(a, np.longdouble) for a in (Q, K, V))
    n_q, n_k = Q.shape[-2], K.shape[-2]
    rows = np.arange(n_q)[:, None]
    cols = np.arange(n_k)[None, :]
    visible = (cols >= rows + band[0]) & (cols < rows + band[1] + 1)
    S = np.where(visible, Q @ np.swapaxes(K, -1, -2) * scale, -np.inf)
    top = S.max(axis=-1, keepdims=True)
    E = np.exp(S - np.where(np.isfinite(top), top, 0))
    total = E.sum(axis=-1, keepdims=True)
    return (E / np.where(total == 0, 1, total)) @ V


def fused(Q, K, V, band, scale, code):
    out = np.empty(Q.shape[:-1] + (V.shape[-1],), Q.dtype)
    _core.attention(out, None, Q, K, V, None, scale, band, code)
    return out


def assert_close(got, want, dtype):
    want = np.asarray(want, np.float64)
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 128, 64), (2, 3, 197, 64), (4, 16, 16, 16)],
                         ids=["bert-like", "vit-like", "tiny"])
def test_encoder_batches_same_bits_for_any_thread_count(isa, dtype, shape, threads):
    """Batches of encoder-sized heads, plain, causal, a sliding window and a bottom-right causal
    window over more keys than queries: the same bits for 1, 2, 3, 7 ... threads, and within the
    oracle's tolerance."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(11)
    *batch, n, d = shape
    Q = rng.standard_normal((*batch, n, d)).astype(dtype)
    K, V = (rng.standard_normal((*batch, n + 9, d)).astype(dtype) for _ in range(2))
    for band in [(-n, n + 9), (-n, 0), (-20, 0), (9 - 5, 9)]:
        out = same_for_every_thread_count(lambda: fused(Q, K, V, band, 0.125, code))
        some = (slice(0, 1), slice(0, 2))      # two heads against the (slow) oracle
        assert_close(out[some], oracle(Q[some], K[some], V[some], band, 0.125), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_cut_of_the_queries(isa, dtype, threads):
    """Causal calls whose query count falls on either side of a task boundary: each row matches
    the oracle (a row lost or computed twice at a cut would not), for 1 thread and several."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(5)
    for n in EDGE_QUERIES:
        Q, K, V = (rng.standard_normal((n, 8)).astype(dtype) for _ in range(3))
        for band in [(-n, 0), (-3, 2)]:
            out = same_for_every_thread_count(lambda: fused(Q, K, V, band, 0.3, code))
            assert_close(out, oracle(Q, K, V, band, 0.3), dtype)


# key counts on both sides of one, two and three key blocks of every tier (FA_BK: avx2 66 float
# and 36 double, generic 252 and 126, avx512 and neon 256 and 128)
EDGE_KEYS = [1, 35, 36, 37, 65, 66, 67, 71, 72, 73, 107, 108, 109, 125, 126, 127, 128, 129, 131,
             132, 133, 197, 198, 199, 251, 252, 253, 255, 256, 257, 385]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_cut_of_the_keys(isa, dtype, threads):
    """Key counts on either side of the fused kernel's key blocks, with scores that grow along the
    keys so that every later block raises the running maxima and rescales what the earlier ones
    summed (and one that shrinks, where they never do), a value width that is no whole number of
    micro-tile rows, two query blocks and a causal band: each row matches the oracle, with the
    same bits for 1 thread and several."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(17)
    n_q, d, d_v = 100, 24, 13
    for n_k in EDGE_KEYS:
        Q = rng.standard_normal((n_q, d)).astype(dtype)
        Q[:, 0] = np.abs(Q[:, 0]) + 1
        K, V = rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d_v)).astype(dtype)
        for trend in (np.linspace(0, 6, n_k), np.linspace(6, 0, n_k)):
            K[:, 0] = trend
            Kt = K.astype(dtype)
            for band in [(-n_q, n_k), (n_k - n_q - 40, n_k - n_q)]:
                out = same_for_every_thread_count(lambda: fused(Q, Kt, V, band, 0.5, code))
                assert_close(out, oracle(Q, Kt, V, band, 0.5), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["first", "middle", "tail", "last"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_value_of_a_hidden_key_is_found(isa, dtype, where, bad):
    """A non-finite V entry of a key that no query sees (weight exactly 0) contributes nothing:
    the fast tiers must find it, wherever it sits in a batch of rows whose length is not a whole
    number of vectors, and hand the call to the reference tier."""
    rng = np.random.default_rng(3)
    B, H, n, d = 3, 4, 40, 13
    Q, K, V = (rng.standard_normal((B, H, n, d)).astype(dtype) for _ in range(3))
    b, h, key, col = {"first": (0, 0, 0, 0), "middle": (1, 2, 17, 6), "tail": (1, 2, 17, d - 1),
                      "last": (B - 1, H - 1, n - 1, d - 1)}[where]
    mask = np.ones((n, n), bool)
    mask[:, key] = False            # no query sees this key
    V[b, h, key, col] = bad
    out = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask)
    assert np.all(np.isfinite(out)), "a hidden key's non-finite value reached the output"
    V[b, h, key, col] = 0
    want = selfattn.scaled_dot_product_attention(Q, K, V, mask=mask)
    np.testing.assert_allclose(out, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_value_the_fused_kernel_reads(isa, dtype, bad, threads):
    """The fused kernel does not scan V before it runs: a non-finite V entry it reads makes its
    sums non-finite, and the call is rerun on the reference tier. Causal tiny heads: key 11 is
    read by the block of queries 0-15, hidden (weight exactly 0) from queries 0-10 and weighed by
    11-15, so the first stay finite, the others take the inf or NaN, as on the reference tier,
    with the same bits for any thread count."""
    rng = np.random.default_rng(21)
    Q, K, V = (rng.standard_normal((8, 4, 16, 16)).astype(dtype) for _ in range(3))
    V[5, 2, 11, 7] = bad
    out = same_for_every_thread_count(
        lambda: selfattn.scaled_dot_product_attention(Q, K, V, is_causal=True))
    want = fused(Q, K, V, (-16, 0), 1 / 4, _core.isa_code("reference"))
    np.testing.assert_array_equal(out, want)
    assert np.all(np.isfinite(out[5, 2, :11])) and not np.any(np.isfinite(out[5, 2, 11:, 7]))
    V[5, 2, 11, 7] = 0
    clean = selfattn.scaled_dot_product_attention(Q, K, V, is_causal=True)
    assert_close(out[5, 2, :11], clean[5, 2, :11], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_query_keeps_the_fast_tier(isa, dtype):
    """A NaN score gives its row NaN on every tier; it is not a non-finite V, and the other rows
    keep the call's tier: the same bits as with the NaN row made finite."""
    rng = np.random.default_rng(22)
    Q, K, V = (rng.standard_normal((8, 4, 16, 16)).astype(dtype) for _ in range(3))
    clean = selfattn.scaled_dot_product_attention(Q, K, V)
    Q[3, 1, 9, 4] = np.nan
    out = selfattn.scaled_dot_product_attention(Q, K, V)
    assert np.all(np.isnan(out[3, 1, 9]))
    out[3, 1, 9] = clean[3, 1, 9]
    np.testing.assert_array_equal(out, clean)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_output_step_with_a_zero_weight_on_a_non_finite_value(isa, dtype):
    """compute_attention_output on a batch: a weight of exactly 0 takes nothing from an inf or
    NaN in V, and a finite batch is the plain product."""
    rng = np.random.default_rng(8)
    W = rng.random((3, 50, 70)).astype(dtype)
    V = rng.standard_normal((3, 70, 21)).astype(dtype)
    plain = selfattn.compute_attention_output(W, V)
    assert_close(plain, np.asarray(W, np.longdouble) @ V, dtype)
    W[2, :, 69] = 0
    V[2, 69, 20] = np.nan
    V[2, 69, 3] = np.inf
    out = selfattn.compute_attention_output(W, V)
    assert np.all(np.isfinite(out))
    V[2, 69] = 0
    assert_close(out, np.asarray(W, np.longdouble) @ V, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("item", [0, 77, 129])
def test_huge_scores_in_one_item_of_a_large_batch(isa, dtype, item, threads):
    """The fused kernel picks each block's units from the largest |Q| of its queries and |K| of
    the keys they see: scores near the float range in any single item (the first, one inside
    the batch, the last) must be seen, or the exp2 units overflow there to inf or NaN."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(21)
    Q, K, V = (rng.standard_normal((130, 6, 8)).astype(dtype) for _ in range(3))
    # Q[item, 2] . K[item, 3] = 0.8 of the largest float: finite, but not times log2(e)
    u = np.full(8, np.sqrt(0.8 * float(np.finfo(dtype).max) / 8))
    Q[item, 2] = K[item, 3] = u
    band = (-6, 6)
    out = same_for_every_thread_count(lambda: fused(Q, K, V, band, 1.0, code))
    assert np.all(np.isfinite(out))
    assert_close(out[item], oracle(Q[item], K[item], V[item], band, 1.0), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_item_gives_the_same_bits_alone_and_in_a_batch(isa, dtype, threads):
    """Each block picks its units from its own rows, so an item's result does not depend on the
    other items: scores near the float range in one item (natural units there) leave the others
    bit for bit as they are alone, in a batch of whole-item tasks (many small items) and of
    one-block tasks (few items, a long one). Before, the units were one choice for the whole
    call, and one huge item moved every other item's bits."""
    rng = np.random.default_rng(31)
    for B, n in [(40, 20), (2, 300)]:
        Q, K, V = (rng.standard_normal((B, n, 16)).astype(dtype) for _ in range(3))
        u = np.full(16, np.sqrt(0.8 * float(np.finfo(dtype).max) / 16))
        Q[B - 1, 3] = K[B - 1, 5] = u
        for threads_ in (1, 3):
            selfattn.set_num_threads(threads_)
            batch = selfattn.scaled_dot_product_attention(Q, K, V, scale=1.0, is_causal=True)
            assert np.all(np.isfinite(batch))
            for b in (0, B // 2, B - 1):
                alone = selfattn.scaled_dot_product_attention(Q[b], K[b], V[b], scale=1.0,
                                                              is_causal=True)
                assert np.array_equal(batch[b], alone), f"item {b} of {B} differs from alone"


def reference(run):
    """run() on the reference tier (the scalar kernels the fast ones are tested against)."""
    before = selfattn.get_isa()
    selfattn.set_isa("reference")
    try:
        return run()
    finally:
        selfattn.set_isa(before)


# query counts of tiny problems around one vector (2, 4, 8 or 16 lanes) and one micro-tile
TINY_QUERIES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_problems_in_many_items(isa, dtype, threads):
    """Batches of many tiny heads (whole-item tasks, a single-vector last micro-tile): every query
    count around a vector and a micro-tile, plain and causal with more keys than queries, match
    the oracle within tolerance and give the same bits for any thread count."""
    rng = np.random.default_rng(17)
    for n in TINY_QUERIES:
        Q = rng.standard_normal((12, 2, n, 16)).astype(dtype)
        K, V = (rng.standard_normal((12, 2, n + 3, 16)).astype(dtype) for _ in range(2))
        for causal, band in [(False, (-n, n + 3)), ("bottom_right", (-n - 3, 3))]:
            run = lambda: selfattn.scaled_dot_product_attention(Q, K, V, is_causal=causal)
            out = same_for_every_thread_count(run)
            assert_close(out, oracle(Q, K, V, band, 0.25), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tasks_of_several_tiny_items(isa, dtype, threads):
    """Heads so small that a task holds several (284 items of 5 x 8: 8 a task, the last task 4):
    every item, the last task's included, gives the bits it gives alone, for any thread count,
    within the oracle's tolerance, plain and causal."""
    rng = np.random.default_rng(23)
    Q, K, V = (rng.standard_normal((71, 4, 5, 8)).astype(dtype) for _ in range(3))
    for causal, band in [(False, (-5, 5)), (True, (-5, 0))]:
        run = lambda: selfattn.scaled_dot_product_attention(Q, K, V, is_causal=causal)
        out = same_for_every_thread_count(run)
        assert_close(out, oracle(Q, K, V, band, 8 ** -0.5), dtype)
        for b, h in [(0, 0), (35, 2), (70, 0), (70, 3)]:
            alone = selfattn.scaled_dot_product_attention(Q[b, h], K[b, h], V[b, h],
                                                          is_causal=causal)
            np.testing.assert_array_equal(out[b, h], alone)


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_items_with_every_operand_kind(isa, dtype, threads):
    """The whole-item tasks with what a batch of encoder heads brings: a K and V shared by every
    head (broadcast batch axes), strided (sliced) inputs, a per-head float mask with a fully
    masked row, a boolean padding mask, per-sequence lengths and a sliding window. Against the
    reference tier, and the same bits for any thread count."""
    rng = np.random.default_rng(23)
    B, H, n, d = 6, 4, 40, 24
    Q = rng.standard_normal((B, H, n, 2 * d)).astype(dtype)[..., ::2]      # strided rows
    K = rng.standard_normal((B, 1, n, d)).astype(dtype)                      # shared by the heads
    V = np.asfortranarray(rng.standard_normal((B, 1, n, d + 5)).astype(dtype))
    float_mask = rng.standard_normal((H, n, n)).astype(dtype)
    float_mask[1, 7] = -np.inf
    pad = np.ones((B, 1, 1, n), bool)
    pad[2, ..., 30:] = False
    calls = [dict(), dict(mask=float_mask), dict(mask=pad, is_causal=True),
             dict(query_lengths=np.arange(B) * 7, key_lengths=n - np.arange(B)),
             dict(window=(5, 2))]
    for kwargs in calls:
        run = lambda: selfattn.scaled_dot_product_attention(Q, K, V, **kwargs)
        out = same_for_every_thread_count(run)
        assert_close(out, reference(run), dtype)


# ---- the batched call without the general Python path (_api._plain_batch_sdpa) ---------------

def general_path(Q, K, V, **kwargs):
    """scaled_dot_product_attention through the general path: a NumPy bool for return_weights
    is a valid flag that the plain paths do not take."""
    return selfattn.scaled_dot_product_attention(Q, K, V, return_weights=np.False_, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_plain_batch_path_gives_the_general_paths_bits(isa, dtype):
    """Batches the plain batched path takes (3-D and 4-D, causal or not, default, float and int
    scales, sliced batch axes, a head axis broadcast by a zero stride) give the general path's
    result bit for bit."""
    from selfattn._api import _PLAIN_BANDS, _plain_batch_sdpa
    rng = np.random.default_rng(41)
    big = rng.standard_normal((6, 8, 33, 24)).astype(dtype)
    Q, K, V = big[:, :4, :, :16], big[:, 4:, :30, :16], big[:, 4:, :30, 8:]
    cases = [(Q[0], K[0], V[0]), (Q, K, V), (Q[::2], K[::2], V[::2]),
             (Q, np.broadcast_to(K[:, :1], K.shape), V)]
    for q, k, v in cases:
        for causal in (False, True):
            for scale in (None, 0.3, 2):
                plain = _plain_batch_sdpa(q, k, v, scale, _PLAIN_BANDS[causal])
                assert plain is not None, "the plain batched path declined a plain batch"
                want = general_path(q, k, v, scale=scale, is_causal=causal)
                assert plain.dtype == want.dtype and np.array_equal(plain, want)
                got = selfattn.scaled_dot_product_attention(q, k, v, scale=scale,
                                                            is_causal=causal)
                assert np.array_equal(got, want)


def test_the_plain_batch_path_declines_the_rest():
    """Everything else goes to the general path (which owns every rule and message): other
    dtypes, mixed or byte-swapped ones, broadcasting between operands, mismatched sizes, empty
    operands, rows that are not contiguous, subclasses and lists, NumPy or non-finite or bool
    scales, 2-D matrices (_core.plain_sdpa's)."""
    from selfattn._api import _PLAIN_BANDS, _plain_batch_sdpa
    rng = np.random.default_rng(43)
    Q, K, V = (rng.standard_normal((3, 4, 10, 8)) for _ in range(3))

    class Sub(np.ndarray):
        pass

    declined = [
        (Q.astype(np.float16), K, V), (Q.astype(np.float32), K, V), (Q.astype(">f8"), K, V),
        (Q, K[:, :1], V[:, :1]), (Q, K[..., :7], V), (Q, K, V[:, :, :9]), (Q[:, :, :0], K, V),
        (Q, K, V[..., :0]), (Q[..., ::2], K[..., ::2], V), (Q.view(Sub), K, V),
        (Q.tolist(), K, V), (Q[0, 0], K[0, 0], V[0, 0]),
    ]
    for q, k, v in declined:
        assert _plain_batch_sdpa(q, k, v, None, _PLAIN_BANDS[False]) is None
    for scale in (np.float64(0.5), float("inf"), float("nan"), True, 10**400, "0.5"):
        assert _plain_batch_sdpa(Q, K, V, scale, _PLAIN_BANDS[False]) is None
    with pytest.raises(ValueError, match="the last dimensions of Q and K must match"):
        selfattn.scaled_dot_product_attention(Q, K[..., :7], V)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0",
                    reason="NumPy 1.x arrays have at most 32 dimensions")
def test_more_than_32_batch_dimensions_as_np_matmul():
    """np.broadcast_shapes stops at 32 dimensions with a RuntimeError that names no function;
    NumPy 2's arrays, and np.matmul, take up to 64, and so does selfattn."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((1,) * 32 + (2, 3, 4))
    K = rng.standard_normal((2, 5, 4))
    V = rng.standard_normal((1,) * 34 + (5, 2))
    scores = selfattn.compute_self_attention_scores(Q, K, scale=1.0)
    np.testing.assert_allclose(scores, np.matmul(Q, np.swapaxes(K, -1, -2)), rtol=1e-13)
    out = selfattn.scaled_dot_product_attention(Q, K, V, mask=np.ones((1,) * 33 + (3, 5), bool))
    assert out.shape == (1,) * 33 + (2, 3, 2)  # V has 34 batch dimensions
    np.testing.assert_allclose(out.reshape(2, 3, 2),
                               selfattn.scaled_dot_product_attention(Q.reshape(2, 3, 4), K,
                                                                     V.reshape(5, 2)), rtol=1e-13)
    with pytest.raises(ValueError, match="scaled_dot_product_attention: the batch .* broadcast"):
        selfattn.scaled_dot_product_attention(Q, rng.standard_normal((1,) * 33 + (3, 5, 4)), V)
