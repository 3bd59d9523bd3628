"""Concrete calls of every public array function, for the leak, thread and valgrind checks.

`success_calls(rng, n)` gives, per function, a few (args, kwargs) that must succeed, with sizes
around n; `error_calls()` gives calls that must raise TypeError or ValueError (each error path
of the validation); `all_calls(n)` both, as a flat list, and `pool_sized_calls(rng, dtype)` calls
large enough that the kernels split them into many tasks for the thread pool. `outcome` and
`same_outcome` run a call and compare two outcomes bit for bit (the thread tests' criterion). Functions are discovered from selfattn.__all__; a function this file has no
builder for gets one built from its signature (a float array for each positional parameter),
and whatever that call does, success or a clean error, is what the checks then repeat.
Not a test file.
"""
from __future__ import annotations

import inspect

import numpy as np

import selfattn

NOT_ARRAY_FUNCTIONS = {"set_num_threads", "get_num_threads", "set_isa", "get_isa", "config",
                       "plot_attention", "testing", "explain"}


def array_functions():
    names = []
    for name in selfattn.__all__:
        obj = getattr(selfattn, name, None)
        if callable(obj) and not isinstance(obj, type) and name not in NOT_ARRAY_FUNCTIONS:
            names.append(name)
    return names


def _f(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def _builders(rng, n):
    d = 8
    Q, K, V = _f(rng, 2, n, d), _f(rng, 2, n + 3, d), _f(rng, 2, n + 3, d + 2)
    mask = rng.random((n, n + 3)) > 0.3
    X = _f(rng, n, d)
    W = _f(rng, d, 4)
    Wv = _f(rng, d, 6)
    X32 = X.astype(np.float32)
    return {
        "compute_self_attention_scores": [
            ((Q, K), {}),
            ((Q.astype(np.float32), K[0].astype(np.float32)), {"mask": mask, "is_causal": True}),
            ((Q, K), {"mask": np.where(mask, 0.0, -np.inf), "scale": 0.5}),
        ],
        "softmax_attention_weights": [
            ((_f(rng, 3, n, n),), {}),
            ((_f(rng, n, n, dtype=np.float32),), {"axis": 0}),
            ((np.array([[-np.inf, -np.inf], [1.0, np.nan]]),), {}),
        ],
        "compute_attention_output": [
            ((_f(rng, 2, n, n + 3), V), {}),
            ((_f(rng, n, n + 3, dtype=np.float32), V[0].astype(np.float32)), {}),
        ],
        "scaled_dot_product_attention": [
            ((Q, K, V), {}),
            ((Q, K, V), {"mask": mask, "return_weights": True}),
            ((Q.astype(np.float32), K.astype(np.float32), V.astype(np.float32)),
             {"is_causal": True}),
            ((Q, K, np.where(rng.random(V.shape) < 0.1, np.nan, V)), {"mask": mask}),
            ((Q, K, V), {"is_causal": "bottom_right", "window": (2, None), "mask": mask}),
            ((_f(rng, 2, 4, n, d), K[:, None], V[:, None]), {"enable_gqa": True}),   # 4 over 1
            ((Q, K, V), {"query_lengths": [n, 1], "key_lengths": [0, n + 3], "is_causal": True,
                         "return_lse": True}),
            ((Q, K, V), {"key_lengths": 2, "return_weights": True, "return_lse": True}),
        ],
        "self_attention_layer": [
            ((X, W, W, Wv), {}),
            ((X32, W, W, Wv), {"is_causal": True, "return_weights": True}),
        ],
        "multi_head_attention": [
            ((X, _f(rng, d, 8), _f(rng, d, 8), _f(rng, d, 8), _f(rng, 8, d)), {"num_heads": 2}),
            ((X32, _f(rng, d, 8), _f(rng, d, 8), _f(rng, d, 8), _f(rng, 8, d)),
             {"num_heads": 4, "is_causal": True, "return_weights": True}),
            ((X, _f(rng, d, 8), _f(rng, 5, 8), _f(rng, 5, 8), _f(rng, 8, d)),    # cross, biases
             {"num_heads": 2, "kv": _f(rng, 2, n + 3, 5), "b_q": _f(rng, 8), "b_v": _f(rng, 8),
              "b_o": _f(rng, d), "is_causal": True}),
        ],
        "multi_head_attention_vjp": [
            ((X, _f(rng, d, 8), _f(rng, d, 8), _f(rng, d, 8), _f(rng, 8, d)), {"num_heads": 2}),
            ((X32, _f(rng, d, 8), _f(rng, d, 8), _f(rng, d, 8), _f(rng, 8, d)),
             {"num_heads": 4, "is_causal": True, "dropout_p": 0.25, "seed": 3}),
            ((X, _f(rng, d, 8), _f(rng, 5, 4), _f(rng, 5, 4), _f(rng, 8, d)),    # cross, GQA
             {"num_heads": 2, "num_kv_heads": 1, "kv": _f(rng, 2, n + 3, 5), "b_k": _f(rng, 4),
              "b_o": _f(rng, d), "mask": mask}),
        ],
        "scaled_dot_product_attention_backward": [
            ((_f(rng, 2, n, d + 2), Q, K, V), {}),
            ((_f(rng, 2, n, d + 2), Q, K, V), {"mask": mask, "is_causal": True}),
            ((_f(rng, 2, n, d + 2), Q, K, V), {"is_causal": "bottom_right", "window": (1, 1)}),
            ((_f(rng, 2, n, d + 2), Q, K, V), {"query_lengths": [2, n], "key_lengths": [n, 3]}),
        ],
        "self_attention_layer_backward": [
            ((_f(rng, n, 6), X, W, W, Wv), {}),
        ],
        "multi_head_attention_backward": [
            ((_f(rng, n, d), X, _f(rng, d, 8), _f(rng, d, 8), _f(rng, d, 8), _f(rng, 8, d)),
             {"num_heads": 2}),
            ((_f(rng, 2, n, d), X, _f(rng, d, 8), _f(rng, 5, 8), _f(rng, 5, 8), _f(rng, 8, d)),
             {"num_heads": 2, "kv": _f(rng, 2, n + 3, 5), "b_k": _f(rng, 8), "b_o": _f(rng, d)}),
        ],
        "causal_mask": [((n,), {}), ((n, n + 3), {}), ((n + 2, n), {"align": "bottom_right"})],
        "window_mask": [((n, n + 3, 2, 0), {}), ((n, n, None, 1), {"align": "bottom_right"})],
        "padding_mask": [((np.array([1, n, 0]), n), {})],
        "alibi_bias": [((4, n), {}), ((3, n, n + 3), {})],
        "lengths_mask": [((np.array([1, n, 0]), None, n, n + 3), {"head_axis": True})],
    }


def _generic(func, rng, n):
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return [((), {})]
    args = [_f(rng, n, n) for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return [(tuple(args), {})]


# The notebook functions: their calls here must succeed. Calls of the functions added later are
# built from their issue's description (or, for names this file does not know, from the
# signature); if such a call raises, the checks repeat that path instead and say so.
FOUNDATION = {"compute_self_attention_scores", "softmax_attention_weights",
              "compute_attention_output", "scaled_dot_product_attention", "self_attention_layer"}


def success_calls(rng=None, n=6):
    """{name: [(args, kwargs), ...]} for every public array function."""
    rng = np.random.default_rng(0) if rng is None else rng
    known = _builders(rng, n)
    return {name: known.get(name) or _generic(getattr(selfattn, name), rng, n)
            for name in array_functions()}


def generic_names():
    """The exported array functions whose calls are built from their signature alone."""
    return [name for name in array_functions() if name not in _builders(np.random.default_rng(0), 2)]


def error_calls():
    """{name: [(args, kwargs), ...]} of calls that raise TypeError or ValueError."""
    A, B = np.ones((3, 4)), np.ones((5, 2))
    C = np.ones((3, 4), dtype=complex)
    ragged = [[1.0, 2.0], [3.0]]
    calls = {
        "compute_self_attention_scores": [((A, B), {}), ((C, A), {}), ((A, A), {"mask": np.ones((3, 3), int)}),
                                          ((ragged, A), {}), ((A, A), {"is_causal": 1})],
        "softmax_attention_weights": [((np.float64(1.0),), {}), ((A,), {"axis": 5}), ((C,), {}),
                                      ((A,), {"axis": "x"})],
        "compute_attention_output": [((A, B), {}), ((A, np.ones(4)), {}), ((A, C.T), {})],
        "scaled_dot_product_attention": [((A, A, B), {}), ((A, A, A), {"scale": "x"}),
                                         ((A, A, A), {"mask": np.ones((7, 7), bool)}),
                                         ((A, A, A), {"return_weights": None}),
                                         ((A, np.ones((2, 5, 4)), A), {}),
                                         ((np.ones((3, 2, 4)), np.ones((2, 2, 4)),
                                           np.ones((2, 2, 4))), {"enable_gqa": True}),
                                         ((A, A, A), {"query_lengths": [1]}),
                                         ((A, A, A), {"key_lengths": 9}),
                                         ((A, A, A), {"return_lse": "yes"})],
        "self_attention_layer": [((A, B, B, B), {}), ((A, np.ones((4, 2)), np.ones((4, 3)), B), {}),
                                 ((A, np.ones((4, 2)), np.ones((4, 2)), np.ones((4, 2))),
                                  {"scale": float("nan")})],
        "multi_head_attention": [((A, np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)),
                                   np.ones((3, 4))), {"num_heads": 2}),
                                 ((A, np.ones((4, 4)), np.ones((3, 4)), np.ones((3, 4)),
                                   np.ones((4, 4))), {"num_heads": 2, "kv": A}),
                                 ((A, np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4)),
                                   np.ones((4, 4))), {"num_heads": 2, "b_k": np.ones(3)})],
        "multi_head_attention_vjp": [((A, np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)),
                                       np.ones((3, 4))), {"num_heads": 2}),
                                     ((A, np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4)),
                                       np.ones((4, 4))), {"num_heads": 2, "dropout_p": 2.0})],
        "scaled_dot_product_attention_backward": [((B, A, A, A), {})],
        "self_attention_layer_backward": [((B, A, B, B, B), {})],
        "multi_head_attention_backward": [((A, A, np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)),
                                            np.ones((3, 4))), {"num_heads": 2})],
        "causal_mask": [(("3",), {}), ((-1,), {}), ((3,), {"align": "left"})],
        "window_mask": [((3, 3, -1, 0), {}), ((3, 3, 1.5, 0), {})],
        "alibi_bias": [((0, 3), {}), ((2, "3"), {})],
        "padding_mask": [((np.array([1.5]), 2), {}), ((np.array([[1]]), "x"), {})],
        "lengths_mask": [((np.array([3]), None, 2, 2), {}), ((None, [1.0], 2, 2), {})],
    }
    return {name: calls.get(name, [((C,) * _n_positional(getattr(selfattn, name)), {})])
            for name in array_functions()}


