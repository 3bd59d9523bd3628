"""Threads: many Python threads calling every public function at once, while another thread keeps
changing set_num_threads, get exactly the bits that serial calls give.

The kernels release the GIL for large enough problems, share one worker pool (a caller that finds
it busy runs its loop alone) and must compute the same bits for any thread count.
"""
import os
import random
import threading

import numpy as np
import pytest

import selfattn
import calls

N_THREADS = 8
ROUNDS = 10


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def same_bits(a, b):
    a, b = as_tuple(a), as_tuple(b)
    return len(a) == len(b) and all(
        isinstance(x, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape
        and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def outcome(func, args, kw):
    try:
        return func(*args, **kw)
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


def equal_outcomes(a, b):
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], type):
        return a == b
    return same_bits(a, b)


@pytest.fixture
def restore_threads():
    before = selfattn.get_num_threads()
    yield
    selfattn.set_num_threads(before)


def all_calls(n):
    work = []
    for name, cases in calls.success_calls(np.random.default_rng(3), n=n).items():
        for args, kw in cases:
            work.append((name, args, kw))
    for name, cases in calls.error_calls().items():
        for args, kw in cases:
            work.append((name, args, kw))
    return work


def test_results_do_not_depend_on_the_thread_count(restore_threads):
    work = all_calls(200)
    selfattn.set_num_threads(1)
    serial = [outcome(getattr(selfattn, name), args, kw) for name, args, kw in work]
    for t in (2, 3, max(4, os.cpu_count() or 1)):
        selfattn.set_num_threads(t)
        for (name, args, kw), expected in zip(work, serial):
            got = outcome(getattr(selfattn, name), args, kw)
            assert equal_outcomes(got, expected), f"{name} differs with {t} threads"


def test_concurrent_calls_give_the_serial_bits(restore_threads):
    work = all_calls(200)
    selfattn.set_num_threads(1)
    serial = [outcome(getattr(selfattn, name), args, kw) for name, args, kw in work]
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
                    name, args, kw = work[i]
                    got = outcome(getattr(selfattn, name), args, kw)
                    if not equal_outcomes(got, serial[i]):
                        failures.append(f"{name} (case {i}) gave different bits in a thread")
        except BaseException as exc:  # noqa: B902 - anything at all is a failure here
            failures.append(f"thread {seed}: {exc!r}")

    def changer():
        rng = random.Random(99)
        start.wait()
        while not stop.is_set():
            selfattn.set_num_threads(rng.choice([1, 2, 3, 4, 8]))
            stop.wait(0.001)

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(N_THREADS - 1)]
    threads.append(threading.Thread(target=changer))
    for t in threads:
        t.start()
    caller(1000)                       # the main thread is a caller too (and the barrier's last)
    for t in threads[:-1]:
        t.join()
    stop.set()
    threads[-1].join()
    assert not failures, failures[:5]


def test_settings_are_consistent_under_concurrent_changes(restore_threads):
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
