"""Ctrl-C: a long call interrupted by SIGINT raises KeyboardInterrupt within half a second of the
signal, leaks nothing (tracemalloc), and the next call works and is correct.

The kernels run without the GIL and poll for signals a few times a millisecond; a real SIGINT is
sent to the process by a timer thread while the main thread is inside the call. Each call is sized
by a calibration run so that it would take several seconds uninterrupted, whatever the speed of
the kernels in this build (the scalar reference tier, the SIMD tiers, a sanitizer build).

The half second is the optimised build's bound; an instrumented build (ASan+UBSan, TSan,
valgrind) gets LATENCY * time_scale = 4 x 0.5 = 2 s (conftest.py). Why: the pool polls between
tasks, so the latency is the time the calling thread needs to finish its task and, with several
threads, to wait for the workers' tasks in flight. The tasks are the same size in every build, so
the latency grows with the time per task, and the -O1 ASan build, every memory access checked,
runs the kernels 13-100 times slower (calibrated sizes: long scores d_k = 61,430 optimised vs
1,249 and 631 under ASan with 1 thread; the backward n = 22,987 vs 4,523, n**2 work). ASan
latencies on the 2-core machine: 0.03-0.27 s in a quiet run (sdpa 0.19-0.21 s, against 7-9 ms
optimised); with the machine busy, 0.70 s (sdpa) and 1.18 s (layer) with 2 threads, and 0.64 s
and 1.29 s in the run that raised the question, all over the half second. 2 s covers them, and
stays below the TARGET - DELAY = 3.7 s a call ignoring the signal would still run: the test can
still fail.
"""
import gc
import math
import os
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest

import selfattn

pytestmark = [pytest.mark.slow, pytest.mark.timing, pytest.mark.usefixtures("sigint_raises")]

DELAY = 0.3          # seconds from the start of the call to the signal
LATENCY = 0.5        # the longest acceptable wait from the signal to the exception (optimised build)
TARGET = 4.0         # seconds an uninterrupted call should take at least
MAX_BYTES = 2 ** 30  # memory the long calls may use


def interrupted(call):
    """Runs call() and sends SIGINT after DELAY; returns seconds from the signal to the exception."""
    sent = []

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(DELAY, fire)
    timer.start()
    try:
        try:
            call()
            timer.cancel()
            timer.join()
            time.sleep(0.05)         # a signal that came just as the call returned lands here
        except KeyboardInterrupt:
            caught = time.perf_counter()
            assert sent, "KeyboardInterrupt before any signal was sent"
            return caught - sent[0]
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    pytest.fail("the call finished before the signal arrived; the calibration made it too short")


def calibrated(make_call, size0, power, max_size):
    """The size (growing from size0, the work being proportional to size**power) at which
    make_call(size)() should take TARGET seconds; capped at max_size."""
    size = size0
    while True:
        start = time.perf_counter()
        make_call(size)()
        took = time.perf_counter() - start
        if took > 0.2 or size >= max_size:
            break
        size = min(max_size, size * 2)
    if took * 1.5 >= TARGET:
        return size
    grow = (TARGET / max(took, 1e-3)) ** (1.0 / power)
    return int(min(max_size, math.ceil(size * grow)))


def check_interrupt(make_call, size, time_scale, bound=None, tries=1):
    """`tries` interrupts of make_call(size)(), each within `bound` seconds (LATENCY *
    time_scale by default)."""
    bound = LATENCY * time_scale if bound is None else bound
    call = make_call(size)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        latency = max(interrupted(call) for _ in range(tries))
        gc.collect()
        leaked = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\n{make_call.__name__}({size}): KeyboardInterrupt {latency:.3f} s after the signal "
          f"(bound {bound:.2f} s)")
    assert latency < bound, f"KeyboardInterrupt came {latency:.3f} s after the signal"
    assert leaked < 4096, f"{leaked} bytes were not freed after the interrupt"


