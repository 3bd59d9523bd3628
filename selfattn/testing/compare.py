"""Comparing arrays: tolerances chosen by dtype, and a message that says where and by how much."""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import numpy as np

from .._validate import _as_ndarray, _packaged_number, _read_array

#: ``(rtol, atol)`` by dtype: two results agree where ``|actual - desired| <= atol + rtol * |desired|``.
#: The coarser dtype of the two arrays decides; integers and booleans count as float64.
TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-4),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}


# the testing functions whose own argument errors (messages starting "check: " and so on) are
# raised from the caller's line, as the core functions' are (_validate._public_call)
_CHECKERS = ("check", "assert_implementation", "cases", "check_functions")


def _errors_at_the_call(function):
    """`function` (one of _CHECKERS) with its own TypeError or ValueError raised with no frame of
    selfattn's but this one: the message says what to change, the traceback is the caller's
    line. Any other error (from a learner's function, or a bug of ours) keeps its frames."""
    prefixes = tuple(f"{name}: " for name in _CHECKERS)

    @functools.wraps(function)
    def call(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return function(*args, **kwargs)
        except (TypeError, ValueError) as error:
            if not str(error).startswith(prefixes):
                raise
            raise error.with_traceback(None)
    return call


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
    worst_index: tuple       # the largest |difference| outside the tolerance (the first
                             # non-finite mismatch if any), or None when all are close
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
        rel = np.where(finite & (d != 0), err / np.abs(d), np.where(finite & (err > 0), np.inf, 0.0))
    nonfinite_bad = ~finite & ~same_special
    bad = nonfinite_bad | (finite & (err > allowed))
    n_bad = int(bad.sum())
    worst = None
    if n_bad:
        if nonfinite_bad.any():
            flat = int(np.flatnonzero(nonfinite_bad.ravel())[0])
        else:   # the largest difference, as the message says: not the largest relative one
            flat = int(np.argmax(np.where(bad, err, -1.0).ravel()))
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


def _fmt_pair(a, b):
    """Two numbers that differ, each with as many digits as it takes to show that they do (from
    6 significant digits up to 17): "0.526561" twice told a learner nothing."""
    if a == b or not (math.isfinite(a) and math.isfinite(b)) or _fmt(a) != _fmt(b):
        return _fmt(a), _fmt(b)
    for digits in range(7, 18):  # "#": trailing zeros kept, so both show the same digits
        sa, sb = f"{a:#.{digits}g}", f"{b:#.{digits}g}"
        if sa != sb:
            break
    return sa, sb


def _fmt_index(index):
    return "(" + ", ".join(str(i) for i in index) + ")" if len(index) != 1 else f"({index[0]},)"


def _tolerance_value(name, value):
    """A tolerance the test gave, as a float: a number, 0 or more (a negative one failed every
    comparison but an exact one, and its report printed rtol=-0.1)."""
    import numbers
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"assert_attention_close: {name} must be a number (or None for the "
                        f"dtype's default), got {value!r}")
    tol = float(value)
    if not tol >= 0 or math.isinf(tol):
        raise ValueError(f"assert_attention_close: {name} must be a finite number, 0 or more, got "
                         f"{value!r}")
    return tol


