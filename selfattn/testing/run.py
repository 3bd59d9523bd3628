"""Running a learner's function on the cases, and telling what happened on each."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import re
import textwrap
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

from .cases import Case  # noqa: F401  (the type of CaseResult.case)
from .isolation import _call_kept, _call_note
from .compare import _diff, _diff_message, _fmt, _fmt_index, _fmt_pair, _pattern, _tolerance
from .._validate import _packaged_number
from .mistakes import _HINTS, _epsilon_hint, _hint, _mistakes, _precision_hint

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))


@dataclass
class CaseResult:
    """What happened on one case.

    ``verdict`` is ``"pass"``, ``"FAIL"`` or ``"note"`` (an optional case that did not pass:
    batched inputs, which the notebook's functions need not support). ``max_error`` is the largest
    absolute difference from the expected output (None when there is no output to compare),
    ``worst_index`` where the largest difference outside the tolerance is (None when all are
    close), ``message`` what happened on this case and ``hints`` what to change, in words.
    """
    case: Case
    verdict: str
    message: str = ""
    hints: list = field(default_factory=list)
    max_error: float | None = None
    worst_index: tuple | None = None
    warnings: list = field(default_factory=list)
    matches: list = field(default_factory=list)  # every known mistake that reproduces the result
    # The result holds no finite number, which every mistake that overflows reproduces: its
    # `matches` need another case's support (_confirm_matches), and where they have none, these
    # facts are what the case shows instead.
    nonfinite: bool = False
    unconfirmed_facts: str | None = None

    @property
    def passed(self):
        return self.verdict == "pass"


def _same(original, after):
    return original.shape == after.shape and bool(np.array_equal(original, after, equal_nan=True))


def _learner_frame(exc):
    """(frame summary, its local variables) of the innermost frame of the learner's own code,
    or (None, {})."""
    tbs = []
    tb = exc.__traceback__
    while tb is not None:
        tbs.append(tb)
        tb = tb.tb_next
    frames = traceback.extract_tb(exc.__traceback__)
    for frame, tb in reversed(list(zip(frames, tbs))[1:]):  # frames[0] is check's own call
        path = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if path.startswith(_PACKAGE_DIR) or path.startswith(_NUMPY_DIR):
            continue
        return frame, tb.tb_frame.f_locals
    return None, {}


def _own_statements(fn):
    """The statements of `fn`'s body, nested blocks included but not the functions or classes
    defined in it, read from its source; None where there is none to read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except Exception:  # noqa: BLE001 -- no source (a builtin, exec'd code), or not parseable
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        return None
    own, todo = [], list(node.body)
    while todo:
        statement = todo.pop()
        own.append(statement)
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo += [c for c in ast.iter_child_nodes(statement) if isinstance(c, ast.stmt)]
    return own


def _why_none(fn):
    """The hint for `fn`'s None where its source says more than the general one: it returns
    what a function of the learner's returns (`return compute_attention_output(weights, V)`,
    or a variable set from that call) and that function is still a stub, whose None it passes
    on (a layer whose helper is a stub was told that it ends in `pass` itself); or it prints and
    returns nothing."""
    from .load import _stub_body

    own = _own_statements(fn)
    if own is None:
        return None
    set_by = {t.id: a.value for a in own if isinstance(a, ast.Assign)
              for t in a.targets if isinstance(t, ast.Name)}
    returns = [r for r in own if isinstance(r, ast.Return) and r.value is not None]
    for ret in returns:
        value = set_by.get(ret.value.id) if isinstance(ret.value, ast.Name) else ret.value
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)):
            continue
        callee = getattr(fn, "__globals__", {}).get(value.func.id)
        body = _own_statements(callee) if callee is not None else None
        if body is None:
            continue
        words = _stub_body(ast.parse(textwrap.dedent(inspect.getsource(callee))).body[0])
        if words:
            return _hint(f"Your function returns what {value.func.id} returns, and that is still "
                         f"an unfilled stub (its body is only {words}): write {value.func.id} "
                         f"first.", "returned_none")
    printed = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
                  for statement in own if isinstance(statement, ast.Expr)
                  for n in [statement.value])
    if printed and not returns:
        return _hint("Your function prints its result but returns None: a function hands its "
                     "result back with `return` (replace print(...) with return ...); printing "
                     "only shows it.", "returned_none")
    return None


