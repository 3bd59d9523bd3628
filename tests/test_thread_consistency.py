"""The same bits whatever the thread count, and from concurrent Python threads."""
import threading

import numpy as np
import pytest

import selfattn as sa


def workload(rng, dtype):
    Q = rng.standard_normal((3, 130, 32)).astype(dtype)
    K = rng.standard_normal((3, 200, 32)).astype(dtype)
    V = rng.standard_normal((3, 200, 24)).astype(dtype)
    mask = rng.random((130, 200)) < 0.9
    W = rng.standard_normal((32, 32)).astype(dtype)
    return [
        lambda: sa.compute_self_attention_scores(Q, K, mask=mask),
        lambda: sa.softmax_attention_weights(sa.compute_self_attention_scores(Q, K)),
        lambda: sa.compute_attention_output(np.ones((3, 130, 200), dtype), V),
        lambda: sa.scaled_dot_product_attention(Q, K, V, is_causal=True),
        lambda: sa.scaled_dot_product_attention(Q, K, V, mask=mask, return_weights=True),
        lambda: sa.self_attention_layer(Q, W, W, W[:, :24]),
    ]


def results_equal(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bitwise_identical_for_any_thread_count(isa, rng, threads, dtype):
    jobs = workload(rng, dtype)
    sa.set_num_threads(1)
    serial = [job() for job in jobs]
    for n in (2, 3, 7):
        sa.set_num_threads(n)
        for job, want in zip(jobs, serial):
            assert results_equal(job(), want)


def test_concurrent_python_threads_get_the_same_bits(rng, threads):
    sa.set_num_threads(2)
    jobs = workload(rng, np.float64) + workload(rng, np.float32)
    serial = [job() for job in jobs]
    failures = []

    def worker(offset):
        for i in range(len(jobs)):
            k = (i + offset) % len(jobs)
            if not results_equal(jobs[k](), serial[k]):
                failures.append(k)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []


def test_num_threads_setting(threads):
    sa.set_num_threads(3)
    assert sa.get_num_threads() == 3
    for bad in (0, -1, 5000):
        with pytest.raises(ValueError, match="set_num_threads: n must be between 1 and 1024"):
            sa.set_num_threads(bad)
    with pytest.raises(TypeError):
        sa.set_num_threads(2.5)
    assert sa.get_num_threads() == 3
