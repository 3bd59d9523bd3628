"""Check your own attention functions against selfattn, and grade them in pytest.

``selfattn.testing`` is to attention what ``numpy.testing`` is to arrays, with the learner in mind:

- :func:`check` runs a battery of cases on your function and on selfattn's, and returns a
  :class:`CheckReport` that says, case by case, what passed, what failed, by how much, and which
  classic mistake your result matches (softmax over the wrong axis, no max subtraction, a missing
  ``1/sqrt(d_k)``, ``K`` not transposed, a sum without ``keepdims``, ...).
- :func:`assert_implementation` is the same as one line for a pytest grader.
- :func:`assert_attention_close` compares two arrays with tolerances chosen by dtype, and says where
  and by how much they differ.
- :func:`cases` gives the named cases (inputs and expected output) to parametrize your own tests.

>>> import numpy as np, selfattn
>>> def softmax_attention_weights(attn_scores):
...     e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
...     return e / e.sum(axis=-1, keepdims=True)
>>> bool(selfattn.testing.check(softmax_attention_weights))
True

How the diagnosis works: when your result differs from selfattn's, the same inputs are run through
known wrong variants of the computation (each one classic mistake) and the report names the variant
your result matches. The sizes differ on purpose (``n_q != n_k != d_k != d_v``) so that a mistake
with axes cannot hide behind a square matrix.
"""
from __future__ import annotations

import difflib
import html
import math
import os
import textwrap
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _api

__all__ = [
    "check",
    "assert_implementation",
    "assert_attention_close",
    "cases",
    "Case",
    "CaseResult",
    "CheckReport",
    "NAMES",
    "TOLERANCES",
]

#: The functions ``check`` knows, by their public names.
NAMES = (
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
    "scaled_dot_product_attention",
)

# The functions whose result depends on the scale convention.
_SCALED = ("compute_self_attention_scores", "self_attention_layer", "scaled_dot_product_attention")

_ARG_NAMES = {
    "compute_self_attention_scores": ("Q", "K"),
    "softmax_attention_weights": ("attn_scores",),
    "compute_attention_output": ("attn_weights", "V"),
    "self_attention_layer": ("X", "W_q", "W_k", "W_v"),
    "scaled_dot_product_attention": ("Q", "K", "V"),
}

#: ``(rtol, atol)`` by dtype: two results agree where ``|actual - desired| <= atol + rtol * |desired|``.
#: The coarser dtype of the two arrays decides; integers and booleans count as float64.
TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-4),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))


# ---- comparing arrays ------------------------------------------------------------------------

def _tolerance(*dtypes):
    """(rtol, atol, dtype) of the coarsest floating dtype among `dtypes`."""
    coarsest = None
    for dt in dtypes:
        dt = np.dtype(dt)
        if dt.kind != "f" or dt.itemsize > 8:
            dt = np.dtype(np.float64)
        if coarsest is None or dt.itemsize < coarsest.itemsize:
            coarsest = dt
    coarsest = coarsest if coarsest is not None else np.dtype(np.float64)
    rtol, atol = TOLERANCES[coarsest]
    return rtol, atol, coarsest


@dataclass(frozen=True)
class _Diff:
    """How two arrays of one shape differ."""
    n_bad: int               # elements outside the tolerance (non-finite mismatches included)
    size: int
    max_abs: float           # largest |actual - desired| where both are finite (0.0 if none)
    max_rel: float
    worst_index: tuple       # the element that is furthest outside the tolerance, or None
    worst_actual: float
    worst_desired: float
    n_nonfinite: int         # elements where one side is inf/NaN and the other is not the same

    @property
    def close(self):
        return self.n_bad == 0


def _diff(actual, desired, rtol, atol):
    a = np.asarray(actual, dtype=np.float64)
    d = np.asarray(desired, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(d)
    same_special = (np.isnan(a) & np.isnan(d)) | (np.isinf(a) & (a == d))
    with np.errstate(all="ignore"):
        err = np.where(finite, np.abs(a - d), 0.0)
        allowed = atol + rtol * np.abs(np.where(finite, d, 0.0))
        excess = np.where(finite, err / allowed, 0.0)
        rel = np.where(finite & (d != 0), err / np.abs(d), np.where(finite & (err > 0), np.inf, 0.0))
    nonfinite_bad = ~finite & ~same_special
    bad = nonfinite_bad | (finite & (err > allowed))
    n_bad = int(bad.sum())
    worst = None
    if n_bad:
        if nonfinite_bad.any():
            flat = int(np.flatnonzero(nonfinite_bad.ravel())[0])
        else:
            flat = int(np.argmax(excess.ravel()))
        worst = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    return _Diff(
        n_bad=n_bad,
        size=int(a.size),
        max_abs=float(err.max()) if err.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        worst_index=worst,
        worst_actual=float(a[worst]) if worst is not None else math.nan,
        worst_desired=float(d[worst]) if worst is not None else math.nan,
        n_nonfinite=int(nonfinite_bad.sum()),
    )


def _fmt(x):
    """A number as a learner reads it: short, but not rounded to look equal when it is not."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.6g}"


def _fmt_index(index):
    return "(" + ", ".join(str(i) for i in index) + ")" if len(index) != 1 else f"({index[0]},)"


def assert_attention_close(actual, desired, *, rtol=None, atol=None, err_msg=""):
    """Raise AssertionError unless `actual` and `desired` agree within dtype-chosen tolerances.

    Elements agree where ``|actual - desired| <= atol + rtol * |desired|``; NaNs in the same
    places and infinities of the same sign count as equal. By default ``rtol`` and ``atol`` come
    from :data:`TOLERANCES` for the coarser dtype of the two arrays (float64: 1e-10 and 1e-12,
    float32: 1e-5 and 1e-5, float16: 1e-3 and 1e-4), so a float32 result is not failed for
    float32 rounding. The message says how many elements differ, where the largest difference
    is, what both values are there and how far apart they are.

    Parameters
    ----------
    actual, desired : array_like
        The result to check and the expected one, of the same shape.
    rtol, atol : float, optional
        Override the relative and absolute tolerance.
    err_msg : str, optional
        Put in front of the message.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn.testing import assert_attention_close
    >>> assert_attention_close(np.float32([0.5, 0.25]), np.float32([0.5, 0.2500001]))  # silent
    >>> assert_attention_close([0.5, 0.25], [0.5, 0.3])
    Traceback (most recent call last):
        ...
    AssertionError: Arrays are not close (float64 tolerance: rtol=1e-10, atol=1e-12): 1 of 2 elements (50%) differ.
    Largest difference at index (1,): actual 0.25, desired 0.3 (|difference| 0.05, relative 0.166667).
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    a = np.asarray(actual)
    d = np.asarray(desired)
    prefix = (err_msg.rstrip() + "\n") if err_msg else ""
    for what, arr in (("actual", a), ("desired", d)):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"assert_attention_close: {what} has dtype {arr.dtype}; "
                            f"expected real numbers")
    if a.shape != d.shape:
        hint = ""
        if a.ndim >= 2 and a.shape[:-2] + a.shape[-2:][::-1] == d.shape:
            hint = " (actual looks transposed: its last two dimensions are swapped)"
        raise AssertionError(
            f"{prefix}Shapes differ: actual {a.shape}, desired {d.shape}{hint}."
        )
    r_default, a_default, dt = _tolerance(a.dtype, d.dtype)
    rtol = r_default if rtol is None else float(rtol)
    atol = a_default if atol is None else float(atol)
    diff = _diff(a, d, rtol, atol)
    if diff.close:
        return
    raise AssertionError(prefix + _diff_message(diff, rtol, atol, dt))


