"""Leaks: every public function, on its success and error paths, repeated until memory plateaus.

* tracemalloc (ujson's approach): after a warm-up, the traced memory at the end of the loop must
  not exceed the traced memory half way through by more than a few hundred bytes. selfattn
  allocates its outputs with NumPy and its scratch with PyMem_RawMalloc, both traced, so a buffer
  or an object lost on any path shows up.
* RSS: the resident set must plateau too (catches plain malloc leaks that tracemalloc cannot
  see); measured on larger inputs so a leak is megabytes.
* refcounts: sys.getrefcount of every input (and of its dtype) is unchanged after successful
  calls and after errors.
"""
import gc
import os
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

import selfattn
import calls

pytestmark = pytest.mark.usefixtures("frozen_heap")

FOUNDATION = calls.FOUNDATION
SUCCESS = calls.success_calls()
ERRORS = calls.error_calls()
NAMES = sorted(SUCCESS)

LOOPS = 400
SLACK_BYTES = 512
# The smallest real leak on a success path is 8 bytes per call (a scratch buffer): growth beyond
# 4 bytes per call over the second half fails. On error paths what could leak is an object (an
# array, 80 bytes and more; an exception or a message, 50 and more); NumPy's cache of dtype
# strings, which the messages print, keeps growing there by up to ~20 bytes per call under
# PYTHONMALLOC=malloc (seen here), so error paths fail beyond 40 bytes per call.
PER_CALL_BYTES = 4
PER_ERROR_BYTES = 40