def _none_names(frame, local_vars):
    """The variables of the failing line whose value is None."""
    names = re.findall(r"[A-Za-z_]\w*", frame.line or "") if frame is not None else []
    return [n for n in dict.fromkeys(names) if n in local_vars and local_vars[n] is None]


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
                      "result_transposed", "projection_order", "no_projection", "v_at_weights",
                      "all_wq"),
    "raised_broadcast": ("no_keepdims_sum", "no_keepdims_max", "no_keepdims_both", "residual"),
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


# The functions whose result is a matrix product (an elementwise * is a likely slip there).
_PRODUCT_NAMES = ("compute_self_attention_scores", "compute_attention_output")


def _exception_result(case, exc, fn=None):
    kind = type(exc).__name__
    text = str(exc).strip() or "(no message)"
    message = f"raised {kind}: {text}\n  when called as {case.call()}"
    frame, local_vars = _learner_frame(exc)
    nones = _none_names(frame, local_vars)
    if frame is not None:
        where = f"line {frame.lineno}" + (f" of {frame.name}()" if frame.name != "<module>" else "")
        code = (frame.line or "").strip()
        message += f"\n  at {where}" + (f": {code}" if code else "")
    low = text.lower()
    if nones:
        # Whatever the message (np.matmul(None, V) speaks of dimensions), the cause is the None.
        hint = _hint(_HINTS["raised_none"] + f" Here {' and '.join(nones)} "
                     f"{'is' if len(nones) == 1 else 'are'} None.", "raised_none")
    elif isinstance(exc, NameError):
        hint = _HINTS["raised_name"]
    elif isinstance(exc, TypeError) and _refused_keywords(case, exc, fn):
        hint = _keyword_hint(case, _refused_keywords(case, exc, fn))
    elif isinstance(exc, TypeError) and "argument" in low and ("positional" in low or "missing" in low):
        hint = _hint(_HINTS["raised_signature"].format(
            call=f"{case.name}({', '.join(case.arg_names)})"), "raised_signature")
    elif isinstance(exc, FloatingPointError) and "underflow" in low:
        # the learner's own errstate(all="raise"): a correct softmax's exp underflows to 0 on the
        # large-score cases, which was named "no max subtraction"
        hint = _HINTS["raised_underflow"]
    elif isinstance(exc, (FloatingPointError, OverflowError)) and case.large:
        hint = _HINTS["no_max"]  # np.seterr(all="raise") turns the overflow into an exception
    elif "nonetype" in low:
        hint = _HINTS["raised_none"]
    elif "could not be broadcast" in low:
        # The failing line tells a reduction without keepdims from an elementwise product.
        code = frame.line if frame is not None and frame.line else ""
        elementwise = _HINTS["raised_elementwise_scores" if case.name == "compute_self_attention_scores"
                             else "raised_elementwise"]
        if re.search(r"[\w)\]]\s*\*\s*[\w(]", code):
            hint = elementwise
        elif re.search(r"\b(sum|max)\(", code):
            hint = _HINTS["raised_broadcast"]
        elif not code:
            hint = elementwise if case.name in _PRODUCT_NAMES else _HINTS["raised_broadcast"]
        else:
            hint = _HINTS["raised"]
    elif "matmul" in low or "not aligned" in low or "mismatch" in low or "dimension" in low:
        hint = _hint(_HINTS["raised_matmul"].format(products=_PRODUCTS[case.name]), "raised_matmul")
    else:
        hint = _HINTS["raised"]
    return message, [hint]


