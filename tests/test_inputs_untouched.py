"""Inputs are never modified, and calls leave every reference count as it was (success or error)."""
import gc
import sys

import numpy as np
import pytest

import selfattn as sa

pytestmark = [pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="needs sys.getrefcount"),
              pytest.mark.usefixtures("frozen_heap")]


def calls(rng):
    Q, K, V = rng.standard_normal((3, 4, 5))
    W = rng.standard_normal((5, 3))
    mask = rng.random((4, 4)) < 0.8
    fmask = np.where(mask, 0.0, -np.inf)
    return [
        (sa.compute_self_attention_scores, (Q, K), {"mask": mask, "is_causal": True}),
        (sa.compute_self_attention_scores, (Q.astype(np.float32), K), {"mask": fmask}),
        (sa.softmax_attention_weights, (Q,), {"axis": 0}),
        (sa.compute_attention_output, (Q[:, :4], V), {}),
        (sa.scaled_dot_product_attention, (Q, K, V), {"mask": fmask, "return_weights": True}),
        (sa.self_attention_layer, (Q, W, W, W), {"mask": mask}),
        (sa.self_attention_layer, (Q.astype(np.float16), W, W, W), {}),
    ]


def test_inputs_are_not_modified(rng):
    for fn, args, kwargs in calls(rng):
        before = [a.copy() for a in args] + [v.copy() for v in kwargs.values()
                                             if isinstance(v, np.ndarray)]
        fn(*args, **kwargs)
        after = list(args) + [v for v in kwargs.values() if isinstance(v, np.ndarray)]
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)


def test_read_only_inputs_work(rng):
    for fn, args, kwargs in calls(rng):
        for a in args:
            a.flags.writeable = False
        fn(*args, **kwargs)


def test_outputs_are_new_writeable_arrays(rng):
    Q = rng.standard_normal((3, 4))
    for result in (sa.compute_self_attention_scores(Q, Q), sa.softmax_attention_weights(Q),
                   sa.scaled_dot_product_attention(Q, Q, Q), sa.self_attention_layer(Q, *[np.eye(4)] * 3)):
        assert result.flags.writeable
        assert not np.shares_memory(result, Q)


def refcounts(objs):
    return [sys.getrefcount(o) for o in objs]


def repeat_without_gc(times, call):
    """A collection during the loop would move counts of shared objects (small ints) itself."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(times):
            call()
    finally:
        gc.enable()


def test_refcounts_unchanged_after_calls(rng):
    for fn, args, kwargs in calls(rng):
        objs = list(args) + list(kwargs.values())
        fn(*args, **kwargs)                      # warm caches
        gc.collect()
        before = refcounts(objs)
        repeat_without_gc(50, lambda: fn(*args, **kwargs))
        assert refcounts(objs) == before, fn.__name__


def test_refcounts_unchanged_after_errors():
    Q = np.ones((3, 4))
    bad_K = np.ones((3, 5))
    mask = np.ones((3, 3), int)
    cases = [
        (sa.compute_self_attention_scores, (Q, bad_K), {}),
        (sa.scaled_dot_product_attention, (Q, Q, Q), {"mask": mask}),
        (sa.self_attention_layer, (Q, bad_K, Q, Q), {}),
        (sa.softmax_attention_weights, (Q,), {"axis": 5}),
        (sa.compute_attention_output, (Q, bad_K), {}),
    ]
    for fn, args, kwargs in cases:
        objs = list(args) + list(kwargs.values())
        gc.collect()
        before = refcounts(objs)

        def call():
            with pytest.raises((ValueError, TypeError)):
                fn(*args, **kwargs)
        repeat_without_gc(50, call)
        assert refcounts(objs) == before, fn.__name__
