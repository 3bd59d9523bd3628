"""The report of :func:`check`, its entry point, and the one-line pytest assertion."""
from __future__ import annotations

import html
import textwrap

from .cases import _SCALED, _check_name, _check_scale, cases
from .compare import _fmt_index
from .mistakes import _HINTS
from .run import _merge_combined, _merge_explained, _run_case

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