def _takes_keyword(fn, name):
    """Whether `fn`'s signature names a parameter `name` that can be passed by keyword."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):   # a builtin without a signature
        return False
    return name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY


def _refused_keywords(case, exc, fn):
    """The keyword arguments check() passed (is_causal=, window=) that the function does not
    take, where the call itself raised for one of them: not a helper the function calls (its
    own compute_self_attention_scores without is_causal, torch's SDPA without window=). Python
    names one; the function's signature says whether it lacks the other too."""
    text = str(exc)
    if not any(re.search(rf"unexpected keyword argument '{k}'", text) for k in case.kwargs):
        return []
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code is not _run_case.__code__:
        return []       # raised further down, in what the function called
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [k for k in case.kwargs if f"'{k}'" in text]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params if p.kind is not p.POSITIONAL_ONLY}
    return [k for k in case.kwargs if k not in names]


def _keyword_hint(case, refused):
    """raised_keyword, for a function that takes none of `refused` (of case.kwargs)."""
    defaults = {"is_causal": "is_causal=False", "window": "window=None"}
    params = ", ".join(case.arg_names + tuple(defaults.get(k, f"{k}=None") for k in case.kwargs))
    asked = " and ".join(f"{k}={v!r}" for k, v in case.kwargs.items() if k in refused)
    names = " and ".join(f"the keyword argument {k}" for k in refused)
    return _hint(_HINTS["raised_keyword"].format(
        names=names, asked=asked, them="it" if len(refused) == 1 else "them",
        call=f"{case.name}({params})"), "raised_keyword")


_K_FOR_BATCHES = ("To support batches, use np.swapaxes(K, -1, -2) (or K.mT in NumPy 2) instead "
                  "of K.T, and @ (np.matmul), which multiplies batches matrix by matrix, instead "
                  "of np.dot.")
_BATCH_ADVICE = {
    "compute_self_attention_scores": _K_FOR_BATCHES,
    "softmax_attention_weights": "To support batches, take the max and the sum over axis=-1 (the "
                                 "last axis, the keys) with keepdims=True: with a batch axis in "
                                 "front, axis=1 is no longer the keys' axis.",
    "compute_attention_output": "To support batches, use @ (np.matmul), which multiplies batches "
                                "matrix by matrix, instead of np.dot, and no .T of a whole array.",
    "self_attention_layer": _K_FOR_BATCHES + " The softmax takes axis=-1.",
    "scaled_dot_product_attention": _K_FOR_BATCHES + " The softmax takes axis=-1.",
}


def _batched_hint(advice):
    return _hint("Batched inputs (a leading batch dimension) are optional: the notebook's "
                 "functions take one sequence, so this does not count against you. " + advice,
                 "batched")


def _batch_advice_after_plain(results):
    """Advice on batches only for a function that works on one sequence: while cases without a
    batch fail too, the batched one fails for the same reason as likely as for the batch. (The
    grouped cases have batch axes too: they fail for the batch's reason.)"""
    if not any(r.verdict == "FAIL" and not (r.case.batched or r.case.grouped) for r in results):
        return
    for r in results:
        if r.case.batched and r.hints and r.hints[0] == _batched_hint(_BATCH_ADVICE[r.case.name]):
            r.hints[0] = _batched_hint("Fix the failed cases without a batch first.")


def _shape_message(case, got_shape):
    """What the shapes say, in words. No hint: only a mistake's reproduced output names one."""
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
    return msg + f" = {meaning} (inputs: {dims})"


_NUMPY_DEFAULTS = {"divide": "warn", "over": "warn", "under": "ignore", "invalid": "warn"}


