"""selfattn/_scratch.py: the buffers a thread keeps for the arrays its calls make for themselves.
A buffer may be handed out again only when no array refers to it; none may reach the user."""
import os
import sys
import threading

import numpy as np
import pytest

import selfattn
from selfattn import _scratch

BIG = (512, 256)        # 512 KiB of float32: from the pool
SMALL = (16, 16)        # 1 KiB: np.empty


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _pooled(a):
    return any(_root(a) is buf for buf in _scratch._buffers())


@pytest.fixture
def pool(monkeypatch):
    """An empty pool for this thread, restored after the test."""
    monkeypatch.setattr(_scratch._local, "buffers", [], raising=False)
    return _scratch._buffers()


def test_an_array_like_np_empty(pool):
    for dtype in (np.float32, np.float64):
        a = _scratch.empty(BIG, dtype)
        assert a.shape == BIG and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0 and _pooled(a)
    small = _scratch.empty(SMALL, np.float32)
    assert small.shape == SMALL and small.base is None and not _pooled(small)


def test_under_tracemalloc_every_array_is_new(pool):
    """A pooled buffer allocated before tracing started would be invisible to tracemalloc: while
    it traces, the arrays come from np.empty, and its peak holds the whole call."""
    import tracemalloc

    a = _scratch.empty(BIG, np.float32)
    del a
    tracemalloc.start()
    try:
        b = _scratch.empty(BIG, np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not _pooled(b) and len(pool) == 1 and peak >= b.nbytes


def test_a_dropped_array_gives_its_buffer_back(pool):
    a = _scratch.empty(BIG, np.float32)
    address = a.ctypes.data
    del a
    b = _scratch.empty(BIG, np.float32)
    assert b.ctypes.data == address and len(pool) == 1
    c = _scratch.empty((500, 256), np.float32)          # a little smaller: the same size class
    assert c.ctypes.data != address and len(pool) == 2   # b still holds the first
    del b, c
    d = _scratch.empty((500, 256), np.float32)
    assert _pooled(d) and len(pool) == 2


@pytest.mark.parametrize("keep", [lambda a: a, lambda a: a[3:, ::2], lambda a: a.T,
                                  lambda a: a.reshape(-1), lambda a: a.view(np.int32),
                                  lambda a: np.asarray(a), lambda a: [a[0]]])
def test_never_handed_out_while_anything_refers_to_it(pool, keep):
    a = _scratch.empty(BIG, np.float32)
    a[...] = 7
    held = keep(a)
    del a
    for _ in range(3):
        b = _scratch.empty(BIG, np.float32)
        b[...] = -1
    assert np.all(np.asarray(held[0] if isinstance(held, list) else held).view(np.float32) == 7)


def test_a_much_larger_buffer_is_not_used_for_a_small_array(pool):
    a = _scratch.empty((4096, 256), np.float32)         # 4 MiB
    del a
    b = _scratch.empty(BIG, np.float32)                 # 512 KiB: a buffer of its own
    assert len(pool) == 2 and b.nbytes < pool[0].nbytes // 4


def test_the_pool_keeps_at_most_its_budget(pool, monkeypatch):
    monkeypatch.setattr(_scratch, "POOL_BYTES", 4 << 20)
    kept = [_scratch.empty((1024, 256), np.float32) for _ in range(3)]   # 3 MiB in use
    for rows in (700, 900, 1100, 1300, 1500):                            # dropped at once
        _scratch.empty((rows, 256), np.float32)
    assert sum(buf.nbytes for buf in pool) <= 4 << 20
    for a in kept:                                      # the buffers in use were never dropped
        assert _pooled(a)
    many = [_scratch.empty((1024, 256), np.float32) for _ in range(6)]  # past it: np.empty
    assert sum(buf.nbytes for buf in pool) <= 4 << 20
    assert len({a.ctypes.data for a in kept + many}) == 9 and not any(_pooled(a) for a in many[1:])


def test_each_thread_has_its_own_pool(pool):
    mine = _scratch.empty(BIG, np.float32)
    address = mine.ctypes.data
    del mine
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_scratch.empty(BIG, np.float32).ctypes.data))
    thread.start()
    thread.join()
    assert seen[0] != address and len(pool) == 1