def allowed(cases, loops=LOOPS, per_call=PER_CALL_BYTES):
    return SLACK_BYTES + per_call * len(cases) * (loops // 2)


def run_all(func, cases, expect_error):
    for args, kw in cases:
        if expect_error:
            try:
                calls.run(func, args, kw)
            except (TypeError, ValueError):
                pass
        else:
            calls.run(func, args, kw)


def success_path(name):
    """True if the success calls succeed; for functions beyond the notebook's, whose calls here
    are built from a description, a call that raises is reported and its path checked instead."""
    func = getattr(selfattn, name)
    try:
        run_all(func, SUCCESS[name], False)
        return True
    except (TypeError, ValueError) as exc:
        if name in FOUNDATION:
            raise
        warnings.warn(f"{name}: the call built for it raised {exc!r}; its error path is what "
                      f"the leak checks repeat (update tests/calls.py)")
        return False


# NumPy's own Python code keeps a string now and then (str() of a complex dtype, which our error
# messages print, grows the traced memory by about a byte per call under PYTHONMALLOC=malloc),
# so allocations made in numpy/*.py are NumPy's business and left out. Arrays and our scratch
# buffers, allocated in C, are attributed to the Python line that called into C (selfattn's or
# the test's) and are counted. So is nothing of the measuring itself.
NOT_OURS = [tracemalloc.Filter(False, "*/numpy/*"),
            tracemalloc.Filter(False, tracemalloc.__file__)]
# Only the innermost frame is recorded, which is all the filters above read: recording 16, as
# this file once did, made every traced call about 5 times slower (22 ms against 4 ms for a
# round of multi_head_attention_backward), a minute and a half of the suite's run.
TRACE_FRAMES = 1


def traced_bytes():
    snap = tracemalloc.take_snapshot().filter_traces(NOT_OURS)
    return sum(stat.size for stat in snap.statistics("filename"))


def traced_growth(step, loops=LOOPS, chunk=25, warmup=200):
    """Bytes by which traced memory rose over the second half of `loops` calls of step(), or 0
    when it did not rise steadily: a leak grows the traced memory in every chunk of calls, while
    a cache or a container that resizes now and then grows it in a few steps and stops."""
    # Warm-up: caches fill (NumPy keeps a few hundred short strings when dtypes are printed, as
    # our error messages do, before it starts dropping them).
    for _ in range(warmup):
        step()
    gc.collect()
    tracemalloc.start(TRACE_FRAMES)
    try:
        # the measuring's own lazily built state (fnmatch's compiled filter patterns) is made
        # now, before the first mark, so that it is in every mark and no growth
        traced_bytes()
        marks = []
        for i in range(loops):
            step()
            if (i + 1) % chunk == 0 and i >= loops // 2:
                gc.collect()
                marks.append(traced_bytes())
    finally:
        tracemalloc.stop()
    rises = sum(b > a for a, b in zip(marks, marks[1:]))
    steady = rises >= 0.75 * (len(marks) - 1)
    return marks[-1] - marks[0] if steady else 0


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux: the high-water mark (kB on Linux, bytes on macOS)
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024


@pytest.mark.parametrize("name", NAMES)
def test_success_paths_plateau_under_tracemalloc(name):
    func = getattr(selfattn, name)
    ok = success_path(name)
    growth = traced_growth(lambda: run_all(func, SUCCESS[name], not ok))
    assert growth <= allowed(SUCCESS[name]), f"{name}: traced memory still grew by {growth} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_error_paths_plateau_under_tracemalloc(name):
    func = getattr(selfattn, name)
    if name in FOUNDATION:
        for args, kw in ERRORS[name]:
            with pytest.raises((TypeError, ValueError)):
                func(*args, **kw)
    growth = traced_growth(lambda: run_all(func, ERRORS[name], True))
    assert growth <= allowed(ERRORS[name], per_call=PER_ERROR_BYTES), (
        f"{name}: traced memory still grew by {growth} bytes on errors")


def test_interrupted_and_refused_paths_plateau():
    # the size guard and a kernel refusal (the private API) leave nothing behind
    Q = np.broadcast_to(np.ones((1, 4)), (2 ** 31, 4))
    from selfattn import _core
    out = np.empty((2, 3))

    def step():
        try:
            selfattn.compute_self_attention_scores(Q, Q)
        except ValueError:
            pass
        try:
            _core.matmul(out, np.ones((2, 4)), np.ones((5, 3)), -1)
        except ValueError:
            pass
    assert traced_growth(step) <= allowed([1, 2])


@pytest.mark.skipif(bool(os.environ.get("SELFATTN_SANITIZED")),
                    reason="under ASan/valgrind the allocator's quarantine grows the RSS by design")
@pytest.mark.parametrize("name", NAMES)
def test_rss_plateaus(name):
    func = getattr(selfattn, name)
    cases = calls.success_calls(np.random.default_rng(1), n=48)[name]
    ok = success_path(name)

    def step():
        run_all(func, cases, not ok)
        run_all(func, ERRORS[name], True)
    for _ in range(30):
        step()
    gc.collect()
    before = rss_bytes()
    for _ in range(300):
        step()
    gc.collect()
    grown = rss_bytes() - before
    # each call here allocates tens of kB; a leak of any of it would be several MB by now
    assert grown < 4 * 2 ** 20, f"{name}: RSS grew by {grown / 2 ** 20:.1f} MiB over 300 rounds"


def _refcounts(objs):
    out = []
    for o in objs:
        out.append(sys.getrefcount(o))
        if isinstance(o, np.ndarray):
            out.append(sys.getrefcount(o.dtype))
    return out


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="no refcounts on this Python")
@pytest.mark.parametrize("name", NAMES)
def test_input_refcounts_unchanged(name):
    func = getattr(selfattn, name)
    ok = success_path(name)
    for cases, expect_error in ((SUCCESS[name], not ok), (ERRORS[name], True)):
        for args, kw in cases:
            objs = list(args) + list(kw.values())
            run_all(func, [(args, kw)], expect_error)   # warm caches (dtype descriptors etc.)
            gc.collect()
            before = _refcounts(objs)
            for _ in range(50):
                run_all(func, [(args, kw)], expect_error)
            gc.collect()
            after = _refcounts(objs)
            assert after == before, f"{name}: refcounts of its inputs changed {before} -> {after}"


def test_the_plateau_check_detects_a_leak():
    # The check itself must be able to fail: a Python-level leak of one small array per call.
    kept = []
    growth = traced_growth(lambda: kept.append(bytearray(8)))
    assert growth > allowed([1])