def _run_case(fn, case, user_scale, either=False):
    """Run `fn` on one case. `user_scale` is the convention compared against (None: scaled);
    `either` says that the other convention would have been accepted too."""
    originals = case.args
    copies = tuple(np.array(a, copy=True) for a in originals)  # writable: a learner may write
    # grouped heads are asked for where the function has a switch for them (selfattn's own
    # failed its grouped cases, "pass enable_gqa=True"); jax's way groups them unasked
    grouping = {"enable_gqa": True} if case.grouped and _takes_keyword(fn, "enable_gqa") else {}
    caught = []
    # under NumPy's default error handling, whatever the notebook set: a correct softmax's exp
    # underflows on the large-score cases, which np.seterr(all="raise") made an exception
    # and what the call changes in the process (np.sqrt replaced, os.chdir) is put back before
    # its result is compared, and before the next case or student
    with _call_kept() as libraries, warnings.catch_warnings(record=True) as recorded, \
            np.errstate(**_NUMPY_DEFAULTS):
        warnings.simplefilter("always")
        try:
            got = fn(*copies, **case.kwargs, **grouping)
            exc = None
        # the learner's bug, reported in words (sys.exit() too); never KeyboardInterrupt
        except (Exception, SystemExit) as e:
            got, exc = None, e
        libraries.look()
    for w in recorded:
        text = f"{w.category.__name__}: {w.message}"
        if text not in caught:
            caught.append(text)
    if libraries.names():
        caught.insert(0, _call_note(libraries.names()))

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
        if case.grouped and result.verdict == "FAIL":
            result.hints.append(_HINTS["grouped"])
        if case.batched and result.verdict == "FAIL":
            # the advice for batches only where batches are what failed: a case that fails as
            # the plain ones do (an input changed in place, a list returned) keeps their hints
            specific = [h for h in result.hints if h not in (_HINTS["unknown"], _HINTS["raised"])
                        and not getattr(h, "keys", None) == ("raised_matmul",)]
            result.verdict = "note"
            result.hints = [_batched_hint(
                "What is wrong in this case follows." if specific else _BATCH_ADVICE[case.name])
            ] + specific
        return result

    if exc is not None:
        message, hints = _exception_result(case, exc, fn)
        return done(message, hints)
    if got is None:
        return done("returned None", [_why_none(fn) or _HINTS["returned_none"]])
    if isinstance(got, tuple):
        shapes = ", ".join(str(np.shape(g)) for g in got)
        return done(f"returned a tuple of {len(got)} values (shapes {shapes})",
                    [_HINTS["returned_tuple"]])
    returned_list = isinstance(got, list)
    if inspect.isgenerator(got):   # np.asarray makes it an object array: say what it is
        return done("returned a generator (the function uses `yield`), not an array",
                    [_hint(_HINTS["not_array"] + " Use `return`, not `yield`.", "not_array")])
    # another library's array (torch, jax) converts, but is not what the notebook's functions
    # return: failed as a list is, with the values still compared
    foreign = _other_library_array(got)
    try:
        got = np.asarray(got)
    except Exception as exc:  # a ragged list, a torch tensor that requires grad, and the like
        return done(f"returned {'a ' + foreign if foreign else type(got).__name__}, which is not "
                    f"an array ({exc})", [_HINTS["returned_foreign" if foreign else "not_array"]])
    if _packaged_number(got.dtype):   # bfloat16 (ml_dtypes: JAX's, np.asarray of a jax array)
        return done(f"returned an array of dtype {got.dtype}", [_hint(
            f"Your function returns {got.dtype}, whose few bits of precision (about 3 digits for "
            f"bfloat16) are too few to check: compute in the inputs' dtype and return that "
            f"(float32 or float64).")])
    if got.dtype.kind not in "biuf":
        return done(f"returned {'a list' if returned_list else 'an array'} of dtype {got.dtype}",
                    [_HINTS["returned_list" if returned_list else "not_array"]])
    if returned_list or foreign:
        result.hints.append(_HINTS["returned_list" if returned_list else "returned_foreign"])

    exp = case.expected
    # The case's dtype decides: a float64 answer to a float32 case is fine.
    rtol, atol, _ = _tolerance(exp.dtype)
    if got.ndim == 0:  # a placeholder `return 1.0`, or a float(...) or .sum() too many
        return done(_shape_message(case, got.shape), [_HINTS["returned_scalar"]])
    if got.shape != exp.shape:
        if not (case.batched or case.grouped):
            result.matches = _match_mistakes(case, got, user_scale, either, rtol, atol)
        return done(_shape_message(case, got.shape), result.matches[:1])

    diff = _diff(got, exp, rtol, atol)
    result.max_error = diff.max_abs if not diff.n_nonfinite else math.inf
    result.worst_index = diff.worst_index
    # a float32 result of float64 inputs, or an integer one of float inputs, fails even where
    # this case's values come out close (integers, powers of 2): a verdict may not depend on
    # which inputs a case drew
    if diff.close and got.dtype.kind == "f" and got.itemsize < exp.itemsize:
        return done(f"returned {got.dtype} for {exp.dtype} inputs (this case's values come out "
                    f"within {exp.dtype}'s tolerance even so)",
                    [_precision_hint(got.dtype, exp.dtype)])
    if diff.close and got.dtype.kind in "biu":
        return done(f"returned {got.dtype} for {exp.dtype} inputs (this case's values are whole "
                    f"numbers, so they come out right even so)", [_HINTS["int_buffer"]])
    if diff.close:
        result.verdict = "pass"
        notes = []
        if got.dtype != exp.dtype:
            notes.append(f"returned {got.dtype} for {exp.dtype} inputs (accepted)")
        if not mutated and not returned_list and not foreign:
            return done("; ".join(notes))
        result.verdict = "FAIL"
        if returned_list or foreign:
            return done(f"the values are right, but they are "
                        f"{'a list' if returned_list else 'a ' + foreign}, not a NumPy array")
        return done("the output is right")  # done() adds what changed in the input

    message = _diff_message(diff, rtol, atol, exp.dtype).replace("Arrays are not close", "Not close")
    message = message.replace("actual", "yours").replace("desired", "expected")
    hints = []
    if got.dtype.kind == "f" and got.dtype.itemsize < exp.dtype.itemsize:
        low_r, low_a, _ = _tolerance(got.dtype)
        if _diff(got, exp, low_r, low_a).close:
            return done(message + f"\nreturned {got.dtype} for {exp.dtype} inputs",
                        [_precision_hint(got.dtype, exp.dtype)])
    if not (case.batched or case.grouped):
        result.matches = _match_mistakes(case, got, user_scale, either, rtol, atol)
        hints += result.matches[:1]
        # (or a match of weak evidence, which _confirm_matches treats alike)
        result.nonfinite = (not np.isfinite(got).any()
                            or bool(result.matches and getattr(result.matches[0], "weak", False)))
        if not result.matches:
            message += "\n" + _facts(case, got, diff, rtol, atol)
        elif result.nonfinite:
            result.unconfirmed_facts = _facts(case, got, diff, rtol, atol)
    return done(message, hints)


