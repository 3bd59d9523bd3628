"""Decoding: few queries (n_q = 1..16) against many keys, the fast tiers' decode kernel
(csrc/attention_decode.inc, chosen by csrc/attention_decode.h for n_q <= 16 and n_k >= 8 n_q
without weights). Its answers against the long-double oracle, with masks, bands and broadcast
batches; its rules for masked rows, NaN rows and zero-weight keys over non-finite values; the same
bits for every thread count; Ctrl-C.

The key counts span several of the kernel's chunks (256 keys) and end inside one, so the merge of
partial softmaxes is exercised, as are head sizes that are no multiple of any vector width.
"""
import os
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest

import selfattn
from selfattn import _core
from attn_reference import assert_close, ref_attention
import calls

THREAD_COUNTS = sorted({1, 2, 3, 7, max(4, os.cpu_count() or 1)})

# (n_q, n_k, d_k, d_v): single-query decoding, a few queries, the largest n_q the kernel takes.
# Several queries run in register blocks of up to 4 queries x 2 keys (x 4 keys for two queries,
# and from 8 queries on where d is a multiple of 16 for float32 on the AVX-512 tier), their V
# sums in groups of 4 queries (8 on the AVX-512 tier); so the counts below leave a group of 1, 2
# or 3 queries, a group of 8 and one of 1 or 4, keys at a chunk's end that fill no block (1023
# and 777 keys leave 255 and 9), columns past the last whole vector (d = 24, 9, 17, 48), and V
# sums in blocks of 32 keys, which 333 or 1100 keys do not fill.
SHAPES = [(1, 1000, 64, 64), (1, 8, 5, 3), (2, 513, 37, 41), (5, 700, 128, 128),
          (16, 300, 24, 17), (3, 333, 19, 40), (8, 1100, 128, 128), (13, 401, 9, 33),
          (2, 16, 1, 2), (9, 1023, 128, 128), (12, 777, 24, 48)]


def band_mask(n_q, n_k, band):
    """The band (lo, hi) of attn.h's sa_band as a boolean mask: query i sees i+lo <= j <= i+hi."""
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    return (j >= i + band[0]) & (j <= i + band[1])


def attention(Q, K, V, mask=None, scale=0.125, band=None, batch=None, isa=None):
    """_core.attention without weights (the decode kernel's entry), on the current tier."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    batch = batch if batch is not None else np.broadcast_shapes(Q.shape[:-2], K.shape[:-2],
                                                                V.shape[:-2])
    band = band if band is not None else (-n_q, n_k)
    out = np.empty(batch + (n_q, V.shape[-1]), Q.dtype)
    b = lambda a, rows, cols: np.broadcast_to(a, batch + (rows, cols))
    _core.attention(out, None, b(Q, n_q, Q.shape[-1]), b(K, n_k, K.shape[-1]),
                    b(V, n_k, V.shape[-1]), None if mask is None else b(mask, n_q, n_k), scale,
                    band, _core.isa_code(isa or selfattn.get_isa()))
    return out


def oracle(Q, K, V, mask=None, scale=0.125, band=None):
    """The oracle's output, the band folded into the mask (-inf / False where it hides a key)."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    if band is not None:
        seen = band_mask(n_q, n_k, band)
        if mask is None:
            mask = seen
        elif mask.dtype == bool:
            mask = mask & seen
        else:
            mask = np.where(seen, mask, -np.inf)
    return ref_attention(Q, K, V, scale=scale, mask=mask)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q, n_k, d_k, d_v", SHAPES)