def _diff_message(diff, rtol, atol, dt):
    percent = 100.0 * diff.n_bad / diff.size
    idx = _fmt_index(diff.worst_index)
    lines = [
        f"Arrays are not close ({dt} tolerance: rtol={rtol:g}, atol={atol:g}): "
        f"{diff.n_bad} of {diff.size} elements ({percent:.3g}%) differ."
    ]
    if diff.n_nonfinite:
        lines.append(
            f"{diff.n_nonfinite} element(s) are inf or NaN on one side only; the first at index "
            f"{idx}: actual {_fmt(diff.worst_actual)}, desired {_fmt(diff.worst_desired)}."
        )
        if diff.max_abs > 0:
            lines.append(f"Among finite elements, the max |difference| is {_fmt(diff.max_abs)}.")
    else:
        gap = abs(diff.worst_actual - diff.worst_desired)
        rel = gap / abs(diff.worst_desired) if diff.worst_desired != 0 else math.inf
        lines.append(
            f"Largest difference at index {idx}: actual {_fmt(diff.worst_actual)}, desired "
            f"{_fmt(diff.worst_desired)} (|difference| {_fmt(gap)}, relative {_fmt(rel)})."
        )
        if diff.n_bad > 1:
            lines.append(f"Max absolute difference {_fmt(diff.max_abs)}; max relative difference "
                         f"{_fmt(diff.max_rel)}.")
    return "\n".join(lines)


# ---- the cases ---------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False, eq=False)
class Case:
    """One input set for one function, with the output selfattn expects.

    Attributes
    ----------
    name : str
        The function this case is for, e.g. ``"softmax_attention_weights"``.
    id : str
        A short identifier, usable as a pytest id (``str(case)`` returns it).
    label : str
        A description in words, e.g. ``"unequal sizes n_q=3, n_k=5, d_k=4 (float64)"``.
    args : tuple of ndarray
        The positional arguments, in the notebook's order.
    expected : ndarray
        selfattn's result for ``args`` (with ``scale`` where the function has one).
    scale : float or None
        The scale the expected result was computed with (None for functions without one).
    batched : bool
        The inputs have a leading batch dimension. The notebook's functions take one sequence, so
        :func:`check` reports these cases as notes, never as failures.
    large : bool
        The scores are large (hundreds to thousands) to catch a softmax that overflows.
    """
    name: str
    id: str
    label: str
    args: tuple
    expected: np.ndarray
    scale: float | None = None
    batched: bool = False
    large: bool = False

    @property
    def arg_names(self):
        return _ARG_NAMES[self.name]

    @property
    def inputs(self):
        """The arguments as a dict, by their names in the notebook."""
        return dict(zip(self.arg_names, self.args))

    @property
    def dtype(self):
        return self.expected.dtype

    def shapes(self):
        """``"Q (3, 4), K (5, 4)"``: the input shapes, as the report shows them."""
        return ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(self.arg_names, self.args))

    def __str__(self):
        return self.id

    def __repr__(self):
        return f"<Case {self.name}[{self.id}]: {self.shapes()} -> {tuple(self.expected.shape)}>"