def _match_mistakes(case, got, user_scale, either, rtol, atol):
    """The hints of every known mistake that reproduces `got`, in order of likelihood."""
    # A learner's float32 arithmetic differs from NumPy's variant by rounding: match loosely,
    # a wrong variant differs from the right answer by far more.
    loose_r, loose_a = max(rtol * 100, 1e-7), max(atol * 100, 1e-9)
    # inf/NaN where the answer is finite: an overflow. Many wrong variants overflow as well, and
    # a matrix of NaN matches them all; only the mistakes that overflow by themselves explain it.
    overflow = got.shape == case.expected.shape and bool(
        (~np.isfinite(got) & np.isfinite(case.expected)).any())
    overflowing = tuple(_HINTS[k] for k in ("no_max", "global_max", "shift_not_max",
                                            "no_keepdims_max", "no_keepdims_both"))
    if _masked_with_a_number(case, got, loose_r, loose_a):
        return [_HINTS["masked_finite"]]
    epsilons = _epsilon_in_the_sum(case, got, rtol, atol)
    if epsilons:
        hints = list(dict.fromkeys(map(_epsilon_hint, epsilons)))
        for hint in hints:
            # one row's number fits any constant (a softmax without the max subtracted, or times
            # 1 - 1e-6, gave an "epsilon" of some size there): weak evidence, kept only where a
            # case of several rows names the same (_confirm_matches)
            hint.weak = got.ndim < 2 or got.shape[-2] < 2
        return hints
    found = []
    for hint, wrong in _mistakes(case, user_scale, either):
        wrong = np.asarray(wrong)
        if wrong.shape != got.shape or hint in found:
            continue
        if overflow and not hint.startswith(overflowing):
            continue
        if wrong.shape == case.expected.shape and _diff(wrong, case.expected, loose_r, loose_a).close:
            continue  # this mistake makes no difference on this case
        if _diff(got, wrong, loose_r, loose_a).close:
            found.append(hint)
    narrow = [isinstance(a, np.ndarray) and a.dtype == np.float32 for a in case.args]
    if not found and any(narrow) and got.dtype == np.float64:
        # float32 inputs and a float64 result: the learner's code went to float64 part way
        # (`/ np.sqrt(d_k)` divides by a float64 scalar, which NumPy 2 does not demote), and a
        # mistake that overflows or underflows does so elsewhere in float64: the mistakes again,
        # computed in float64
        wider = tuple(a.astype(np.float64) if f32 else a for a, f32 in zip(case.args, narrow))
        return _match_mistakes(dataclasses.replace(case, args=wider), got, user_scale, either,
                               rtol, atol)
    # One mistake explains a result better than the same mistake with a second one.
    return sorted(found, key=lambda h: len(getattr(h, "keys", ())))


