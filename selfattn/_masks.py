"""Mask helpers: boolean masks (True = may attend) for causal and padded batches."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ._kernels import _band
from ._validate import (_as_array, _broadcast_shapes, _check_size, _distinct, _integer,
                        _public_call, _visibility, _window)

__all__ = ["causal_mask", "window_mask", "padding_mask", "lengths_mask", "alibi_bias"]


def _built(shape, build):
    """build(), a mask maker's bool result of `shape`: running out of memory anywhere in it (the
    result, or the index arrays it compares) names the result too, which is what the caller
    asked for (NumPy's own message, kept, names the array that failed: an int64 index array of
    one side, which the caller never asked for)."""
    try:
        return build()
    except MemoryError as error:
        size = math.prod(shape)
        error._selfattn_what = (f"{error} (building its result, a bool array of shape {shape}: "
                                f"{size / 2**30:,.1f} GiB)")
        raise


def _band_mask(func, n_q, n_k, visibility):
    """The boolean (n_q, n_k) mask of the keys each query sees under a visibility
    (_validate._visibility's form): the kernels' own band (_kernels._band), so a helper's mask and
    the keyword arguments can never disagree."""
    n_q = _integer(func, "n_q", n_q, 0)
    n_k = n_q if n_k is None else _integer(func, "n_k", n_k, 0)
    _check_size(func, (n_q, n_k), np.dtype(bool))
    if n_q == 0 or n_k == 0:   # the indices below would cost the other size for nothing
        return np.zeros((n_q, n_k), dtype=bool)
    lo, hi = (min(max(side, -n_q), n_k) for side in _band(visibility, n_q, n_k))  # as C clamps
    def build():
        keys, rows = np.arange(n_k), np.arange(n_q)[:, None]
        return (keys >= rows + lo) & (keys <= rows + hi)
    return _built((n_q, n_k), build)


def _align(func, align):
    if not isinstance(align, str) or align not in ("top_left", "bottom_right"):
        raise ValueError(f"{func}: align must be 'top_left' or 'bottom_right', got {align!r}")
    return align


@_public_call(float32_helps=False)
def causal_mask(n_q, n_k=None, *, align="top_left"):
    """A causal mask: query ``i`` may attend to key ``j`` only if ``j <= i`` (or, aligned
    bottom-right, ``j <= i + n_k - n_q``).

    The same rule as ``is_causal=align`` (``is_causal=True`` is top-left, as in torch), as an
    explicit array you can print, plot, combine with ``&`` or pass as ``mask=``.

    Parameters
    ----------
    n_q : int
        Number of queries (rows).
    n_k : int, optional
        Number of keys (columns); defaults to ``n_q``.
    align : {"top_left", "bottom_right"}, optional
        Where the diagonal starts when ``n_q != n_k``. ``"top_left"`` (default): query ``i``
        sees keys ``j <= i``. ``"bottom_right"`` (torch's ``causal_lower_right``): ``j <= i +
        n_k - n_q``, so the last query sees every key, as when ``n_q`` new tokens are decoded
        against a cache of ``n_k`` keys; with ``n_q > n_k`` the first ``n_q - n_k`` queries see
        none.

    Returns
    -------
    mask : ndarray of bool, shape (n_q, n_k)
        ``mask[i, j] = j <= i`` (top-left). With no batch dimensions it broadcasts against any
        scores of shape ``(..., n_q, n_k)``: single-head ``(batch, n_q, n_k)`` and multi-head
        ``(batch, num_heads, n_q, n_k)`` alike.

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If a size is negative, ``align`` is not one of the two, or the mask would be too large
        to allocate.

    Examples
    --------
    >>> from selfattn import causal_mask
    >>> causal_mask(3)
    array([[ True, False, False],
           [ True,  True, False],
           [ True,  True,  True]])
    >>> causal_mask(2, 4).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0]])
    >>> causal_mask(2, 4, align="bottom_right").astype(int)
    array([[1, 1, 1, 0],
           [1, 1, 1, 1]])
    """
    func = "causal_mask"
    return _band_mask(func, n_q, n_k, _visibility(func, _align(func, align)))


@_public_call(float32_helps=False)
def window_mask(n_q, n_k, left, right, *, align="top_left"):
    """A sliding-window (local) mask: query ``i`` may attend to keys ``i - left .. i + right``.

    The same rule as ``window=(left, right)``, as an explicit array you can print, plot, combine
    with ``&`` or pass as ``mask=``. ``window=(left, right)`` with ``is_causal=c`` is the mask
    ``causal_mask(n_q, n_k, align=c) & window_mask(n_q, n_k, left, right, align=c)``.

    Parameters
    ----------
    n_q, n_k : int
        Number of queries (rows) and keys (columns).
    left, right : int or None
        How many keys before and after its own position a query sees (``0, 0``: only the
        diagonal); ``None`` leaves that side unbounded. ``(w - 1, 0)`` is the causal sliding
        window of ``w`` keys (Mistral, Longformer's local attention).
    align : {"top_left", "bottom_right"}, optional
        Query ``i``'s own position: ``i`` (default) or ``i + n_k - n_q`` (the window that
        ``is_causal="bottom_right"`` measures from: ``n_q`` new tokens at the end of ``n_k``).

    Returns
    -------
    mask : ndarray of bool, shape (n_q, n_k)
        ``mask[i, j] = i - left <= j <= i + right`` (top-left).

    Raises
    ------
    TypeError
        If a size or a side is not an integer (or None).
    ValueError
        If a size or a side is negative, ``align`` is not one of the two, or the mask would be
        too large to allocate.

    Examples
    --------
    >>> from selfattn import window_mask
    >>> window_mask(5, 5, 2, 0).astype(int)
    array([[1, 0, 0, 0, 0],
           [1, 1, 0, 0, 0],
           [1, 1, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 1, 1]])
    >>> window_mask(2, 5, 1, 1, align="bottom_right").astype(int)
    array([[0, 0, 1, 1, 1],
           [0, 0, 0, 1, 1]])
    """
    func = "window_mask"
    left, right = _window(func, (left, right))
    return _band_mask(func, n_q, n_k, (_align(func, align), left, right))


@_public_call(float32_helps=False)
def padding_mask(lengths, n_k, *, head_axis=False):
    """A padding mask: in sequence ``b``, only the first ``lengths[b]`` keys may be attended to.

    For a batch of sequences padded to a common length ``n_k``: the padding tokens are hidden
    from every query.

    Parameters
    ----------
    lengths : array_like of int, shape (batch...)
        The true length of each sequence, ``0 <= lengths[b] <= n_k``. A scalar is one sequence.
    n_k : int
        The padded length (the number of keys).
    head_axis : bool, optional
        Insert an axis of size 1 for the heads, for :func:`multi_head_attention`, whose mask
        broadcasts against ``(batch, num_heads, n_q, n_k)``. Default False (single head).

    Returns
    -------
    mask : ndarray of bool
        ``mask[b, ..., j] = j < lengths[b]``, of shape ``lengths.shape + (1, n_k)``, or
        ``lengths.shape + (1, 1, n_k)`` with ``head_axis=True``. The broadcasting rule: the
        mask's batch axes line up with the scores' leading axes, its ``1`` rows broadcast over the
        ``n_q`` queries and the ``1`` head axis over the heads. So for ``lengths`` of shape
        ``(batch,)``:

        - single head, scores ``(batch, n_q, n_k)``: ``padding_mask(lengths, n_k)``, shape
          ``(batch, 1, n_k)``;
        - multi-head, scores ``(batch, num_heads, n_q, n_k)``:
          ``padding_mask(lengths, n_k, head_axis=True)``, shape ``(batch, 1, 1, n_k)``.

        Combine with a causal mask with ``&`` (or pass ``is_causal=True``). A sequence of length
        0 masks every key: its queries get zero output, never NaN.

    Raises
    ------
    TypeError
        If ``lengths`` is not integer, or ``n_k`` is not an integer.
    ValueError
        If a length is negative or longer than ``n_k``, or the mask would be too large to
        allocate.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import padding_mask
    >>> m = padding_mask([3, 1], 4)
    >>> m.shape
    (2, 1, 4)
    >>> m.astype(int)
    array([[[1, 1, 1, 0]],
    <BLANKLINE>
           [[1, 0, 0, 0]]])
    >>> padding_mask([3, 1], 4, head_axis=True).shape
    (2, 1, 1, 4)
    """
    func = "padding_mask"
    n_k = _integer(func, "n_k", n_k, 0)
    lengths = _lengths_array(func, "lengths", lengths, "n_k", n_k)
    if not isinstance(head_axis, (bool, np.bool_)):
        raise TypeError(f"{func}: head_axis must be True or False, got {head_axis!r}")
    extra = (1, 1) if head_axis else (1,)
    # keys < lengths below compares intp indices: refuse what could not be addressed as such
    _check_size(func, lengths.shape + extra + (n_k,), np.dtype(np.intp))
    return _built(lengths.shape + extra + (n_k,),
                  lambda: np.arange(n_k) < lengths.reshape(lengths.shape + extra + (1,)))


def _alibi_slopes(num_heads):
    """ALiBi's slope for each head (Press et al. 2022): for a power of two p heads, the geometric
    sequence 2^(-8 k / p), k = 1..p; otherwise those of the power of two p just below num_heads,
    then every other slope of 2p heads (k = 1, 3, 5, ...) until there are num_heads, so that the
    added heads' slopes fall between the others."""
    p = 1 << (num_heads.bit_length() - 1)
    # Python's pow (the C library's), not np.power, whose SIMD loops may differ by an ulp per CPU
    slopes = itertools.chain((2.0 ** (-8.0 * k / p) for k in range(1, p + 1)),
                             (2.0 ** (-8.0 * k / (2 * p)) for k in range(1, 2 * (num_heads - p), 2)))
    return np.fromiter(slopes, np.float64, count=num_heads)


