"""Many small problems (batch x heads large, n of a few hundred at most), as encoders run them:
the fused kernel's task split, and the non-finite check that reads every value operand once.

The fused kernel cuts a banded (causal, sliding-window) call of few queries into tasks of one
micro-tile of queries, and every other call into tasks of the tier's full query block
(attention_fused.inc's FAST(fa_plan)); either way the bits must not depend on the thread count,
and the results must stay within the oracle's tolerance on both sides of every cut.
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
    """The fused kernel picks its units from the largest |Q| and |K| of the whole batch, scanned
    in tasks of a few items each: scores near the float range in any single item (the first,
    one inside a task, the last) must be seen, or the exp2 units overflow there to inf or NaN."""
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