def test_against_the_oracle(isa, dtype, n_q, n_k, d_k, d_v):
    rng = np.random.default_rng(n_q * 1000 + n_k)
    Q = rng.standard_normal((2, n_q, d_k)).astype(dtype)
    K = rng.standard_normal((2, n_k, d_k)).astype(dtype)
    V = rng.standard_normal((2, n_k, d_v)).astype(dtype)
    assert_close(attention(Q, K, V), oracle(Q, K, V), dtype)
    # the public function, default scale: the same kernel
    assert_close(selfattn.scaled_dot_product_attention(Q, K, V),
                 ref_attention(Q, K, V)[0], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_q", [6, 13])
def test_masks_and_bands(isa, dtype, n_q):
    """Float and boolean masks, and the bands decoding uses: bottom-right causal (the common
    case: the last query sees the last key), top-left causal, a sliding window, and a band whose
    first queries see no key (their output is 0); for 6 queries (groups of 4 and 2) and 13 (three
    groups of 4 and one, keys some queries do not weigh among those others do)."""
    rng = np.random.default_rng(3 + n_q)
    n_k, d = 900, 40
    Q = rng.standard_normal((3, n_q, d)).astype(dtype)
    K = rng.standard_normal((3, n_k, d)).astype(dtype)
    V = rng.standard_normal((3, n_k, d + 3)).astype(dtype)
    float_mask = np.where(rng.random((3, n_q, n_k)) < 0.2, -np.inf,
                          rng.standard_normal((3, n_q, n_k))).astype(dtype)
    float_mask[1, 2, :] = -np.inf                        # a fully masked row
    bool_mask = rng.random((3, n_q, n_k)) < 0.7
    bool_mask[2, 4, :] = False
    bands = [None, (-n_q, n_k - n_q), (-n_q, 0), (n_k - n_q - 300, n_k - n_q), (-3, 2),
             (n_k - 2, n_k)]
    for mask in (None, float_mask, bool_mask):
        for band in bands:
            got = attention(Q, K, V, mask=mask, band=band)
            assert_close(got, oracle(Q, K, V, mask=mask, band=band), dtype)
    assert not attention(Q, K, V, mask=float_mask)[1, 2].any()
    assert not attention(Q, K, V, mask=bool_mask)[2, 4].any()
    assert not attention(Q, K, V, band=(n_k - 2, n_k))[:, 2:].any()   # rows 2.. see no key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_broadcast_batches(isa, dtype):
    """A KV cache shared by a batch of queries, per-head queries against shared keys, a mask
    broadcast over the heads, and the public function on (batch, heads, 1, d)."""
    rng = np.random.default_rng(5)
    B, H, n_k, d = 3, 4, 600, 32
    Q = rng.standard_normal((B, H, 2, d)).astype(dtype)
    K = rng.standard_normal((1, H, n_k, d)).astype(dtype)
    V = rng.standard_normal((B, 1, n_k, d)).astype(dtype)
    mask = rng.random((B, 1, 2, n_k)) < 0.8
    assert_close(attention(Q, K, V, mask=mask), oracle(Q, K, V, mask=mask), dtype)
    Q1 = rng.standard_normal((B, H, 1, d)).astype(dtype)
    assert_close(selfattn.scaled_dot_product_attention(Q1, K, V, is_causal=True),
                 ref_attention(Q1, K, V, is_causal=True)[0], dtype)


def test_non_finite_rows_and_values(isa):
    """NaN in a query row gives a NaN output row (that row only); a score that overflows is NaN;
    inf or NaN in a V row whose weight is 0 (masked, or outside the band) changes nothing; one
    with a nonzero weight reaches the output as the oracle says."""
    rng = np.random.default_rng(7)
    n_q, n_k, d = 3, 700, 16
    Q = rng.standard_normal((2, n_q, d))
    K = rng.standard_normal((2, n_k, d))
    V = rng.standard_normal((2, n_k, d))
    Qn = Q.copy()
    Qn[0, 1, 3] = np.nan
    got = attention(Qn, K, V)
    assert np.isnan(got[0, 1]).all() and np.isfinite(got[0, [0, 2]]).all()
    assert np.isfinite(got[1]).all()
    assert_close(got, oracle(Qn, K, V))

    Qbig = Q.copy()
    Qbig[1, 0, :] = 1e300                  # finite operands whose scores overflow: NaN
    Kbig = K.copy()
    Kbig[1, 5, :] = 1e300
    got = attention(Qbig, Kbig, V, scale=1.0)
    assert np.isnan(got[1, 0]).all()

    mask = np.ones((2, n_q, n_k), bool)
    mask[:, :, 400] = False
    Vbad = V.copy()
    Vbad[:, 400, :] = np.inf               # masked for every query
    Vbad[:, 650, 2] = np.nan               # outside the band below for every query
    band = (-n_q, 600 - n_q)
    got = attention(Q, K, Vbad, mask=mask, band=band)
    assert np.isfinite(got).all()
    assert_close(got, oracle(Q, K, Vbad, mask=mask, band=band))

    Vinf = V.copy()
    Vinf[0, 10, 4] = np.inf                # weighed: inf in that column of batch item 0
    Vinf[1, 20, 5] = np.nan
    got = attention(Q, K, Vinf)
    assert_close(got, oracle(Q, K, Vinf))
    assert np.isposinf(got[0, :, 4]).all() and np.isnan(got[1, :, 5]).all()


def test_non_finite_values_weighed_by_one_query(isa):
    """The kernel learns of an inf or NaN in V from the sums it weighs them into (no test of each
    element read): a V row that one query weighs and another does not (masked there) reaches
    only the first's output; beside a NaN query, whose row is NaN whatever V holds, the others'
    outputs are still the oracle's, in a chunk and a batch item of their own."""
    rng = np.random.default_rng(9)
    n_q, n_k, d = 2, 900, 8
    Q = rng.standard_normal((3, n_q, d)).astype(np.float32)
    K = rng.standard_normal((3, n_k, d)).astype(np.float32)
    V = rng.standard_normal((3, n_k, d)).astype(np.float32)
    mask = np.ones((3, n_q, n_k), bool)
    mask[:, 0, 300] = False                 # query 0 does not see key 300; query 1 does
    V[:, 300, 2] = np.inf
    V[2, 700, 5] = np.nan                   # item 2: weighed by both queries
    Q[1, 1, 0] = np.nan                     # item 1: query 1 is NaN
    got = attention(Q, K, V, mask=mask)
    assert np.isfinite(got[:2, 0]).all() and np.isfinite(got[2, 0, [0, 1, 2, 3, 4, 6, 7]]).all()
    assert np.isposinf(got[0, 1, 2]) and np.isnan(got[1, 1]).all()
    assert np.isnan(got[2, :, 5]).all()
    assert_close(got, oracle(Q, K, V, mask=mask), np.float32)


@pytest.mark.c_backend
def test_values_rerun_on_the_reference_tier(isa):
    """The zero-weight rule where the oracle cannot tell (next comment): the decode kernel's
    answer is the reference tier's, bit for bit."""
    # An inf weighed within its chunk of keys (weight e^-50 there) whose final weight is 0 in
    # float32 (e^-110 next to a key of score 60 in a later chunk): the rule gives a finite output,
    # the reference tier's bits (the oracle, in long double, cannot tell: its weight is not 0).
    Q1 = np.zeros((1, 1, 4), np.float32)
    Q1[..., 0] = 1
    K1 = np.zeros((1, 600, 4), np.float32)
    K1[0, 10, 0] = -50
    K1[0, 500, 0] = 60
    V1 = np.ones((1, 600, 4), np.float32)
    V1[0, 10, 1] = np.inf
    got = attention(Q1, K1, V1, scale=1.0)
    assert np.isfinite(got).all()
    assert calls.same_outcome(got, attention(Q1, K1, V1, scale=1.0, isa="reference"))


def test_float32_scores_near_the_range(isa):
    """Scores below float32's largest number but above it once multiplied by log2(e) (no scan of
    K chooses the units here: the kernel works in natural units): the weights stay the oracle's."""
    rng = np.random.default_rng(8)
    Q = np.zeros((1, 1, 8), np.float32)
    Q[..., 0] = 1.6e19
    K = rng.standard_normal((1, 300, 8)).astype(np.float32)
    K[..., 0] = np.linspace(-1.6e19, 1.6e19, 300, dtype=np.float32)   # scores up to 2.56e38
    K[0, 100, 0] = 1.5e19
    V = rng.standard_normal((1, 300, 8)).astype(np.float32)
    got = attention(Q, K, V, scale=1.0)
    assert np.isfinite(got).all()
    assert_close(got, oracle(Q, K, V, scale=1.0), np.float32)


@pytest.mark.c_backend      # the decode kernel's order of sums; NumPy's matmul has its own
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [128, 40])
def test_same_bits_whichever_queries_share_the_call(isa, dtype, d):
    """From two queries on, a query's output has the same bits whichever queries share its call:
    its dot products are summed over d in order, then across the lanes in dc_hsum's order, both
    one at a time and by the levels that sum 16 of them at once (dc_dots_4x4: from 8 queries on,
    d a multiple of 16, float32, AVX-512), and its V sums are the same in groups of 4 queries and
    of 8."""
    rng = np.random.default_rng(13)
    n_k = 1000
    Q = rng.standard_normal((2, 16, d)).astype(dtype)
    K = rng.standard_normal((2, n_k, d)).astype(dtype)
    V = rng.standard_normal((2, n_k, d)).astype(dtype)
    every = attention(Q, K, V)
    for rows in ([0, 1], [0, 1, 2, 3], [4, 5, 6, 7, 8], list(range(8)), list(range(3, 15)),
                 [15, 2, 9, 4, 11, 6, 13, 0]):
        np.testing.assert_array_equal(attention(Q[:, rows], K, V), every[:, rows])


