"""plot_attention: the attention weights as a heatmap (matplotlib, the `plot` extra).

matplotlib is imported when the function is called, never by ``import selfattn``.
"""
from __future__ import annotations

import warnings

import numpy as np

from ._validate import (_flag, _integer, _label_list, _packaged_number, _public_call,
                        _public_caller, _read_array, _refuse_masked, _short_label)

__all__ = ["plot_attention"]

_ANNOTATE_MAX = 20  # annotate=None writes the values in the cells up to this many rows and columns
_ANNOTATE_LARGE_FONT = 12  # up to this many, in the larger font
_SMALL_WEIGHTS_FROM = 16  # from this many keys, the colours run up to the largest weight, not 1
_TICKS_MAX = 40  # more rows or columns than this: every k-th one labelled, so labels stay legible
_FIGURE_MAX = (12.0, 10.0)  # the default figure's largest width and height, inches


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


def _labels(func, name, labels, count, what, whats):
    """The labels (_label_list's) of one side, checked against its `count` of rows or columns."""
    if labels is None:
        return None
    if len(labels) != count:
        raise ValueError(
            f"{func}: {name} has {len(labels)} labels but the weights have {count} {whats} "
            f"(one label per {what})"
        )
    return labels


@_public_call(float32_helps=False)
def plot_attention(weights, tokens=None, *, key_tokens=None, ax=None, annotate=None, head=None,
                   vmin=None, vmax=None, mask=None):
    """Draw attention weights as a heatmap: queries as rows, keys as columns.

    Parameters
    ----------
    weights : array_like, shape (n_q, n_k) or (..., H, n_q, n_k)
        Attention weights, e.g. from ``self_attention_layer(..., return_weights=True)``. Leading
        dimensions of size 1 are ignored; with several heads, choose one with `head`. A boolean
        array is drawn as a mask (``causal_mask(n)``, ``window_mask(...)``): the keys each query
        may attend to (True) coloured, the others white.
    tokens : sequence of str, optional
        Labels of the queries (rows). They also label the keys (columns) unless `key_tokens` is
        given, which requires ``n_q == n_k`` (self-attention).
    key_tokens : sequence of str, optional
        Labels of the keys (columns), for cross-attention.
    ax : matplotlib Axes, optional
        Where to draw; by default a new figure. For heatmaps side by side, make their figure
        with ``layout="constrained"`` (``fig, axes = plt.subplots(1, 2, figsize=(10, 4),
        layout="constrained")``) or call ``fig.tight_layout()`` after drawing: without either,
        matplotlib lets one heatmap's colorbar label run into the next one's labels.
    annotate : bool, optional
        Write each weight in its cell (``0.42``). Default: when there are at most 20 rows and
        20 columns (in a smaller font from 13).
    head : int, optional
        Which head to draw when `weights` has a head dimension.
    vmin, vmax : float, optional
        The weights drawn in the darkest and the brightest colour. Default: 0 and 1, except
        that from 16 keys on, where every weight is small (a uniform row is 1/n_k), vmax is the
        largest weight, so that the structure shows (unless all weights are equal); and where a weight is above 1 (and none
        below 0: weights after dropout), vmax is the largest.
    mask : array_like of bool or float, optional
        The mask the weights were computed with, broadcastable to `weights`: boolean (True: may
        attend) or float (added to the scores: -inf, or a large negative number that left a
        weight of exactly 0, hides the key). The keys it hides are drawn white, without a
        number, so that they are not mistaken for visible keys whose weight is close to 0.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on, with a colorbar.

    Warns
    -----
    UserWarning
        For NaN or inf weights (drawn grey: a softmax that overflowed?), for values outside
        [0, 1] (scores rather than weights?; values above 1 and none below 0,
        as weights after dropout have, are drawn up to the largest rather than clipped), for
        rows that do not sum to 1 (a softmax over the wrong axis?), since each row of attention
        weights sums to 1, and for a weight on a key that `mask` hides (the mask applied after
        the softmax rather than to the scores?).

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install matplotlib``).
    ValueError
        For weights that are not a matrix (or a stack of heads), a head that does not exist,
        token labels whose count does not match, or a mask that does not broadcast to the
        weights.

    Notes
    -----
    The default figure grows with the number of tokens up to 12 x 10 inches; from 41 rows or
    columns on, every k-th one is labelled.

    Examples
    --------
    >>> import numpy as np, selfattn
    >>> X = np.random.default_rng(0).normal(size=(3, 4))
    >>> _, w = selfattn.self_attention_layer(X, *np.eye(4)[None].repeat(3, 0), return_weights=True)
    >>> ax = selfattn.plot_attention(w, ["the", "cat", "sat"])   # doctest: +SKIP
    >>> ax = selfattn.plot_attention(selfattn.causal_mask(3), ["a", "b", "c"])  # doctest: +SKIP
    >>> import matplotlib.pyplot as plt                                 # doctest: +SKIP
    >>> fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")  # doctest: +SKIP
    >>> ax = selfattn.plot_attention(w, ["the", "cat", "sat"], ax=axes[0])   # doctest: +SKIP
    >>> ax = selfattn.plot_attention(selfattn.causal_mask(3), ["the", "cat", "sat"],
    ...                              ax=axes[1])                        # doctest: +SKIP
    """
    func = "plot_attention"
    matplotlib = _import_pyplot()
    _refuse_masked(func, "weights", weights)
    w = _read_array(func, "weights", weights)
    if _packaged_number(w.dtype):   # JAX's bfloat16 weights: float32 shows each of them
        w = w.astype(np.float32)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{func}: weights must be real numbers, got dtype {w.dtype}")
    if w.ndim < 2:
        raise ValueError(
            f"{func}: weights must be a matrix (n_q, n_k), got shape {w.shape}"
            + ("; for one query use weights[None, :]" if w.ndim == 1 else "")
        )
    visible = _visible(func, mask, w.shape)
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
        if visible is not None:
            visible = visible.reshape(stack.shape)
        n_heads = stack.shape[0]
        if head is None:
            if n_heads != 1:
                raise ValueError(
                    f"{func}: weights holds {n_heads} heads, or the sequences of a batch (shape "
                    f"{w.shape}); choose one with head=0 ... head={n_heads - 1}"
                )
            head = 0
        head = _integer(func, "head", head)
        if not -n_heads <= head < n_heads:
            raise ValueError(f"{func}: head={head} does not exist; weights has {n_heads} heads "
                             f"(0 ... {n_heads - 1})")
        head %= n_heads
        w = stack[head]
        if visible is not None:
            visible = visible[head]
        if n_heads > 1:
            title = f"head {head}"
    n_q, n_k = w.shape
    if n_q == 0 or n_k == 0:
        raise ValueError(f"{func}: weights {w.shape} is empty; there is nothing to draw")
    tokens = _label_list(func, "tokens", tokens, n_q, "query")
    key_tokens = _label_list(func, "key_tokens", key_tokens, n_k, "key")
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
    else:   # (annotate="no" was truthy, and wrote the numbers)
        annotate = _flag(func, "annotate", annotate)
    if ax is None:
        import matplotlib.pyplot as plt
        size = (min(max(3.0, 0.55 * n_k + 2.0), _FIGURE_MAX[0]),
                min(max(2.5, 0.5 * n_q + 1.2), _FIGURE_MAX[1]))
        _, ax = plt.subplots(figsize=size, constrained_layout=True)
    _ticks(ax, row_labels, col_labels, n_q, n_k)
    ax.set_ylabel("query")
    ax.set_xlabel("key")
    if w.dtype == bool:
        if visible is not None:
            w = w & ~_hidden(visible, w)
        _draw_mask(matplotlib, ax, w, title)
        return ax
    if title:
        ax.set_title(title)
    w = w.astype(np.float64)
    finite = w[np.isfinite(w)]
    above_one = False
    hidden = None if visible is None else _hidden(visible, w)
    broken = ~np.isfinite(w)
    if broken.any():
        i, j = (int(x) for x in np.argwhere(broken)[0])
        count = int(broken.sum())
        rows = broken.any(axis=1)
        if hidden is not None and hidden[rows].all():
            # every key of those rows hidden: the max subtracted is -inf, and -inf - -inf is NaN
            # (drawn white below, as the hidden keys are)
            why = (f"drawn white, as hidden keys. {'Those rows see' if rows.sum() > 1 else 'That row sees'} "
                   f"no key (the mask hides all of them), and a softmax over nothing but -inf "
                   f"is 0 / 0; selfattn gives such a row weights of 0 instead.")
        else:
            why = ("drawn grey. A softmax that does not subtract each row's maximum before "
                   "np.exp overflows on large scores (inf / inf is nan): np.exp(s - "
                   "s.max(axis=-1, keepdims=True)). NaN or inf in the inputs gives them too.")
            ax.set_xlabel("key (grey: NaN or inf)")
        warnings.warn(
            f"{func}: {count} of the weights {'are' if count > 1 else 'is'} NaN or inf (query "
            f"{i}, key {j}: {w[i, j]}), which no softmax weight is; {why}",
            UserWarning, stacklevel=_public_caller()[1])
    if finite.size and finite.min() < -1e-6:
        warnings.warn(
            f"{func}: some values lie outside [0, 1] (from {finite.min():.3g} to "
            f"{finite.max():.3g}); are these scores rather than weights? Softmax them with "
            f"selfattn.softmax_attention_weights first. The colours are clipped to [0, 1].",
            UserWarning, stacklevel=_public_caller()[1])
    elif finite.size and finite.max() > 1 + 1e-6:
        # none negative: weights after dropout (kept ones are divided by 1 - p) look like this
        above_one = True
        warnings.warn(
            f"{func}: some values are above 1 (up to {finite.max():.3g}), which no softmax "
            f"weight is; weights after dropout are (the kept ones are divided by 1 - dropout_p), "
            f"scores may be (softmax them with selfattn.softmax_attention_weights first). The "
            f"colours go up to the largest value.", UserWarning, stacklevel=_public_caller()[1])
    else:
        _warn_rows_not_one(func, w, hidden)
    blank = None  # hidden keys drawn white: those the mask hides and that hold no weight
    if hidden is not None:
        leaks = hidden & np.isfinite(w) & (w != 0)
        if leaks.any():
            i, j = (int(x) for x in np.argwhere(leaks)[0])
            count = int(leaks.sum())
            warnings.warn(
                f"{func}: {count} weight{'s sit' if count > 1 else ' sits'} on keys the mask "
                f"hides (query {i} gives {w[i, j]:.3g} to key {j}); a hidden key's weight is 0. "
                + (_INVERTED if hidden.any() and not (w[~hidden] != 0).any() else
                   "Was the mask applied after the softmax rather than to the scores? ")
                + f"{'They are drawn as weights' if count > 1 else 'It is drawn as a weight'}.",
                UserWarning, stacklevel=_public_caller()[1])
        blank = hidden & ~leaks
        if blank.any():
            grey = broken & ~blank
            ax.set_xlabel("key (white: hidden by the mask" + ("; grey: NaN or inf)" if grey.any()
                                                               else ")"))
    if vmin is None:
        vmin = 0.0
    if vmax is None:
        vmax = 1.0
        # equal weights (a uniform row) have no structure to show: on 0..1 they look as small
        # as they are, where colours up to the largest would paint them all at the top
        if above_one or (n_k >= _SMALL_WEIGHTS_FROM and finite.size
                         and vmin < finite.max() < 1.0
                         and not np.isclose(finite.min(), finite.max(), rtol=1e-5, atol=0)):
            vmax = float(finite.max())

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(w), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    if blank is not None and blank.any():
        ax.imshow(np.ma.masked_where(~blank, np.zeros_like(w)), aspect="auto",
                  interpolation="nearest", cmap=matplotlib.colors.ListedColormap(["white"]))
    if annotate:
        fontsize = 8 if max(n_q, n_k) <= _ANNOTATE_LARGE_FONT else 6
        bright = vmin + 0.6 * (vmax - vmin)  # viridis is light from here on: black text
        for i in range(n_q):
            for j in range(n_k):
                if blank is not None and blank[i, j]:
                    continue
                v = w[i, j]
                text = f"{v:.2f}" if np.isfinite(v) else str(v)
                color = "black" if not np.isfinite(v) or v > bright else "white"  # on grey too
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    label = "attention weight" if vmax == 1.0 else f"attention weight (colours up to {vmax:.3g})"
    ax.figure.colorbar(image, ax=ax, label=label)
    return ax


