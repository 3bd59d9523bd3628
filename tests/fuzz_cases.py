"""Hypothesis strategies and checks shared by test_fuzz.py and the seeded runner tests/fuzz.py.

A fuzz case is one call of a public function. Two families:

* valid cases: shapes (0 and 1 included, batch dimensions that broadcast), dtypes (float16/32/64,
  byte-swapped, ints, bools), layouts (C, Fortran, negative strides, strided views over garbage,
  broadcast views, nested lists, read-only) and values (moderate, or with NaN, inf, subnormals,
  -0.0 and +-1e308), plus keyword values (scale, mask, is_causal, axis, return_weights). The call
  must succeed and agree with the reference in attn_reference.py; inputs must be unchanged.
* odd cases: a valid case with one argument replaced by something awkward (object arrays, ragged
  lists, strings, complex, datetimes, structured, long double, wrong shapes, odd keyword types).
  The call must either succeed with a result the reference agrees with, or raise TypeError,
  ValueError or MemoryError with a non-empty message. Nothing else (no crash, no other exception).

Functions that selfattn exports but this file does not know get a generic signature-driven fuzz
(arrays for their positional parameters): only the outcome rule is checked for them.
"""
from __future__ import annotations

import datetime
import decimal
import fractions
import inspect
import math
import os

import numpy as np
from hypothesis import assume, strategies as st
from hypothesis.extra import numpy as hynp

import selfattn
import attn_reference as R

# Names in selfattn.__all__ that are not array functions: settings and facts, fuzzed elsewhere.
NOT_ARRAY_FUNCTIONS = {"set_num_threads", "get_num_threads", "set_isa", "get_isa", "config",
                       "plot_attention", "testing", "explain"}

ALLOWED_ERRORS = (TypeError, ValueError, MemoryError)

# valgrind emulates x87 long double with 64-bit doubles: the oracle would be wrong there.
NO_LONG_DOUBLE = os.environ.get("SELFATTN_SANITIZED") == "valgrind"

SPECIALS = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 5e-324, -5e-324, 2.2e-308, 1e-310,
            1e308, -1e308, 1.7976931348623157e308, 3.4e38, -3.4e38, 1e-45, 65504.0, 1e3, -1e3]


def array_functions():
    """The public array functions, discovered from selfattn.__all__."""
    names = []
    for name in selfattn.__all__:
        obj = getattr(selfattn, name, None)
        if callable(obj) and not isinstance(obj, type) and name not in NOT_ARRAY_FUNCTIONS:
            names.append(name)
    return names


# ---- values, dtypes and layouts -----------------------------------------------------------------

FLOAT_DTYPES = [np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16),
                np.dtype(">f8"), np.dtype(">f4")]
OTHER_DTYPES = [np.dtype(np.int8), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(np.int32),
                np.dtype(">i4"), np.dtype(bool)]


def values(shape, dtype, wild):
    """An array of `shape` and `dtype`; floats are moderate, or (wild) include every special."""
    if dtype.kind == "b":
        return hynp.arrays(bool, shape)
    if dtype.kind in "iu":
        lo = 0 if dtype.kind == "u" else -100
        return hynp.arrays(dtype.newbyteorder("="), shape, elements=st.integers(lo, 100)).map(
            lambda a: a.astype(dtype))
    moderate = st.floats(-4.0, 4.0, width=64)
    elements = st.one_of(moderate, st.sampled_from(SPECIALS),
                         st.floats(allow_nan=True, allow_infinity=True)) if wild else moderate

    def cast(a):
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            return a.astype(dtype)
    return hynp.arrays(np.float64, shape, elements=elements).map(cast)


@st.composite
def laid_out(draw, shape, dtype, wild, allow_list=True):
    """An array-like with these values in one of many memory layouts (the values never depend on
    the layout: a kernel that ignores strides or reads padding gets different numbers)."""
    layout = draw(st.sampled_from(["C", "C", "F", "neg_rows", "neg_cols", "strided", "broadcast",
                                   "list", "readonly", "swapped"]))
    if layout == "broadcast" and len(shape) and any(s > 1 for s in shape):
        axis = draw(st.sampled_from([i for i, s in enumerate(shape) if s > 1]))
        small = list(shape)
        small[axis] = 1
        base = draw(values(tuple(small), dtype, wild))
        return np.broadcast_to(base, shape)
    a = draw(values(shape, dtype, wild))
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "neg_rows" and a.ndim >= 2:
        return np.ascontiguousarray(a[..., ::-1, :])[..., ::-1, :]
    if layout == "neg_cols" and a.ndim >= 1:
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "strided" and a.ndim >= 1:
        # every other element of a buffer whose padding is garbage (NaN or 0x5A bytes)
        big = np.empty(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
        if a.dtype.kind == "f":
            big[...] = np.nan
        else:
            big.view(np.uint8)[...] = 0x5A
        big[..., 1::2] = a
        return big[..., 1::2]
    if layout == "list" and allow_list and a.size:
        return a.tolist()
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "swapped" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder())
    return a


