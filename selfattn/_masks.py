"""Mask helpers: boolean masks (True = may attend) for causal and padded batches."""
from __future__ import annotations

import numpy as np

from ._validate import _as_array, _check_size, _integer

__all__ = ["causal_mask", "padding_mask", "lengths_mask"]


def causal_mask(n_q, n_k=None):
    """A causal mask: query ``i`` may attend to key ``j`` only if ``j <= i``.

    The same rule as ``is_causal=True`` (top-left aligned when ``n_q != n_k``, as in torch), as an
    explicit array you can print, plot, combine with ``&`` or pass as ``mask=``.

    Parameters
    ----------
    n_q : int
        Number of queries (rows).
    n_k : int, optional
        Number of keys (columns); defaults to ``n_q``.

    Returns
    -------
    mask : ndarray of bool, shape (n_q, n_k)
        ``mask[i, j] = j <= i``. With no batch dimensions it broadcasts against any scores of
        shape ``(..., n_q, n_k)``: single-head ``(batch, n_q, n_k)`` and multi-head
        ``(batch, num_heads, n_q, n_k)`` alike.

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If a size is negative, or the mask would be too large to allocate.

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
    """
    func = "causal_mask"
    n_q = _integer(func, "n_q", n_q, 0)
    n_k = n_q if n_k is None else _integer(func, "n_k", n_k, 0)
    _check_size(func, (n_q, n_k), np.dtype(bool))
    if n_q == 0 or n_k == 0:   # np.tri would build an index of the other size first
        return np.zeros((n_q, n_k), dtype=bool)
    return np.tri(n_q, n_k, dtype=bool)


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
    keys = np.arange(n_k)
    return keys < lengths.reshape(lengths.shape + extra + (1,))


def _lengths_array(func, name, lengths, n_name, n):
    """`lengths` as an integer array, each in [0, n]."""
    lengths = _as_array(func, name, lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(
            f"{func}: {name} must be integers (the number of real tokens in each sequence), "
            f"got dtype {lengths.dtype}"
        )
    if lengths.size and (lengths.min() < 0 or lengths.max() > n):
        bad = lengths[(lengths < 0) | (lengths > n)].flat[0]
        raise ValueError(
            f"{func}: every length must be between 0 and {n_name}={n}, got a length of {bad} "
            f"({name}={lengths.tolist() if lengths.size <= 16 else lengths.shape})"
        )
    return lengths


def lengths_mask(query_lengths, key_lengths, n_q, n_k, *, head_axis=False):
    """The mask of per-sequence lengths: in sequence ``b``, query ``i`` may attend to key ``j``
    only when ``i < query_lengths[b]`` and ``j < key_lengths[b]``.

    The rule that ``query_lengths=`` and ``key_lengths=`` of
    :func:`scaled_dot_product_attention` apply without building a mask, drawn as one, so that
    it can be plotted (:func:`plot_attention`) or combined with other masks: passing it as
    ``mask=`` gives the same output (rows past their query length see no key, so their output
    is 0).

    Parameters
    ----------
    query_lengths, key_lengths : array_like of int, shape (batch...), or None
        The true number of queries and of keys of each sequence (``0 <= query_lengths[b] <=
        n_q``, ``0 <= key_lengths[b] <= n_k``); the shapes broadcast. None: every query (key).
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
    try:
        batch = np.broadcast_shapes(q.shape, k.shape) + ((1,) if head_axis else ())
    except ValueError:
        raise ValueError(f"{func}: query_lengths.shape={q.shape} and key_lengths.shape="
                         f"{k.shape} do not broadcast") from None
    _check_size(func, batch + (n_q, n_k), np.dtype(np.intp))
    extra = (1, 1, 1) if head_axis else (1, 1)
    rows = np.arange(n_q)[:, None] < q.reshape(q.shape + extra)
    keys = np.arange(n_k)[None, :] < k.reshape(k.shape + extra)
    return np.broadcast_to(rows & keys, batch + (n_q, n_k)).copy()
