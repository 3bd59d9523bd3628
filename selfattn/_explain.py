"""explain: one self-attention layer, step by step, with every intermediate kept.

Each step is computed with selfattn's own functions where one exists (scores, softmax, output),
and with NumPy for the pieces inside the softmax (row max, exponentials, row sums) that selfattn
computes in one fused kernel. The trace shows itself as text (``str``) and, in Jupyter, as HTML.
"""
from __future__ import annotations

import html
import math
import textwrap
from typing import Any

import numpy as np

from . import _api
from ._kernels import _one_tier
from ._validate import _label_list, _narrowed, _public_call, _short_label, _visibility, _window

__all__ = ["explain", "AttentionTrace"]

_SHOW_MAX = 12  # rows and columns shown per matrix before eliding the middle


class AttentionTrace:
    """Every intermediate of one self-attention layer, as attributes.

    Attributes
    ----------
    X, W_q, W_k, W_v : ndarray
        The inputs, as arrays in the compute dtype (float32 for float16 inputs, as the layer
        computes them; float64 for integers).
    tokens : list of str or None
    scale : float
        The factor applied to the dot products (``1/sqrt(d_k)`` unless given).
    mask, is_causal, window :
        As given.
    Q, K, V : ndarray, shapes (n, d_k), (n, d_k), (n, d_v)
        ``X @ W_q``, ``X @ W_k``, ``X @ W_v``.
    scores : ndarray, shape (n, n)
        ``Q @ K.T * scale``, with ``-inf`` where the mask, causality or the window hides a key.
    row_max : ndarray, shape (n, 1)
        Each row's largest score, kept as a column so that ``scores - row_max`` works row by row.
    exponentials : ndarray, shape (n, n)
        ``exp(scores - row_max)``: every entry in (0, 1], the row's largest exactly 1.
    row_sums : ndarray, shape (n, 1)
        Each row's sum of exponentials.
    weights : ndarray, shape (n, n)
        ``exponentials / row_sums``: each row sums to 1 (all zeros for a fully masked row).
    output : ndarray, shape (n, d_v)
        ``weights @ V``, in the layer's result dtype (float16 for float16 inputs; every other
        attribute is in the compute dtype).
    """

    # declared for type checkers (the attributes come in as keywords): tr.weights is an array
    X: np.ndarray
    W_q: np.ndarray
    W_k: np.ndarray
    W_v: np.ndarray
    tokens: list[str] | None
    scale: float
    mask: Any
    is_causal: bool | str
    window: Any
    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    scores: np.ndarray
    row_max: np.ndarray
    exponentials: np.ndarray
    row_sums: np.ndarray
    weights: np.ndarray
    output: np.ndarray

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    @property
    def n(self):
        return self.X.shape[0]

    def steps(self) -> list[tuple[str, str, str, list[tuple[str, np.ndarray]]]]:
        """(title, formula, explanation, [(name, array)]) for each step, in order."""
        d_k = self.Q.shape[1]
        if math.isclose(self.scale, 1 / math.sqrt(d_k)) if d_k else False:
            scale_text = f"1/sqrt(d_k) = 1/sqrt({d_k}) = {self.scale:.4g}"
        else:
            scale_text = f"{self.scale:.4g}"
        hidden = []
        visibility = _visibility("explain", self.is_causal, self.window)
        if visibility is not None and self.window is None:
            hidden.append("is_causal hides the keys after each query")
        elif visibility is not None:
            _, left, right = visibility
            first = "" if left is None else f"i - {left}" if left else "i"
            last = "" if right is None else f"i + {right}" if right else "i"
            seen = (f"{first} <= j <= {last}" if first and last else
                    f"j >= {first}" if first else f"j <= {last}")
            hidden.append(f"the band (window={_window('explain', self.window)}"
                          + (f", is_causal={self.is_causal!r}" if self.is_causal else "")
                          + f") hides from query i every key j but {seen}")
        added = ""
        if self.mask is not None and np.asarray(self.mask).dtype == bool:
            hidden.append("the mask hides the keys where it is False")
        elif self.mask is not None:
            # a float mask is added: its -inf hide keys, -1e9 leaves a finite score, ALiBi hides
            # nothing, so "those scores are -inf" would be untrue of it
            added = "; the mask's values are added to the scores (a -inf hides a key)"
        mask_text = ("; " + " and ".join(hidden) + ": those scores are -inf" if hidden
                     else "") + added
        blind = bool((self.row_max == -np.inf).any())  # rows whose every key is hidden
        broken = self._nan_rows_text()
        return [
            ("1. Project the tokens", "Q = X @ W_q,  K = X @ W_k,  V = X @ W_v",
             "Each token's row of X becomes a query (what it looks for), a key (what it offers) "
             "and a value (what it passes on).",
             [("Q", self.Q), ("K", self.K), ("V", self.V)]),
            ("2. Scores", f"scores = Q @ K.T * scale,  scale = {scale_text}",
             "Row i compares query i with every key: a large score means a good match"
             + mask_text + ".",
             [("scores", self.scores)]),
            ("3. Row maximum", "row_max = scores.max(axis=-1, keepdims=True)",
             "Subtracting each row's maximum keeps exp from overflowing; softmax does not change.",
             [("row_max", self.row_max)]),
            ("4. Exponentials", "exponentials = np.exp(scores - row_max)",
             "Every entry is now between 0 and 1: the row's best match is exactly 1"
             + (", a hidden key (score -inf) exactly 0" if (self.scores == -np.inf).any()
                else "")
             + ("; a row whose keys are all hidden (row_max -inf) is shifted by 0 instead, so "
                "all its entries are 0" if blind else "") + broken + ".",
             [("exponentials", self.exponentials)]),
            ("5. Row sums", "row_sums = exponentials.sum(axis=-1, keepdims=True)",
             "One sum per query.",
             [("row_sums", self.row_sums)]),
            ("6. Weights (softmax)", "weights = exponentials / row_sums",
             "Each row is a probability distribution over the keys: >= 0, summing to 1"
             + ("; a row that sees no key gets weights 0 (0 / 0 is not computed)" if blind
                else "") + broken + ".",
             [("weights", self.weights)]),
            ("7. Output", "output = weights @ V",
             "Row i is query i's weighted average of the value rows"
             + ("; 0 for a row that sees no key" if blind else "") + ".",
             [("output", self.output)]),
        ]

    def _nan_rows_text(self):
        """" (but not in rows ..., which hold NaN: <why>)" for the steps that promise weights in
        [0, 1] summing to 1, where NaN made rows NaN from the scores on; "" when none did."""
        nan_rows = np.flatnonzero(np.isnan(self.weights).any(axis=-1)) if self.weights.size else []
        if not len(nan_rows):
            return ""
        many = len(nan_rows) > 1
        rows = ", ".join(str(int(i)) for i in nan_rows[:8]) + (", ..." if len(nan_rows) > 8 else "")
        causes = [name for name, a in (("X", self.X), ("W_q", self.W_q), ("W_k", self.W_k),
                                        ("W_v", self.W_v)) if not np.isfinite(a).all()]
        why = []
        if causes:
            why.append(f"NaN or inf in {', '.join(causes[:-1]) + ' or ' if len(causes) > 1 else ''}"
                       f"{causes[-1]}")
        mask = None if self.mask is None else np.asarray(self.mask)
        if mask is not None and mask.dtype.kind == "f" and (np.isnan(mask) | (mask == np.inf)).any():
            # (1 - allowed) * -np.inf is the usual way there: 0 * -inf is NaN
            why.append("NaN or +inf in the mask (0 * -inf is NaN: build a float mask with "
                       "np.where(allowed, 0.0, -np.inf))")
        if not why:
            why.append("scores too large for the dtype (inf)")
        return (f" (but not in row{'s' if many else ''} {rows}, which hold{'' if many else 's'} "
                f"NaN: {' and '.join(why)} made {'their' if many else 'its'} scores NaN or inf, "
                f"and every step after that gives NaN)")

    def _labels(self, name, arr):
        """(row labels, column labels) for a named matrix."""
        toks = self.tokens
        rows = toks if toks is not None and arr.shape[0] == self.n else None
        cols = toks if toks is not None and name in ("scores", "exponentials", "weights") else None
        return rows, cols

    def _sizes(self):
        return (f"n={self.n} token{'' if self.n == 1 else 's'}, d_model={self.X.shape[1]}, "
                f"d_k={self.Q.shape[1]}, d_v={self.V.shape[1]}")

    def __str__(self):
        lines = [f"Self-attention, step by step: {self._sizes()}"]
        if self.tokens is not None:
            lines += textwrap.wrap("tokens: " + " ".join(self.tokens), 100,
                                   subsequent_indent="        ")
        for title, formula, why, arrays in self.steps():
            lines += ["", title, "  " + formula]
            lines += textwrap.wrap(why, 96, initial_indent="  ", subsequent_indent="  ")
            for name, arr in arrays:
                lines.append(f"  {name} {arr.shape} =")
                rows, cols = self._labels(name, arr)
                text = _text_matrix(arr, rows, cols)
                lines += ["    " + row for row in text.splitlines()]
        return "\n".join(lines)

    def __repr__(self):
        return (f"<AttentionTrace n={self.n} d_model={self.X.shape[1]} d_k={self.Q.shape[1]} "
                f"d_v={self.V.shape[1]} scale={self.scale:.4g}>")

    def _repr_html_(self):
        e = html.escape
        parts = ['<div class="selfattn-explain">',
                 f"<p><b>Self-attention, step by step</b>: {e(self._sizes())}</p>"]
        for title, formula, why, arrays in self.steps():
            parts.append(f"<h4>{e(title)}</h4><p><code>{e(formula)}</code><br>{e(why)}</p>")
            parts.append('<div style="display:flex;gap:1.5em;flex-wrap:wrap">')
            for name, arr in arrays:
                rows, cols = self._labels(name, arr)
                table = _html_matrix(arr, rows, cols)
                parts.append(f"<div><i>{e(name)}</i> {arr.shape}{table}</div>")
            parts.append("</div>")
        parts.append("</div>")
        return "".join(parts)