def batch_shapes(draw, count, max_dims=2):
    """`count` batch shapes that broadcast together (each axis: the common size or 1)."""
    nd = draw(st.integers(0, max_dims))
    common = [draw(st.integers(0, 3)) for _ in range(nd)]
    shapes = []
    for _ in range(count):
        own_nd = draw(st.integers(0, nd))
        tail = common[nd - own_nd:]
        shapes.append(tuple(s if draw(st.booleans()) else 1 for s in tail) if tail else ())
    return shapes


def dtype_strategy():
    return st.sampled_from(FLOAT_DTYPES * 3 + OTHER_DTYPES)


def scale_strategy():
    # (a valid scale fits every compute dtype: beyond float32's 3.4e38 a float32 call refuses it)
    return st.one_of(st.none(), st.floats(-8, 8), st.sampled_from([0.0, 1.0, -0.0, 1e-300, 1e-30, 1e30,
                                                                 3e38, 2, np.float32(0.5),
                                                                 np.int64(3), np.array(0.25)]))


def mask_strategy(draw, n_q, n_k, wild, max_batch=()):
    kind = draw(st.sampled_from([None, None, "bool", "bool", "float"]))
    if kind is None:
        return None
    rows = draw(st.sampled_from([n_q, 1]))
    cols = draw(st.sampled_from([n_k, 1]))
    shape = tuple(max_batch) + (rows, cols)
    if draw(st.booleans()):                              # numpy broadcasting: drop leading 1s
        shape = shape[-draw(st.integers(0, 2)):] if draw(st.booleans()) else shape
        if shape == ():
            shape = (rows, cols)
    if kind == "bool":
        return draw(laid_out(shape, np.dtype(bool), False))
    dtype = draw(st.sampled_from([np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16)]))
    if wild:
        m = draw(values(shape, dtype, True))
    else:  # 0 / -inf masks and small biases
        m = draw(hynp.arrays(np.float64, shape,
                             elements=st.one_of(st.sampled_from([0.0, -np.inf]),
                                                st.floats(-3, 3)))).astype(dtype)
    return m


# ---- valid cases, per function ------------------------------------------------------------------

def _dims(draw, *names, lo=0, hi=5):
    return [draw(st.integers(lo, hi)) for _ in names]


def case_scores(draw, wild):
    n_q, n_k, d_k = _dims(draw, "n_q", "n_k", "d_k")
    bq, bk, bm = batch_shapes(draw, 3)
    Q = draw(laid_out(bq + (n_q, d_k), draw(dtype_strategy()), wild))
    K = draw(laid_out(bk + (n_k, d_k), draw(dtype_strategy()), wild))
    kw = {}
    if draw(st.booleans()):
        kw["scale"] = draw(scale_strategy())
    mask = mask_strategy(draw, n_q, n_k, wild, bm)
    if mask is not None:
        kw["mask"] = mask
    if draw(st.booleans()):
        kw["is_causal"] = draw(st.sampled_from([True, False, np.True_]))
    return (Q, K), kw


def case_softmax(draw, wild):
    nd = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(0, 5)) for _ in range(nd))
    x = draw(laid_out(shape, draw(dtype_strategy()), wild))
    kw = {}
    if draw(st.booleans()):
        kw["axis"] = draw(st.integers(-nd, nd - 1))
        if draw(st.booleans()):
            kw["axis"] = np.int64(kw["axis"])
    return (x,), kw


def case_output(draw, wild):
    n_q, n_k, d_v = _dims(draw, "n_q", "n_k", "d_v")
    bw, bv = batch_shapes(draw, 2)
    W = draw(laid_out(bw + (n_q, n_k), draw(dtype_strategy()), wild))
    V = draw(laid_out(bv + (n_k, d_v), draw(dtype_strategy()), wild))
    return (W, V), {}


def _attention_kwargs(draw, n_q, n_k, wild, bm, weights_ok=True):
    kw = {}
    if draw(st.booleans()):
        kw["scale"] = draw(scale_strategy())
    mask = mask_strategy(draw, n_q, n_k, wild, bm)
    if mask is not None:
        kw["mask"] = mask
    if draw(st.booleans()):
        kw["is_causal"] = draw(st.sampled_from([True, False, np.False_]))
    if weights_ok and draw(st.booleans()):
        kw["return_weights"] = draw(st.sampled_from([True, False, np.True_]))
    return kw


