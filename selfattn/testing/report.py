"""The report of :func:`check`, its entry point, and the one-line pytest assertion."""
from __future__ import annotations

import html
import math
import textwrap

from .cases import (_SCALED, _band_kwargs, _check_gqa, _check_name, _check_scale,
                    _check_seed, cases)
from .compare import _errors_at_the_call, _fmt_index
from .mistakes import _HINTS, _course_voice
from .run import (_agree_on_mistakes, _batch_advice_after_plain, _confirm_matches,
                  _merge_combined, _merge_explained, _run_case)

_CONVENTION = {
    None: "scores scaled by 1/sqrt(d_k), as in selfattn (scale=\"scaled\")",
    1.0: "raw dot products Q @ K.T, as the notebook's text asks (scale=\"raw\")",
}
_EITHER_NOTE = ("check accepts raw or 1/sqrt(d_k)-scaled scores (scale=\"either\", the default), "
                "used consistently; a teacher may pin one with scale=\"raw\" or scale=\"scaled\"")


class CheckReport:
    """The outcome of :func:`check`: one :class:`CaseResult` per case.

    ``bool(report)`` is True only if every case passed (notes do not count against it).
    ``str(report)`` is plain text; in Jupyter the report shows as a table.

    Attributes
    ----------
    name : str
        The function checked.
    scale : float or None
        The convention compared against: None for ``1/sqrt(d_k)``, 1.0 for raw dot products.
    either : bool
        Both conventions were accepted (``scale="either"``); ``scale`` is then the one
        recognised in the function's results (or the closest to them when it failed).
    results : list of CaseResult
        Every case, in order.
    failures : list of CaseResult
        The cases that failed.
    diagnoses : list of str
        What is wrong, in words: each distinct hint of the failed cases, most frequent first (the
        report's "What is wrong" list).
    mistakes : list of str
        Short keys of the known mistakes named in `diagnoses` (``"axis"``, ``"no_max"``, ...), to count
        them across a class.
    notes : list of str
        Remarks that do not count against the function (an ignored ``scale``, ...).

    :meth:`summary` gives the report's first line, :meth:`raise_if_failed` raises
    ``AssertionError`` with the whole report unless every case passed.
    """

    def __init__(self, name, fn_name, scale, results, notes=(), either=False):
        self.name = name
        self.fn_name = fn_name
        self.scale = scale
        self.either = either
        self.results = list(results)
        self.notes = list(notes)

    @property
    def convention(self):
        """``"raw"``, ``"scaled"``, a number, or None for a function without scores."""
        if self.name not in _SCALED:
            return None
        return {1.0: "raw", None: "scaled"}.get(self.scale, self.scale)

    @property
    def mistakes(self):
        """The keys of the known mistakes named in :attr:`diagnoses` (for counting them)."""
        return list(dict.fromkeys(k for d in self.diagnoses for k in getattr(d, "keys", ())))

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
        # (the report's own notes too: a one-line view, check_functions' dict, would hide that
        # the function is selfattn's own)
        shown = n_note + len(self.notes)
        extra = f" ({shown} note{'s' if shown != 1 else ''})" if shown else ""
        who = self.name if self.fn_name in (None, self.name) else f"{self.fn_name} as {self.name}"
        if n_fail:
            return f"check({who}): FAILED {n_fail} of {n} cases{extra}"
        return f"check({who}): passed {n - n_note} of {n} cases{extra}"

    def _convention(self):
        if self.name not in _SCALED:
            return None
        text = _CONVENTION.get(self.scale) or f"scores multiplied by scale={self.scale:g}"
        if not self.either:
            return text
        if not any(r.max_error is not None for r in self.results):
            # nothing to tell the conventions apart by (a tuple, an error, a wrong shape in
            # every case): naming the tie-break's, raw, would blame a convention never compared
            return f"neither recognised: no result of yours could be compared; {_EITHER_NOTE}"
        found = "recognised" if self.passed else "compared with the closest to yours"
        return f"{found}: {text}; {_EITHER_NOTE}"

    def _heading(self):
        """What the text and the HTML show above the cases: the convention (or None), the
        diagnoses, and each diagnosis's number."""
        diagnoses = self.diagnoses
        return self._convention(), diagnoses, {d: i for i, d in enumerate(diagnoses, 1)}

    def __str__(self):
        width = 100
        conv, diagnoses, number = self._heading()
        lines = [self.summary()] + ([f"Convention: {conv}."] if conv else [])
        lines += [f"Note: {note}" for note in self.notes]
        if diagnoses:
            lines.append("")
            lines.append("What is wrong:")
            for d in diagnoses:
                lines += textwrap.wrap(d, width, initial_indent=f"  [{number[d]}] ",
                                       subsequent_indent="      ")
        lines.append("")
        label_w = max(len(r.case.label) for r in self.results)
        for r in self.results:
            err = _error_text(r)
            err = f"max error {err}" if err else ""
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
        conv, diagnoses, number = self._heading()
        parts += [f"<p>Convention: {e(conv)}.</p>"] if conv else []
        parts += [f"<p><i>Note:</i> {e(note)}</p>" for note in self.notes]
        if diagnoses:
            parts.append("<p><b>What is wrong:</b></p><ol>")
            parts += [f"<li>{e(d)}</li>" for d in diagnoses]
            parts.append("</ol>")
        parts.append("<table><thead><tr><th style='text-align:left'>case</th>"
                     "<th style='text-align:left'>inputs</th><th>verdict</th><th>max error</th>"
                     "<th style='text-align:left'>details</th></tr></thead><tbody>")
        colors = {"pass": "#1a7f37", "FAIL": "#cf222e", "note": "#9a6700"}
        for r in self.results:
            err = _error_text(r)
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