def _shown(n):
    """Indices to show out of n, with None marking an elision."""
    if n <= _SHOW_MAX:
        return list(range(n))
    half = _SHOW_MAX // 2
    return list(range(half)) + [None] + list(range(n - half, n))


def _text_matrix(arr, rows=None, cols=None):
    """The matrix as a table with the tokens as row labels (and column labels, for the (n, n)
    matrices), or the row indices without tokens, the middle elided past 12 rows or columns as
    in the HTML form."""
    rows = [str(i) for i in range(arr.shape[0])] if rows is None else list(map(_short_label, rows))
    shown_cols = _shown(arr.shape[1])
    cells = [["⋮" if i is None else ("…" if j is None else _num(arr[i, j])) for j in shown_cols]
             for i in _shown(arr.shape[0])]
    heads = None if cols is None else ["…" if j is None else _short_label(cols[j])
                                       for j in shown_cols]
    width = max((len(c) for row in cells + ([heads] if heads else []) for c in row), default=1)
    label_w = max(len(r) for r in rows)
    out = []
    if heads is not None:
        out.append(" " * label_w + "  " + " ".join(f"{h:>{width}}" for h in heads))
    for i, row in zip(_shown(arr.shape[0]), cells):
        label = "⋮" if i is None else rows[i]
        out.append((f"{label:>{label_w}}  " + " ".join(f"{c:>{width}}" for c in row)).rstrip())
    return "\n".join(out)