def case_sdpa(draw, wild):
    n_q, n_k, d_k, d_v = _dims(draw, "n_q", "n_k", "d_k", "d_v")
    bq, bk, bv, bm = batch_shapes(draw, 4)
    Q = draw(laid_out(bq + (n_q, d_k), draw(dtype_strategy()), wild))
    K = draw(laid_out(bk + (n_k, d_k), draw(dtype_strategy()), wild))
    V = draw(laid_out(bv + (n_k, d_v), draw(dtype_strategy()), wild))
    return (Q, K, V), _attention_kwargs(draw, n_q, n_k, wild, bm)


def case_layer(draw, wild):
    n, d_model, d_k, d_v = _dims(draw, "n", "d_model", "d_k", "d_v")
    bx, bq, bk, bv, bm = batch_shapes(draw, 5)
    X = draw(laid_out(bx + (n, d_model), draw(dtype_strategy()), wild))
    Ws = [draw(laid_out(b + (d_model, d), draw(dtype_strategy()), wild))
          for b, d in ((bq, d_k), (bk, d_k), (bv, d_v))]
    return (X, *Ws), _attention_kwargs(draw, n, n, wild, bm)


def case_mha(draw, wild):
    n, d_model = _dims(draw, "n", "d_model")
    h = draw(st.integers(1, 3))
    d_head, d_vhead = _dims(draw, "d_head", "d_vhead", hi=3)
    bx, bm = batch_shapes(draw, 2, max_dims=1)
    X = draw(laid_out(bx + (n, d_model), draw(dtype_strategy()), wild))
    Ws = [draw(laid_out((d_model, h * d), draw(dtype_strategy()), wild))
          for d in (d_head, d_head, d_vhead)]
    W_o = draw(laid_out((h * d_vhead, d_model), draw(dtype_strategy()), wild))
    kw = _attention_kwargs(draw, n, n, wild, ())
    kw["num_heads"] = h
    return (X, *Ws, W_o), kw


VALID_CASES = {
    "compute_self_attention_scores": case_scores,
    "softmax_attention_weights": case_softmax,
    "compute_attention_output": case_output,
    "scaled_dot_product_attention": case_sdpa,
    "self_attention_layer": case_layer,
    "multi_head_attention": case_mha,
}


# ---- odd cases ----------------------------------------------------------------------------------

def odd_array(draw, like_shape):
    """Something that is not a valid numeric operand (or only barely is)."""
    choice = draw(st.integers(0, 17))
    shape = like_shape if len(like_shape) >= 2 else (2, 2)
    if choice == 0:
        return np.empty(shape, dtype=object)                      # None everywhere
    if choice == 1:
        return np.ones(shape, dtype=object)                       # Python ints in an object array
    if choice == 2:
        return [[1.0, 2.0], [3.0]]                                 # ragged
    if choice == 3:
        return np.ones(shape, dtype=np.complex128)
    if choice == 4:
        return np.full(shape, "1.0")
    if choice == 5:
        return np.zeros(shape, dtype="datetime64[s]")
    if choice == 6:
        return np.zeros(shape, dtype="timedelta64[s]")
    if choice == 7:
        return np.zeros(shape, dtype=[("a", "f8"), ("b", "i4")])
    if choice == 8:
        return np.ones(shape, dtype=np.longdouble)
    if choice == 9:
        return None
    if choice == 10:
        return draw(st.sampled_from([1.5, 3, True, "abc", b"xy", 1j]))
    if choice == 11:
        return np.ones(draw(st.integers(0, 4)))                   # 1-d
    if choice == 12:
        return np.float64(2.0)                                     # 0-d
    if choice == 13:
        return {"a": 1}
    if choice == 14:
        wrong = tuple(s + draw(st.integers(1, 2)) for s in shape)
        return np.ones(wrong)                                      # mismatched core dimensions
    if choice == 15:
        return np.ones((3, 2) + shape)                             # batch dims that may not broadcast
    if choice == 16:
        return [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]]            # ragged in a batch axis
    return np.zeros(shape, dtype="V8")                             # raw bytes


