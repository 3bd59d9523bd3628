"""Results do not depend on the thread count: every kernel of every tier gives the same bits for
1 thread and for several.

The sizes split the work into many tasks (several GEMM tiles, many softmax row blocks, attention
query blocks and backward chunks), so a split or a reduction order that depended on the number
of threads would show in the last bits. Calls from several Python threads at once are
tests/test_threads.py's concern.
"""
import os

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
def test_public_functions_on_pool_sized_problems(isa, dtype, threads):
    for name, args, kw in calls.pool_sized_calls(np.random.default_rng(12345), dtype):
        same_for_every_thread_count(lambda: calls.outcome(name, args, kw))


def test_every_public_call_and_error(isa, threads):
    """Every public array function (backward functions and masks included) on its success and
    error calls: the same bits, or the same error message, for any thread count."""
    for name, args, kw in calls.all_calls(200):
        same_for_every_thread_count(lambda: calls.outcome(name, args, kw))
