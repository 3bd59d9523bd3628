"""Threads: many Python threads calling every public function at once, while another thread keeps
changing set_num_threads, get exactly the bits that serial calls give; the thread-count setting
itself, from one thread and from many.

The kernels release the GIL for large enough problems and share one worker pool (a caller that
finds it busy runs its loop alone). That the thread count never changes a result is
tests/test_thread_count.py's concern.
"""
import os
import random
import threading

try:
    import resource
except ImportError:     # Windows
    resource = None

import numpy as np
import pytest

import selfattn
import calls

N_THREADS = 8
ROUNDS = 10


def test_concurrent_calls_give_the_serial_bits(threads):
    work = calls.all_calls(200)
    selfattn.set_num_threads(1)
    serial = [calls.outcome(*call) for call in work]
    selfattn.set_num_threads(max(2, os.cpu_count() or 2))

    failures = []
    stop = threading.Event()
    start = threading.Barrier(N_THREADS + 1)

    def caller(seed):
        order = list(range(len(work)))
        random.Random(seed).shuffle(order)
        start.wait()
        try:
            for _ in range(ROUNDS):
                for i in order:
                    if not calls.same_outcome(calls.outcome(*work[i]), serial[i]):
                        failures.append(f"{work[i][0]} (case {i}) gave different bits in a thread")
        except BaseException as exc:  # noqa: B902 - anything at all is a failure here
            failures.append(f"thread {seed}: {exc!r}")

    def changer():
        rng = random.Random(99)
        start.wait()
        while not stop.is_set():
            selfattn.set_num_threads(rng.choice([1, 2, 3, 4, 8]))
            stop.wait(0.001)

    others = [threading.Thread(target=caller, args=(s,)) for s in range(N_THREADS - 1)]
    others.append(threading.Thread(target=changer))
    for t in others:
        t.start()
    caller(1000)                       # the main thread is a caller too (and the barrier's last)
    for t in others[:-1]:
        t.join()
    stop.set()
    others[-1].join()
    assert not failures, failures[:5]


def test_pool_sized_calls_from_python_threads_get_the_serial_bits(threads):
    """Calls big enough to run on the pool, from 6 Python threads at once: each caller either gets
    the workers or runs its tasks alone, and the bits are the same."""
    rng = np.random.default_rng(12345)
    work = calls.pool_sized_calls(rng, np.float64) + calls.pool_sized_calls(rng, np.float32)
    selfattn.set_num_threads(2)
    serial = [calls.outcome(*call) for call in work]
    failures = []

    def worker(offset):
        for i in range(len(work)):
            k = (i + offset) % len(work)
            if not calls.same_outcome(calls.outcome(*work[k]), serial[k]):
                failures.append(f"{work[k][0]} (case {k}) gave different bits in a thread")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []


def test_num_threads_setting(threads):
    selfattn.set_num_threads(3)
    assert selfattn.get_num_threads() == 3
    for bad in (0, -1, 5000):
        with pytest.raises(ValueError, match="set_num_threads: n must be between 1 and 1024"):
            selfattn.set_num_threads(bad)
    with pytest.raises(TypeError):
        selfattn.set_num_threads(2.5)
    assert selfattn.get_num_threads() == 3


@pytest.mark.c_backend
@pytest.mark.skipif(resource is None, reason="no getrusage (Windows)")
def test_workers_beyond_the_thread_count_sleep_through_later_calls(threads):
    """One call with 64 threads started 63 workers, and each later call woke them all; each spun
    for 200 us before sleeping again, which made every 2-thread call after it 2-3x slower for the
    life of the process. Counted, not timed: the process's voluntary context switches per call
    (a woken worker going back to sleep is one; about 1 per call is the helper's own)."""
    rng = np.random.default_rng(0)
    many = rng.standard_normal((64, 256, 64)).astype(np.float32)     # 128 tasks
    Q = many[:8]
    selfattn.set_num_threads(64)
    selfattn.scaled_dot_product_attention(many, many, many)
    selfattn.set_num_threads(2)
    for _ in range(20):
        selfattn.scaled_dot_product_attention(Q, Q, Q)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(100):
        selfattn.scaled_dot_product_attention(Q, Q, Q)
    per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / 100
    assert per_call < 8, f"{per_call:.1f} voluntary context switches per 2-thread call"


def test_settings_are_consistent_under_concurrent_changes(threads):
    # set/get from many threads never crash or produce an out-of-range value
    seen = []

    def flip(k):
        for i in range(2000):
            selfattn.set_num_threads(1 + (i + k) % 7)
            seen.append(selfattn.get_num_threads())

    ts = [threading.Thread(target=flip, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert set(seen) <= set(range(1, 8))


@pytest.mark.c_backend
def test_set_isa_from_another_thread_never_mixes_tiers_within_a_call(rng):
    """A call that runs several kernels (projections, attention, gradients) runs them all on the
    tier set when it started: with set_isa switching tiers in another thread every fraction of a
    millisecond, each result is bit for bit one tier's serial result. Before, the multi-head and
    layer functions ran their steps on whichever tier was set as each began (about 1 in 20 calls
    gave bits of no tier)."""
    tiers = list(selfattn._core.supported_isas())
    if len(tiers) < 2:
        pytest.skip("one tier on this machine")
    X = rng.standard_normal((24, 16))
    W = [rng.standard_normal((16, 16)) for _ in range(4)]
    dY = rng.standard_normal((24, 16))
    work = {
        "multi_head_attention": lambda: selfattn.multi_head_attention(X, *W, num_heads=4),
        "multi_head_attention_backward": lambda: selfattn.multi_head_attention_backward(
            dY, X, *W, num_heads=4),
        "self_attention_layer": lambda: selfattn.self_attention_layer(X, *W[:3], is_causal=True,
                                                                      window=(5, 0)),
        "self_attention_layer_backward": lambda: selfattn.self_attention_layer_backward(
            dY, X, *W[:3]),
        "multi_head_attention_vjp": lambda: selfattn.multi_head_attention_vjp(
            X, *W, num_heads=4)[0],
        "explain": lambda: selfattn.explain(X, *W[:3], is_causal=True).output,
    }
    # the vjp's backward is a call of its own (its forward's tier may differ): one made once
    before = selfattn.get_isa()
    work["the vjp's backward"] = lambda backward=selfattn.multi_head_attention_vjp(
        X, *W, num_heads=4)[1]: backward(dY)

    def flat(result):
        return np.concatenate([np.ravel(r) for r in (result if isinstance(result, tuple)
                                                     else (result,))]).tobytes()

    expected = {}
    for tier in tiers:
        selfattn.set_isa(tier)
        for name, call in work.items():
            expected.setdefault(name, set()).add(flat(call()))
    stop = threading.Event()

    def switcher():
        k = 0
        while not stop.is_set():
            selfattn.set_isa(tiers[k % len(tiers)])
            k += 1

    thread = threading.Thread(target=switcher)
    thread.start()
    mixed = {}
    try:
        for _ in range(150):
            for name, call in work.items():
                if flat(call()) not in expected[name]:
                    mixed[name] = mixed.get(name, 0) + 1
    finally:
        stop.set()
        thread.join()
        selfattn.set_isa(before)
    assert not mixed, f"results of no single tier (of {tiers}), per function: {mixed}"