def small_attention_is_correct():
    rng = np.random.default_rng(5)
    Q, K, V = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)), rng.standard_normal((9, 3))
    s = Q @ K.T / math.sqrt(5)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(selfattn.scaled_dot_product_attention(Q, K, V), w @ V,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(selfattn.compute_self_attention_scores(Q, K), s, rtol=1e-12)


def sdpa_call(n, d=32, dtype=np.float64):
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((n, d)).astype(dtype)
    K = rng.standard_normal((n, d)).astype(dtype)
    V = rng.standard_normal((n, d)).astype(dtype)
    return lambda: selfattn.scaled_dot_product_attention(Q, K, V)


def scores_call(d_k, n=2048, dtype=np.float32):
    # Q and K are broadcast views (zero row stride): long dot products, little memory.
    rng = np.random.default_rng(1)
    Q = np.broadcast_to(rng.standard_normal((1, d_k)).astype(dtype), (n, d_k))
    K = np.broadcast_to(rng.standard_normal((1, d_k)).astype(dtype), (n, d_k))
    return lambda: selfattn.compute_self_attention_scores(Q, K, scale=1e-3)


def overflowing_scores_call(n, d=64):
    # every product overflows float32 (1e20 * 1e19), so each score is computed again without
    # overflow (attn.h's overflow rule): about 3 ns a product, 0.26 s for a task's tile
    Q = np.full((n, d), 1e20, np.float32)
    K = np.full((n, d), 1e19, np.float32)
    return lambda: selfattn.compute_self_attention_scores(Q, K, scale=1e-10)


def softmax_call(rows, n=4096, dtype=np.float64):
    x = np.broadcast_to(np.linspace(-3, 3, n, dtype=dtype), (rows, n))
    return lambda: selfattn.softmax_attention_weights(x)


def layer_call(n, d=32):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, d))
    return lambda: selfattn.self_attention_layer(X, W, W, W, is_causal=True)


def test_sdpa_n32768_is_interruptible(one_or_all_threads, time_scale):
    n = max(32768, calibrated(sdpa_call, 2048, 2, 2 ** 20))
    check_interrupt(sdpa_call, n, time_scale)
    small_attention_is_correct()


def test_long_scores_are_interruptible(one_or_all_threads, time_scale):
    d_k = calibrated(scores_call, 64, 1, 2 ** 24)
    check_interrupt(scores_call, d_k, time_scale)
    small_attention_is_correct()


def test_a_tile_of_the_scores_answers_from_within(one_or_all_threads, time_scale):
    """The pool polls between tasks; a tile of the scores that runs long (n = 24,000 keys: the
    first touch of 2 MiB pages of a 2.3 GB result; here, scores whose products overflow) kept
    Ctrl-C waiting for the rest of it and of the other threads' tiles: 0.2-0.8 s with the large
    result; here the worst of three was 0.17-0.24 s with 2 threads (0.12-0.14 s with one, under
    the bound too). The GEMM now asks every 8 slivers: 16-19 ms. The worst of three interrupts,
    against a 0.15 s bound where the build is optimised (an instrumented one, every access
    checked, gets the suite's bound)."""
    n = calibrated(overflowing_scores_call, 512, 2, int(math.sqrt(MAX_BYTES / 4)))
    bound = 0.15 if time_scale == 1 else LATENCY * time_scale
    check_interrupt(overflowing_scores_call, n, time_scale, bound=bound, tries=3)
    small_attention_is_correct()


def test_long_layer_is_interruptible(one_or_all_threads, time_scale):
    n = max(32768, calibrated(layer_call, 2048, 2, 2 ** 20))
    check_interrupt(layer_call, n, time_scale)
    small_attention_is_correct()


def backward_call(n, d=64):
    rng = np.random.default_rng(3)
    Q, K, V, dO = (rng.standard_normal((n, d)).astype(np.float32) for _ in range(4))
    return lambda: selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)


@pytest.mark.skipif(not hasattr(selfattn, "scaled_dot_product_attention_backward"),
                    reason="no backward in this build")
