"""Running a learner's function on the cases, and telling what happened on each."""
from __future__ import annotations

import math
import os
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

from .cases import Case  # noqa: F401  (the type of CaseResult.case)
from .compare import _diff, _diff_message, _fmt, _fmt_index, _tolerance
from .mistakes import _HINTS, _mistakes

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))


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