@pytest.mark.c_backend      # the decode kernel's groups of items and their scratch
def test_many_items_in_groups(isa):
    """A call with more items than one group's partials hold (attention_decode.inc's
    DC_PARTIALS_BYTES, 8 MiB: here 6 KiB or more an item on every tier, so 2,750 items make
    two groups or more) gives each item the bits of a call holding it alone or with a few
    neighbours, and only the group's partials are allocated."""
    rng = np.random.default_rng(17)
    items, n_q, n_k = 2750, 16, 2048          # 8 chunks of keys; d = 1: little arithmetic
    Q = rng.standard_normal((items, n_q, 1))
    K = rng.standard_normal((1, n_k, 1))
    V = rng.standard_normal((1, n_k, 1))
    tracemalloc.start()
    try:
        every = attention(Q, K, V)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, peak               # all the items' partials: 16 MiB or more
    for part in (slice(0, 7), slice(1300, 1400), slice(items - 7, items)):
        np.testing.assert_array_equal(attention(Q[part], K, V), every[part])
    assert_close(every[-3:], oracle(Q[-3:], K, V), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_for_every_thread_count(isa, dtype, threads):
    """Chunks of keys run on whichever thread; their merge is in key order, so the bits do not
    depend on the number of threads (the pattern of tests/test_thread_count.py)."""
    rng = np.random.default_rng(11)
    n_k, d = 3000, 72
    K = rng.standard_normal((2, 3, n_k, d)).astype(dtype)
    V = rng.standard_normal((2, 3, n_k, d + 5)).astype(dtype)
    mask = np.where(rng.random((2, 1, 4, n_k)) < 0.1, -np.inf, 0).astype(dtype)
    sparse = rng.random((2, 1, 7, n_k)) < 0.3          # most keys weighed by a few queries only
    for n_q, m, band in [(1, None, None), (4, mask, (-4, n_k - 4)), (16, None, (-30, 700)),
                         (2, None, None), (7, sparse, None),
                         (13, None, (-13, n_k - 13))]:
        Q = rng.standard_normal((2, 3, n_q, d)).astype(dtype)
        runs = []
        for n in THREAD_COUNTS:
            selfattn.set_num_threads(n)
            runs.append(attention(Q, K, V, mask=m, band=band))
        assert all(calls.same_outcome(r, runs[0]) for r in runs[1:])


@pytest.mark.c_backend      # the decode kernel's tasks, between which the pool polls
@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c(time_scale):
    """A long decode call (many heads of a long cache) stops within half a second of SIGINT, and
    the next call works."""
    rng = np.random.default_rng(13)
    heads, n_k, d = 512, 8192, 64      # K and V: 2 x 1 GiB of float32 read, broadcast over heads
    K = np.broadcast_to(rng.standard_normal((1, n_k, d)).astype(np.float32), (heads, n_k, d))
    V = np.broadcast_to(rng.standard_normal((1, n_k, d)).astype(np.float32), (heads, n_k, d))
    Q = rng.standard_normal((heads, 1, d)).astype(np.float32)
    start = time.perf_counter()
    attention(Q, K, V)
    took = time.perf_counter() - start
    reps = max(1, int(4.0 / max(took, 1e-3)))      # about 4 s uninterrupted
    Qr = np.broadcast_to(Q[None], (reps,) + Q.shape)
    sent = []

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.3, fire)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            attention(Qr, K, V)
        finally:
            timer.cancel()
    assert sent and time.perf_counter() - sent[0] < 0.5 * time_scale
    assert_close(attention(Q[:2], K[:2], V[:2]), oracle(Q[:2], K[:2], V[:2]), np.float32)


