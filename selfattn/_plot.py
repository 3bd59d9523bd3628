"""plot_attention: the attention weights as a heatmap (matplotlib, the `plot` extra).

matplotlib is imported when the function is called, never by ``import selfattn``.
"""
from __future__ import annotations

import warnings

import numpy as np

from ._validate import _integer

__all__ = ["plot_attention"]

_ANNOTATE_MAX = 20  # annotate=None writes the values in the cells up to this many rows and columns
_ANNOTATE_LARGE_FONT = 12  # up to this many, in the larger font
_SMALL_WEIGHTS_FROM = 16  # from this many keys, the colours run up to the largest weight, not 1


def _import_pyplot():
    try:
        import matplotlib
        import matplotlib.colors  # noqa: F401  (imported for its side effect: a complete matplotlib)
    except ImportError as exc:
        raise ImportError(
            "plot_attention needs matplotlib, which is not installed. Install it with "
            "pip install matplotlib (or, in selfattn's source folder, pip install \".[plot]\")."
        ) from exc
    return matplotlib


def _labels(func, name, tokens, count, what, whats):
    if tokens is None:
        return None
    if isinstance(tokens, str):
        raise TypeError(
            f"{func}: {name} must be a list of {count} labels, one per {what}, not a single string; "
            f"for words use {name}=sentence.split()"
        )
    labels = [str(t) for t in tokens]
    if len(labels) != count:
        raise ValueError(
            f"{func}: {name} has {len(labels)} labels but the weights have {count} {whats} "
            f"(one label per {what})"
        )
    return labels