ODD_KEYWORDS = {
    "scale": ["1", 1j, [1.0], np.array([1.0, 2.0]), np.array(2.0), np.float32(2), True,
              np.nan, np.inf, -np.inf, -0.0, 10 ** 400, -(10 ** 400), decimal.Decimal("1.5"),
              fractions.Fraction(1, 3), np.array("x"), object(), 1e-320, np.float16(1e-7)],
    "mask": [np.ones((2, 2), int), "mask", np.ones((7, 9), bool), np.ones((5, 4, 3, 2), bool),
             np.ones((2, 2), object), [[True, False]], np.True_, True, 0.0, np.float16(-np.inf),
             np.ones((2, 2), complex), [[1, 0]], np.zeros((0, 0), bool)],
    "is_causal": [1, 0, None, "True", np.bool_(True), [True], 1.0, np.array(True)],
    "axis": [1.5, "0", True, np.int64(0), 10 ** 30, -(10 ** 30), None, np.array(0), (0, 1),
             np.uint8(0), -1, 5, -6],
    "return_weights": [1, None, "yes", np.bool_(False), 0, [False], np.array([True])],
    "num_heads": [0, -1, 1.0, "2", None, 10 ** 20, np.int32(1), 7, True],
}


@st.composite
def valid(draw, name, wild):
    return VALID_CASES[name](draw, wild)


@st.composite
def odd(draw, name):
    args, kw = VALID_CASES[name](draw, draw(st.booleans()))
    args = list(args)
    what = draw(st.sampled_from(["arg", "arg", "keyword", "keyword", "extra_positional",
                                 "unknown_keyword", "missing"]))
    func = getattr(selfattn, name)
    params = inspect.signature(func).parameters
    if what == "arg" and args:
        i = draw(st.integers(0, len(args) - 1))
        args[i] = odd_array(draw, np.shape(args[i]) if not isinstance(args[i], list) else (2, 2))
    elif what == "keyword":
        names = [k for k in ODD_KEYWORDS if k in params]
        if names:
            k = draw(st.sampled_from(names))
            kw[k] = draw(st.sampled_from(ODD_KEYWORDS[k]))
    elif what == "extra_positional":
        args.append(np.ones((2, 2)))
    elif what == "unknown_keyword":
        kw["definitely_not_an_option"] = 1
    elif what == "missing" and args:
        args.pop()
    return tuple(args), kw


# ---- generic fuzz for functions this file does not know ------------------------------------------

@st.composite
def generic(draw, name):
    func = getattr(selfattn, name)
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    args = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            nd = draw(st.integers(0, 3))
            shape = tuple(draw(st.integers(0, 4)) for _ in range(nd))
            if draw(st.integers(0, 5)) == 0:
                args.append(odd_array(draw, shape))
            else:
                args.append(draw(laid_out(shape, draw(dtype_strategy()), draw(st.booleans()))))
    kw = {}
    for p in params:
        if p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            kw[p.name] = draw(st.sampled_from(ODD_KEYWORDS.get(p.name, [1, 2, True, None])))
    return tuple(args), kw


# ---- running a case -----------------------------------------------------------------------------

def snapshot(obj):
    if isinstance(obj, np.ndarray):
        return obj.copy()
    return None


def unchanged(before, after):
    if before is None:
        return True
    if before.dtype.kind == "f":
        return np.array_equal(before, after, equal_nan=True)
    try:
        return np.array_equal(before, after)
    except Exception:
        return before.tobytes() == after.tobytes()


def run_case(name, args, kw, must_succeed):
    """Calls selfattn.<name>(*args, **kw) and checks the outcome (raises AssertionError)."""
    func = getattr(selfattn, name)
    before = [snapshot(a) for a in args] + [snapshot(v) for v in kw.values()]
    try:
        with np.errstate(all="ignore"):
            got = func(*args, **kw)
    except ALLOWED_ERRORS as exc:
        assert str(exc).strip(), f"{name} raised {type(exc).__name__} with an empty message"
        assert not must_succeed, (
            f"{name} rejected a valid case: {type(exc).__name__}: {exc}")
        outcome = exc
    else:
        outcome = got
    after = list(args) + list(kw.values())
    for b, a in zip(before, after):
        assert unchanged(b, a), f"{name} modified an input"
    if isinstance(outcome, BaseException) or name not in R.REFERENCES or NO_LONG_DOUBLE:
        return outcome
    try:
        with np.errstate(all="ignore"):
            result_dtype, refs = R.REFERENCES[name](*args, **kw)
    except Exception as exc:
        raise AssertionError(f"{name} accepted inputs its reference cannot interpret ({exc!r})")
    outs = got if isinstance(got, tuple) else (got,)
    assert len(outs) == len(refs), f"{name} returned {len(outs)} arrays, expected {len(refs)}"
    for i, (g, r) in enumerate(zip(outs, refs)):
        problems = R.mismatches(g, r, result_dtype)
        assert not problems, f"{name} output {i}: " + "; ".join(problems)
    return outcome
