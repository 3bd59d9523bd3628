"""The notebook's functions and scaled_dot_product_attention: the single-head forward API.

Each function checks its arguments with selfattn/_validate.py (the rules and messages), runs the
kernel through selfattn/_kernels.py, and returns a new array; inputs are never modified.

Before that, each function offers its arguments to a `_core.plain_*` entry point, which handles
the notebook's common case (2-D, same-dtype, C-ordered arrays, no mask) entirely in C and returns
None for anything else, errors included. At the notebook's sizes the general path's overhead would
otherwise cost more than the arithmetic. Not inside a call that pinned its tier (_kernels's
_on_one_tier: explain's steps): the plain entry points read the process-wide tier.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from ._kernels import (
    _isa,
    _on_one_tier,
    _pinned,
    _attend,
    _band,
    _finish,
    _finish_attention,
    _mask_operand,
    _operand,
)
from ._layer import _Layer
from ._validate import (
    _as_array,
    _QKV,
    _as_matrices,
    _attention_operands,
    _batch_shape,
    _check_size,
    _dtypes,
    _dropout,
    _flag,
    _integer,
    _public_call,
    _visibility,
    _grouped_operands,
    _ungroup_heads,
    _ungrouped_batch,
    _lengths,
    _softcap,
)

__all__ = [
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
    "scaled_dot_product_attention",
]

# The band of a call offered to a _core.plain_* entry point (is_causal a bool there, no window).
_PLAIN_BANDS = {flag: _band(_visibility("", flag), 0, 0) for flag in (False, True)}
_PLAIN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))   # native byte order only
_INTP_MAX = np.iinfo(np.intp).max


def _plain_batch_sdpa(Q, K, V, scale, band):
    """The batched twin of _core.plain_sdpa, for many heads at once: ndarrays of one native
    float32 or float64 dtype, of at least 3 dimensions and one batch shape (no broadcasting
    between them), none empty, each with contiguous aligned rows and whole-element strides, and
    scale None or a finite Python float or int. Straight to the kernel (the general path's
    checks and conversions cost ~14 us a call, as much as a whole batch of tiny heads on two
    threads); None for anything else, errors included, which the general path then handles."""
    if type(Q) is not np.ndarray or type(K) is not np.ndarray or type(V) is not np.ndarray:
        return None
    dtype, q_shape, k_shape, v_shape = Q.dtype, Q.shape, K.shape, V.shape
    if (dtype not in _PLAIN_DTYPES or K.dtype != dtype or V.dtype != dtype or len(q_shape) < 3
            or len(k_shape) != len(q_shape) or len(v_shape) != len(q_shape)
            or k_shape[:-2] != q_shape[:-2] or v_shape[:-2] != q_shape[:-2]
            or k_shape[-1] != q_shape[-1] or v_shape[-2] != k_shape[-2]
            or not (Q.size and K.size and V.size)):
        return None
    itemsize = dtype.itemsize
    for arr in (Q, K, V):
        if not arr.flags.aligned or any(stride % itemsize for stride in arr.strides) or (
                arr.shape[-1] > 1 and arr.strides[-1] != itemsize):
            return None
    if scale is None:
        scale = 1.0 / math.sqrt(q_shape[-1])
    elif type(scale) is float or type(scale) is int:
        try:
            scale = float(scale)
        except OverflowError:
            return None
        if not math.isfinite(scale):
            return None
    else:
        return None
    out_shape = q_shape[:-1] + v_shape[-1:]
    if math.prod(out_shape) * itemsize > _INTP_MAX:
        return None
    out = np.empty(out_shape, dtype)
    _core.attention(out, None, Q, K, V, None, scale, band, _isa())
    return out


try:  # NumPy >= 1.25
    from numpy.exceptions import AxisError as _AxisError
except ImportError:  # pragma: no cover - NumPy 1.23/1.24
    _AxisError = np.AxisError


# ---- the public functions ---------------------------------------------------------------------

@_public_call
def compute_self_attention_scores(Q, K, *, scale=None, mask=None, bias=None, is_causal=False,
                                  window=None):
    """Attention scores between every query and every key: ``(Q @ K^T) * scale``.

    Step 1 of the notebook. Row ``i`` holds how strongly query ``i`` matches each key.

    .. note:: The scores are **scaled**: ``scale=None`` (the default) multiplies the dot products
       by ``1/sqrt(d_k)``, as in "Attention Is All You Need" and ``torch``'s
       ``scaled_dot_product_attention``. Pass ``scale=1.0`` for the raw dot products
       ``Q @ K.T`` that the notebook's text describes.

    Parameters
    ----------
    Q : array_like, shape (..., n_q, d_k)
        Query vectors, one row per query token.
    K : array_like, shape (..., n_k, d_k)
        Key vectors, one row per key token, **not** transposed (selfattn transposes it).
        ``n_q`` and ``n_k`` may differ (cross-attention).
    scale : float, optional
        Factor applied to the dot products. Default ``1/sqrt(d_k)``.
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., n_q, n_k)``. Boolean: ``True`` means the query may attend to the
        key; ``False`` scores become ``-inf``. Floating: added to the scaled scores
        (``0`` keeps a score, ``-inf`` hides it). Integer masks are rejected as ambiguous.
    bias : array_like of float, optional
        Broadcastable to ``(..., n_q, n_k)``, as a mask is: added to the scaled scores (e.g.
        :func:`alibi_bias`). Beside a boolean ``mask`` it applies where the mask allows; a float
        ``mask`` and ``bias`` are added together.
    is_causal : bool, "top_left", "bottom_right" or None, optional
        If True (or ``"top_left"``), query ``i`` sees only keys ``j <= i`` (top-left aligned when
        ``n_q != n_k``, as in torch); later keys score ``-inf``. ``"bottom_right"`` (torch's
        ``causal_lower_right``): ``j <= i + n_k - n_q``, the last query seeing every key (new
        tokens against a KV cache). Combined with ``mask``, a key is visible only if both allow it.
    window : (left, right), optional
        A sliding window: query ``i`` sees only keys ``i - left <= j <= i + right`` (each side an
        int >= 0, or None for unbounded), measured from ``i + n_k - n_q`` instead of ``i`` with
        ``is_causal="bottom_right"``. Combined with ``is_causal`` and ``mask`` (all must allow).
        Same as ``mask=window_mask(n_q, n_k, left, right)`` (with ``align="bottom_right"``
        where ``is_causal="bottom_right"``), without its O(n_q * n_k) cost.

    Returns
    -------
    scores : ndarray, shape (..., n_q, n_k)
        Leading (batch) dimensions of Q, K and mask broadcast as in ``np.matmul``.
        float32 stays float32, float64 stays float64, float16 is computed in float32 and
        returned as float16, integers and booleans give float64.

    Raises
    ------
    ValueError
        If Q or K has fewer than 2 dimensions, their ``d_k`` differ, batch dimensions or the mask
        do not broadcast, or the result is too large to allocate.
    TypeError
        For complex, object, string or integer-mask inputs, or an ``is_causal`` or ``window`` of
        the wrong kind (a wrong string or a negative side is a ValueError).

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import compute_self_attention_scores
    >>> Q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # 3 queries, d_k = 2
    >>> K = np.array([[1.0, 0.0], [0.0, 2.0]])               # 2 keys
    >>> compute_self_attention_scores(Q, K, scale=1.0)       # raw dot products Q @ K.T
    array([[1., 0.],
           [0., 2.],
           [1., 2.]])
    >>> compute_self_attention_scores(Q, K).round(4)         # default: divided by sqrt(2)
    array([[0.7071, 0.    ],
           [0.    , 1.4142],
           [0.7071, 1.4142]])
    >>> compute_self_attention_scores(Q, Q, scale=1.0, is_causal=True)
    array([[  1., -inf, -inf],
           [  0.,   1., -inf],
           [  1.,   1.,   2.]])
    """
    if (mask is None and bias is None and window is None and type(is_causal) is bool
            and _pinned.isa < 0):
        result = _core.plain_scores(Q, K, scale, _PLAIN_BANDS[is_causal])
        if result is not None:
            return result
    func = "compute_self_attention_scores"
    Q, K = _as_matrices(func, ("Q", Q, "(n_q, d_k)"), ("K", K, "(n_k, d_k)"))
    batch, scale, visibility, mask, result, compute = _attention_operands(
        func, Q, K, None, mask, is_causal, scale, bias=bias, window=window)
    n_q, n_k = Q.shape[-2], K.shape[-2]
    _check_size(func, batch + (n_q, n_k), compute)
    out = np.empty(batch + (n_q, n_k), dtype=compute)
    if out.size:
        _core.scores(out, _operand(Q, compute, batch), _operand(K, compute, batch),
                     _mask_operand(mask, batch, n_q, n_k), scale, _band(visibility, n_q, n_k),
                     _isa())
    return _finish(out, result)


@_public_call
def softmax_attention_weights(attn_scores, *, axis=-1):
    """Softmax of the scores: each query's row becomes weights that are >= 0 and sum to 1.

    Step 2 of the notebook: ``w[i, j] = exp(s[i, j] - max_j s[i, :]) / sum_j exp(...)``.
    Subtracting the row maximum first keeps it exact for any finite scores (1e4, -1e30, float32
    values near 3e38) where a plain ``np.exp(s) / np.exp(s).sum()`` overflows to inf and NaN.

    Parameters
    ----------
    attn_scores : array_like, shape (..., n_q, n_k) or (n,)
        Scores, e.g. from :func:`compute_self_attention_scores`. ``-inf`` marks a masked key.
    axis : int, optional
        The axis that is normalised. The default, -1 (each query's row over the keys), is the one
        attention uses.

    Returns
    -------
    weights : ndarray, same shape as ``attn_scores``
        Entries with score ``-inf`` get weight exactly 0. A row whose scores are all ``-inf``
        (every key masked) gives all zeros, never NaN. A NaN anywhere in a row makes that row
        (only) NaN. Same dtype rules as the other functions.

    Raises
    ------
    ValueError
        For a 0-d input or an axis out of range (numpy's ``AxisError``, a ValueError).
    TypeError
        For complex, object or string inputs, or a non-integer axis.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import softmax_attention_weights
    >>> softmax_attention_weights(np.array([[1.0, 1.0], [0.0, np.log(3.0)]]))
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    >>> softmax_attention_weights([[1000.0, 1000.0], [-np.inf, -np.inf]])
    array([[0.5, 0.5],
           [0. , 0. ]])
    """
    if type(axis) is int and axis == -1 and _pinned.isa < 0:  # (an array's == is an array)
        result = _core.plain_softmax(attn_scores)
        if result is not None:
            return result
    func = "softmax_attention_weights"
    x = _as_array(func, "attn_scores", attn_scores)
    if x.ndim == 0:
        raise ValueError(f"{func}: attn_scores must have at least 1 dimension, got a scalar")
    axis = _integer(func, "axis", axis)
    if not -x.ndim <= axis < x.ndim:
        raise _AxisError(
            f"{func}: axis={axis} is out of range for attn_scores with {x.ndim} dimension(s) "
            f"(attn_scores.shape={x.shape}); use axis=-1 to normalise each query's row"
        )
    axis %= x.ndim
    result, compute = _dtypes(x)
    moved = np.moveaxis(x, axis, -1)
    if moved.ndim == 1:
        moved = moved[None, :]
    _check_size(func, moved.shape, compute)
    out = np.empty(moved.shape, dtype=compute)
    if out.size:
        batch = moved.shape[:-2]
        _core.softmax(out, _operand(moved, compute, batch), _isa())
    out = out.reshape(np.moveaxis(x, axis, -1).shape)
    if axis != x.ndim - 1:
        out = np.ascontiguousarray(np.moveaxis(out, -1, axis))
    return _finish(out, result)


@_public_call
def compute_attention_output(attn_weights, V):
    """The attention output: each query's weighted sum of the value rows, ``attn_weights @ V``.

    Step 3 of the notebook: ``out[i] = sum_j attn_weights[i, j] * V[j]``.

    Parameters
    ----------
    attn_weights : array_like, shape (..., n_q, n_k)
        Weights, e.g. from :func:`softmax_attention_weights`; row ``i`` belongs to query ``i``.
    V : array_like, shape (..., n_k, d_v)
        Value vectors, one row per key token.

    Returns
    -------
    output : ndarray, shape (..., n_q, d_v)
        Batch dimensions broadcast as in ``np.matmul``; same dtype rules as the other functions.
        A key whose weight is exactly 0 contributes nothing, even where its row of V holds inf
        or NaN, as in :func:`scaled_dot_product_attention` (so the three steps composed equal
        it). This differs from a plain ``attn_weights @ V``, where ``0 * inf`` makes NaN.

    Raises
    ------
    ValueError
        If an input has fewer than 2 dimensions, the number of keys differ, or batch dimensions do
        not broadcast.
    TypeError
        For complex, object or string inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import compute_attention_output
    >>> weights = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> V = np.array([[2.0, 0.0], [0.0, 4.0]])
    >>> compute_attention_output(weights, V)
    array([[2., 0.],
           [1., 2.]])
    """
    if _pinned.isa < 0:
        result = _core.plain_output(attn_weights, V)
        if result is not None:
            return result
    func = "compute_attention_output"
    W, V = _as_matrices(func, ("attn_weights", attn_weights, "(n_q, n_k)"), ("V", V, "(n_k, d_v)"))
    n_q, n_k = W.shape[-2:]
    if V.shape[-2] != n_k:
        hint = ""
        if V.shape[-1] == n_k:
            hint = " V looks transposed: pass V as (n_k, d_v), one row per key"
        elif V.shape[-1] == n_q:
            hint = (" The product fits the other way round: were the arguments swapped? The "
                    "weights come first: compute_attention_output(attn_weights, V)")
        raise ValueError(
            f"{func}: attn_weights has n_k={n_k} columns (attn_weights.shape={W.shape}) but V has "
            f"{V.shape[-2]} rows (V.shape={V.shape}); the last dimension of attn_weights must "
            f"equal the number of rows of V (one value row per key).{hint}"
        )
    batch = _batch_shape(func, [("attn_weights", W, 2), ("V", V, 2)])
    result, compute = _dtypes(W, V)
    _check_size(func, batch + (n_q, V.shape[-1]), compute)
    out = np.empty(batch + (n_q, V.shape[-1]), dtype=compute)
    if out.size:
        _core.output(out, _operand(W, compute, batch), _operand(V, compute, batch), _isa())
    return _finish(out, result)


@_public_call
def scaled_dot_product_attention(Q, K, V, *, scale=None, mask=None, bias=None, is_causal=False,
                                 return_weights=False, window=None, enable_gqa=False,
                                 query_lengths=None, key_lengths=None, return_lse=False,
                                 softcap=None, dropout_p=0.0, seed=None):
    """Attention from queries, keys and values: ``softmax(Q @ K^T * scale + mask + bias) @ V``.

    The three notebook steps in one call, under the name torch users know
    (``torch.nn.functional.scaled_dot_product_attention``, with the same conventions: the
    default scale ``1/sqrt(d_k)``, boolean masks where True means "may attend", top-left aligned
    causal masking). Without ``return_weights`` it runs a fused kernel that never stores the
    ``n_q x n_k`` weights, so memory stays proportional to ``n * d``.

    Parameters
    ----------
    Q : array_like, shape (..., n_q, d_k)
    K : array_like, shape (..., n_k, d_k)
        Not transposed.
    V : array_like, shape (..., n_k, d_v)
    scale : float, optional
        Factor applied to ``Q @ K^T``; default ``1/sqrt(d_k)``; ``1.0`` for raw dot products.
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., n_q, n_k)``; bool True = may attend, float = added to the scores.
    bias : array_like of float, optional
        Broadcastable to ``(..., n_q, n_k)``, as a mask is: added to the scaled scores (e.g.
        :func:`alibi_bias`). Beside a boolean ``mask`` it applies where the mask allows; a float
        ``mask`` and ``bias`` are added together.
    is_causal : bool, "top_left", "bottom_right" or None, optional
        Query ``i`` sees only keys ``j <= i`` (True or ``"top_left"``) or ``j <= i + n_k - n_q``
        (``"bottom_right"``: decoding the last ``n_q`` tokens against ``n_k`` cached keys).
        Combined with ``mask`` (both must allow).
    return_weights : bool, optional
        Also return the attention weights (this stores them: O(n_q * n_k) memory).
    window : (left, right), optional
        Query ``i`` sees only keys ``i - left <= j <= i + right`` (ints >= 0, None = unbounded;
        from ``i + n_k - n_q`` with ``is_causal="bottom_right"``), with ``is_causal`` and ``mask``
        (all must allow). Blocks of keys no query sees are skipped: a window of ``w`` keys costs
        O(n_q * w * d), not O(n_q * n_k * d).
    enable_gqa : bool, optional
        Grouped-query attention (as torch's ``enable_gqa``): Q is ``(..., H, n_q, d_k)`` and K, V
        are ``(..., H_kv, n_k, d)`` with ``H_kv`` dividing ``H``; query head ``h`` uses key/value
        head ``h // (H / H_kv)``. K and V are never copied or repeated. Off by default, so that
        mismatched leading axes stay an error rather than silently becoming head groups (one
        shared K/V head, ``H_kv = 1``, already broadcasts without it). A mask or bias with a head
        axis (-3) has ``H`` (or 1) entries there.
    query_lengths, key_lengths : int or array_like of int, optional
        Per-sequence lengths of a padded batch (varlen): an int for every batch item, or an array
        whose shape is a prefix of the batch shape -- a 1-D array holds one length per entry of
        the FIRST batch axis (one per sequence, shared by the axes after it, such as heads).
        Query rows at or past their length give output 0 (and gradient 0); keys at or past
        their length are invisible. Each length is in ``[0, n_q]`` or ``[0, n_k]``; the padding
        costs no arithmetic. Combined with ``mask``, ``bias`` and ``is_causal`` (every rule must
        allow a key); ``is_causal="bottom_right"`` and ``window`` are then measured from each
        sequence's own diagonal, ``i + key_length - query_length`` (as flash-attn's varlen).
        :func:`lengths_mask` draws the same rule as a boolean mask.
    return_lse : bool, optional
        Also return each query row's log-sum-exp of its scaled, masked scores,
        ``log(sum_j exp(s_ij))`` (natural log), shape ``(..., n_q)``: ``-inf`` for a row that
        sees no key (fully masked, or past its length), NaN for a row whose scores hold NaN or
        ``+inf`` (the rows whose weights are NaN).
        ``weights = exp(scores - lse[..., None])``. Computed by the fused kernel at no extra
        cost.
    softcap : float, optional
        Logit soft-capping (Gemma 2, flash-attn's ``softcap``): each scaled score ``s`` becomes
        ``softcap * tanh(s / softcap)`` before the mask and bias are applied (so masked keys stay
        masked); a finite number > 0, or None (default) for none.
    dropout_p : float, optional
        Dropout on the attention weights (torch's ``dropout_p``): after the softmax each weight
        is dropped (0) with probability ``dropout_p`` and the others are multiplied by
        ``1 / (1 - dropout_p)``; ``1`` gives an output of 0. Default 0: no dropout, at no cost.
    seed : int, optional
        Which weights are dropped: a function of ``(seed, batch item, query, key)`` alone
        (Philox4x32-10), the same on every thread count and tier. Default: one drawn from
        NumPy's global generator (``np.random``; ``np.random.seed`` makes it reproducible). To
        differentiate, pass a seed and give the backward the same one.

    Returns
    -------
    output : ndarray, shape (..., n_q, d_v)
        A query whose keys are all masked gets an output row of zeros (never NaN). A key with
        weight 0 contributes nothing, even if its row of V holds inf or NaN.
    weights : ndarray, shape (..., n_q, n_k)
        Only with ``return_weights=True``; with dropout, the weights after it (so that
        ``output = weights @ V``).
    lse : ndarray, shape (..., n_q)
        Only with ``return_lse=True``; always last: ``(output, lse)`` or
        ``(output, weights, lse)``. Of the scores before dropout.

    Raises
    ------
    ValueError
        For inputs with fewer than 2 dimensions, mismatched ``d_k`` or ``n_k``, batch dimensions
        or masks that do not broadcast, or results too large to allocate.
    TypeError
        For complex, object, string or integer-mask inputs, or non-bool flags.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import scaled_dot_product_attention
    >>> Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> K = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> V = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> out, w = scaled_dot_product_attention(Q, K, V, scale=np.log(3.0), return_weights=True)
    >>> w
    array([[0.75, 0.25],
           [0.25, 0.75]])
    >>> out
    array([[1.5, 2.5],
           [2.5, 3.5]])
    >>> scaled_dot_product_attention(Q, K, V, is_causal=True)   # the first query sees key 0 only
    array([[1.       , 2.       ],
           [2.3395231, 3.3395231]])
    >>> scaled_dot_product_attention(Q, K, V, window=(0, 0))    # each query sees its own key
    array([[1., 2.],
           [3., 4.]])
    """
    if (mask is None and bias is None and window is None and return_weights is False
            and type(is_causal) is bool and enable_gqa is False and query_lengths is None
            and key_lengths is None and return_lse is False and softcap is None
            and type(dropout_p) in (int, float) and dropout_p == 0 and seed is None
            and _pinned.isa < 0):
        result = _core.plain_sdpa(Q, K, V, scale, _PLAIN_BANDS[is_causal])
        if result is None:
            result = _plain_batch_sdpa(Q, K, V, scale, _PLAIN_BANDS[is_causal])
        if result is not None:
            return result
    func = "scaled_dot_product_attention"
    Q, K, V = _as_matrices(func, *_QKV(Q, K, V))
    return_weights = _flag(func, "return_weights", return_weights)
    groups, Q, K, V = _grouped_operands(func, Q, K, V, enable_gqa)
    return_lse = _flag(func, "return_lse", return_lse)
    batch, scale, visibility, mask, result, compute = _attention_operands(
        func, Q, K, V, mask, is_causal, scale, bias=bias, window=window, groups=groups)
    # lengths index the caller's batch axes (the query heads, not the groups of the kernels')
    lengths = _lengths(func, query_lengths, key_lengths, _ungrouped_batch(batch, groups),
                       Q.shape[-2], K.shape[-2])
    softcap, dropout = _softcap(func, softcap), _dropout(func, dropout_p, seed)
    lse = None
    if return_lse:
        _check_size(func, batch + Q.shape[-2:-1], compute)
        lse = np.empty(batch + Q.shape[-2:-1], dtype=compute)
    out, weights = _attend(func, batch, Q, K, V, mask, scale, visibility, compute, return_weights,
                           lengths=lengths, lse=lse, softcap=softcap, dropout=dropout)
    if groups is not None:
        out, weights = _ungroup_heads(out), weights if weights is None else _ungroup_heads(weights)
        lse = lse if lse is None else _ungroup_heads(lse[..., None])[..., 0]
    returned = _finish_attention(out, weights, result)
    if lse is None:
        return returned
    return (returned if isinstance(returned, tuple) else (returned,)) + (_finish(lse, result, "lse"),)


@_public_call
def self_attention_layer(X, W_q, W_k, W_v, *, scale=None, mask=None, bias=None,
                         is_causal=False, return_weights=False, window=None, query_lengths=None,
                         key_lengths=None, softcap=None, dropout_p=0.0, seed=None):
    """A full single-head self-attention layer: project X to Q, K, V, then attend.

    Step 4 of the notebook. To rounding (the fused kernel adds in its own order)::

        Q, K, V = X @ W_q, X @ W_k, X @ W_v
        weights = softmax_attention_weights(compute_self_attention_scores(Q, K, scale=..., ...))
        output  = compute_attention_output(weights, V)

    computed by a fused kernel (the weights are never stored unless ``return_weights=True``).

    Parameters
    ----------
    X : array_like, shape (..., n, d_model)
        Token embeddings, one row per token.
    W_q, W_k : array_like, shape (..., d_model, d_k)
        Query and key projections (``Q = X @ W_q``).
    W_v : array_like, shape (..., d_model, d_v)
        Value projection; the notebook uses ``d_v = d_k``.
    scale : float, optional
        Default ``1/sqrt(d_k)`` (scaled dot-product attention); ``1.0`` for raw dot products.
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., n, n)``; bool True = may attend, float = added to the scores.
    bias : array_like of float, optional
        Broadcastable to ``(..., n, n)``: added to the scaled scores where ``mask`` allows (see
        :func:`scaled_dot_product_attention`).
    is_causal : bool, "top_left", "bottom_right" or None, optional
        Token ``i`` attends only to tokens ``j <= i`` (with ``n_q = n_k`` the two alignments
        agree).
    return_weights : bool, optional
        Also return the ``(..., n, n)`` attention weights.
    window : (left, right), optional
        Token ``i`` attends only to tokens ``i - left .. i + right`` (ints >= 0, None =
        unbounded), together with ``is_causal`` and ``mask`` (see
        :func:`scaled_dot_product_attention`).
    query_lengths, key_lengths : int or array_like of int, optional
        Per-sequence lengths of a padded batch, one per entry of the first batch axis (of the
        batch shape X and the weights broadcast to; any prefix of it, see
        :func:`scaled_dot_product_attention`): tokens at or past their query length give output
        0, tokens at or past their key length are attended by none. For a padded batch of
        self-attention pass the same lengths to both.
    softcap, dropout_p, seed : optional
        Logit soft-capping and dropout on the weights, as in
        :func:`scaled_dot_product_attention`.

    Returns
    -------
    output : ndarray, shape (..., n, d_v)
    weights : ndarray, shape (..., n, n)
        Only with ``return_weights=True``.

    Raises
    ------
    ValueError
        If an input has fewer than 2 dimensions, a weight matrix does not have ``d_model`` rows
        (with a hint when it looks transposed), W_q and W_k differ in width, batch dimensions or
        the mask do not broadcast, or the result is too large to allocate.
    TypeError
        For complex, object, string or integer-mask inputs, or non-bool flags.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import self_attention_layer
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # 3 tokens, d_model = 2
    >>> I = np.eye(2)
    >>> out, w = self_attention_layer(X, I, I, I, return_weights=True)
    >>> out.shape, w.shape
    ((3, 2), (3, 3))
    >>> w.sum(axis=-1)                                       # each row of weights sums to 1
    array([1., 1., 1.])
    """
    if (mask is None and bias is None and window is None and return_weights is False
            and type(is_causal) is bool and query_lengths is None and key_lengths is None
            and softcap is None and type(dropout_p) in (int, float) and dropout_p == 0
            and seed is None and _pinned.isa < 0):
        result = _core.plain_layer(X, W_q, W_k, W_v, scale, _PLAIN_BANDS[is_causal])
        if result is not None:
            return result
    func = "self_attention_layer"
    return_weights = _flag(func, "return_weights", return_weights)
    L = _Layer(func, X, W_q, W_k, W_v, None, None, scale, mask, is_causal, bias=bias,
               window=window, lengths=(query_lengths, key_lengths), softcap=softcap,
               dropout_p=dropout_p, seed=seed)
    out, weights = _on_one_tier(lambda: L.attend(*L.project(), return_weights))
    return _finish_attention(out, weights, L.result)