def _html_matrix(arr, rows=None, cols=None):
    """The HTML form of _text_matrix: the same labels (row indices without tokens, and column
    indices where the columns are elided, so that the values shown can be placed)."""
    e = html.escape
    rows = [str(i) for i in range(arr.shape[0])] if rows is None else list(map(_short_label, rows))
    if cols is not None:
        cols = list(map(_short_label, cols))
    elif arr.shape[1] > _SHOW_MAX:
        cols = [str(j) for j in range(arr.shape[1])]
    out = ["<table>"]
    if cols is not None:
        heads = ("<th>…</th>" if j is None else f"<th>{e(cols[j])}</th>" for j in _shown(arr.shape[1]))
        out.append("<tr><th></th>" + "".join(heads) + "</tr>")
    for i in _shown(arr.shape[0]):
        head = ""
        if rows is not None:
            head = "<th>…</th>" if i is None else f"<th>{e(rows[i])}</th>"
        if i is None:
            out.append(f"<tr>{head}" + "<td>⋮</td>" * len(_shown(arr.shape[1])) + "</tr>")
            continue
        cells = "".join("<td>…</td>" if j is None else f"<td>{_num(arr[i, j])}</td>"
                        for j in _shown(arr.shape[1]))
        out.append(f"<tr>{head}{cells}</tr>")
    out.append("</table>")
    return "".join(out)


def _num(x):
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