@_public_call(float32_helps=False)
def alibi_bias(num_heads, n_q, n_k=None):
    """The ALiBi bias (Press et al. 2022, "Train Short, Test Long"): each head penalises a key by
    its distance from the query, ``bias[h, i, j] = -slope_h * |i - j|``.

    Pass it as ``bias=`` (it is added to the scaled scores) instead of position embeddings. The
    paper's causal form ``m * [-(i-1), ..., -2, -1, 0]`` is this bias on the keys ``j <= i`` a
    causal query sees; with ``|i - j|`` keys after the query (no causal mask) are penalised by
    distance too, as bidirectional ALiBi and flash-attn do. Positions are aligned top-left (query
    ``i`` sits at key position ``i``), as ``is_causal=True`` is.

    Parameters
    ----------
    num_heads : int
        Number of heads, at least 1. The slopes are ``2^(-8 h / num_heads)`` for
        ``h = 1..num_heads`` when ``num_heads`` is a power of two (8 heads: 1/2, 1/4, ..., 1/256);
        otherwise the paper's rule: the slopes of the power of two ``p`` below ``num_heads``,
        then every other slope of ``2p`` heads (``2^(-8 h / 2p)`` for ``h = 1, 3, 5, ...``).
    n_q : int
        Number of queries (rows).
    n_k : int, optional
        Number of keys (columns); defaults to ``n_q``.

    Returns
    -------
    bias : ndarray of float64, shape (num_heads, n_q, n_k)
        Broadcasts as a mask does against multi-head scores ``(..., num_heads, n_q, n_k)``
        (:func:`multi_head_attention`, or :func:`scaled_dot_product_attention` with a head axis);
        ``bias[h]`` is head ``h``'s. To see it, plot the weights it alone gives (as if every
        score were 0): ``plot_attention(softmax_attention_weights(bias), head=h)``.

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If ``num_heads < 1``, a size is negative, or the bias would be too large to allocate.

    Examples
    --------
    >>> from selfattn import alibi_bias
    >>> b = alibi_bias(2, 3)
    >>> b.shape
    (2, 3, 3)
    >>> b[0]                      # slope 2^-4 for the first of 2 heads
    array([[ 0.    , -0.0625, -0.125 ],
           [-0.0625,  0.    , -0.0625],
           [-0.125 , -0.0625,  0.    ]])
    >>> 1 / -alibi_bias(8, 2)[:, 1, 0]         # 8 heads: slopes 1/2, 1/4, ..., 1/256
    array([  2.,   4.,   8.,  16.,  32.,  64., 128., 256.])
    """
    func = "alibi_bias"
    num_heads = _integer(func, "num_heads", num_heads, 1)
    n_q = _integer(func, "n_q", n_q, 0)
    n_k = n_q if n_k is None else _integer(func, "n_k", n_k, 0)
    _check_size(func, (num_heads, n_q, n_k), np.dtype(np.float64))
    # the result first: its size bounds the slopes' (one per head), so a count of heads no memory
    # holds fails here at once, not in their loop
    bias = np.empty((num_heads, n_q, n_k))
    if bias.size == 0:
        return bias
    # minus the distance, in integers first so that the diagonal is +0.0, not -0.0
    offsets = -np.abs(np.arange(n_q)[:, None] - np.arange(n_k)[None, :])
    return np.multiply(_alibi_slopes(num_heads)[:, None, None], offsets.astype(np.float64),
                       out=bias)