def test_long_backward_is_interruptible(one_or_all_threads, time_scale):
    # The fast tiers' backward splits a call into tasks of a few query blocks each, so the caller's
    # polling between tasks answers within the half second on any thread count.
    n = calibrated(backward_call, 1024, 2, 2 ** 18)
    check_interrupt(backward_call, n, time_scale)
    small_attention_is_correct()


def backward_many_keys_call(n_k, n_q=64, d=16):
    # past the fused backward's limits (10^5 keys and more) the blocked one runs; each of its
    # first pass's tasks takes a block of queries against every key. K and V are broadcast views.
    rng = np.random.default_rng(4)
    Q, dO = (rng.standard_normal((n_q, d)).astype(np.float32) for _ in range(2))
    K, V = (np.broadcast_to(rng.standard_normal((1, d)).astype(np.float32), (n_k, d))
            for _ in range(2))
    return lambda: selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)


def test_backward_over_millions_of_keys_is_interruptible(one_or_all_threads, time_scale):
    """A task of the blocked backward's first pass (a block of queries against every key) ran
    for seconds without polling: 5 s from the signal with 4M keys."""
    n_k = calibrated(backward_many_keys_call, 2 ** 16, 1, 2 ** 22)
    check_interrupt(backward_many_keys_call, n_k, time_scale)
    small_attention_is_correct()


def test_long_softmax_is_interruptible(one_or_all_threads, time_scale):
    # The output (rows x 4096 float64) is capped at MAX_BYTES; with fast kernels that may be too
    # quick to interrupt, which the skip says (scores and attention cover the mechanism then).
    cap = MAX_BYTES // (4096 * 8)
    rows = calibrated(softmax_call, 256, 1, cap)
    start = time.perf_counter()
    softmax_call(rows // 4)()
    expected = 4 * (time.perf_counter() - start)
    if expected < 3 * DELAY:
        pytest.skip(f"a {MAX_BYTES >> 20} MiB softmax takes {expected:.2f} s here: too short")
    check_interrupt(softmax_call, rows, time_scale)
    small_attention_is_correct()


def reference_many_keys_call(n_k, backward=False, inf_in_v=False, n_q=32, d=64):
    # 32 queries against millions of keys (K and V broadcast views) on the scalar reference
    # kernels, where one query's row over every key outlasts the half second: two tasks of 16
    # queries, one per thread with 2 (the pool used to poll between tasks only)
    rng = np.random.default_rng(6)
    Q, dO = (rng.standard_normal((n_q, d)).astype(np.float32) for _ in range(2))
    K, V = (rng.standard_normal((1, d)).astype(np.float32) for _ in range(2))
    if inf_in_v:
        V[0, 5] = np.inf
    K, V = (np.broadcast_to(x, (n_k, d)) for x in (K, V))
    if backward:
        return lambda: selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)
    return lambda: selfattn.scaled_dot_product_attention(Q, K, V)


@pytest.mark.c_backend
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("route", ["reference tier", "inf in V"])
def test_the_reference_kernels_over_millions_of_keys_are_interruptible(
        route, backward, one_or_all_threads, time_scale):
    """The reference tier's tasks (16 queries against every key) never polled: 4-11 s from the
    signal with 2-4M keys. A V holding inf or NaN takes a call on any tier there (attn.h's rule
    for non-finite values), and MSVC builds have that tier alone."""
    before = selfattn.get_isa()
    if route == "reference tier":
        selfattn.set_isa("reference")
    try:
        def make_call(n_k):
            return reference_many_keys_call(n_k, backward, inf_in_v=route == "inf in V")
        make_call.__name__ = f"{route} {'backward' if backward else 'forward'}"
        n_k = calibrated(make_call, 2 ** 14, 1, 2 ** 23)
        check_interrupt(make_call, n_k, time_scale)
    finally:
        selfattn.set_isa(before)
    small_attention_is_correct()