@_public_call
@_one_tier
def explain(X, W_q, W_k, W_v, *, tokens=None, scale=None, mask=None, is_causal=False,
            window=None):
    """Run one self-attention layer and keep every intermediate, to look at step by step.

    The same computation as :func:`selfattn.self_attention_layer` (for the arguments the two
    share: X, the weights, ``scale``, ``mask``, ``is_causal`` and ``window``; ``.output`` is its
    result, to rounding: the steps run one by one), but the returned trace holds ``Q, K, V,
    scores, row_max, exponentials, row_sums, weights, output`` as attributes, and shows them step by step: in Jupyter as HTML,
    elsewhere with ``print(trace)``.

    Parameters
    ----------
    X : array_like, shape (n, d_model)
        One sequence of token embeddings (for a batch, explain one example at a time).
    W_q, W_k : array_like, shape (d_model, d_k)
    W_v : array_like, shape (d_model, d_v)
    tokens : sequence of str, optional
        A label per token, used as row and column headers in the text and the HTML form.
    scale, mask, is_causal, window :
        As in :func:`selfattn.self_attention_layer`; scale defaults to ``1/sqrt(d_k)``. A
        window (a band of keys around each query) is described in the scores' step.

    Returns
    -------
    AttentionTrace
        With ``Q, K, V`` of shape (n, d_k), (n, d_k), (n, d_v), ``scores``, ``exponentials``
        and ``weights`` of shape (n, n), ``row_max`` and ``row_sums`` of shape (n, 1) and
        ``output`` of shape (n, d_v).

    Raises
    ------
    ValueError
        For inputs that are not 2-D, shapes that do not fit (the messages of
        :func:`selfattn.self_attention_layer`, naming ``explain``), no tokens at all, or a wrong
        number of token labels.
    TypeError
        For complex, object or string inputs, or `tokens` given as one string.

    Examples
    --------
    >>> import numpy as np, selfattn
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> t = selfattn.explain(X, np.eye(2), np.eye(2), np.eye(2), tokens=["a", "b", "c"])
    >>> t.weights.sum(axis=-1)
    array([1., 1., 1.])
    >>> np.allclose(t.output, selfattn.self_attention_layer(X, np.eye(2), np.eye(2), np.eye(2)))
    True
    """
    func = "explain"
    try:
        # Validates every argument with self_attention_layer's messages, and is the cross-check.
        output = _api.self_attention_layer(X, W_q, W_k, W_v, scale=scale, mask=mask,
                                           is_causal=is_causal, window=window)
    except (ValueError, TypeError) as exc:
        raise type(exc)(str(exc).replace("self_attention_layer:", f"{func}:", 1)) from None
    X, W_q, W_k, W_v = (np.asarray(a) for a in (X, W_q, W_k, W_v))
    for name, a in (("X", X), ("W_q", W_q), ("W_k", W_k), ("W_v", W_v)):
        if a.ndim != 2:
            raise ValueError(
                f"{func}: {name} must be 2-D (explain shows one sequence), got {name}.shape={a.shape}; "
                f"for a batch, explain one example, e.g. {name}[0]"
            )
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim > 2:
            if any(d != 1 for d in mask.shape[:-2]):
                raise ValueError(
                    f"{func}: mask has shape {mask.shape}, with batch dimensions "
                    f"{mask.shape[:-2]}; explain shows one sequence: pass its (n, n) mask, "
                    f"e.g. mask[0]")
            mask = mask.reshape(mask.shape[-2:])  # padding_mask's (1, 1, n) and the like
    result = output.dtype
    # the steps run in the layer's compute dtype: float16 inputs in float32, as its kernels do
    # (scores of 147456 from float16 inputs were inf in float16, and the weights NaN, where the
    # layer's own result is finite), and only the output is narrowed to the result's dtype
    dtype = np.dtype(np.float32) if result == np.float16 else result
    n = X.shape[0]
    if n == 0:
        raise ValueError(f"{func}: X has 0 tokens (X.shape={X.shape}); explain needs at least "
                         f"one token (one row of X) to show")
    tokens = _label_list(func, "tokens", tokens, n, "token (row of X)")
    if tokens is not None:
        if len(tokens) != n:
            raise ValueError(f"{func}: tokens has {len(tokens)} labels but X has {n} tokens (rows)")
    X, W_q, W_k, W_v = (a.astype(dtype) for a in (X, W_q, W_k, W_v))
    d_k = W_q.shape[1]
    if scale is not None:
        scale_value = float(scale)
    else:
        scale_value = 1.0 / math.sqrt(d_k) if d_k else 1.0

    # inf and NaN follow the layer's rules, silently as its kernels do (NumPy would warn of inf
    # times 0 in the products and inf - inf in the shift)
    with np.errstate(invalid="ignore", over="ignore"):
        Q, K, V = X @ W_q, X @ W_k, X @ W_v
    scores = _api.compute_self_attention_scores(Q, K, scale=scale_value, mask=mask,
                                                is_causal=is_causal, window=window)
    row_max = scores.max(axis=-1, keepdims=True)
    # A fully masked row has max -inf; shifting by 0 there gives exp(-inf) = 0, not NaN (as
    # softmax_attention_weights does). A NaN maximum stays: its row is NaN, as the formula says.
    shift = np.where(row_max == -np.inf, 0, row_max).astype(scores.dtype)
    with np.errstate(under="ignore", invalid="ignore", over="ignore"):
        exponentials = np.exp(scores - shift)
        row_sums = exponentials.sum(axis=-1, keepdims=True)
    weights_steps = _api.softmax_attention_weights(scores)
    output_steps = _api.compute_attention_output(weights_steps, V)
    if output_steps.dtype != result:
        output_steps = _narrowed(output_steps, result)
    return AttentionTrace(
        X=X, W_q=W_q, W_k=W_k, W_v=W_v, tokens=tokens, scale=scale_value, mask=mask,
        is_causal=is_causal if isinstance(is_causal, str) else bool(is_causal), window=window,
        Q=Q, K=K, V=V, scores=scores, row_max=row_max,
        exponentials=exponentials, row_sums=row_sums, weights=weights_steps, output=output_steps,
    )