def _lengths_array(func, name, lengths, n_name, n):
    """`lengths` as an integer array, each in [0, n]."""
    lengths = _as_array(func, name, lengths, lengths=True)
    if lengths.size == 0 and lengths.dtype.kind == "f":  # [] reads as float64: no sequences
        lengths = lengths.astype(np.intp)
    if lengths.dtype.kind not in "iu":
        raise TypeError(
            f"{func}: {name} must be integers (the number of real tokens in each sequence), "
            f"got dtype {lengths.dtype}"
        )
    distinct = _distinct(lengths)
    if lengths.size and (distinct.min() < 0 or distinct.max() > n):
        bad = distinct[(distinct < 0) | (distinct > n)].flat[0]
        raise ValueError(
            f"{func}: every length must be between 0 and {n_name}={n}, got a length of {bad} "
            f"({name}={lengths.tolist() if lengths.size <= 16 else lengths.shape})"
        )
    return lengths


@_public_call(float32_helps=False)
def lengths_mask(query_lengths, key_lengths, n_q, n_k, *, head_axis=False):
    """The mask of per-sequence lengths: in sequence ``b``, query ``i`` may attend to key ``j``
    only when ``i < query_lengths[b]`` and ``j < key_lengths[b]``.

    The rule that ``query_lengths=`` and ``key_lengths=`` of
    :func:`scaled_dot_product_attention` apply without building a mask, drawn as one, so that
    it can be plotted (:func:`plot_attention`) or combined with other masks: passing it as
    ``mask=`` gives the same output (rows past their query length see no key, so their output
    is 0). Not with ``is_causal="bottom_right"`` (or a window) beside the lengths keywords,
    whose diagonal is each sequence's own (``i + key_lengths[b] - query_lengths[b]``): this mask
    combined with ``causal_mask(n_q, n_k, align="bottom_right")`` aligns every sequence to the
    padded ``n_q`` and ``n_k`` instead.

    Parameters
    ----------
    query_lengths, key_lengths : array_like of int, shape (batch...), or None
        The true number of queries and of keys of each sequence (``0 <= query_lengths[b] <=
        n_q``, ``0 <= key_lengths[b] <= n_k``). Each shape is a prefix of the batch shape, as
        the keywords read it: the two are aligned on their first axes (a 1-D array holds one
        length per sequence, shared by the axes the other side adds), then broadcast. None:
        every query (key).
    n_q, n_k : int
        The padded lengths.
    head_axis : bool, optional
        Insert an axis of size 1 for the heads (as :func:`padding_mask` does).

    Returns
    -------
    mask : ndarray of bool, shape (batch..., n_q, n_k) or (batch..., 1, n_q, n_k)

    Examples
    --------
    >>> from selfattn import lengths_mask
    >>> lengths_mask([2, 3], [3, 1], 3, 3).astype(int)
    array([[[1, 1, 1],
            [1, 1, 1],
            [0, 0, 0]],
    <BLANKLINE>
           [[1, 0, 0],
            [1, 0, 0],
            [1, 0, 0]]])
    """
    func = "lengths_mask"
    n_q = _integer(func, "n_q", n_q, 0)
    n_k = _integer(func, "n_k", n_k, 0)
    sides = [None if lengths is None else _lengths_array(func, name, lengths, n_name, n)
             for lengths, name, n_name, n in ((query_lengths, "query_lengths", "n_q", n_q),
                                              (key_lengths, "key_lengths", "n_k", n_k))]
    if not isinstance(head_axis, (bool, np.bool_)):
        raise TypeError(f"{func}: head_axis must be True or False, got {head_axis!r}")
    q, k = (np.full((), n) if side is None else side for side, n in zip(sides, (n_q, n_k)))
    # aligned on their FIRST axes, as the keywords read lengths (a prefix of the batch shape):
    # a 1-D array is one length per sequence, whatever the other side's extra (head) axes
    ndim = max(q.ndim, k.ndim)
    aligned = [side.reshape(side.shape + (1,) * (ndim - side.ndim)) for side in (q, k)]
    try:
        batch = _broadcast_shapes([side.shape for side in aligned]) + ((1,) if head_axis else ())
    except ValueError:
        raise ValueError(f"{func}: query_lengths.shape={q.shape} and key_lengths.shape="
                         f"{k.shape} do not match: aligned on their first axes (each a prefix "
                         f"of the batch shape, as the query_lengths= and key_lengths= keywords "
                         f"read them), each axis must agree or be 1") from None
    q, k = aligned
    _check_size(func, batch + (n_q, n_k), np.dtype(np.intp))
    extra = (1, 1, 1) if head_axis else (1, 1)
    def build():
        rows = np.arange(n_q)[:, None] < q.reshape(q.shape + extra)
        keys = np.arange(n_k)[None, :] < k.reshape(k.shape + extra)
        return np.broadcast_to(rows & keys, batch + (n_q, n_k)).copy()
    return _built(batch + (n_q, n_k), build)
