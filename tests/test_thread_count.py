"""Results do not depend on the thread count: every kernel of every tier gives the same bits for
1 thread and for several.

The sizes split the work into many tasks (several GEMM tiles, many softmax row blocks, attention
query blocks and backward chunks), so a split or a reduction order that depended on the number
of threads would show in the last bits. Calls from several Python threads at once are
tests/test_threads.py's concern.
"""
import os
import sys

import numpy as np
import pytest

import selfattn
from selfattn import _core
import calls

# 7 does not divide the task counts evenly; the last is this machine's CPU count when above 4
THREAD_COUNTS = sorted({1, 2, 3, 7, max(4, os.cpu_count() or 1)})


def same_for_every_thread_count(run):
    """run() with 1 thread, then with each other count, which must give the same bits."""
    selfattn.set_num_threads(1)
    serial = run()
    for n in THREAD_COUNTS[1:]:
        selfattn.set_num_threads(n)
        assert calls.same_outcome(run(), serial), f"{n} threads differ from 1"
    return serial


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_core_kernel(isa, dtype, threads):
    """The kernels themselves (_core's entry points, the tier passed by its code), on sizes of
    several hundred rows, with no mask, a float mask with a fully masked row (causal too), a
    boolean mask, and bands (attn.h's sa_band, as (lo, hi)): a sliding window and a bottom-right
    causal window whose first rows see no key."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(0)
    n_q, n_k, d = 700, 650, 72
    Q = rng.standard_normal((2, n_q, d)).astype(dtype)
    K = rng.standard_normal((2, n_k, d)).astype(dtype)
    V = rng.standard_normal((2, n_k, d + 5)).astype(dtype)
    float_mask = rng.standard_normal((2, n_q, n_k)).astype(dtype)
    float_mask[:, 3, :] = -np.inf
    bool_mask = rng.random((2, n_q, n_k)) < 0.6

    A = rng.standard_normal((330, 600)).astype(dtype)
    B = rng.standard_normal((600, 520)).astype(dtype)

    def matmul():
        C = np.empty((330, 520), dtype)
        _core.matmul(C, A, B, code)
        return C
    same_for_every_thread_count(matmul)

    everything, causal = (-n_q, n_k), (-n_q, 0)
    for mask, band in [(None, everything), (float_mask, causal), (bool_mask, everything),
                       (None, (-37, 5)), (bool_mask, (n_k - n_q - 300, n_k - n_q))]:
        def scores():
            S = np.empty((2, n_q, n_k), dtype)
            _core.scores(S, Q, K, mask, 0.125, band, code)
            return S
        S = same_for_every_thread_count(scores)

        def softmax():
            P = np.empty_like(S)
            _core.softmax(P, S, code)
            return P
        same_for_every_thread_count(softmax)

        def attention():
            out = np.empty((2, n_q, d + 5), dtype)
            _core.attention(out, None, Q, K, V, mask, 0.125, band, code)
            return out
        same_for_every_thread_count(attention)

        def attention_with_weights():
            out = np.empty((2, n_q, d + 5), dtype)
            W = np.empty((2, n_q, n_k), dtype)
            _core.attention(out, W, Q, K, V, mask, 0.125, band, code)
            return out, W
        same_for_every_thread_count(attention_with_weights)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_attention_backward(isa, dtype, threads):
    """The backward kernel (the fused one on the fast tiers: several chunks of query blocks whose
    partial dK, dV are summed in a fixed order), with batches, causality and both mask kinds, and
    the forward's output it gives the multi-head backward (d = 24: V padded on the fast tiers)."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(40)
    n_q, n_k, d = 700, 333, 24
    for batch, causal, mask_kind in [((), False, None), ((), True, None), ((2,), True, "add"),
                                     ((3,), False, "bool")]:
        Q, dO = (rng.standard_normal(batch + (n_q, d)).astype(dtype) for _ in range(2))
        K, V = (rng.standard_normal(batch + (n_k, d)).astype(dtype) for _ in range(2))
        mask = None
        if mask_kind == "add":
            mask = np.where(rng.random((n_q, n_k)) < 0.1, -np.inf,
                            rng.standard_normal((n_q, n_k))).astype(dtype)
        elif mask_kind == "bool":
            mask = rng.random((n_q, n_k)) < 0.9
        if mask is not None:
            mask = np.broadcast_to(mask, batch + (n_q, n_k))

        def backward():
            grads = [np.empty_like(a) for a in (Q, K, V, dO)]
            band = (-n_q, 0) if causal else (-n_q, n_k)
            _core.attention_backward(*grads[:3], dO, Q, K, V, mask, 0.2, band, code, 0.0, 0.0, 0,
                                     grads[3] if causal else None)
            return tuple(grads if causal else grads[:3])
        same_for_every_thread_count(backward)


