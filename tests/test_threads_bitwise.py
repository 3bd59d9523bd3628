"""Every kernel of every tier gives bitwise identical results for 1, 2 and 3 threads.

The sizes are large enough that the work is split into many tasks (several GEMM tiles, many
softmax row blocks and attention query blocks), so a thread-dependent split or reduction order
would show up as a difference in the last bits.
"""
import numpy as np
import pytest

import selfattn
from selfattn import _core

TIERS = list(_core.supported_isas())
THREADS = [1, 2, 3]


@pytest.fixture
def restore_threads():
    before = selfattn.get_num_threads()
    yield
    selfattn.set_num_threads(before)


def same_for_every_thread_count(run):
    results = []
    for n in THREADS:
        selfattn.set_num_threads(n)
        results.append(run())
    for n, r in zip(THREADS[1:], results[1:]):
        for a, b in zip(results[0] if isinstance(results[0], tuple) else (results[0],),
                        r if isinstance(r, tuple) else (r,)):
            assert np.array_equal(a, b, equal_nan=True), f"{n} threads differ from 1"
    return results[0]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_is_thread_count_invariant(tier, dtype, restore_threads):
    code = _core.isa_code(tier)
    rng = np.random.default_rng(0)
    n_q, n_k, d = 700, 650, 72
    Q = rng.standard_normal((2, n_q, d)).astype(dtype)
    K = rng.standard_normal((2, n_k, d)).astype(dtype)
    V = rng.standard_normal((2, n_k, d + 5)).astype(dtype)
    mask = rng.standard_normal((2, n_q, n_k)).astype(dtype)
    mask[:, 3, :] = -np.inf
    bmask = rng.random((2, n_q, n_k)) < 0.6

    def matmul():
        A = rng.standard_normal((330, 600)).astype(dtype)
        B = rng.standard_normal((600, 520)).astype(dtype)
        C = np.empty((330, 520), dtype)
        def run():
            _core.matmul(C, A, B, code)
            return C.copy()
        return run
    same_for_every_thread_count(matmul())

    for m, causal in [(None, False), (mask, True), (bmask, False)]:
        def scores():
            S = np.empty((2, n_q, n_k), dtype)
            _core.scores(S, Q, K, m, 0.125, causal, code)
            return S
        S = same_for_every_thread_count(scores)

        def softmax():
            P = np.empty_like(S)
            _core.softmax(P, S, code)
            return P
        same_for_every_thread_count(softmax)

        def attention():
            out = np.empty((2, n_q, d + 5), dtype)
            _core.attention(out, None, Q, K, V, m, 0.125, causal, code)
            return out
        same_for_every_thread_count(attention)

        def attention_with_weights():
            out = np.empty((2, n_q, d + 5), dtype)
            W = np.empty((2, n_q, n_k), dtype)
            _core.attention(out, W, Q, K, V, m, 0.125, causal, code)
            return out, W
        same_for_every_thread_count(attention_with_weights)
