"""The step products (compute_self_attention_scores, compute_attention_output and the projection
GEMM: csrc/matmul_fast.inc) on the shapes where their tiling changes: row counts around the
micro-tile's slivers and the task tiles, columns around a B panel (MM_NC), depths around a k step
(MM_KC), strided operands, and the small products that are cut into many small tasks.

The fast tiers promise that the tiling changes no bits (each element is the same sum in the same
order whichever task computes it), so any run of rows of a product equals those rows of the whole
product, bit for bit, for every thread count; and every result is exact to the oracle's bound.
"""
import numpy as np
import pytest

import selfattn
from selfattn import _core
from attn_reference import LD, assert_close, ref_output, ref_scores

pytestmark = pytest.mark.c_backend

# rows around slivers of 4, 6, 8 and 12 and the task tiles built from them; the projection's 512
THREADS = (1, 2, 3, 7)


def product(A, B, code, out=None):
    C = np.empty((A.shape[0], B.shape[1]), A.dtype) if out is None else out
    _core.matmul(C, A, B, code)
    return C


def scores(Q, K, code, scale=0.125):
    S = np.empty((Q.shape[0], K.shape[0]), Q.dtype)
    n_q, n_k = S.shape
    _core.scores(S, Q, K, None, scale, (-n_q - n_k, n_q + n_k), code)
    return S


def for_every_thread_count(run):
    """run() for each of THREADS, which must give the same bits; returns the 1-thread result."""
    selfattn.set_num_threads(THREADS[0])
    first = run()
    for n in THREADS[1:]:
        selfattn.set_num_threads(n)
        np.testing.assert_array_equal(run(), first, err_msg=f"{n} threads differ from 1")
    return first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(512, 64, 192), (97, 64, 192), (145, 257, 129),
                                     (13, 255, 257), (1, 3, 5), (300, 1, 33)])