@_errors_at_the_call
def check(fn, name=None, *, scale="either", seed=0, is_causal=False, window=None, gqa=False):
    """Run your function `fn` on a battery of cases and compare it with selfattn's.

    Parameters
    ----------
    fn : callable
        Your function, called with the notebook's positional arguments (e.g. ``fn(Q, K)``).
    name : str, optional
        Which function `fn` implements, one of :data:`NAMES`; by default ``fn.__name__``.
    scale : {"either", "raw", "scaled"} or float, optional
        The scores convention, for the functions that compute scores. ``"either"`` (the default)
        accepts raw dot products ``Q @ K.T`` (as the self-attention notebook's text asks) or
        scaled ones ``Q @ K.T / sqrt(d_k)`` (as selfattn computes), used consistently in every
        case, and the report says which one it recognised. ``"raw"`` (or ``1.0``) and
        ``"scaled"`` (or None) pin one convention, a number pins that factor: the other
        convention then fails, with a hint saying so. Ignored (with a note) for
        softmax_attention_weights and compute_attention_output.
    seed : int, optional
        Seed of the random inputs.
    is_causal, window : optional
        For your causal or windowed attention (the functions with scores): compared with
        selfattn's for the same ``is_causal`` (True, ``"top_left"``, ``"bottom_right"``) and
        ``window=(left, right)``, which are passed on to `fn` as keyword arguments (e.g.
        ``fn(Q, K, V, window=(2, 0))``; wrap `fn` in a lambda if it takes them otherwise).
    gqa : bool, optional
        Also require grouped-query and multi-query attention (scaled_dot_product_attention
        only): ``fn(Q, K, V)`` with K and V of fewer heads than Q (see :func:`cases`), and
        ``enable_gqa=True`` added where `fn` takes that keyword.

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
    return _check("check", fn, name, scale, seed, is_causal, window, gqa)


def _check(func, fn, name, scale, seed, is_causal, window, gqa):
    """check's work; `func` is the public function whose arguments a refusal names."""
    if not callable(fn):
        raise TypeError(f"{func}: fn must be a function, got {type(fn).__name__}")
    name = _check_name(func, name, fn)
    given_scale, scale = scale, _check_scale(func, scale, either=True)
    band = _band_kwargs(func, name, is_causal, window)
    gqa = _check_gqa(func, name, gqa)
    seed = _check_seed(func, seed)
    notes = _own_function_notes(fn, name)
    if name not in _SCALED:
        if scale not in (None, "either"):
            shown = repr(given_scale) if isinstance(given_scale, str) else f"{scale:g}"
            notes.append(f"scale={shown} is ignored: {name} does not compute scores.")
        scale = None
    if scale != "either":
        return _check_once(fn, name, scale, seed, notes, band=band, gqa=gqa)
    # Both conventions: the report that passes, else the one that explains the failures best,
    # then the one its results are closer to (where most cases raise, the one that ran is 7e-8
    # from one answer and 0.5 from the other), raw first on a tie, as the notebook asks for raw
    # dot products.
    reports = [_check_once(fn, name, s, seed, notes, either=True, band=band, gqa=gqa)
               for s in (1.0, None)]
    return min(reports, key=lambda r: (len(r.failures), _unexplained(r), _distance(r)))