def _visible(func, mask, shape):
    """mask= broadcast to the weights' shape (None: no mask), for _hidden: boolean (True may
    attend) or float (added to the scores). Leading dimensions of size 1 are dropped, as the
    weights' are."""
    if mask is None:
        return None
    _refuse_masked(func, "mask", mask)
    m = _read_array(func, "mask", mask)
    if m.dtype.kind not in "bf":
        raise TypeError(f"{func}: mask must be boolean (True: may attend), as causal_mask() and "
                        f"window_mask() return, or float (added to the scores), got dtype "
                        f"{m.dtype}")
    while m.ndim > len(shape) and m.shape[0] == 1:
        m = m[0]
    try:
        return np.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"{func}: mask {m.shape} does not broadcast to the weights "
                         f"{tuple(shape)}") from None


def _hidden(mask, w):
    """The keys the mask hides from each query: False in a boolean mask; in a float one, -inf,
    or a negative value that left the weight exactly 0 (a large negative number such as -1e9,
    as many libraries write masks)."""
    if mask.dtype == bool:
        return ~mask
    with np.errstate(invalid="ignore"):
        return (mask == -np.inf) | ((mask < 0) & (w == 0))


def _ticks(ax, row_labels, col_labels, n_q, n_k):
    """Rows and columns labelled, every k-th one past _TICKS_MAX. Positions and labels are set
    together, so that they cannot drift apart."""
    for n, labels, set_ticks in ((n_q, row_labels, ax.set_yticks),
                                 (n_k, col_labels, ax.set_xticks)):
        step = -(-n // _TICKS_MAX)
        at = np.arange(0, n, step)
        set_ticks(at, labels=[_shown(t) for t in labels[::step]] if labels is not None else at)
    if col_labels is not None:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


def _shown(token):
    """A token as a tick label (_short_label), as written, not as matplotlib's math text: a label
    holding two `$`, "costs $5 or $6", was drawn in italics without them, and "$\\frac$" failed
    the figure's drawing."""
    return _short_label(token).replace("$", r"\$")


def _draw_mask(matplotlib, ax, visible, title):
    """A boolean mask: the keys each query may attend to coloured, the hidden ones white."""
    cmap = matplotlib.colors.ListedColormap(["white", matplotlib.colormaps["viridis"](0.35)])
    image = ax.imshow(visible.astype(np.float64), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    ax.set_title(f"{title}: mask" if title else "mask")
    bar = ax.figure.colorbar(image, ax=ax, ticks=[0.25, 0.75])
    bar.ax.set_yticklabels(["hidden", "may attend"])


# The weights sit only where the mask hides keys, and none where it lets them be seen: the
# opposite convention's mask (torch's nn.MultiheadAttention: True = hide)
_INVERTED = ("Every weight sits where the mask hides keys and none where it lets them be seen: "
             "is the mask inverted? Here True means 'may attend' (as in torch's "
             "scaled_dot_product_attention); nn.MultiheadAttention's masks mean the opposite "
             "(True = hide): pass ~mask. ")


def _spacing(w):
    """The spacing of the numbers just above 1 in the narrowest of bfloat16 and float16 that holds
    every value of `w` (float64) exactly, else 0: weights rounded to bfloat16 (torch's, then
    .float() as the TypeError for bfloat16 advises, or JAX's) have rows that sum to 1 only within
    about half of it, 2e-3, which a fixed tolerance of 1e-3 called wrong."""
    with np.errstate(all="ignore"):
        single = w.astype(np.float32)
        if np.array_equal(single, w, equal_nan=True):
            if not (single.view(np.uint32) & 0xFFFF).any():      # bfloat16: float32's top half
                return 2.0 ** -7
            if np.array_equal(single.astype(np.float16), single, equal_nan=True):
                return 2.0 ** -10
    return 0.0


def _warn_rows_not_one(func, w, hidden=None):
    """Warn when rows of weights do not sum to 1 (all-zero rows are fully masked queries), within
    the rounding of the precision they were computed in (_spacing). `hidden`: the keys a mask
    hides, or None."""
    with np.errstate(all="ignore"):
        sums = np.where(np.isfinite(w), w, 0.0).sum(axis=1)
    tolerance = max(1e-3, _spacing(w))
    # a row holding NaN or inf has had its own warning: what its finite weights sum to says nothing
    bad = ~(np.isclose(sums, 1.0, rtol=tolerance, atol=tolerance) | (sums == 0)) \
        & np.isfinite(w).all(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    cols = np.where(np.isfinite(w), w, 0.0).sum(axis=0)
    why = (" Its columns sum to 1: a softmax over axis 0 instead of each row (axis=-1)?"
           if np.allclose(cols, 1.0, rtol=1e-3, atol=1e-3) else "")
    if not why and hidden is not None and (sums[bad] < 1).all() and hidden[bad].any(axis=1).all() \
            and not (hidden & (w != 0)).any():
        # a softmax over all the keys, then the hidden ones zeroed: the usual order slip
        why = (" The keys the mask hides hold no weight, but what is left sums to less than 1: was "
               "the mask applied after the softmax (weights * mask)? Mask the scores before the "
               "softmax, so that the keys a query may see share all of its weight. (Weights "
               "after dropout do not sum to 1 either.)")
    warnings.warn(
        f"{func}: {int(bad.sum())} of {w.shape[0]} rows of the weights do not sum to 1 (row {i} "
        f"sums to {sums[i]:.6g}); each query's weights over the keys should.{why}",
        UserWarning, stacklevel=_public_caller()[1])