def test_matmul_rows_are_the_rows_of_the_whole(isa, dtype, threads, m, k, n):
    """Rows [lo, hi) of A @ B equal, bit for bit, A[lo:hi] @ B computed alone (a different tiling:
    other tiles, other edge slivers), with 1 to 7 threads; the whole is exact."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(m * 1000 + k)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    whole = for_every_thread_count(lambda: product(A, B, code))
    assert_close(whole, ref_output(A, B))
    if isa == "reference":
        return                      # its loops have no tiles
    for lo, hi in [(0, m // 2), (m // 3, m), (min(5, m - 1), m), (m - 1, m)]:
        if lo < hi:
            part = for_every_thread_count(lambda: product(A[lo:hi], B, code))
            np.testing.assert_array_equal(part, whole[lo:hi], err_msg=f"rows {lo}:{hi}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q, n_k, d", [(512, 512, 64), (601, 257, 64), (25, 129, 255),
                                         (13, 1000, 8)])
def test_scores_rows_are_the_rows_of_the_whole(isa, dtype, threads, n_q, n_k, d):
    """The same for the scores (scale, then the overflow and the mask rules, on each tile)."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(n_q + n_k + d)
    Q = rng.standard_normal((n_q, d)).astype(dtype)
    K = rng.standard_normal((n_k, d)).astype(dtype)
    whole = for_every_thread_count(lambda: scores(Q, K, code))
    assert_close(whole, ref_scores(Q, K, scale=0.125))
    if isa == "reference":
        return
    for lo, hi in [(0, n_q // 2), (n_q // 3, n_q), (n_q - 1, n_q)]:
        part = for_every_thread_count(lambda: scores(Q[lo:hi], K, code))
        np.testing.assert_array_equal(part, whole[lo:hi], err_msg=f"rows {lo}:{hi}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_score_tiles_are_the_narrow_ones(isa, dtype, threads):
    """Enough keys and a small d_k make the scores' tiles wider than MM_NC (several pieces of
    MM_NC columns in a tile, each finished on its own): every run of columns equals, bit for bit,
    the scores against those keys alone (narrow tiles), with the mask, a band and the overflow
    rule (one query row whose scaled scores overflow), for 1 to 7 threads."""
    code = _core.isa_code(isa)
    n_q, n_k, d = 61, 4200, 64
    rng = np.random.default_rng(11)
    Q = rng.standard_normal((n_q, d)).astype(dtype)
    K = rng.standard_normal((n_k, d)).astype(dtype)
    Q[7] *= np.finfo(dtype).max / 4            # its scores overflow: the overflow rule's row
    mask = rng.random((n_q, n_k)) < 0.9
    lo, hi = -1000, 3000                       # key j visible from row i when lo <= j - i <= hi

    def run(K_part, mask_part, shift):
        S = np.empty((n_q, K_part.shape[0]), dtype)
        _core.scores(S, Q, K_part, mask_part, 0.125, (lo - shift, hi - shift), code)
        return S

    whole = for_every_thread_count(lambda: run(K, mask, 0))
    assert np.isinf(whole[7]).any() and np.isfinite(whole[7]).any()
    assert np.isneginf(whole[0, 3001:]).all() and np.isfinite(whole[0, :3001][mask[0, :3001]]).all()
    for c0, c1 in [(0, 600), (1000, 1513), (1990, 2990), (4000, n_k)]:
        part = for_every_thread_count(lambda: run(K[c0:c1], mask[:, c0:c1], c0))
        np.testing.assert_array_equal(part, whole[:, c0:c1], err_msg=f"keys {c0}:{c1}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_operands(isa, dtype, threads):
    """Operands whose rows are longer than their columns (column slices of wider arrays, a
    transposed-then-copied K) and a strided output give the contiguous operands' bits."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(7)
    wide_A = rng.standard_normal((530, 100)).astype(dtype)
    wide_B = rng.standard_normal((70, 300)).astype(dtype)
    A, B = wide_A[:, 3:73], wide_B[:, 5:200]
    out = np.full((530, 250), np.nan, dtype)
    got = for_every_thread_count(lambda: product(A, B, code, out[:, 10:205]))
    np.testing.assert_array_equal(got, product(A.copy(), B.copy(), code))
    assert np.isnan(out[:, :10]).all() and np.isnan(out[:, 205:]).all(), "wrote outside out"

    Q, K = wide_A[:, 20:84], wide_A[::2, 30:94]
    np.testing.assert_array_equal(scores(Q, K, code), scores(Q.copy(), K.copy(), code))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_public_steps_on_step_bench_shapes(dtype, threads, rng):
    """The functions the step benchmark times (n = 512, d = 64), through the public API with the
    default scale, for 1 and 2 threads: exact, and the same bits."""
    Q, K, V, X = (rng.standard_normal((512, 64)).astype(dtype) for _ in range(4))
    W_all = rng.standard_normal((64, 192)).astype(dtype)
    S = for_every_thread_count(lambda: selfattn.compute_self_attention_scores(Q, K))
    assert_close(S, ref_scores(Q, K))
    W = selfattn.softmax_attention_weights(S)
    out = for_every_thread_count(lambda: selfattn.compute_attention_output(W, V))
    assert_close(out, ref_output(W, V))
    proj = for_every_thread_count(lambda: selfattn.compute_attention_output(X, W_all))
    assert_close(proj, np.matmul(X.astype(LD), W_all.astype(LD)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q, n_k, d", [(300, 150, 300), (512, 129, 64), (97, 1030, 17)])
def test_scores_with_one_shared_kt_pack(isa, dtype, threads, n_q, n_k, d):
    """Scores cut into several row tiles read one K^T pack made for the whole call (several k
    steps where d > MM_KC, keys not a whole number of slivers); fewer rows make fewer tiles and
    one tile packs its own panel: the same bits either way, with the mask, a band and the
    overflow rule, for 1 to 7 threads, and exact."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(n_q * 7 + n_k + d)
    Q = rng.standard_normal((n_q, d)).astype(dtype)
    K = rng.standard_normal((n_k, d)).astype(dtype)
    Q[n_q // 2] *= np.finfo(dtype).max / 4          # a row whose scaled scores overflow
    mask = rng.random((n_q, n_k)) < 0.9
    lo, hi = -n_k // 2, n_k                         # key j visible from row i when lo <= j - i <= hi

    def run(rows):
        S = np.empty((rows.stop - rows.start, n_k), dtype)
        _core.scores(S, Q[rows], K, mask[rows], 0.125, (lo + rows.start, hi + rows.start), code)
        return S

    whole = for_every_thread_count(lambda: run(slice(0, n_q)))
    plain = np.empty((n_q, n_k), dtype)
    _core.scores(plain, Q, K, None, 0.125, (-n_q - n_k, n_q + n_k), code)
    finite = np.isfinite(plain).all(axis=1)
    assert_close(plain[finite], ref_scores(Q, K, scale=0.125)[finite])
    assert np.isinf(whole[n_q // 2]).any()
    visible = mask & (np.arange(n_k) - np.arange(n_q)[:, None] >= lo) \
        & (np.arange(n_k) - np.arange(n_q)[:, None] <= hi)
    np.testing.assert_array_equal(np.isneginf(whole[finite]), ~visible[finite])
    np.testing.assert_array_equal(whole[visible & finite[:, None]],
                                  plain[visible & finite[:, None]])
    if isa == "reference":
        return
    for lo_row, hi_row in [(0, 12), (n_q // 3, n_q), (5, 5 + n_q // 4), (n_q - 1, n_q)]:
        part = for_every_thread_count(lambda: run(slice(lo_row, hi_row)))
        np.testing.assert_array_equal(part, whole[lo_row:hi_row], err_msg=f"rows {lo_row}:{hi_row}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_scores_share_one_pack_per_item(dtype, threads, rng):
    """A batch of scores (one K^T pack per item, in one buffer) gives each item's bits as its own
    call does, for 1 to 7 threads."""
    Q = rng.standard_normal((3, 2, 203, 40)).astype(dtype)
    K = rng.standard_normal((3, 2, 77, 40)).astype(dtype)
    whole = for_every_thread_count(lambda: selfattn.compute_self_attention_scores(Q, K))
    for b in range(3):
        for h in range(2):
            alone = selfattn.compute_self_attention_scores(Q[b, h], K[b, h])
            np.testing.assert_array_equal(whole[b, h], alone, err_msg=f"item {b}, {h}")
            assert_close(alone, ref_scores(Q[b, h], K[b, h]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_deep_products_in_big_tasks(isa, dtype, threads):
    """The attention output's shape, k = n large and 64 columns (the tasks read one pack of all
    of V's k steps; the tier's GEMM_TASK_FLOPS sets their rows): any run of rows equals those
    rows of the whole, bit for bit, for 1 to 7 threads, and exact."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(5)
    m, k, n = 700, 1100, 64
    A = rng.random((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    whole = for_every_thread_count(lambda: product(A, B, code))
    assert_close(whole, ref_output(A, B))
    if isa == "reference":
        return
    for lo, hi in [(0, 31), (100, 700), (699, 700)]:
        part = for_every_thread_count(lambda: product(A[lo:hi], B, code))
        np.testing.assert_array_equal(part, whole[lo:hi], err_msg=f"rows {lo}:{hi}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(512, 64, 192), (97, 300, 64), (1024, 64, 128),
                                     (1025, 64, 128), (13, 520, 96), (1000, 1100, 128)])
def test_matmul_reads_a_narrow_b_in_place_with_the_bits_of_its_pack(isa, dtype, threads, m, k,
                                                                    n):
    """A narrow B (whole column slivers, rows at most two tiles wide) under a product of at most
    1024 rows is read in place rather than packed (matmul_fast.inc's gemm_reads_b_in_place), unless
    it holds more than 512 KiB (1100 x 128); the same B as a view into rows 4096 wide is packed. Both give the same bits, for 1 to 7 threads,
    one k step or several, rows in whole slivers or not, and are exact."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(m + k + n)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    wide = np.zeros((k, 4096), dtype)
    wide[:, 7:7 + n] = B
    B_view = wide[:, 7:7 + n]
    assert B_view.strides[0] == 4096 * A.itemsize
    in_place = for_every_thread_count(lambda: product(A, B, code))
    packed = for_every_thread_count(lambda: product(A, B_view, code))
    np.testing.assert_array_equal(in_place, packed)
    assert_close(in_place, ref_output(A, B))
    # a batch against one broadcast B, read in place for every item
    A3 = rng.standard_normal((3, m, k)).astype(dtype)
    batched = for_every_thread_count(lambda: selfattn.compute_attention_output(A3, B))
    for item in range(3):
        np.testing.assert_array_equal(batched[item], product(A3[item], B, code))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_batch, b_batch, m", [
    ((2, 1), (2, 1), 97),       # a B per item: its row tiles (every tier cuts 2 items into
    ((2, 1), (1, 1), 97),       # at least 8 tasks) share its one pack; B broadcast and k > m:
    ((2, 1), (1, 1), 400),      # each tile packs its panel; k <= m: one pack per item, shared
])
def test_matmul_with_one_shared_b_pack(isa, dtype, threads, a_batch, b_batch, m):
    """A batched matmul cut into several row tiles reads one pack of B made for the call (two k
    steps, columns not a whole number of slivers), except where B is broadcast over the batch
    and deeper than the result is tall (that pack would outgrow B and the result; the tiles pack
    their own panels): either way each item's bits are those of its own call, for 1 to 7
    threads, and exact."""
    rng = np.random.default_rng(m)
    k, n = 300, 201
    A = rng.standard_normal(a_batch + (m, k)).astype(dtype)
    B = rng.standard_normal(b_batch + (k, n)).astype(dtype)
    whole = for_every_thread_count(lambda: selfattn.compute_attention_output(A, B))
    assert whole.shape == a_batch + (m, n)
    for b in range(a_batch[0]):
        for h in range(a_batch[1]):
            B_item = B[b % b_batch[0], h]
            alone = selfattn.compute_attention_output(A[b, h], B_item)
            np.testing.assert_array_equal(whole[b, h], alone, err_msg=f"item {b}, {h}")
            assert_close(alone, ref_output(A[b, h], B_item))


def test_a_broadcast_b_is_not_packed_once_per_item(threads):
    """A deep product against one B broadcast over a batch (k = 4096 > m: a projection's shared
    weights) is cut into several row tiles per item, yet allocates less than B itself: a pack of
    B shared by the tiles would be a copy per item (4 x B here), so the tiles pack their own
    panels instead. The result is still exact."""
    import tracemalloc

    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 100, 4096)).astype(np.float32)
    B = rng.standard_normal((4096, 256)).astype(np.float32)
    selfattn.set_num_threads(2)
    tracemalloc.start()
    try:
        out = selfattn.compute_attention_output(A, B)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes + B.nbytes, (peak, out.nbytes, B.nbytes)
    assert_close(out[3], ref_output(A[3], B))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, m, k, n", [((), 97, 300, 64), ((), 512, 200, 129),
                                            ((), 25, 40, 7), ((9,), 128, None, 256)])
def test_a_rows_on_one_l1_set_are_copied_with_the_same_bits(isa, dtype, threads, batch, m, k, n):
    """Rows of A 4 KiB apart (1024 floats, 512 doubles: the attention weights at n = 1024 or 512)
    all start on one L1 set, so each task copies its slivers' rows to a padded stride before the
    micro-kernel reads them (matmul_fast.inc's gemm_copies_a: where A is at most 4 MiB, or, the
    last case, 4.5 MiB with n a whole tile of columns). The matmul and the scores on
    such a view give the bits of the same values in a contiguous array (rows 4 * k or 8 * k bytes
    apart, read in place), for 1 to 7 threads, with k steps of 256 and a partial one, rows in
    whole slivers or not, and are exact."""
    code = _core.isa_code(isa)
    k = k or 4096 // np.dtype(dtype).itemsize - 24          # 4.5 MiB of A in all
    rng = np.random.default_rng(m + k + n)
    A = rng.standard_normal(batch + (m, k)).astype(dtype)
    wide = np.zeros(batch + (m, 4096 // A.itemsize), dtype)
    wide[..., 5:5 + k] = A
    A_view = wide[..., 5:5 + k]
    assert A_view.strides[-2] == 4096 and np.array_equal(A_view, A)
    B = rng.standard_normal((k, n)).astype(dtype)
    if batch:
        run = lambda X: selfattn.compute_attention_output(X, B)
    else:
        run = lambda X: product(X, B, code)
    copied = for_every_thread_count(lambda: run(A_view))
    np.testing.assert_array_equal(copied, run(A))
    assert_close(copied, ref_output(A, B))
    if batch:
        return
    K = rng.standard_normal((n, k)).astype(dtype)
    copied = for_every_thread_count(lambda: scores(A_view, K, code))
    np.testing.assert_array_equal(copied, scores(A, K, code))
    assert_close(copied, ref_scores(A, K, 0.125))


def layout_product(A, B, code, layout, shape, add_to=None):
    C = np.empty(shape, A.dtype) if add_to is None else add_to.copy()
    _core.matmul(C, A, B, code, layout)
    return C


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (13, 7, 33), (97, 300, 64), (200, 520, 300),
                                     (1024, 512, 64), (36, 1100, 40), (24, 0, 16)])
def test_matmul_reads_transposed_operands_with_the_bits_of_their_copies(isa, dtype, threads, m,
                                                                        k, n):
    """matmul's layout (csrc/attn.h's SA_MATMUL_*), as the gradients' X^T @ dP and dP @ W^T use it:
    A given as A^T (k, m) and B as B^T (n, k), read where they are, give the bits of the product
    of transposed copies for 1 to 7 threads, rows in whole slivers or not, one k step or several;
    with 4 the product is added to what out holds (exact to the oracle); the inputs are left as
    they were."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(m + 3 * k + 7 * n)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    At, Bt = np.ascontiguousarray(A.T), np.ascontiguousarray(B.T)
    At_copy, Bt_copy = At.copy(), Bt.copy()
    plain = for_every_thread_count(lambda: product(A, B, code))
    for layout, a, b in [(1, At, B), (2, A, Bt), (3, At, Bt)]:
        got = for_every_thread_count(lambda: layout_product(a, b, code, layout, (m, n)))
        np.testing.assert_array_equal(got, plain, err_msg=f"layout {layout}")
    C0 = rng.standard_normal((m, n)).astype(dtype)
    for layout, a, b in [(4, A, B), (7, At, Bt)]:
        added = for_every_thread_count(lambda: layout_product(a, b, code, layout, (m, n), C0))
        assert_close(added, C0.astype(LD) + ref_output(A, B))
    np.testing.assert_array_equal(At, At_copy)
    np.testing.assert_array_equal(Bt, Bt_copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_transposed_operands_strided_and_broadcast(isa, dtype):
    """A^T as a view into longer rows and B^T one matrix broadcast over the batch (a weight shared
    by every sequence), against NumPy in extended precision; and added to a batch of results."""
    from selfattn._kernels import _matmul
    rng = np.random.default_rng(11)
    m, k, n = 70, 45, 130
    At = rng.standard_normal((3, k, 2 * m + 5)).astype(dtype)[..., 5: 5 + m]   # (3, k, m)
    Bt = rng.standard_normal((1, n, k)).astype(dtype)                           # (1, n, k)
    want = np.matmul(np.swapaxes(At, -1, -2).astype(LD), np.swapaxes(Bt, -1, -2).astype(LD))
    got = _matmul(At, Bt, np.dtype(dtype), (3,), a_t=True, b_t=True)     # on the isa's tier
    assert_close(got, want)
    C0 = rng.standard_normal((3, m, n)).astype(dtype)
    total = C0.copy()
    assert _matmul(At, Bt, np.dtype(dtype), (3,), a_t=True, b_t=True, add_to=total) is total
    assert_close(total, want + C0.astype(LD))


def test_matmul_refuses_an_unknown_layout():
    """Only 1, 2 and 4 ORed; a transposed operand has the transposed shape."""
    A = np.ones((2, 3))
    with pytest.raises(ValueError, match="layout"):
        _core.matmul(np.empty((2, 2)), A, A.T.copy(), -1, 8)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.matmul(np.empty((2, 2)), A, A.T.copy(), -1, 2)    # B^T is (n, k) = (2, 3)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.matmul(np.empty((2, 2)), A, A.T.copy(), -1, 1)    # A^T has out's 2 rows as columns
