"""The public functions: validation, dtype rules and messages (policy) around the C kernels.

Every function here follows the same steps:

1. read each argument as an array and reject kinds we cannot compute with (TypeError);
2. check the shapes, naming the function, the argument, the shapes received and the rule (ValueError);
3. pick the result dtype (float32 stays float32, float64 stays float64, float16 is computed in
   float32, ints and bools become float64, mixed floats promote as NumPy does);
4. refuse results too large to address before any work, broadcast every operand to one batch shape
   (views, no copies), and hand the kernel aligned arrays whose rows are contiguous;
5. run the kernel (selfattn._core) and return a new array; inputs are never modified.

Before step 1, each function offers its arguments to a `_core.plain_*` entry point, which handles
the notebook's common case (2-D, same-dtype, C-ordered arrays, no mask) entirely in C and returns
None for anything else, errors included. At the notebook's sizes the general path's overhead would
otherwise cost more than the arithmetic.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import _core

__all__ = [
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
    "scaled_dot_product_attention",
]

_ISA_DEFAULT = -1  # the process-wide tier (selfattn.set_isa / SELFATTN_ISA)
_ISA_REFERENCE = _core.isa_code("reference")

try:  # NumPy >= 1.25
    from numpy.exceptions import AxisError as _AxisError
except ImportError:  # pragma: no cover - NumPy 1.23/1.24
    _AxisError = np.AxisError


# ---- step 1: arguments as arrays -------------------------------------------------------------

_KIND_NAMES = {
    "c": "complex",
    "O": "object",
    "U": "string",
    "S": "bytes",
    "M": "datetime",
    "m": "timedelta",
    "V": "structured (void)",
}


def _as_array(func, name, value):
    """`value` as an ndarray of a kind we can compute with, or a clear TypeError/ValueError."""
    if value is None:
        raise TypeError(
            f"{func}: {name} is None; pass an array (a function that ends without `return`, "
            f"like the notebook's unfinished `pass` stubs, returns None)"
        )
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{func}: {name} could not be read as an array ({exc}); pass a NumPy array or a "
            f"rectangular nested list of numbers"
        ) from None
    kind = arr.dtype.kind
    if kind in "biu" or (kind == "f" and arr.dtype.itemsize <= 8):
        return arr
    if kind == "f":
        raise TypeError(
            f"{func}: {name} has dtype {arr.dtype}, which selfattn does not compute in; "
            f"convert it with {name}.astype(np.float64)"
        )
    what = _KIND_NAMES.get(kind, str(arr.dtype))
    hint = ""
    if kind == "O":
        hint = " (a ragged nested list, with rows of different lengths, becomes an object array)"
    raise TypeError(
        f"{func}: {name} has dtype {arr.dtype} ({what}){hint}; selfattn needs real numbers: "
        f"float32, float64, float16, or integers and booleans (computed as float64)"
    )


def _require_matrix(func, name, arr, expected):
    if arr.ndim < 2:
        raise ValueError(
            f"{func}: {name} must have at least 2 dimensions {expected}, got {name}.shape={arr.shape}"
            + (f"; for a single token use {name}[None, :] (shape (1, {arr.shape[0]}))"
               if arr.ndim == 1 else "")
        )


def _flag(func, name, value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{func}: {name} must be True or False, got {value!r}")


def _scale(func, scale, d_k):
    """The factor applied to Q.K^T; None means 1/sqrt(d_k) (1.0 when d_k is 0)."""
    if scale is None:
        return 1.0 / math.sqrt(d_k) if d_k > 0 else 1.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        if isinstance(scale, np.ndarray) and scale.ndim == 0 and scale.dtype.kind in "iuf":
            scale = scale.item()
        else:
            raise TypeError(f"{func}: scale must be a real number or None, got {scale!r}")
    try:
        scale = float(scale)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        raise ValueError(f"{func}: scale must be finite, got an integer too large for a float "
                         f"({scale.bit_length()} bits)") from None
    if not math.isfinite(scale):
        raise ValueError(f"{func}: scale must be finite, got {scale}")
    return scale


# ---- step 3: dtypes ----------------------------------------------------------------------------

def _dtypes(*arrays):
    """(result dtype, compute dtype) for these inputs."""
    float_dtypes = [np.dtype(np.float64) if a.dtype.kind in "biu" else a.dtype for a in arrays]
    result = np.result_type(*float_dtypes).newbyteorder("=")
    compute = np.dtype(np.float32) if result == np.float16 else result
    return result, compute


# ---- step 4: shapes, sizes and kernel-ready operands -----------------------------------------

def _batch_shape(func, named):
    """Broadcast the leading (batch) dimensions of (name, array, core_ndim) triples."""
    shapes = [a.shape[: a.ndim - core] for _, a, core in named]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        listed = ", ".join(f"{name}.shape[:-{core}]={s}" for (name, _, core), s in zip(named, shapes))
        raise ValueError(
            f"{func}: the batch (leading) dimensions do not broadcast: {listed}; each must be "
            f"equal or 1, as in np.matmul"
        ) from None


def _check_size(func, shape, dtype):
    count = math.prod(shape)
    if count * dtype.itemsize > np.iinfo(np.intp).max:
        raise ValueError(
            f"{func}: the result would have shape {tuple(shape)} ({count:,} elements), which is "
            f"too large to allocate"
        )


def _operand(arr, compute, batch):
    """`arr` in the compute dtype with contiguous aligned rows, viewed with the batch shape."""
    if arr.dtype != compute:
        arr = arr.astype(compute, order="C")  # order "K" would keep a Fortran layout
    elif (arr.ndim and arr.shape[-1] > 1 and arr.strides[-1] != arr.itemsize) or not arr.flags.aligned:
        arr = arr.copy(order="C")    # a copy is aligned even where the input is contiguous
    shape = batch + arr.shape[-2:]
    return arr if arr.shape == shape else np.broadcast_to(arr, shape)


def _mask(func, mask, n_q, n_k, compute):
    """The mask as (array of at least 2 dims, ready-to-broadcast), or None."""
    if mask is None:
        return None
    arr = _as_array(func, "mask", mask)
    if arr.dtype.kind in "iu":
        raise TypeError(
            f"{func}: mask has integer dtype {arr.dtype}, whose meaning is ambiguous; pass a "
            f"boolean mask (True = may attend), e.g. mask.astype(bool), or a float mask that is "
            f"added to the scores (0 = keep, -inf = hide)"
        )
    if arr.ndim < 2:
        arr = arr.reshape((1,) * (2 - arr.ndim) + arr.shape)
    rows, cols = arr.shape[-2:]
    if rows not in (1, n_q) or cols not in (1, n_k):
        raise ValueError(
            f"{func}: mask.shape={np.shape(mask)} does not broadcast to the scores' shape "
            f"(..., n_q, n_k) = (..., {n_q}, {n_k}); its last two dimensions must be "
            f"{n_q} (or 1) and {n_k} (or 1)"
        )
    if arr.dtype.kind == "f":
        arr = arr.astype(compute, copy=False)
    return arr


def _finish(out, result_dtype):
    return out if out.dtype == result_dtype else out.astype(result_dtype)


# ---- the shared attention front end -----------------------------------------------------------

def _attention_operands(func, Q, K, V, mask, is_causal, scale, names=("Q", "K", "V")):
    """Validated, kernel-ready operands for scores (V is None) or full attention."""
    q_name, k_name, v_name = names
    d_k = Q.shape[-1]
    if K.shape[-1] != d_k:
        hint = ""
        if K.shape[-2] == d_k:
            hint = (f" {k_name} looks transposed: pass {k_name} as (n_k, d_k), not {k_name}.T; "
                    f"selfattn transposes it for you")
        raise ValueError(
            f"{func}: {q_name} has d_k={d_k} ({q_name}.shape={Q.shape}) but {k_name} has "
            f"d_k={K.shape[-1]} ({k_name}.shape={K.shape}); the last dimensions of {q_name} and "
            f"{k_name} must match.{hint}"
        )
    n_q, n_k = Q.shape[-2], K.shape[-2]
    named = [(q_name, Q, 2), (k_name, K, 2)]
    arrays = [Q, K]
    if V is not None:
        if V.shape[-2] != n_k:
            raise ValueError(
                f"{func}: {k_name} has n_k={n_k} keys ({k_name}.shape={K.shape}) but {v_name} has "
                f"{V.shape[-2]} rows ({v_name}.shape={V.shape}); every key needs one value row, "
                f"so {v_name}.shape[-2] must equal {k_name}.shape[-2]"
            )
        named.append((v_name, V, 2))
        arrays.append(V)
    causal = _flag(func, "is_causal", is_causal)
    scale = _scale(func, scale, d_k)
    result, compute = _dtypes(*arrays)
    mask = _mask(func, mask, n_q, n_k, compute)
    if mask is not None:
        named.append(("mask", mask, 2))
    batch = _batch_shape(func, named)
    return batch, scale, causal, mask, result, compute


def _mask_operand(mask, batch, n_q, n_k):
    if mask is None:
        return None
    if not mask.flags.aligned:
        mask = mask.copy(order="C")
    return np.broadcast_to(mask, batch + (n_q, n_k))


def _attend(func, batch, Q, K, V, mask, scale, causal, result, compute,
            return_weights):
    """Runs the attention kernel; Q, K, V are already validated arrays."""
    n_q, n_k, d_v = Q.shape[-2], K.shape[-2], V.shape[-1]
    _check_size(func, batch + (n_q, d_v), compute)
    if return_weights:
        _check_size(func, batch + (n_q, n_k), compute)
    out = np.empty(batch + (n_q, d_v), dtype=compute)
    weights = np.empty(batch + (n_q, n_k), dtype=compute) if return_weights else None
    if out.size or (weights is not None and weights.size):
        Qb, Kb, Vb = (_operand(a, compute, batch) for a in (Q, K, V))
        # The fast kernels multiply every weight into V; a key whose weight is 0 must contribute
        # nothing even if its V row is inf or NaN, which only the reference kernels guarantee.
        isa = _ISA_DEFAULT if np.isfinite(Vb).all() else _ISA_REFERENCE
        _core.attention(out, weights, Qb, Kb, Vb, _mask_operand(mask, batch, n_q, n_k),
                        scale, causal, isa)
    out = _finish(out, result)
    if return_weights:
        return out, _finish(weights, result)
    return out


def _check_projections(func, X, W_q, W_k, W_v, heads=None):
    """X is (..., n, d_model) and each W is (..., d_model, width), W_q and W_k of one width (which
    `heads`, when given, divides)."""
    _require_matrix(func, "X", X, "(seq_len, d_model)")
    d_model = X.shape[-1]
    width = "num_heads * d_head" if heads is not None else "d"
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)):
        _require_matrix(func, name, W, f"(d_model, {width})")
        if W.shape[-2] != d_model:
            hint = ""
            if W.shape[-1] == d_model:
                hint = (f" {name} looks transposed: selfattn computes X @ {name}, so pass it as "
                        f"(d_model, {width}), e.g. {name}.T")
            raise ValueError(
                f"{func}: X has d_model={d_model} (X.shape={X.shape}) but {name} has "
                f"{W.shape[-2]} rows ({name}.shape={W.shape}); each projection must be "
                f"(d_model, {width}) so that X @ {name} works.{hint}"
            )
        if heads is not None and W.shape[-1] % heads:
            raise ValueError(
                f"{func}: {name} has width {W.shape[-1]} ({name}.shape={W.shape}), which "
                f"num_heads={heads} does not divide; head h takes columns "
                f"[h * d_head, (h + 1) * d_head), so the width must be num_heads * d_head"
            )
    if W_q.shape[-1] != W_k.shape[-1]:
        what = "d_k=" if heads is None else "width "
        raise ValueError(
            f"{func}: W_q makes queries of {what}{W_q.shape[-1]} (W_q.shape={W_q.shape}) but W_k "
            f"makes keys of {what}{W_k.shape[-1]} (W_k.shape={W_k.shape}); queries and keys must "
            f"have the same width to be compared"
        )


# ---- the public functions ---------------------------------------------------------------------

def compute_self_attention_scores(Q, K, *, scale=None, mask=None, is_causal=False):
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
    is_causal : bool, optional
        If True, query ``i`` sees only keys ``j <= i`` (top-left aligned when ``n_q != n_k``,
        as in torch); later keys score ``-inf``. Combined with ``mask``, a key is visible only if
        both allow it.

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
        For complex, object, string or integer-mask inputs, or a non-bool ``is_causal``.

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
    if mask is None and type(is_causal) is bool:
        result = _core.plain_scores(Q, K, scale, is_causal)
        if result is not None:
            return result
    func = "compute_self_attention_scores"
    Q = _as_array(func, "Q", Q)
    K = _as_array(func, "K", K)
    _require_matrix(func, "Q", Q, "(n_q, d_k)")
    _require_matrix(func, "K", K, "(n_k, d_k)")
    batch, scale, causal, mask, result, compute = _attention_operands(
        func, Q, K, None, mask, is_causal, scale)
    n_q, n_k = Q.shape[-2], K.shape[-2]
    _check_size(func, batch + (n_q, n_k), compute)
    out = np.empty(batch + (n_q, n_k), dtype=compute)
    if out.size:
        _core.scores(out, _operand(Q, compute, batch), _operand(K, compute, batch),
                     _mask_operand(mask, batch, n_q, n_k), scale, causal, _ISA_DEFAULT)
    return _finish(out, result)


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
    if axis == -1 and type(axis) is int:
        result = _core.plain_softmax(attn_scores)
        if result is not None:
            return result
    func = "softmax_attention_weights"
    x = _as_array(func, "attn_scores", attn_scores)
    if x.ndim == 0:
        raise ValueError(f"{func}: attn_scores must have at least 1 dimension, got a scalar")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{func}: axis must be an integer, got {axis!r}") from None
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
        _core.softmax(out, _operand(moved, compute, batch), _ISA_DEFAULT)
    out = out.reshape(np.moveaxis(x, axis, -1).shape)
    if axis != x.ndim - 1:
        out = np.ascontiguousarray(np.moveaxis(out, -1, axis))
    return _finish(out, result)


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
    result = _core.plain_matmul(attn_weights, V)
    if result is not None:
        return result
    func = "compute_attention_output"
    W = _as_array(func, "attn_weights", attn_weights)
    V = _as_array(func, "V", V)
    _require_matrix(func, "attn_weights", W, "(n_q, n_k)")
    _require_matrix(func, "V", V, "(n_k, d_v)")
    n_q, n_k = W.shape[-2:]
    if V.shape[-2] != n_k:
        hint = ""
        if V.shape[-1] == n_k:
            hint = " V looks transposed: pass V as (n_k, d_v), one row per key"
        raise ValueError(
            f"{func}: attn_weights has n_k={n_k} columns (attn_weights.shape={W.shape}) but V has "
            f"{V.shape[-2]} rows (V.shape={V.shape}); the last dimension of attn_weights must "
            f"equal the number of rows of V (one value row per key).{hint}"
        )
    batch = _batch_shape(func, [("attn_weights", W, 2), ("V", V, 2)])
    result, compute = _dtypes(W, V)
    d_v = V.shape[-1]
    _check_size(func, batch + (n_q, d_v), compute)
    out = np.empty(batch + (n_q, d_v), dtype=compute)
    if out.size:
        _core.matmul(out, _operand(W, compute, batch), _operand(V, compute, batch), _ISA_DEFAULT)
    return _finish(out, result)


def scaled_dot_product_attention(Q, K, V, *, scale=None, mask=None, is_causal=False,
                                 return_weights=False):
    """Attention from queries, keys and values: ``softmax(Q @ K^T * scale + mask) @ V``.

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
    is_causal : bool, optional
        Query ``i`` sees only keys ``j <= i``. Combined with ``mask`` (both must allow).
    return_weights : bool, optional
        Also return the attention weights (this stores them: O(n_q * n_k) memory).

    Returns
    -------
    output : ndarray, shape (..., n_q, d_v)
        A query whose keys are all masked gets an output row of zeros (never NaN). A key with
        weight 0 contributes nothing, even if its row of V holds inf or NaN.
    weights : ndarray, shape (..., n_q, n_k)
        Only with ``return_weights=True``.

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
    """
    if mask is None and return_weights is False and type(is_causal) is bool:
        result = _core.plain_sdpa(Q, K, V, scale, is_causal)
        if result is not None:
            return result
    func = "scaled_dot_product_attention"
    Q = _as_array(func, "Q", Q)
    K = _as_array(func, "K", K)
    V = _as_array(func, "V", V)
    _require_matrix(func, "Q", Q, "(n_q, d_k)")
    _require_matrix(func, "K", K, "(n_k, d_k)")
    _require_matrix(func, "V", V, "(n_k, d_v)")
    return_weights = _flag(func, "return_weights", return_weights)
    batch, scale, causal, mask, result, compute = _attention_operands(
        func, Q, K, V, mask, is_causal, scale)
    return _attend(func, batch, Q, K, V, mask, scale, causal, result, compute,
                   return_weights)


def self_attention_layer(X, W_q, W_k, W_v, *, scale=None, mask=None, is_causal=False,
                         return_weights=False):
    """A full single-head self-attention layer: project X to Q, K, V, then attend.

    Step 4 of the notebook. Exactly::

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
    is_causal : bool, optional
        Token ``i`` attends only to tokens ``j <= i``.
    return_weights : bool, optional
        Also return the ``(..., n, n)`` attention weights.

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
    if mask is None and return_weights is False and type(is_causal) is bool:
        result = _core.plain_layer(X, W_q, W_k, W_v, scale, is_causal)
        if result is not None:
            return result
    func = "self_attention_layer"
    X = _as_array(func, "X", X)
    W_q = _as_array(func, "W_q", W_q)
    W_k = _as_array(func, "W_k", W_k)
    W_v = _as_array(func, "W_v", W_v)
    _check_projections(func, X, W_q, W_k, W_v)
    return_weights = _flag(func, "return_weights", return_weights)
    causal = _flag(func, "is_causal", is_causal)
    result, compute = _dtypes(X, W_q, W_k, W_v)
    n, d_k, d_v = X.shape[-2], W_q.shape[-1], W_v.shape[-1]
    scale = _scale(func, scale, d_k)
    mask = _mask(func, mask, n, n, compute)
    named = [("X", X, 2), ("W_q", W_q, 2), ("W_k", W_k, 2), ("W_v", W_v, 2)]
    proj_batch = _batch_shape(func, named)
    batch = _batch_shape(func, named + ([("mask", mask, 2)] if mask is not None else []))
    _check_size(func, proj_batch + (n, 2 * d_k + d_v), compute)

    # One pass over X for all three projections: X @ [W_q | W_k | W_v].
    w_batch = _batch_shape(func, named[1:])
    W_all = np.concatenate([np.broadcast_to(W.astype(compute, copy=False), w_batch + W.shape[-2:])
                            for W in (W_q, W_k, W_v)], axis=-1)
    QKV = np.empty(proj_batch + (n, 2 * d_k + d_v), dtype=compute)
    if QKV.size:
        _core.matmul(QKV, _operand(X, compute, proj_batch), _operand(W_all, compute, proj_batch),
                     _ISA_DEFAULT)
    Q, K, V = QKV[..., :d_k], QKV[..., d_k: 2 * d_k], QKV[..., 2 * d_k:]
    return _attend(func, batch, Q, K, V, mask, scale, causal, result, compute,
                   return_weights)