def _problem(dtype):
    rng = np.random.default_rng(0)
    n, d_model = 256, 128
    X, dY = (rng.standard_normal((n, d_model)).astype(dtype) for _ in range(2))
    Ws = [(rng.standard_normal((d_model, d_model)) / 12).astype(dtype) for _ in range(4)]
    return X, dY, Ws


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_second_call_reuses_every_buffer_and_gives_the_same_bits(pool, dtype):
    """The multi-head backward of 256 x 128 makes its projections, heads' output, gradients side
    by side and transposed copies from the pool (each 64 KiB or more); a second call takes the
    same buffers again and none of them reaches the user."""
    X, dY, Ws = _problem(dtype)
    first = selfattn.multi_head_attention_backward(dY, X, *Ws, num_heads=4)
    buffers = [buf.ctypes.data for buf in pool]
    assert len(buffers) >= 4
    again = selfattn.multi_head_attention_backward(dY, X, *Ws, num_heads=4)
    assert sorted(buf.ctypes.data for buf in pool) == sorted(buffers)
    for g, w in zip(again, first):
        assert g.tobytes() == w.tobytes() and not _pooled(g)
    results = [selfattn.multi_head_attention(X, *Ws, num_heads=4),
               selfattn.self_attention_layer(X, *Ws[:3]),
               *selfattn.self_attention_layer_backward(dY, X, *Ws[:3]),
               *selfattn.multi_head_attention_backward(dY, X, Ws[0], Ws[1][:, :64],
                                                       Ws[2][:, :64], Ws[3], num_heads=4,
                                                       kv=X[::-1], num_kv_heads=2, b_q=Ws[0][0])]
    assert len(pool) >= len(buffers) and not any(_pooled(r) for r in results)
    assert all(_scratch._free(pool, i) for i in range(len(pool)))


# ---- the kernels' scratch, kept between calls in C (csrc/module.c's raw_alloc / raw_free) ------

def _backward_4096():
    rng = np.random.default_rng(1)
    Q, K, V, dO = (rng.standard_normal((4096, 128)).astype(np.float32) for _ in range(4))
    return lambda: selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)


@pytest.mark.c_backend
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts faults with getrusage")
def test_a_second_call_takes_its_scratch_without_page_faults(threads):
    """The float32 backward at n = 4096, d = 128 takes about 46 MB of scratch (partial sums of
    dK, dV for 8 chunks, panels, packed K and V): freed to glibc, it came back with 11,800 page
    faults a call. Kept, a second call faults in its 6 MB of outputs (1,536 pages) and a little
    more (under ASan its shadow pages: 1,923 faults in all), far from the scratch's 11,200."""
    import resource

    selfattn.set_num_threads(2)
    call = _backward_4096()
    first = call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 3 * 4096 * 128 * 4 // 4096 + 2000, faults
    for g, w in zip(again, first):
        assert g.tobytes() == w.tobytes()


@pytest.mark.c_backend
def test_tracemalloc_still_sees_the_scratch_a_call_holds(threads):
    """A kept block counts as freed and a reused one as allocated again: the backward's peak
    includes its scratch though it comes from a block kept since the call before, and none of it
    is counted once the call is done. Whatever the tier's plan, the scratch holds the packed K and
    V (4 MiB), a panel per thread and the partial sums of dK, dV for at least 2 chunks (8 MiB or
    more: 17 MB in 4 chunks on AVX2, 35 MB in 8 on AVX-512)."""
    import tracemalloc

    selfattn.set_num_threads(2)
    call = _backward_4096()
    call()
    tracemalloc.start()
    try:
        result = call()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = sum(g.nbytes for g in result)
    assert peak - outputs > 12 << 20, peak
    assert current - outputs < 1 << 20, current


@pytest.mark.c_backend
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_child_after_fork_computes_with_its_own_scratch(threads):
    """The kept blocks' lock may be held by another thread at fork(); the child starts with an
    empty list of kept blocks and a fresh lock, and its backward gives the parent's bits."""
    selfattn.set_num_threads(2)
    call = _backward_4096()
    want = call()
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [call() for _ in iter(stop.is_set, True)])
    busy.start()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                got = call()
                code = 0 if all(g.tobytes() == w.tobytes() for g, w in zip(got, want)) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        stop.set()
        busy.join()
    assert os.waitstatus_to_exitcode(status) == 0