def plot_attention(weights, tokens=None, *, key_tokens=None, ax=None, annotate=None, head=None,
                   vmin=None, vmax=None):
    """Draw attention weights as a heatmap: queries as rows, keys as columns.

    Parameters
    ----------
    weights : array_like, shape (n_q, n_k) or (..., H, n_q, n_k)
        Attention weights, e.g. from ``self_attention_layer(..., return_weights=True)``. Leading
        dimensions of size 1 are ignored; with several heads, choose one with `head`.
    tokens : sequence of str, optional
        Labels of the queries (rows). They also label the keys (columns) unless `key_tokens` is
        given, which requires ``n_q == n_k`` (self-attention).
    key_tokens : sequence of str, optional
        Labels of the keys (columns), for cross-attention.
    ax : matplotlib Axes, optional
        Where to draw; by default a new figure.
    annotate : bool, optional
        Write each weight in its cell (``0.42``). Default: when there are at most 20 rows and
        20 columns (in a smaller font from 13).
    head : int, optional
        Which head to draw when `weights` has a head dimension.
    vmin, vmax : float, optional
        The weights drawn in the darkest and the brightest colour. Default: 0 and 1, except
        that from 16 keys on, where every weight is small (a uniform row is 1/n_k), vmax is the
        largest weight, so that the structure shows; and where a weight is above 1 (and none
        below 0: weights after dropout), vmax is the largest.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on, with a colorbar.

    Warns
    -----
    UserWarning
        For values outside [0, 1] (scores rather than weights?; values above 1 and none below 0,
        as weights after dropout have, are drawn up to the largest rather than clipped) and for
        rows that do not sum to 1 (a softmax over the wrong axis?), since each row of attention
        weights sums to 1.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install matplotlib``).
    ValueError
        For weights that are not a matrix (or a stack of heads), a head that does not exist, or
        token labels whose count does not match.

    Examples
    --------
    >>> import numpy as np, selfattn
    >>> X = np.random.default_rng(0).normal(size=(3, 4))
    >>> _, w = selfattn.self_attention_layer(X, *np.eye(4)[None].repeat(3, 0), return_weights=True)
    >>> ax = selfattn.plot_attention(w, ["the", "cat", "sat"])   # doctest: +SKIP
    """
    func = "plot_attention"
    matplotlib = _import_pyplot()
    w = np.asarray(weights)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{func}: weights must be real numbers, got dtype {w.dtype}")
    if w.ndim < 2:
        raise ValueError(
            f"{func}: weights must be a matrix (n_q, n_k), got shape {w.shape}"
            + ("; for one query use weights[None, :]" if w.ndim == 1 else "")
        )
    title = None
    if w.ndim == 2:
        if head is not None:
            raise ValueError(f"{func}: head={head!r} was given but weights {w.shape} has no head "
                             f"dimension; heads are the dimension before (n_q, n_k)")
    else:
        lead = w.shape[:-3]
        if any(d != 1 for d in lead):
            raise ValueError(
                f"{func}: weights has shape {w.shape}: batch dimensions {lead} before the heads; "
                f"plot one example at a time, e.g. weights[0]"
            )
        stack = w.reshape(w.shape[-3:])
        n_heads = stack.shape[0]
        if head is None:
            if n_heads != 1:
                raise ValueError(
                    f"{func}: weights holds {n_heads} heads (shape {w.shape}); choose one with "
                    f"head=0 ... head={n_heads - 1}"
                )
            head = 0
        head = _integer(func, "head", head)
        if not -n_heads <= head < n_heads:
            raise ValueError(f"{func}: head={head} does not exist; weights has {n_heads} heads "
                             f"(0 ... {n_heads - 1})")
        head %= n_heads
        w = stack[head]
        if n_heads > 1:
            title = f"head {head}"
    n_q, n_k = w.shape
    if n_q == 0 or n_k == 0:
        raise ValueError(f"{func}: weights {w.shape} is empty; there is nothing to draw")
    # labels read once (a generator is used up by its first reading)
    tokens, key_tokens = (t if t is None or isinstance(t, str) else list(t)
                          for t in (tokens, key_tokens))
    if key_tokens is None and tokens is not None and n_q != n_k:
        raise ValueError(
            f"{func}: tokens has {len(tokens)} labels for the {n_q} queries, but there are {n_k} "
            f"keys; pass key_tokens= with {n_k} labels for the keys (columns)"
        )
    row_labels = _labels(func, "tokens", tokens, n_q, "query", "queries (rows)")
    col_labels = _labels(func, "key_tokens", key_tokens if key_tokens is not None else tokens,
                         n_k, "key", "keys (columns)")
    if annotate is None:
        annotate = n_q <= _ANNOTATE_MAX and n_k <= _ANNOTATE_MAX
    w = w.astype(np.float64)
    finite = w[np.isfinite(w)]
    above_one = False
    if finite.size and finite.min() < -1e-6:
        warnings.warn(
            f"{func}: some values lie outside [0, 1] (from {finite.min():.3g} to "
            f"{finite.max():.3g}); are these scores rather than weights? Softmax them with "
            f"selfattn.softmax_attention_weights first. The colours are clipped to [0, 1].",
            UserWarning, stacklevel=2)
    elif finite.size and finite.max() > 1 + 1e-6:
        # none negative: weights after dropout (kept ones are divided by 1 - p) look like this
        above_one = True
        warnings.warn(
            f"{func}: some values are above 1 (up to {finite.max():.3g}), which no softmax "
            f"weight is; weights after dropout are (the kept ones are divided by 1 - dropout_p), "
            f"scores may be (softmax them with selfattn.softmax_attention_weights first). The "
            f"colours go up to the largest value.", UserWarning, stacklevel=2)
    else:
        _warn_rows_not_one(func, w)
    if vmin is None:
        vmin = 0.0
    if vmax is None:
        vmax = 1.0
        if above_one or (n_k >= _SMALL_WEIGHTS_FROM and finite.size
                         and vmin < finite.max() < 1.0):
            vmax = float(finite.max())

    if ax is None:
        import matplotlib.pyplot as plt
        size = (max(3.0, 0.55 * n_k + 2.0), max(2.5, 0.5 * n_q + 1.2))
        _, ax = plt.subplots(figsize=size, constrained_layout=True)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(w), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    # Positions and labels are set together, so that they cannot drift apart.
    ax.set_yticks(np.arange(n_q), labels=row_labels if row_labels is not None else np.arange(n_q))
    ax.set_xticks(np.arange(n_k), labels=col_labels if col_labels is not None else np.arange(n_k))
    if col_labels is not None:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_ylabel("query")
    ax.set_xlabel("key")
    if title:
        ax.set_title(title)
    if annotate:
        fontsize = 8 if max(n_q, n_k) <= _ANNOTATE_LARGE_FONT else 6
        bright = vmin + 0.6 * (vmax - vmin)  # viridis is light from here on: black text
        for i in range(n_q):
            for j in range(n_k):
                v = w[i, j]
                text = f"{v:.2f}" if np.isfinite(v) else str(v)
                color = "black" if np.isfinite(v) and v > bright else "white"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    label = "attention weight" if vmax == 1.0 else f"attention weight (colours up to {vmax:.3g})"
    ax.figure.colorbar(image, ax=ax, label=label)
    return ax


def _warn_rows_not_one(func, w):
    """Warn when rows of weights do not sum to 1 (all-zero rows are fully masked queries)."""
    with np.errstate(all="ignore"):
        sums = np.where(np.isfinite(w), w, 0.0).sum(axis=1)
    bad = ~(np.isclose(sums, 1.0, rtol=1e-3, atol=1e-3) | (sums == 0))
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    cols = np.where(np.isfinite(w), w, 0.0).sum(axis=0)
    why = (" Its columns sum to 1: a softmax over axis 0 instead of each row (axis=-1)?"
           if np.allclose(cols, 1.0, rtol=1e-3, atol=1e-3) else "")
    warnings.warn(
        f"{func}: {int(bad.sum())} of {w.shape[0]} rows of the weights do not sum to 1 (row {i} "
        f"sums to {sums[i]:.3g}); each query's weights over the keys should.{why}",
        UserWarning, stacklevel=3)