def _check_name(func, name, fn=None):
    if name is None:
        name = getattr(fn, "__name__", None)
        if name not in NAMES:
            close = difflib.get_close_matches(str(name), NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{func}: cannot tell which function {name!r} implements{hint}; pass its name, "
                f"e.g. {func}(fn, 'softmax_attention_weights'). Known names: {', '.join(NAMES)}"
            )
        return name
    if name not in NAMES:
        close = difflib.get_close_matches(str(name), NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{func}: unknown name {name!r}{hint}; known names: {', '.join(NAMES)}")
    return name


def _check_scale(func, scale):
    if scale is None:
        return None
    real = isinstance(scale, (int, float, np.integer, np.floating))
    if isinstance(scale, (bool, np.bool_)) or not real:
        raise TypeError(f"{func}: scale must be a positive number or None, got {scale!r}")
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{func}: scale must be a finite positive number or None, got {scale}")
    return scale


def _effective_scale(scale, d_k):
    return 1.0 / math.sqrt(d_k) if scale is None else scale


def _normal(rng, shape, dtype, s=1.0):
    return (rng.standard_normal(shape) * s).astype(dtype)


def _large_integer_inputs(rng, shapes, low, high, scores_of, power, target=2400.0):
    """Integer-valued inputs whose scores reach +-`target` (before scaling), exact in float32 and
    float64 so that a learner's rounding cannot matter.

    The first array is multiplied by a small integer c to reach the target; it enters the scores
    `power` times (Q: once, X: twice).
    """
    for _ in range(1000):
        arrays = [rng.integers(low, high + 1, size=s).astype(np.float64) for s in shapes]
        scores = scores_of(arrays)
        reach = min(scores.max(), -scores.min())
        if reach < target / 16:
            continue  # too small to scale up by a small factor
        c = math.ceil((target / reach) ** (1.0 / power))
        arrays[0] *= c
        if np.abs(scores_of(arrays)).max() < 2.0 ** 24:  # every product exact in float32
            return arrays
    raise RuntimeError("selfattn.testing: could not draw large-score inputs")  # pragma: no cover


def _softmax_np(s, axis=-1):
    m = np.max(s, axis=axis, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=axis, keepdims=True)


def cases(name, *, scale=None, seed=0, batched=True):
    """The named cases ``check`` runs for function `name`: inputs and expected output.

    For graders who write their own tests, one per case::

        @pytest.mark.parametrize("case", cases("softmax_attention_weights", batched=False), ids=str)
        def test_softmax(case):
            got = student.softmax_attention_weights(*[a.copy() for a in case.args])
            assert_attention_close(got, case.expected)

    The arrays of a case are read-only, so that one test cannot change the next one's inputs;
    pass copies to a function that may write to its arguments.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`.
    scale : float, optional
        The convention the expected scores use: None means ``1/sqrt(d_k)`` (selfattn's default),
        ``1.0`` raw dot products ``Q @ K.T``. Ignored by functions without scores.
    seed : int, optional
        Seed of the random inputs (the same seed gives the same cases).
    batched : bool, optional
        Include the cases with a leading batch dimension (optional for the notebook's 2-D functions).

    Returns
    -------
    list of Case
    """
    name = _check_name("cases", name)
    scale = _check_scale("cases", scale)
    rng = np.random.default_rng(seed)
    builder = _BUILDERS[name]
    out = []
    for id_, label, args, flags in builder(rng):
        args = tuple(np.ascontiguousarray(a) for a in args)
        for a in args:
            a.setflags(write=False)  # a grader's test cannot change the case for the next one
        case_scale = None
        if name in _SCALED:
            d_k = args[1].shape[-1]  # K for scores and sdpa, W_q for the layer
            case_scale = _effective_scale(scale, d_k)
            expected = _REFERENCE[name](*args, scale=case_scale)
        else:
            expected = _REFERENCE[name](*args)
        expected.setflags(write=False)
        case = Case(name=name, id=id_, label=label, args=args, expected=expected, scale=case_scale,
                    batched=flags.get("batched", False), large=flags.get("large", False))
        if batched or not case.batched:
            out.append(case)
    return out


_REFERENCE = {
    "compute_self_attention_scores": _api.compute_self_attention_scores,
    "softmax_attention_weights": _api.softmax_attention_weights,
    "compute_attention_output": _api.compute_attention_output,
    "self_attention_layer": _api.self_attention_layer,
    "scaled_dot_product_attention": _api.scaled_dot_product_attention,
}


def _qk_cases(rng, with_v):
    """Cases for the functions of (Q, K) or (Q, K, V)."""
    f64, f32 = np.float64, np.float32

    def qkv(n_q, n_k, d_k, d_v, dtype, batch=()):
        arrays = [_normal(rng, batch + (n_q, d_k), dtype), _normal(rng, batch + (n_k, d_k), dtype)]
        if with_v:
            arrays.append(_normal(rng, batch + (n_k, d_v), dtype))
        return arrays

    sizes = "n_q=3, n_k=5, d_k=4" + (", d_v=2" if with_v else "")
    yield "unequal-float64", f"unequal sizes {sizes} (float64)", qkv(3, 5, 4, 2, f64), {}
    yield "unequal-float32", f"unequal sizes {sizes} (float32)", qkv(3, 5, 4, 2, f32), {}
    v_text = (" = d_v", ", d_v=2") if with_v else ("", "")
    yield "square-float64", f"square: n_q = n_k = d_k{v_text[0]} = 4 (float64)", \
        qkv(4, 4, 4, 4, f64), {}
    yield "keys-as-wide-as-d_k", f"n_k = d_k = 4, n_q=3{v_text[1]} (float64)", \
        qkv(3, 4, 4, 2, f64), {}
    yield "single-token", "a single token: n_q = n_k = 1, d_k=4 (float64)", qkv(1, 1, 4, 2, f64), {}

    # Scores of about a thousand, exact in float32 and float64: a softmax without the max
    # subtraction overflows (exp(710) is inf in float64, exp(89) in float32).
    shapes = [(3, 4), (5, 4)] + ([(5, 2)] if with_v else [])
    for dtype, dname in ((f64, "float64"), (f32, "float32")):
        arrays = _large_integer_inputs(rng, shapes, -12, 12, lambda a: a[0] @ a[1].T, power=1)
        if with_v:
            arrays[2] = arrays[2] / 4.0
        top = int(abs(arrays[0] @ arrays[1].T).max())
        yield f"large-scores-{dname}", f"large scores, |Q.K| up to {top} ({dname})", \
            [a.astype(dtype) for a in arrays], {"large": True}
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        qkv(3, 5, 4, 2, f64, batch=(2,)), {"batched": True}


def _scores_cases(rng):
    return _qk_cases(rng, with_v=False)


def _sdpa_cases(rng):
    return _qk_cases(rng, with_v=True)


def _softmax_cases(rng):
    f64, f32 = np.float64, np.float32
    yield "unequal-float64", "n_q=3 queries, n_k=5 keys (float64)", [_normal(rng, (3, 5), f64, 1.5)], {}
    yield "unequal-float32", "n_q=3 queries, n_k=5 keys (float32)", [_normal(rng, (3, 5), f32, 1.5)], {}
    yield "square-float64", "square: n_q = n_k = 4 (float64)", [_normal(rng, (4, 4), f64, 1.5)], {}
    yield "single-token", "a single token: n_q = n_k = 1 (float64)", [_normal(rng, (1, 1), f64)], {}
    # Rows around +1000, -1000 and +300: exp overflows (inf / inf = NaN) or underflows (0 / 0).
    offsets = np.array([[1000.0], [-1000.0], [300.0]])
    yield "large-scores-float64", "large scores: rows around 1000, -1000 and 300 (float64)", \
        [(offsets + np.round(_normal(rng, (3, 5), f64, 3.0), 2)).astype(f64)], {"large": True}
    offsets = np.array([[500.0], [-500.0], [120.0]])
    yield "large-scores-float32", "large scores: rows around 500, -500 and 120 (float32)", \
        [(offsets + np.round(_normal(rng, (3, 5), f64, 3.0), 2)).astype(f32)], {"large": True}
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        [_normal(rng, (2, 3, 5), f64, 1.5)], {"batched": True}


def _output_cases(rng):
    f64, f32 = np.float64, np.float32

    def wv(n_q, n_k, d_v, dtype, batch=()):
        weights = _softmax_np(rng.standard_normal(batch + (n_q, n_k)) * 1.5)
        return [weights.astype(dtype), _normal(rng, batch + (n_k, d_v), dtype)]

    yield "unequal-float64", "unequal sizes n_q=3, n_k=5, d_v=2 (float64)", wv(3, 5, 2, f64), {}
    yield "unequal-float32", "unequal sizes n_q=3, n_k=5, d_v=2 (float32)", wv(3, 5, 2, f32), {}
    yield "square-float64", "square: n_q = n_k = d_v = 4 (float64)", wv(4, 4, 4, f64), {}
    yield "single-token", "a single token: n_q = n_k = 1, d_v=2 (float64)", wv(1, 1, 2, f64), {}
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        wv(3, 5, 2, f64, batch=(2,)), {"batched": True}


def _layer_cases(rng):
    f64, f32 = np.float64, np.float32

    def xw(n, d_model, d_k, d_v, dtype, batch=()):
        s = 1.0 / math.sqrt(d_model)
        return [_normal(rng, batch + (n, d_model), dtype), _normal(rng, (d_model, d_k), dtype, s),
                _normal(rng, (d_model, d_k), dtype, s), _normal(rng, (d_model, d_v), dtype, s)]

    sizes = "n=5 tokens, d_model=6, d_k=4, d_v=3"
    yield "unequal-float64", f"unequal sizes {sizes} (float64)", xw(5, 6, 4, 3, f64), {}
    yield "unequal-float32", f"unequal sizes {sizes} (float32)", xw(5, 6, 4, 3, f32), {}
    yield "square-float64", "square: n = d_model = d_k = d_v = 4 (float64)", xw(4, 4, 4, 4, f64), {}
    yield "single-token", "a single token: n=1, d_model=6, d_k=4, d_v=3 (float64)", \
        xw(1, 6, 4, 3, f64), {}
    shapes = [(5, 6), (6, 4), (6, 4), (6, 3)]

    def scores_of(a):
        return (a[0] @ a[1]) @ (a[0] @ a[2]).T

    for dtype, dname in ((f64, "float64"), (f32, "float32")):
        arrays = _large_integer_inputs(rng, shapes, -3, 3, scores_of, power=2)
        top = int(abs((arrays[0] @ arrays[1]) @ (arrays[0] @ arrays[2]).T).max())
        yield f"large-scores-{dname}", f"large scores, |Q.K| up to {top} ({dname})", \
            [a.astype(dtype) for a in arrays], {"large": True}
    yield "batched-float64", "batched: X with a leading batch dimension of 2 (float64)", \
        xw(5, 6, 4, 3, f64, batch=(2,)), {"batched": True}


_BUILDERS = {
    "compute_self_attention_scores": _scores_cases,
    "softmax_attention_weights": _softmax_cases,
    "compute_attention_output": _output_cases,
    "self_attention_layer": _layer_cases,
    "scaled_dot_product_attention": _sdpa_cases,
}


# ---- the known mistakes ------------------------------------------------------------------------
#
# Each mistake has a key and a hint in the learner's words. A hint never names a case's sizes, so
# that the report can list each mistake once however many cases show it.

_RAW_NOT_ASKED = (
    "Your scores are the raw dot products Q @ K.T, without the 1/sqrt(d_k) factor. check() "
    "compares against scaled dot-product attention (dot products divided by sqrt(d_k)) because "
    "scale was not given. If your notebook asks for raw dot products, as the self-attention "
    "notebook's text does, check that convention with scale=1.0: check(fn, scale=1.0). "
    "Otherwise divide the scores by np.sqrt(d_k), where d_k = K.shape[-1]."
)

_HINTS = {
    "dk": "Your scores are divided by d_k (or by sqrt(d_k) twice). Scaled dot-product attention "
          "divides by sqrt(d_k) once: Q @ K.T / np.sqrt(d_k).",
    "sqrt_nk": "Your scores are divided by the square root of the number of keys (K.shape[0]) "
               "instead of sqrt(d_k), the length of each key vector: d_k = K.shape[-1].",
    "sqrt_nq": "Your scores are divided by the square root of the number of queries (Q.shape[0]) "
               "instead of sqrt(d_k), the length of each query vector: d_k = Q.shape[-1].",
    "sqrt_dmodel": "Your scores are divided by sqrt(d_model), the width of X (X.shape[-1]), instead "
                   "of sqrt(d_k), the width of Q and K (W_q.shape[-1]).",
    "scores_transposed": "Your scores are transposed: rows must be queries and columns keys, so "
                         "compute Q @ K.T (not K @ Q.T, and not Q and K swapped).",
    "k_not_transposed": "K is not transposed: the scores are Q @ K.T, shapes (n_q, d_k) @ (d_k, n_k). "
                        "Q @ K only runs when n_k == d_k, and then gives wrong numbers.",
    "qt_k": "Your result looks like Q.T @ K, a (d_k, d_k) matrix; the scores need one row per "
            "query and one column per key: Q @ K.T.",
    "axis": "Softmax over the wrong axis: your weights sum to 1 down each column, but each row "
            "(one query's weights over all the keys) must sum to 1. Normalise over the last axis: "
            "e / e.sum(axis=-1, keepdims=True).",
    "axis_all": "Softmax over the whole matrix: you divided by the sum of all entries, so the "
                "whole matrix sums to 1. Each row must sum to 1: e / e.sum(axis=-1, keepdims=True).",
    "no_keepdims_sum": "A sum without keepdims: e.sum(axis=-1) has shape (n,), which NumPy lines "
                       "up with the columns, so entry [i, j] is divided by the sum of row j. Use "
                       "e.sum(axis=-1, keepdims=True) (shape (n, 1)) so that each row is divided "
                       "by its own sum.",
    "no_keepdims_max": "A max without keepdims: s.max(axis=-1) has shape (n,), which NumPy lines up "
                       "with the columns, so entry [i, j] has the maximum of row j subtracted. Use "
                       "s.max(axis=-1, keepdims=True).",
    "no_keepdims_both": "max and sum without keepdims: s.max(axis=-1) and e.sum(axis=-1) have shape "
                        "(n,), which NumPy lines up with the columns. Use keepdims=True for both.",
    "no_max": "No max subtraction: np.exp overflows for large scores (exp(710) is already inf in "
              "float64, exp(89) in float32) and inf / inf gives NaN (very negative rows give "
              "0 / 0). Softmax does not change if you subtract the same number from a whole row, "
              "so subtract each row's maximum first: e = np.exp(s - s.max(axis=-1, keepdims=True)).",
    "global_max": "You subtracted the maximum of the whole matrix (s.max()), not of each row: rows "
                  "far below that maximum underflow to 0 / 0 = NaN. Subtract each row's own "
                  "maximum: s - s.max(axis=-1, keepdims=True).",
    "no_exp": "np.exp is missing: you divided the scores by their row sums. Softmax exponentiates "
              "first: e = np.exp(s - s.max(axis=-1, keepdims=True)); e / e.sum(axis=-1, keepdims=True).",
    "not_normalised": "The exponentials are not normalised: divide each row by its sum, "
                      "e / e.sum(axis=-1, keepdims=True), so that every row sums to 1.",
    "scaled_in_softmax": "You scale the scores inside the softmax. Softmax takes the scores as "
                         "they are; the 1/sqrt(d_k) scaling belongs to the scores step.",
    "weights_out_transposed": "Your weights are transposed: keep the layout of the scores (rows are "
                              "queries, columns are keys), normalise each row (axis=-1) and do not "
                              "transpose the result.",
    "weights_transposed": "The weights are transposed: the output is attn_weights @ V, so that "
                          "row i mixes the value rows with query i's weights, not attn_weights.T @ V.",
    "result_transposed": "Your result is transposed: rows must be the queries (tokens). Compute "
                         "attn_weights @ V, not V.T @ attn_weights.T, and do not transpose the result.",
    "elementwise": "You multiplied elementwise (attn_weights * V). The output is a matrix "
                   "product: attn_weights @ V.",
    "no_projection": "X is not projected: Q, K and V are X @ W_q, X @ W_k and X @ W_v, and the "
                     "output mixes the rows of V, not of X.",
    "k_from_wq": "K is computed with W_q: K = X @ W_k.",
    "v_from_wk": "V is computed with W_k (or W_q): V = X @ W_v.",
    "projection_order": "The projections are multiplied the wrong way round: Q = X @ W_q, with X "
                        "of shape (n, d_model) and W_q of shape (d_model, d_k).",
    "precision": "Your result is right to the precision of a smaller dtype: you compute in "
                 "float32 (or float16) although the inputs are float64. Keep the inputs' dtype "
                 "(no astype(np.float32) or dtype=np.float32).",
    "mutated": "Your function changes its input in place (for example attn_scores -= ... or "
               "np.exp(x, out=x)). The caller's arrays must stay as they were: write "
               "x = x - x.max(axis=-1, keepdims=True) instead of x -= ....",
    "returned_none": "Your function returned None: it still ends in `pass`, or lacks a `return`.",
    "returned_tuple": "Your function returns a tuple; it must return a single array "
                      "(for self_attention_layer: only the output, not the weights).",
    "not_array": "Your function must return a NumPy array of numbers.",
    "nonfinite": "Your result contains inf or NaN where the expected result is finite.",
    "rows_not_one": "The rows of your weights do not sum to 1; softmax divides each row of "
                    "exponentials by that row's sum.",
    "negative_weights": "Some of your weights are negative; softmax weights are exp(...) / sum, "
                        "which is never negative.",
    "unknown": "Your result differs from selfattn's and matches none of the mistakes check() knows. "
               "Compare step by step with selfattn's functions on the same inputs "
               "(selfattn.testing.cases(name) has them, with the expected outputs); "
               "selfattn.explain(X, W_q, W_k, W_v) shows every intermediate of a layer.",
    "raised_matmul": "A matrix product got shapes that do not fit. Check every @ against the shapes "
                     "you expect: {products}. A missing or extra .T only works by luck when two "
                     "sizes are equal, which is why check() uses unequal sizes.",
    "raised_broadcast": "Shapes that do not broadcast: a row sum or max taken without keepdims "
                        "has shape (n_q,), which NumPy lines up with the columns. Use "
                        "keepdims=True: e / e.sum(axis=-1, keepdims=True).",
    "raised_elementwise": "Shapes that do not broadcast: the output is the matrix product "
                          "attn_weights @ V (np.matmul), not an elementwise product attn_weights * V.",
    "raised_elementwise_scores": "Shapes that do not broadcast: the scores are the matrix product "
                                 "Q @ K.T (np.matmul), not an elementwise product Q * K.",
    "raised_signature": "Your function does not take the arguments check() passes: "
                        "{call}, as in the notebook. Check its parameters, or pass the right "
                        "name to check().",
    "raised_none": "Something was None: a function you call (perhaps one of your own) still ends "
                   "in `pass` or lacks a `return`.",
    "raised_name": "A name is not defined: run the cell that defines it (and `import numpy as np`).",
    "raised": "Your function raised an exception on these inputs; the message and the line are above.",
}


def _scale_hint(key, user_scale):
    """The hint for scores scaled by the variant `key` when the case wanted `user_scale`."""
    if key == "raw":
        if user_scale is None:
            return _RAW_NOT_ASKED
        return (f"Your scores are the raw dot products Q @ K.T, but check was asked for "
                f"scale={user_scale:g}: multiply the dot products by it.")
    if user_scale == 1.0:
        what = {"sqrt_dk": "sqrt(d_k)", "dk": "d_k", "sqrt_nk": "sqrt(n_k), the number of keys",
                "sqrt_nq": "sqrt(n_q), the number of queries",
                "sqrt_dmodel": "sqrt(d_model), the width of X"}[key]
        return (f"Your scores are divided by {what}, but check was asked for the raw convention "
                f"(scale=1.0), where the scores are the plain dot products Q @ K.T. Remove the "
                f"division, or, if your course uses scaled dot-product attention, check with "
                f"scale=None (the default).")
    if key == "sqrt_dk" and user_scale is not None:
        return (f"Your scores are divided by sqrt(d_k), but check was asked for "
                f"scale={user_scale:g}: multiply the dot products by that instead.")
    return _HINTS[key]


def _alt_scales(user_scale, s_ref, dims):
    """(key, scale) of the scalings a learner may have used instead of `s_ref`."""
    d_k = dims["d_k"]
    out = [("raw", 1.0), ("sqrt_dk", 1 / math.sqrt(d_k)), ("dk", 1.0 / d_k)]
    for key, dim in (("sqrt_nk", "n_k"), ("sqrt_nq", "n_q"), ("sqrt_dmodel", "d_model")):
        if dim in dims and dims[dim] != d_k:
            out.append((key, 1 / math.sqrt(dims[dim])))
    seen = [s_ref]
    kept = []
    for key, s in out:
        if all(abs(s - t) > 1e-12 * t for t in seen):
            kept.append((key, s))
            seen.append(s)
    return kept


def _swap(a):
    return np.swapaxes(a, -1, -2)


def _softmax_mistakes(s):
    """(key, weights) of the softmax mistakes that can be computed on scores `s`."""
    with np.errstate(all="ignore"):
        out = [("axis", _softmax_np(s, axis=-2))]
        e_all = np.exp(s - s.max(axis=(-2, -1), keepdims=True))
        out.append(("axis_all", e_all / e_all.sum(axis=(-2, -1), keepdims=True)))
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        if s.shape[-1] == s.shape[-2]:
            m_cols = s.max(axis=-1)[..., None, :]
            out.append(("no_keepdims_sum", e / e.sum(axis=-1)[..., None, :]))
            e_bad = np.exp(s - m_cols)
            out.append(("no_keepdims_max", e_bad / e_bad.sum(axis=-1, keepdims=True)))
            out.append(("no_keepdims_both", e_bad / e_bad.sum(axis=-1)[..., None, :]))
        naive = np.exp(s)
        out.append(("no_max", naive / naive.sum(axis=-1, keepdims=True)))
        out.append(("global_max", e_all / e_all.sum(axis=-1, keepdims=True)))
        out.append(("no_exp", s / s.sum(axis=-1, keepdims=True)))
        out.append(("not_normalised", e))
        out.append(("not_normalised", naive))
        out.append(("scaled_in_softmax", _softmax_np(s / math.sqrt(s.shape[-1]))))
    return out


def _mistakes(case, user_scale):
    """(hint, array) for every known mistake on this case, most likely first."""
    name = case.name
    args = [np.asarray(a) for a in case.args]
    s_ref = case.scale
    out = []
    with np.errstate(all="ignore"):
        if name == "softmax_attention_weights":
            (s,) = args
            out += [(_HINTS[k], w) for k, w in _softmax_mistakes(s)]
            out.append((_HINTS["weights_out_transposed"], _swap(_softmax_np(s))))
            return out

        if name == "compute_attention_output":
            w, v = args
            out.append((_HINTS["result_transposed"], _swap(w @ v)))
            if w.shape[-1] == w.shape[-2]:
                out.append((_HINTS["weights_transposed"], _swap(w) @ v))
            if w.shape == v.shape:
                out.append((_HINTS["elementwise"], w * v))
            if v.shape[-1] == w.shape[-2]:
                out.append((_HINTS["result_transposed"], _swap(v) @ _swap(w)))
            return out

        # The functions with scores: compose every mistake with the scalings a learner may use.
        if name == "self_attention_layer":
            x, wq, wk, wv = args
            q, k, v = x @ wq, x @ wk, x @ wv
            dims = {"n_q": x.shape[-2], "n_k": x.shape[-2], "d_k": wq.shape[-1], "d_model": x.shape[-1]}
        elif name == "scaled_dot_product_attention":
            q, k, v = args
            dims = {"n_q": q.shape[-2], "n_k": k.shape[-2], "d_k": q.shape[-1]}
        else:
            q, k = args
            v = None
            dims = {"n_q": q.shape[-2], "n_k": k.shape[-2], "d_k": q.shape[-1]}
        alt = _alt_scales(user_scale, s_ref, dims)
        # The scale the learner most likely used instead: raw when scaled was asked, and back.
        other = [(key, s) for key, s in alt if key == ("raw" if user_scale != 1.0 else "sqrt_dk")]

        def finish(scores, weights=None):
            """The function's result from (possibly wrong) scores or weights."""
            if v is None:
                return scores
            if weights is None:
                weights = _softmax_np(scores)
            return weights @ v

        def with_scales(hint, make):
            """The mistake at the asked scale, then combined with the likely other scale."""
            out.append((hint, make(s_ref)))
            for key, s in other:
                out.append((hint + " Also: " + _scale_hint(key, user_scale), make(s)))

        for key, s in alt:
            out.append((_scale_hint(key, user_scale), finish(q @ _swap(k) * s)))
        def transposed_scores(s):
            t = _swap(q @ _swap(k)) * s  # K @ Q.T: keys as rows
            if v is None:
                return t
            return _softmax_np(t) @ v if q.shape[-2] == k.shape[-2] else None

        with_scales(_HINTS["scores_transposed"], transposed_scores)
        if k.shape[-2] == k.shape[-1]:
            with_scales(_HINTS["k_not_transposed"], lambda s: finish(q @ k * s))
        if v is None:
            if q.shape[-2] == k.shape[-2]:
                with_scales(_HINTS["qt_k"], lambda s: _swap(q) @ k * s)
            return [(h, a) for h, a in out if a is not None]

        for key in ("axis", "axis_all", "no_keepdims_sum", "no_keepdims_max", "no_keepdims_both",
                    "no_max", "global_max", "no_exp", "not_normalised", "scaled_in_softmax"):
            def make(s, key=key):
                for k2, w in _softmax_mistakes(q @ _swap(k) * s):
                    if k2 == key:
                        return w @ v
                return None
            with_scales(_HINTS[key], make)
        if q.shape[-2] == k.shape[-2]:
            with_scales(_HINTS["weights_transposed"],
                        lambda s: _swap(_softmax_np(q @ _swap(k) * s)) @ v)
        with_scales(_HINTS["result_transposed"], lambda s: _swap(_softmax_np(q @ _swap(k) * s) @ v))
        if name == "self_attention_layer":
            x, wq, wk, wv = args
            with_scales(_HINTS["no_projection"],
                        lambda s: _softmax_np(x @ _swap(x) * s) @ x)
            with_scales(_HINTS["k_from_wq"], lambda s: _softmax_np(q @ _swap(q) * s) @ v)
            if wk.shape[-1] == wv.shape[-1]:
                with_scales(_HINTS["v_from_wk"], lambda s: _softmax_np(q @ _swap(k) * s) @ k)
                with_scales(_HINTS["v_from_wk"], lambda s: _softmax_np(q @ _swap(k) * s) @ q)
            if wq.shape[-1] == wq.shape[-2]:
                def transposed_proj(s):
                    q2, k2, v2 = x @ _swap(wq), x @ _swap(wk), x @ _swap(wv)
                    return _softmax_np(q2 @ _swap(k2) * s) @ v2
                with_scales(_HINTS["projection_order"], transposed_proj)
    return [(h, a) for h, a in out if a is not None]


# ---- running a learner's function ----------------------------------------------------------------

@dataclass
class CaseResult:
    """What happened on one case.

    ``verdict`` is ``"pass"``, ``"FAIL"`` or ``"note"`` (an optional case that did not pass:
    batched inputs, which the notebook's functions need not support). ``max_error`` is the largest
    absolute difference from the expected output (None when there is no output to compare),
    ``worst_index`` where the largest difference is, ``message`` what happened on this case and
    ``hints`` what to change, in words.
    """
    case: Case
    verdict: str
    message: str = ""
    hints: list = field(default_factory=list)
    max_error: float | None = None
    worst_index: tuple | None = None
    warnings: list = field(default_factory=list)

    @property
    def passed(self):
        return self.verdict == "pass"


def _same(original, after):
    return original.shape == after.shape and bool(np.array_equal(original, after, equal_nan=True))


def _learner_frame(exc):
    """(file, line number, code) of the innermost frame of the learner's own code, or None."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames[1:]):  # frames[0] is check's own call
        path = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if path.startswith(_PACKAGE_DIR) or path.startswith(_NUMPY_DIR):
            continue
        return frame
    return None


_SCORES_PRODUCT = "the scores Q @ K.T are (n_q, d_k) @ (d_k, n_k) -> (n_q, n_k)"
_OUTPUT_PRODUCT = "the output attn_weights @ V is (n_q, n_k) @ (n_k, d_v) -> (n_q, d_v)"
_PRODUCTS = {
    "compute_self_attention_scores": _SCORES_PRODUCT,
    "softmax_attention_weights": "softmax needs no matrix product at all",
    "compute_attention_output": _OUTPUT_PRODUCT,
    "self_attention_layer": "Q = X @ W_q is (n, d_model) @ (d_model, d_k) -> (n, d_k); "
                            + _SCORES_PRODUCT + "; " + _OUTPUT_PRODUCT,
    "scaled_dot_product_attention": _SCORES_PRODUCT + "; " + _OUTPUT_PRODUCT,
}

# A generic hint from an exception, and the specific mistakes that explain it when another case
# (where the sizes happened to fit) matched one of them.
_EXPLAINED_BY = {
    "raised_matmul": ("k_not_transposed", "qt_k", "scores_transposed", "weights_transposed",
                      "result_transposed", "projection_order", "no_projection"),
    "raised_broadcast": ("no_keepdims_sum", "no_keepdims_max", "no_keepdims_both"),
    "raised_elementwise": ("elementwise",),
}


def _merge_explained(results):
    """Replace a generic exception hint by the specific mistake another case identified."""
    hints = [h for r in results if r.verdict == "FAIL" for h in r.hints]
    for generic, specifics in _EXPLAINED_BY.items():
        prefix = _HINTS[generic].split("{")[0]
        found = next((h for h in hints if h.startswith(tuple(_HINTS[k] for k in specifics))), None)
        if found is None:
            continue
        for r in results:
            r.hints = list(dict.fromkeys(found if h.startswith(prefix) else h for h in r.hints))


def _merge_combined(results):
    """Where one case shows "mistake + wrong scale" and another the mistake alone (the scale made
    no difference there), report the combination everywhere."""
    hints = [h for r in results if r.verdict == "FAIL" for h in r.hints]
    for r in results:
        r.hints = list(dict.fromkeys(
            next((c for c in hints if c.startswith(h + " Also: ")), h) for h in r.hints))


def _exception_result(case, exc):
    kind = type(exc).__name__
    text = str(exc).strip() or "(no message)"
    message = f"raised {kind}: {text}\n  when called as {case.name}({case.shapes()})"
    frame = _learner_frame(exc)
    if frame is not None:
        where = f"line {frame.lineno}" + (f" of {frame.name}()" if frame.name != "<module>" else "")
        code = (frame.line or "").strip()
        message += f"\n  at {where}" + (f": {code}" if code else "")
    low = text.lower()
    if isinstance(exc, NameError):
        hint = _HINTS["raised_name"]
    elif isinstance(exc, TypeError) and "argument" in low and ("positional" in low or "missing" in low):
        hint = _HINTS["raised_signature"].format(call=f"{case.name}({', '.join(case.arg_names)})")
    elif isinstance(exc, (FloatingPointError, OverflowError)) and case.large:
        hint = _HINTS["no_max"]  # np.seterr(all="raise") turns the overflow into an exception
    elif "nonetype" in low:
        hint = _HINTS["raised_none"]
    elif "could not be broadcast" in low:
        hint = _HINTS[{"compute_attention_output": "raised_elementwise",
                       "compute_self_attention_scores": "raised_elementwise_scores"}
                      .get(case.name, "raised_broadcast")]
    elif "matmul" in low or "not aligned" in low or "mismatch" in low or "dimension" in low:
        hint = _HINTS["raised_matmul"].format(products=_PRODUCTS[case.name])
    else:
        hint = _HINTS["raised"]
    return message, [hint]


def _shape_hint(case, got_shape):
    exp = case.expected.shape
    dims = ", ".join(f"{n}={a.shape}" for n, a in zip(case.arg_names, case.args))
    msg = f"returned shape {tuple(got_shape)}, expected {tuple(exp)}"
    meaning = {
        "compute_self_attention_scores": "(n_q, n_k): one row per query, one column per key",
        "softmax_attention_weights": "the shape of attn_scores",
        "compute_attention_output": "(n_q, d_v): one row per query",
        "self_attention_layer": "(n, d_v): one row per token, d_v = W_v.shape[-1]",
        "scaled_dot_product_attention": "(n_q, d_v): one row per query",
    }[case.name]
    msg += f" = {meaning} (inputs: {dims})"
    hints = []
    if len(got_shape) == len(exp) >= 2 and tuple(got_shape) == exp[:-2] + exp[-2:][::-1]:
        hints.append(_HINTS["result_transposed"] if case.name != "compute_self_attention_scores"
                     else _HINTS["scores_transposed"])
    elif case.name == "self_attention_layer" and tuple(got_shape) == case.args[0].shape:
        hints.append(_HINTS["no_projection"])
    elif case.name in ("softmax_attention_weights",) and len(got_shape) == len(exp) - 1:
        hints.append("Your function returns one number per row or column (a sum or max?) "
                     "instead of a matrix of weights of the same shape as the scores.")
    return msg, hints


def _run_case(fn, case, user_scale):
    originals = case.args
    copies = tuple(np.array(a, copy=True) for a in originals)  # writable: a learner may write
    caught = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        try:
            got = fn(*copies)
            exc = None
        except Exception as e:  # the learner's bug, reported in words; never KeyboardInterrupt
            got, exc = None, e
    for w in recorded:
        text = f"{w.category.__name__}: {w.message}"
        if text not in caught:
            caught.append(text)

    result = CaseResult(case=case, verdict="FAIL", warnings=caught)
    mutated = [(n, o, c) for n, o, c in zip(case.arg_names, originals, copies) if not _same(o, c)]
    mutation_msgs = []
    for n, o, c in mutated:
        if o.shape != c.shape:
            mutation_msgs.append(f"your function changed the shape of {n} from {o.shape} to {c.shape}")
            continue
        changed = ~((o == c) | (np.isnan(o) & np.isnan(c)))
        idx = tuple(int(i) for i in np.argwhere(changed)[0])
        mutation_msgs.append(
            f"your function changed its input {n} in place ({int(changed.sum())} of {o.size} "
            f"entries; at index {_fmt_index(idx)} it was {_fmt(float(o[idx]))}, now "
            f"{_fmt(float(c[idx]))})")
    if mutated:
        result.hints.append(_HINTS["mutated"])

    def done(message, hints=()):
        result.message = "; ".join([message] + mutation_msgs) if message else "; ".join(mutation_msgs)
        result.hints.extend(h for h in hints if h not in result.hints)
        if not result.hints and result.verdict == "FAIL":
            result.hints.append(_HINTS["unknown"])
        if case.batched and result.verdict == "FAIL":
            result.verdict = "note"
            result.hints = [
                "Batched inputs (a leading batch dimension) are optional: the notebook's functions "
                "take one sequence, so this does not count against you. To support batches, use "
                "np.swapaxes(K, -1, -2) (or K.mT in NumPy 2) instead of K.T, and axis=-1 instead "
                "of axis=1."
            ]
        return result

    if exc is not None:
        message, hints = _exception_result(case, exc)
        return done(message, hints)
    if got is None:
        return done("returned None", [_HINTS["returned_none"]])
    if isinstance(got, tuple):
        shapes = ", ".join(str(np.shape(g)) for g in got)
        return done(f"returned a tuple of {len(got)} values (shapes {shapes})",
                    [_HINTS["returned_tuple"]])
    try:
        got = np.asarray(got)
    except Exception:  # a ragged list and the like
        return done(f"returned {type(got).__name__}, which is not an array", [_HINTS["not_array"]])
    if got.dtype.kind not in "biuf":
        return done(f"returned an array of dtype {got.dtype}", [_HINTS["not_array"]])

    exp = case.expected
    # The case's dtype decides: a float64 answer to a float32 case is fine.
    rtol, atol, _ = _tolerance(exp.dtype)
    if got.shape != exp.shape:
        message, hints = _shape_hint(case, got.shape)
        if not case.batched:
            matched = _match_mistake(case, got, user_scale, rtol, atol)
            if matched:
                hints = [matched]
        return done(message, hints)

    diff = _diff(got, exp, rtol, atol)
    result.max_error = diff.max_abs if not diff.n_nonfinite else math.inf
    result.worst_index = diff.worst_index
    if diff.close:
        result.verdict = "pass"
        notes = []
        if got.dtype != exp.dtype:
            notes.append(f"returned {got.dtype} for {exp.dtype} inputs (accepted)")
        if not mutated:
            return done("; ".join(notes))
        result.verdict = "FAIL"
        return done("the output is right")  # done() adds what changed in the input

    message = _diff_message(diff, rtol, atol, exp.dtype).replace("Arrays are not close", "Not close")
    message = message.replace("actual", "yours").replace("desired", "expected")
    hints = []
    if got.dtype.kind == "f" and got.dtype.itemsize < exp.dtype.itemsize:
        low_r, low_a, _ = _tolerance(got.dtype)
        if _diff(got, exp, low_r, low_a).close:
            return done(message + f"\nreturned {got.dtype} for {exp.dtype} inputs",
                        [_HINTS["precision"]])
    if not case.batched:
        matched = _match_mistake(case, got, user_scale, rtol, atol)
        if matched:
            hints.append(matched)
        else:
            hints += _invariant_hints(case, got, diff)
    return done(message, hints)


def _match_mistake(case, got, user_scale, rtol, atol):
    """The hint of the first known mistake that reproduces `got`, or None."""
    # A learner's float32 arithmetic differs from NumPy's variant by rounding: match loosely,
    # a wrong variant differs from the right answer by far more.
    loose_r, loose_a = max(rtol * 100, 1e-7), max(atol * 100, 1e-9)
    # inf/NaN where the answer is finite: an overflow. Many wrong variants overflow as well, and
    # a matrix of NaN matches them all; only the overflow mistakes explain it.
    overflow = got.shape == case.expected.shape and bool(
        (~np.isfinite(got) & np.isfinite(case.expected)).any())
    for hint, wrong in _mistakes(case, user_scale):
        wrong = np.asarray(wrong)
        if wrong.shape != got.shape:
            continue
        if overflow and not hint.startswith((_HINTS["no_max"], _HINTS["global_max"])):
            continue
        if wrong.shape == case.expected.shape and _diff(wrong, case.expected, loose_r, loose_a).close:
            continue  # this mistake makes no difference on this case
        if _diff(got, wrong, loose_r, loose_a).close:
            return hint
    return None


def _invariant_hints(case, got, diff):
    hints = []
    exp = case.expected
    if diff.n_nonfinite and np.isfinite(exp).all():
        hints.append(_HINTS["no_max"] if case.large else _HINTS["nonfinite"])
        return hints
    if case.name == "softmax_attention_weights":
        with np.errstate(all="ignore"):
            rows = got.sum(axis=-1)
            cols = got.sum(axis=-2)
        if (got < 0).any():
            hints.append(_HINTS["negative_weights"])
        if not np.allclose(rows, 1.0, rtol=1e-4, atol=1e-6):
            if np.allclose(cols, 1.0, rtol=1e-4, atol=1e-6):
                hints.append(_HINTS["axis"])
            else:
                hints.append(_HINTS["rows_not_one"])
    return hints


# ---- the report ------------------------------------------------------------------------------

_CONVENTION = {
    None: "scores scaled by 1/sqrt(d_k), selfattn's default (pass scale=1.0 to check raw dot "
          "products Q @ K.T instead)",
    1.0: "raw dot products Q @ K.T (scale=1.0)",
}


class CheckReport:
    """The outcome of :func:`check`: one :class:`CaseResult` per case.

    ``bool(report)`` is True only if every case passed (notes do not count against it).
    ``str(report)`` is plain text; in Jupyter the report shows as a table.

    Attributes
    ----------
    name : str
        The function checked.
    scale : float or None
        The convention checked against.
    results : list of CaseResult
    """

    def __init__(self, name, fn_name, scale, results, notes=()):
        self.name = name
        self.fn_name = fn_name
        self.scale = scale
        self.results = list(results)
        self.notes = list(notes)

    @property
    def passed(self):
        return all(r.verdict != "FAIL" for r in self.results)

    def __bool__(self):
        return self.passed

    @property
    def failures(self):
        return [r for r in self.results if r.verdict == "FAIL"]

    @property
    def diagnoses(self):
        """Every distinct hint of the failed cases, most frequent first (ties in case order)."""
        counts = {}
        for r in self.failures:
            for h in r.hints:
                counts[h] = counts.get(h, 0) + 1
        order = list(counts)
        if len(order) > 1 and _HINTS["unknown"] in counts:
            order.remove(_HINTS["unknown"])  # the cases it came from say what they can
        return sorted(order, key=lambda h: (-counts[h], order.index(h)))

    def raise_if_failed(self):
        """Raise AssertionError with this report as the message unless every case passed."""
        __tracebackhide__ = True
        if not self.passed:
            raise AssertionError(str(self))

    def summary(self):
        n = len(self.results)
        n_fail = len(self.failures)
        n_note = sum(r.verdict == "note" for r in self.results)
        extra = f" ({n_note} note{'s' if n_note != 1 else ''})" if n_note else ""
        who = self.name if self.fn_name in (None, self.name) else f"{self.fn_name} as {self.name}"
        if n_fail:
            return f"check({who}): FAILED {n_fail} of {n} cases{extra}"
        return f"check({who}): passed {n - n_note} of {n} cases{extra}"

    def _convention(self):
        if self.name not in _SCALED:
            return None
        if self.scale in _CONVENTION:
            return _CONVENTION[self.scale]
        return f"scores multiplied by scale={self.scale:g}"

    def __str__(self):
        width = 100
        lines = [self.summary()]
        conv = self._convention()
        if conv:
            lines.append(f"Convention: {conv}.")
        for note in self.notes:
            lines.append(f"Note: {note}")
        diagnoses = self.diagnoses
        number = {d: i for i, d in enumerate(diagnoses, 1)}
        if diagnoses:
            lines.append("")
            lines.append("What is wrong:")
            for d in diagnoses:
                lines += textwrap.wrap(d, width, initial_indent=f"  [{number[d]}] ",
                                       subsequent_indent="      ")
        lines.append("")
        label_w = max(len(r.case.label) for r in self.results)
        for r in self.results:
            err = "" if r.max_error is None else f"max error {r.max_error:.3g}"
            if r.worst_index is not None and r.verdict != "pass":
                err += f" at {_fmt_index(r.worst_index)}"
            lines.append(f"{r.verdict:>4}  {r.case.label:<{label_w}}  {err}".rstrip())
            detail = []
            if r.message:
                detail += r.message.split("\n")
            if r.verdict == "FAIL" and r.hints:
                refs = [f"[{number[h]}]" for h in r.hints if h in number]
                detail.append("what is wrong: " + ", ".join(refs) if refs else "hint: " + r.hints[0])
            elif r.verdict == "note":
                detail += ["note: " + h for h in r.hints]
            for w in r.warnings[:2]:
                detail.append("warning: " + w)
            for d in detail:
                lines += textwrap.wrap(d, width, initial_indent="      ", subsequent_indent="        ")
        return "\n".join(lines)

    def __repr__(self):
        return f"<CheckReport {self.summary()}>"

    def _repr_html_(self):
        e = html.escape
        ok = self.passed
        color = "#1a7f37" if ok else "#cf222e"
        parts = ['<div class="selfattn-check">',
                 f'<p style="color:{color};font-weight:bold">{e(self.summary())}</p>']
        conv = self._convention()
        if conv:
            parts.append(f"<p>Convention: {e(conv)}.</p>")
        for note in self.notes:
            parts.append(f"<p><i>Note:</i> {e(note)}</p>")
        diagnoses = self.diagnoses
        number = {d: i for i, d in enumerate(diagnoses, 1)}
        if diagnoses:
            parts.append("<p><b>What is wrong:</b></p><ol>")
            parts += [f"<li>{e(d)}</li>" for d in diagnoses]
            parts.append("</ol>")
        parts.append("<table><thead><tr><th style='text-align:left'>case</th>"
                     "<th style='text-align:left'>inputs</th><th>verdict</th><th>max error</th>"
                     "<th style='text-align:left'>details</th></tr></thead><tbody>")
        colors = {"pass": "#1a7f37", "FAIL": "#cf222e", "note": "#9a6700"}
        for r in self.results:
            err = "" if r.max_error is None else f"{r.max_error:.3g}"
            if r.worst_index is not None and r.verdict != "pass":
                err += f" at {_fmt_index(r.worst_index)}"
            detail = [e(line) for line in r.message.split("\n")] if r.message else []
            if r.verdict == "FAIL":
                refs = [str(number[h]) for h in r.hints if h in number]
                detail += ([f"<i>what is wrong:</i> see {', '.join(refs)} above"] if refs
                           else [f"<i>hint:</i> {e(h)}" for h in r.hints])
            elif r.verdict == "note":
                detail += [f"<i>note:</i> {e(h)}" for h in r.hints]
            detail += [f"<i>warning:</i> {e(w)}" for w in r.warnings[:2]]
            parts.append(
                f"<tr><td style='text-align:left'>{e(r.case.label)}</td>"
                f"<td style='text-align:left;white-space:nowrap'>{e(r.case.shapes())}</td>"
                f"<td style='color:{colors[r.verdict]};font-weight:bold'>{e(r.verdict)}</td>"
                f"<td style='white-space:nowrap'>{e(err)}</td>"
                f"<td style='text-align:left'>{'<br>'.join(detail)}</td></tr>")
        parts.append("</tbody></table></div>")
        return "".join(parts)


def check(fn, name=None, *, scale=None, seed=0):
    """Run your function `fn` on a battery of cases and compare it with selfattn's.

    Parameters
    ----------
    fn : callable
        Your function, called with the notebook's positional arguments (e.g. ``fn(Q, K)``).
    name : str, optional
        Which function `fn` implements, one of :data:`NAMES`; by default ``fn.__name__``.
    scale : float, optional
        The scores convention to check against, for the functions that compute scores:
        None (the default) means scaled dot-product attention, ``Q @ K.T / sqrt(d_k)``;
        ``scale=1.0`` means raw dot products ``Q @ K.T``, as the self-attention notebook's text
        describes. Ignored (with a note) for softmax_attention_weights and compute_attention_output.
    seed : int, optional
        Seed of the random inputs.

    Returns
    -------
    CheckReport
        Truthy only if every case passed. Each failed case says by how much and where it differs
        and, when the result matches a known mistake, what that mistake is. Cases with a batch
        dimension are optional (the notebook's functions take one sequence): they give notes,
        not failures.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn.testing import check
    >>> def softmax_attention_weights(attn_scores):
    ...     e = np.exp(attn_scores)
    ...     return e / e.sum(axis=0)
    >>> report = check(softmax_attention_weights)
    >>> bool(report)
    False
    >>> print(report.diagnoses[0][:41])
    Softmax over the wrong axis: your weights
    """
    if not callable(fn):
        raise TypeError(f"check: fn must be a function, got {type(fn).__name__}")
    name = _check_name("check", name, fn)
    scale = _check_scale("check", scale)
    notes = []
    if scale is not None and name not in _SCALED:
        notes.append(f"scale={scale:g} is ignored: {name} does not compute scores.")
        scale = None
    results = [_run_case(fn, case, scale) for case in cases(name, scale=scale, seed=seed)]
    _merge_explained(results)
    _merge_combined(results)
    return CheckReport(name, getattr(fn, "__name__", None), scale, results, notes)


def assert_implementation(fn, name=None, *, scale=None, seed=0):
    """Raise AssertionError, with the :func:`check` report as its message, unless `fn` is correct.

    For pytest graders: one line per function, and the student sees every case and every hint.

    >>> import numpy as np
    >>> from selfattn.testing import assert_implementation
    >>> def compute_self_attention_scores(Q, K):
    ...     return Q @ K.T                       # the notebook's raw dot products
    >>> assert_implementation(compute_self_attention_scores, scale=1.0)   # silent: correct
    """
    __tracebackhide__ = True
    check(fn, name, scale=scale, seed=seed).raise_if_failed()