def _own_function_notes(fn, name):
    """A note where `fn` is selfattn's own function or calls one (it passes by construction): a
    learner's notebook whose `from selfattn import *` came after their definitions checks
    selfattn's; a wrapper around selfattn's is selfattn's result."""
    from .load import _IMPORTED, _selfattn_used

    used = _selfattn_used(fn, set())
    if not used:
        return []
    if used != _IMPORTED:
        # as load_notebook and grade judge it: its grade would be selfattn's
        return [f"This {name} calls selfattn's {used}, so what it returns is selfattn's work "
                f"and passes by construction; a teacher's grader (load_notebook, python -m "
                f"selfattn grade) counts it as missing. Compute it with NumPy yourself, and "
                f"keep selfattn to check your function against."]
    return [f"This {name} is selfattn's own, not one you wrote, so it passes by construction. If "
            f"you wrote one, an import after your definition replaced it (from selfattn import * "
            f"or from selfattn import {name}): write import selfattn instead, and "
            f"selfattn.{name} where you want selfattn's."]


def _distance(report):
    """How far a report's results are from its expected outputs: the cases with inf or NaN
    where the expected has none, then the sum of the other cases' largest differences."""
    errors = [r.max_error for r in report.results if r.max_error is not None]
    return (sum(math.isinf(e) for e in errors), sum(e for e in errors if not math.isinf(e)))


def _unexplained(report):
    """How many failed cases name no mistake, or blame the scale."""
    return sum(any(k.startswith("scale_") or k in ("mixed_scale", "unknown") for h in r.hints
                   for k in getattr(h, "keys", ())) for r in report.failures)


def _check_once(fn, name, scale, seed, notes, either=False, band=None, gqa=False):
    results = [_run_case(fn, case, scale, either)
               for case in cases(name, scale=scale, seed=seed, gqa=gqa, **(band or {}))]
    _confirm_matches(results)
    _agree_on_mistakes(results)
    _merge_explained(results)
    _merge_combined(results)
    _batch_advice_after_plain(results)
    return CheckReport(name, getattr(fn, "__name__", None), scale, results, notes, either=either)


@_errors_at_the_call
def assert_implementation(fn, name=None, *, scale="either", seed=0, is_causal=False, window=None,
                          gqa=False):
    """Raise AssertionError, with the :func:`check` report as its message, unless `fn` is correct.

    For pytest graders: one line per function, and the student sees every case and every hint.
    The arguments are :func:`check`'s (``is_causal`` and ``window`` for a causal or windowed
    assignment).

    >>> import numpy as np
    >>> from selfattn.testing import assert_implementation
    >>> def compute_self_attention_scores(Q, K):
    ...     return Q @ K.T                       # the notebook's raw dot products
    >>> assert_implementation(compute_self_attention_scores)   # silent: correct
    """
    __tracebackhide__ = True
    report = _check("assert_implementation", fn, name, scale, seed, is_causal, window, gqa)
    if scale != "either":   # the grader's convention, which the student cannot pass
        _in_course_voice(report)
    report.raise_if_failed()


def _in_course_voice(report):
    """`report`'s scale hints as a grader with a pinned scale tells them (mistakes.py's
    _course_voice), in place; returns it."""
    for r in report.results:
        r.hints = [_course_voice(h) for h in r.hints]
    return report


def _error_text(r):
    """A case's largest error as its line shows it: "3.2e-05 at (1, 2)"; "inf or NaN" where the
    answer holds one and the expected result does not (or the other way round)."""
    if r.max_error is None:
        return ""
    err = "inf or NaN" if math.isinf(r.max_error) else f"{r.max_error:.3g}"
    if r.worst_index is not None and r.verdict != "pass":
        err += f" at {_fmt_index(r.worst_index)}"
    return err