def _n_positional(func):
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    return max(1, sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                      and p.default is p.empty))


def all_calls(n):
    """[(name, args, kwargs), ...]: every success call (sizes around n) and every error call."""
    work = []
    for calls in (success_calls(np.random.default_rng(3), n=n), error_calls()):
        for name, cases in calls.items():
            work.extend((name, args, kw) for args, kw in cases)
    return work


def pool_sized_calls(rng, dtype):
    """[(name, args, kwargs), ...]: each step, the fused calls and the backward on batches big
    enough that the work is split into many GEMM tiles, softmax row blocks and query blocks."""
    Q = _f(rng, 3, 130, 32, dtype=dtype)
    K = _f(rng, 3, 200, 32, dtype=dtype)
    V = _f(rng, 3, 200, 24, dtype=dtype)
    mask = rng.random((130, 200)) < 0.9
    W = _f(rng, 32, 32, dtype=dtype)
    return [
        ("compute_self_attention_scores", (Q, K), {"mask": mask}),
        ("softmax_attention_weights", (_f(rng, 3, 130, 200, dtype=dtype),), {}),
        ("compute_attention_output", (np.ones((3, 130, 200), dtype), V), {}),
        ("scaled_dot_product_attention", (Q, K, V), {"is_causal": True}),
        ("scaled_dot_product_attention", (Q, K, V), {"mask": mask, "return_weights": True}),
        ("self_attention_layer", (Q, W, W, W[:, :24]), {}),
        ("scaled_dot_product_attention_backward", (_f(rng, 3, 130, 24, dtype=dtype), Q, K, V),
         {"mask": mask}),
        ("scaled_dot_product_attention_backward", (_f(rng, 3, 130, 24, dtype=dtype), Q, K, V),
         {"is_causal": True}),
    ]


def run(func, args, kw):
    """func(*args, **kw); a function that returns its output and a backward (a vjp) is run to
    the end: its result is the output followed by the backward's gradients for dY = that output."""
    result = func(*args, **kw)
    if isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
        return (result[0],) + tuple(result[1](result[0]))
    return result


def outcome(name, args, kw):
    """run(selfattn.<name>, args, kw), or (exception type, message) if it raises a clean error."""
    try:
        return run(getattr(selfattn, name), args, kw)
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


def same_outcome(a, b):
    """The same error, or results with the same dtypes, shapes and bits (NaN payloads included)."""
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], type):
        return a == b
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(
        isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
        and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))