def _masked_with_a_number(case, got, rtol, atol):
    """Whether `got` is the case's scores with a large negative number (-1e9, -1e4, -finfo.max)
    where the mask puts -inf, and right elsewhere."""
    exp = case.expected
    if case.name != "compute_self_attention_scores" or got.shape != exp.shape:
        return False
    masked = np.isneginf(exp)
    if not masked.any() or not np.isfinite(got[masked]).all() or got[masked].max() > -1e3:
        return False
    return _diff(got[~masked], exp[~masked], rtol, atol).close


def _epsilon_in_the_sum(case, got, rtol, atol):
    """The epsilon of a softmax that returns e / (e.sum(axis=-1, keepdims=True) + eps): too
    small a change for the mistakes' loose match (a float32 learner's rounding), so told from
    `got` itself: e / got is the same number, the row's sum plus eps, across every row. The
    epsilons that fit, of a sum of exp(s - max) or of exp(s) (on one row both may), or none if
    `got` is no such result. Of exp(s) the size is None: exps shifted by any one number c for
    the whole matrix (no max, or the whole matrix's) read as an epsilon of eps * exp(c)."""
    exp = case.expected
    if (case.name != "softmax_attention_weights" or got.shape != exp.shape or got.ndim < 1
            or not np.isfinite(got).all()):
        return []
    s = np.asarray(case.args[0], dtype=np.float64)
    found = []
    # each row's max subtracted, or nothing (the epsilon then adds to the sum of exp(s) itself)
    for shift, sized in ((s.max(axis=-1, keepdims=True), True), (0.0, False)):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # a row of zeros: all-NaN
            e = np.exp(s - shift)
            sums = e.sum(axis=-1)
            divisor = np.where(got > 0, e / got, np.nan)
            eps = np.nanmedian(divisor, axis=-1) - sums
        if not np.isfinite(eps).all() or not (eps > 0).all() or eps.max() > 1e-3:
            continue
        one = float(np.median(eps))
        if np.abs(eps - one).max() > 0.05 * one:
            continue
        with np.errstate(all="ignore"):
            wrong = e / (sums[..., None] + one)
        if _diff(got, wrong.astype(got.dtype), rtol, atol * 10).close:
            found.append(one if sized else None)
    return found