def assert_attention_close(actual, desired, *, rtol=None, atol=None, err_msg=""):
    """Raise AssertionError unless `actual` and `desired` agree within dtype-chosen tolerances.

    Elements agree where ``|actual - desired| <= atol + rtol * |desired|``; NaNs in the same
    places and infinities of the same sign count as equal. By default ``rtol`` and ``atol`` come
    from :data:`TOLERANCES` for the coarser dtype of the two arrays (float64: 1e-10 and 1e-12,
    float32: 1e-5 and 1e-5, float16: 1e-3 and 1e-4), so a float32 result is not failed for
    float32 rounding. The message says how many elements differ, where the largest difference
    is, what both values are there and how far apart they are, and what the differences have in
    common where they have something: a constant factor (a scale too many or too few), float32
    rounding, or, for shapes that differ, a batch axis that summed away gives `desired` (the
    gradient of an input shared across a batch).

    To check a gradient you wrote by hand, compare it with selfattn's
    (:func:`selfattn.scaled_dot_product_attention_backward` and the other ``*_backward``
    functions), one array at a time.

    Parameters
    ----------
    actual, desired : array_like
        The result to check and the expected one, of the same shape.
    rtol, atol : float, optional
        Override the relative and absolute tolerance: finite numbers, 0 or more (a ValueError or
        TypeError otherwise).
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
    prefix = (err_msg.rstrip() + "\n") if err_msg else ""
    problem = _not_an_array(actual)
    if problem:
        raise AssertionError(f"{prefix}actual is {problem}")
    # What is wrong with `actual` is a wrong answer (an AssertionError, which a grader counts as
    # a failed test); with `desired`, a mistake in the test (TypeError)
    try:
        a = np.asarray(actual)
    except Exception as exc:   # torch: a tensor that requires grad; an object's own __array__
        raise AssertionError(f"{prefix}actual, a {type(actual).__name__}, could not be read as "
                             f"an array: {exc}") from None
    if _packaged_number(a.dtype):
        raise AssertionError(f"{prefix}actual has dtype {a.dtype}, which is not compared in: "
                             f"return float32 or float64 (result.astype(np.float32)).")
    if a.dtype.kind not in "biuf":
        what = (f"a {type(actual).__name__}, not an array of numbers" if a.ndim == 0 and
                a.dtype.kind == "O" else f"an array of dtype {a.dtype}, not of real numbers")
        raise AssertionError(f"{prefix}actual is {what}: return an np.ndarray of floats.")
    d = _read_array("assert_attention_close", "desired", desired)
    if _packaged_number(d.dtype):
        raise TypeError(f"assert_attention_close: desired has dtype {d.dtype}, which it does not "
                        f"compare in; convert it with desired.astype(np.float32)")
    if d.dtype.kind not in "biuf":
        raise TypeError(f"assert_attention_close: desired has dtype {d.dtype}; "
                        f"expected real numbers")
    r_default, a_default, dt = _tolerance(a.dtype, d.dtype)
    rtol = r_default if rtol is None else _tolerance_value("rtol", rtol)
    atol = a_default if atol is None else _tolerance_value("atol", atol)
    if a.shape != d.shape:
        hint = ""
        if a.ndim >= 2 and a.shape[:-2] + a.shape[-2:][::-1] == d.shape:
            hint = " (actual looks transposed: its last two dimensions are swapped)"
        summed = _summed_to(a, d.shape)
        if summed is not None:
            axes = summed[1]
            named = (f"axis {axes[0]}" if len(axes) == 1 else
                     "axes " + ", ".join(str(i) for i in axes[:-1]) + f" and {axes[-1]}")
            if all(a.shape[i] == 1 for i in axes):
                hint += f" (actual has an extra {named} of length 1)"
            # to the array's scale: a float32 sum over the batch rounds as a weight's gradient
            # does (the elementwise tolerance failed one weight of three with the same mistake)
            elif a.size and _diff(summed[0], d, rtol, max(atol, rtol * _largest(d))).close:
                hint += (f". Summed over {named}, actual is desired: the gradient of an input "
                         f"shared across a batch (broadcast) is the sum over the batch of its "
                         f"gradients")
        raise AssertionError(
            f"{prefix}Shapes differ: actual {a.shape}, desired {d.shape}{hint}."
        )
    diff = _diff(a, d, rtol, atol)
    if diff.close:
        return
    message = _diff_message(diff, rtol, atol, dt)
    pattern = _pattern(a, d, diff, rtol, atol, dt)
    raise AssertionError(prefix + message + ("\n" + pattern if pattern else ""))


def _largest(x):
    """The largest |finite element| of x, 0.0 if none."""
    with np.errstate(all="ignore"):
        finite = np.abs(np.asarray(x, dtype=np.float64))
        finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def _summed_to(a, shape):
    """(a summed to `shape`, the axes of `a` summed) where an array of `shape` broadcasts to
    a.shape (axes it lacks or has as 1), else None."""
    try:
        if np.broadcast_shapes(shape, a.shape) != a.shape:
            return None
    except ValueError:
        return None
    extra = a.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape)
                                       if n == 1 and a.shape[extra + i] != 1)
    with np.errstate(all="ignore"):
        out = np.asarray(a, dtype=np.float64).sum(axis=axes, keepdims=True)
    return out.reshape(shape), axes


def _pattern(a, d, diff, rtol, atol, dt, names=("actual", "desired"), atol_advice=True):
    """What the differences of two arrays of one shape have in common, in a sentence, where
    they have something: a constant factor, or differences of rounding (float32 arithmetic
    where float64 is compared, or float32 sums whose terms cancel). "" otherwise. `names` name
    the two arrays (check's report says "your result" and "the expected result"); atol_advice:
    for the test's author (assert_attention_close), not check's learner: the rounding of sums
    that cancel, and the atol that compares to the array's scale.
    Skipped past 2**24 elements (a failed assertion should not take seconds, or memory, more)."""
    if diff.n_nonfinite or a.size > 1 << 24:
        return ""
    mine, theirs = names
    Mine = mine[0].upper() + mine[1:]
    try:
        with np.errstate(all="ignore"):
            a, d = np.asarray(a, dtype=np.float64), np.asarray(d, dtype=np.float64)
            finite = np.isfinite(d)
            af, df = a[finite], d[finite]
            largest = _largest(df)
            norm = float(np.sum(df * df))
            factor = float(np.sum(af * df)) / norm if norm > 0 and math.isfinite(norm) else math.nan
    except MemoryError:
        return ""
    # a factor needs several values to show in: one element (a single token's score) or one
    # non-zero is any factor; tested at the dtype's own tolerance, not a loose rtol the caller gave
    r_dt, a_dt, _ = _tolerance(dt)
    if (math.isfinite(factor) and abs(factor - 1) > 1e-3 and factor != 0
            and np.count_nonzero(df) >= 3
            and _diff(af, factor * df, min(rtol, r_dt), min(atol, a_dt)).close):
        if abs(factor + 1) < 1e-6:
            return f"{Mine} is {theirs} times -1 everywhere: the sign is flipped."
        return (f"{Mine} is {theirs} times {factor:.6g} everywhere{_named_factor(factor)}: a "
                f"constant factor too many or too few.")
    # relative to each element, or to the largest (an element near 0 of a float32 result)
    if dt == np.float64 and (diff.max_rel <= 1e-5 or diff.max_abs <= 1e-5 * largest):
        return (f"{Mine} is close, but not to float64's precision (relative difference at most "
                f"{_fmt(diff.max_rel)}, rtol={rtol:g} asked): arithmetic in float32 (a float32 "
                f"input or constant), or a small constant added somewhere (an epsilon such as "
                f"+ 1e-9 in a denominator), would do this.")
    eps = float(np.finfo(dt).eps) if dt.kind == "f" else 0.0
    # check's cases are built to pass float32 rounding: there this would excuse a wrong answer
    if (atol_advice and dt != np.float64 and largest > 0 and math.isfinite(largest)
            and diff.max_abs <= min(rtol, 8 * eps * math.sqrt(a.size)) * largest):
        advice = (f" If that is where they come from, compare to the array's scale: "
                  f"atol={rtol:g} * np.abs(desired).max()." if atol_advice else "")
        return (f"Every difference is at most {_fmt(diff.max_abs / largest)} of the largest "
                f"value ({_fmt(largest)}), the size {dt} rounding reaches in sums whose large "
                f"terms cancel (a weight's gradient, a sum over many rows).{advice}")
    return ""


def _named_factor(factor):
    """" (= 1/5)", " (= sqrt(8))", " (= -1/sqrt(8))", or "" for a factor: a whole number or
    its inverse as such, a square root only where it is no whole number (2 is 2, not sqrt(4))."""
    sign = "-" if factor < 0 else ""
    size = abs(factor)
    for value, name in ((size, "{}"), (1 / size, "1/{}"), (size * size, "sqrt({})"),
                        (1 / (size * size), "1/sqrt({})")):
        k = round(value)
        if 2 <= k <= 1 << 16 and abs(value - k) <= 1e-6 * k:
            return "" if name == "{}" else f" (= {sign}{name.format(k)})"
    return ""


def _not_an_array(value):
    """What is wrong with a function's result as an array, in words, or "" if nothing."""
    if value is None:
        return ("None: your function returned None (it still ends in `pass` or returns the "
                "template's placeholder, or it lacks a `return`).")
    if inspect.isgenerator(value):
        return "a generator: your function uses `yield`; use `return` to give back one array."
    if isinstance(value, tuple):
        shapes = ", ".join(str(np.shape(v)) if not np.isscalar(v) else "scalar" for v in value)
        return (f"a tuple of {len(value)} values (shapes {shapes}): your function returns "
                f"several values; return one array.")
    if isinstance(value, list):
        try:
            arr = _as_ndarray(value)
        except ValueError:
            arr = None
        if arr is None or arr.dtype.kind not in "biuf":
            return (f"a list of {len(value)} items that do not form one array of numbers: "
                    f"return an np.ndarray.")
    return ""


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
        actual, desired = _fmt_pair(diff.worst_actual, diff.worst_desired)
        # an element can differ more yet pass, where the desired value is large (rtol)
        where = "" if gap == diff.max_abs else " outside the tolerance"
        lines.append(
            f"Largest difference{where} at index {idx}: actual {actual}, desired {desired} "
            f"(|difference| {_fmt(gap)}, relative {_fmt(rel)})."
        )
        if diff.n_bad > 1:
            lines.append(f"Max absolute difference {_fmt(diff.max_abs)}; max relative difference "
                         f"{_fmt(diff.max_rel)}.")
    return "\n".join(lines)