def test_the_benchmark_cases():
    """The benchmark's decode cases (selfattn/_bench.py) compute what torch computes, and the
    table shows their roofline as the share of the read bandwidth measured in the run (the
    roofline rate 'read')."""
    from selfattn import _bench
    torch = _bench._torch()
    case = _bench._decode_case(2, 3, 2, 300, 16, np.float32, torch)
    state = case["setup"](np.random.default_rng(0))
    ours = case["ours"](state)
    assert_close(ours, ref_attention(state["Q"], state["K"], state["V"],
                                     is_causal="bottom_right")[0], np.float32)
    if torch is not None:
        np.testing.assert_allclose(np.asarray(case["peers"]["torch"](state)), ours, rtol=1e-4,
                                   atol=1e-5)
    nbytes = 2 * 2 * 3 * 300 * 16 * 4                   # K and V, read once
    assert case["roofline"] == ("read", nbytes)
    result = {"name": case["name"], "time_s": nbytes / 5e9, "flops": case["flops"],
              "dtype": "float32", "roofline": _bench.case_roofline(case), "peers": {}}
    table = _bench.format_table([result], {"sgemm": 100e9, "read": 10e9}, [])
    assert "50% read" in table
    assert _bench.measure_bandwidth(2, 1, nbytes=2 ** 24) > 0