def _confirm_matches(results):
    """A result of nothing but inf and NaN matches every mistake that overflows on its case, so
    it is weak evidence of one. Such a case keeps a mistake that a failed case with numbers in its
    result names too, or, where every failed case is all inf and NaN, that all of them name (a
    softmax that subtracts each row's minimum fails only on large scores, all NaN there); else
    it is unexplained, as it is (a stub that returns NaN everywhere)."""
    failed = [r for r in results if r.verdict == "FAIL"]
    informative = [r for r in failed if not r.nonfinite]
    if informative:
        supported = {h for r in informative for h in r.matches}
    else:
        supported = set.intersection(*(set(r.matches) for r in failed)) if failed else set()
    for r in failed:
        if r.unconfirmed_facts is None or r.matches[0] in supported:
            continue
        kept = [h for h in r.matches if h in supported]
        r.hints = [h for h in r.hints if h not in r.matches]
        if kept:
            r.hints.append(kept[0])
        else:
            r.message += "\n" + r.unconfirmed_facts
            r.hints.append(_HINTS["unknown"])
        r.matches = kept


def _agree_on_mistakes(results):
    """Where a case matches several mistakes (on a single token, raw scores and sqrt(n_k) are the
    same numbers), name the one that explains the most failed cases, so that one mistake is not
    reported as two."""
    counts = {}
    for r in results:
        for h in r.matches:
            counts[h] = counts.get(h, 0) + 1
    for r in results:
        if len(r.matches) > 1:
            best = max(r.matches, key=lambda h: counts[h])  # the first of the most frequent
            r.hints = [best if h == r.matches[0] else h for h in r.hints]


def _facts(case, got, diff, rtol, atol):
    """When no known mistake reproduces a result: the first entries that differ, and what can be
    said of the result without guessing a cause."""
    exp = case.expected
    with np.errstate(all="ignore"):
        # (-1e9 against -inf is inf <= inf: only finite entries are compared by tolerance)
        bad = ~((np.isfinite(exp) & (np.abs(got - exp) <= atol + rtol * np.abs(exp)))
                | (np.isnan(got) & np.isnan(exp)) | (np.isinf(got) & (got == exp)))
    shown = [f"{_fmt_index(tuple(int(i) for i in idx))} yours %s, expected %s"
             % _fmt_pair(float(got[tuple(idx)]), float(exp[tuple(idx)]))
             for idx in np.argwhere(bad)[:3]]
    lines = ["first differing entries: " + "; ".join(shown)]
    if diff.n_nonfinite and np.isfinite(exp).all():
        lines.append("your result has inf or NaN where the expected result is finite")
    else:
        pattern = _pattern(got, exp, diff, rtol, atol, exp.dtype,
                           names=("your result", "the expected result"), atol_advice=False)
        if pattern:
            lines.append(pattern[0].lower() + pattern[1:].rstrip("."))
    if case.name == "softmax_attention_weights":
        with np.errstate(all="ignore"):
            if (got < 0).any():
                lines.append("some of your weights are negative")
            if not np.allclose(got.sum(axis=-1), 1.0, rtol=1e-4, atol=1e-6):
                lines.append("the rows of your weights do not sum to 1")
    return "\n".join(lines)


def _other_library_array(value):
    """"torch.Tensor" for another library's array (one that converts itself: NumPy's array
    protocols or DLPack), which np.asarray reads but the notebook's functions do not return;
    None for NumPy's own types, Python's numbers and sequences, and the standard library's."""
    kind = type(value)
    root = kind.__module__.split(".")[0]
    if isinstance(value, (np.ndarray, np.generic)) or root in ("builtins", "array", "numpy"):
        return None
    if not any(hasattr(value, hook) for hook in ("__array__", "__array_interface__",
                                                 "__array_struct__", "__dlpack__")):
        return None
    return f"{root}.{kind.__qualname__}"