def test_lengths_and_the_lse(isa, threads):
    """Per-sequence lengths (attn.h's band with lengths, bottom-right aligned per sequence too)
    through the fused forward with its log-sum-exps and through the backward, float32."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(41)
    n_q, n_k, d = 500, 420, 16
    Q, dO = (rng.standard_normal((3, n_q, d)).astype(np.float32) for _ in range(2))
    K, V = (rng.standard_normal((3, n_k, d)).astype(np.float32) for _ in range(2))
    lengths = np.array([500, 170, 0], dtype=np.intp), np.array([420, 300, 9], dtype=np.intp)
    for band in [(-n_q, n_k, False) + lengths, (-sys.maxsize, 0, True) + lengths]:
        def run():
            out, lse = np.empty((3, n_q, d), np.float32), np.empty((3, n_q), np.float32)
            grads = [np.empty_like(a) for a in (Q, K, V, dO)]
            _core.attention(out, None, Q, K, V, None, 0.25, band, code, lse)
            _core.attention_backward(*grads[:3], dO, Q, K, V, None, 0.25, band, code, 0.0, 0.0, 0,
                                     grads[3])
            return out, lse, *grads
        same_for_every_thread_count(run)


def test_the_multi_head_backward(isa, threads):
    """multi_head_attention_backward in float32: projections, heads and their gradients."""
    rng = np.random.default_rng(12)
    X, dY = (rng.standard_normal((2, 150, 32)).astype(np.float32) for _ in range(2))
    Ws = [(rng.standard_normal((32, 32)) / 6).astype(np.float32) for _ in range(4)]
    same_for_every_thread_count(
        lambda: selfattn.multi_head_attention_backward(dY, X, *Ws, num_heads=4, is_causal=True))


def test_band_variants(isa, threads):
    """is_causal="bottom_right" with window= through the public functions (tests/
    test_band_variants.py): a band whose first 100 rows see no key, forward and backward."""
    rng = np.random.default_rng(13)
    Q, dO = (rng.standard_normal((2, 600, 40)).astype(np.float32) for _ in range(2))
    K, V = (rng.standard_normal((2, 500, 40)).astype(np.float32) for _ in range(2))
    kw = dict(is_causal="bottom_right", window=(130, None))
    same_for_every_thread_count(lambda: (
        selfattn.scaled_dot_product_attention(Q, K, V, **kw),
        *selfattn.scaled_dot_product_attention_backward(dO, Q, K, V, **kw)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_public_functions_on_pool_sized_problems(isa, dtype, threads):
    for name, args, kw in calls.pool_sized_calls(np.random.default_rng(12345), dtype):
        same_for_every_thread_count(lambda: calls.outcome(name, args, kw))


def test_every_public_call_and_error(isa, threads):
    """Every public array function (backward functions and masks included) on its success and
    error calls: the same bits, or the same error message, for any thread count."""
    for name, args, kw in calls.all_calls(200):
        same_for_every_thread_count(lambda: calls.outcome(name, args, kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_gemm_tile_is_computed_once(isa, dtype, threads):
    """The GEMM's threads take its tiles a few row tiles at a time (matmul_fast.inc's row_group,
    the thread count or fewer), each group across every column panel: a product of many row
    tiles that the groups do not divide evenly, and several column panels, added to C in place
    (SA_MATMUL_ADD = 4), so that a tile computed twice, or never, shows; and the scores."""
    code = _core.isa_code(isa)
    rng = np.random.default_rng(3)
    A = rng.standard_normal((400, 256)).astype(dtype)
    B = rng.standard_normal((256, 1000)).astype(dtype)
    C0 = rng.standard_normal((400, 1000)).astype(dtype)
    reference = C0.astype(np.longdouble) + A.astype(np.longdouble) @ B.astype(np.longdouble)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    K = rng.standard_normal((3000, 256)).astype(dtype)
    scores_reference = A.astype(np.longdouble) @ K.astype(np.longdouble).T * 0.125

    def matmul_add():
        C = C0.copy()
        _core.matmul(C, A, B, code, 4)
        return C
    def scores():
        S = np.full((400, 3000), np.nan, dtype)
        _core.scores(S, A, K, None, 0.125, (-400, 3000), code)
        return S
    for run, expected in [(matmul_add, reference), (scores, scores_reference)]:
        serial = same_for_every_thread_count(run)
        scale = np.abs(expected).max()
        assert np.abs(serial - expected).max() <= tol * scale * 10, run.__name__
