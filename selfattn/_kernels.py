"""Python's side of a kernel call: kernel-ready operands, outputs, and one function per operation.

The checks are done (selfattn/_validate.py); here the operands become what attn.h asks for (the
compute dtype, aligned, rows contiguous, broadcast to one batch shape without copies), the outputs
are allocated, and selfattn._core runs. Which tier runs a call is decided in C (csrc/dispatch.c),
including the non-finite policy: a weight of exactly 0 contributes nothing, even against inf or
NaN in the values it weighs.
"""
from __future__ import annotations

import functools
import math
import sys
import threading

import numpy as np

from . import _core, _scratch
from ._validate import _check_size, _narrowed

_ISA_DEFAULT = -1  # the process-wide tier (selfattn.set_isa / SELFATTN_ISA)
_UNBOUNDED = sys.maxsize  # a side of a band that hides nothing (the glue clamps it to n_q + n_k)
class _Pinned(threading.local):
    isa = _ISA_DEFAULT  # the tier this thread's running call pinned (_on_one_tier), or -1


_pinned = _Pinned()


def _isa():
    """The tier for the next kernel: the one the running public call pinned, else the process-wide
    one (-1: read by the kernel as it starts)."""
    return _pinned.isa


def _on_one_tier(run):
    """run(), which runs several kernels (projections, attention, gradients), with every kernel on
    the tier set as it starts: otherwise set_isa in another thread during the call ran its steps
    on two tiers, whose mixed bits no single tier gives."""
    if _pinned.isa != _ISA_DEFAULT:             # inside a pinned call: already pinned
        return run()
    _pinned.isa = _core.isa_code(_core.get_isa())
    try:
        return run()
    finally:
        _pinned.isa = _ISA_DEFAULT


def _one_tier(function):
    """`function` (a public call) run by _on_one_tier."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        __tracebackhide__ = True
        return _on_one_tier(lambda: function(*args, **kwargs))
    return call


def _band(visibility, n_q, n_k, lengths=None):
    """The kernels' band (csrc/attn.h's sa_band) from _validate's visibility (diagonal, left,
    right) or None: (lo, hi), query i seeing the keys i + lo <= j <= i + hi; with per-item
    lengths (_validate._lengths), (lo, hi, from_end, query_lengths, key_lengths), where from_end
    (bottom-right) counts lo and hi from each item's own diagonal, i + key_length - query_length
    (its last query on its last key), as flash-attn's varlen does."""
    if visibility is None:
        diagonal, left, right = None, None, None
    else:
        diagonal, left, right = visibility
    from_end = diagonal == "bottom_right"
    # without lengths every item's diagonal is the call's: the offset is applied here
    offset = n_k - n_q if from_end and lengths is None else 0
    lo = -_UNBOUNDED if left is None else max(offset - left, -_UNBOUNDED)
    hi = _UNBOUNDED if right is None else min(offset + right, _UNBOUNDED)
    if lengths is None:
        return lo, hi
    return (lo, hi, from_end) + tuple(lengths)


def _operand(arr, compute, batch):
    """`arr` in the compute dtype with contiguous aligned rows, viewed with the batch shape.

    Where arr must be converted or copied, only its distinct rows are: an axis it is broadcast
    along (stride 0) stays broadcast, so a broadcast input costs no more memory than its data."""
    if (arr.dtype != compute or not arr.flags.aligned
            or (arr.ndim and arr.shape[-1] > 1 and arr.strides[-1] != arr.itemsize)):
        distinct = arr[tuple(slice(0, 1) if stride == 0 else slice(None)
                             for stride in arr.strides[:-1])]
        # order "C" (not "K", which would keep a Fortran layout); a copy is always aligned
        arr = np.broadcast_to(distinct.astype(compute, order="C"), arr.shape)
    shape = batch + arr.shape[-2:]
    return arr if arr.shape == shape else np.broadcast_to(arr, shape)


def _mask_operand(mask, batch, n_q, n_k):
    if mask is None:
        return None
    if not mask.flags.aligned:
        mask = mask.copy(order="C")
    return np.broadcast_to(mask, batch + (n_q, n_k))


def _finish(out, result_dtype, what="result"):
    return out if out.dtype == result_dtype else _narrowed(out, result_dtype, what)


def _finish_attention(out, weights, result_dtype):
    """An attention function's return value: the output, or (output, weights) when computed."""
    if weights is None:
        return _finish(out, result_dtype)
    return _finish(out, result_dtype, "output"), _finish(weights, result_dtype, "weights")


def _head_axes(heads):
    """The head axes of a layout: (heads,), or grouped-query attention's (kv_heads, group)."""
    return heads if isinstance(heads, tuple) else (heads,)


def _split_heads(A, heads):
    """(..., n, heads * d) -> the view (..., heads, n, d); None heads means single-head (A).
    With heads = (kv_heads, group) (grouped-query attention): (..., n, kv_heads * group * d) ->
    (..., kv_heads, group, n, d)."""
    if heads is None:
        return A
    axes = _head_axes(heads)
    view = A.reshape(A.shape[:-1] + axes + (A.shape[-1] // math.prod(axes),))
    assert np.may_share_memory(view, A) or A.size == 0  # a view, never a copy
    return np.moveaxis(view, -2 - len(axes), -2)


def _empty_rows(shape, dtype):
    """np.empty(shape, dtype) for an internal array whose heads are read or written as strided
    views (multi-head Q, K, V, their gradients): a row of a multiple of 1 KiB is padded by one
    cache line. With such a stride the rows of a head's view fall on a few L1 sets only (at
    6 KiB, [Q|K|V] of d_model = 512 float32, on 8 of 64) and evict each other: the fused
    attention and its backward took 15% / 22% longer on them (8 heads of 64, n = 1024). Only
    the row stride changes; the values (and so the bits) are the same."""
    row_bytes = shape[-1] * np.dtype(dtype).itemsize
    if row_bytes == 0 or row_bytes % 1024:
        return _scratch.empty(shape, dtype)
    padded = _scratch.empty(tuple(shape[:-1]) + (shape[-1] + 64 // np.dtype(dtype).itemsize,),
                            dtype)
    return padded[..., :shape[-1]]


def _matmul(A, B, compute, batch, padded=False, a_t=False, b_t=False, add_to=None):
    """A @ B on the matmul kernel, A and B broadcast to `batch`; `padded`: an internal result
    read by heads (_empty_rows). With a_t (b_t), A (B) is given as its transpose, (..., k, m)
    ((..., n, k)): the kernel reads it where it is, with the bits of a transposed copy (a
    gradient's X^T @ dP, dP @ W^T). With add_to (an array of the result's shape and dtype), the
    product is added to it in place and it is returned."""
    m = A.shape[-1] if a_t else A.shape[-2]
    n = B.shape[-2] if b_t else B.shape[-1]
    out = add_to
    if out is None:
        out = (_empty_rows if padded else np.empty)(batch + (m, n), compute)
    layout = (1 if a_t else 0) | (2 if b_t else 0) | (4 if add_to is not None else 0)
    if out.size:
        _core.matmul(out, _operand(A, compute, batch), _operand(B, compute, batch), _isa(),
                     layout)
    return out


def _project(func, X, Ws, compute, batch, w_batch, biases=None, padded=True):
    """X @ W_1 + b_1, X @ W_2 + b_2, ... (1 to 3 projections; a missing bias is 0) as views of one
    (batch, n, widths) array: _core.project, the one projection path of every layer, one product
    per W into its columns (the W's are never copied side by side). A bias (..., width) has
    batch axes that broadcast to w_batch; the biases travel as one row (w_batch, 1, widths),
    added in C. The views' rows are padded (_empty_rows) unless `padded` is False (a result for
    the user)."""
    n, d_model = X.shape[-2:]
    total = sum(W.shape[-1] for W in Ws)
    w_batch = (1,) * (len(batch) - len(w_batch)) + tuple(w_batch)
    _check_size(func, batch + (n, total), compute)
    QKV = (_empty_rows if padded else np.empty)(batch + (n, total), compute)
    b_all = None
    if biases is not None and any(b is not None for b in biases):
        b_all = np.zeros(w_batch + (1, total), dtype=compute)
        start = 0
        for W, b in zip(Ws, biases):
            if b is not None:
                b_all[..., start: start + W.shape[-1]] = b[..., None, :]
            start += W.shape[-1]
    if QKV.size:
        _core.project(QKV, _operand(X, compute, batch),
                      tuple(_operand(W, compute, w_batch) for W in Ws), b_all, _isa())
    views, start = [], 0
    for W in Ws:
        views.append(QKV[..., start: start + W.shape[-1]])
        start += W.shape[-1]
    return views


def _attend(func, batch, Q, K, V, mask, scale, visibility, compute, return_weights, heads=None,
            lengths=None, lse=None, softcap=0.0, dropout=(0.0, 0)):
    """softmax(scale * Q @ K^T + mask) @ V on the attention kernel, Q, K, V broadcast to `batch`;
    softcap > 0 (from _validate._softcap) caps the scores before the mask; dropout is
    (dropout_p, seed) from _validate._dropout.
    With `heads`, batch ends with the head axis (or axes, _head_axes) and the output is the heads'
    outputs side by side, (batch[:-1], n_q, heads * d_v). `lengths`: _validate._lengths. `lse`:
    None, or an output (batch, n_q) of the compute dtype for each row's log-sum-exp. Returns
    (output, weights or None) in the compute dtype."""
    n_q, n_k, d_v = Q.shape[-2], K.shape[-2], V.shape[-1]
    axes = () if heads is None else _head_axes(heads)
    out_shape = batch[:len(batch) - len(axes)] + (n_q, math.prod(axes) * d_v)
    _check_size(func, out_shape, compute)
    if return_weights:
        _check_size(func, batch + (n_q, n_k), compute)
    # the heads' outputs side by side are a layer's internal array, written head by head
    out = (np.empty if heads is None else _empty_rows)(out_shape, compute)
    weights = np.empty(batch + (n_q, n_k), dtype=compute) if return_weights else None
    if out.size or (weights is not None and weights.size) or (lse is not None and lse.size):
        Qb, Kb, Vb = (_operand(a, compute, batch) for a in (Q, K, V))
        _core.attention(_split_heads(out, heads), weights, Qb, Kb, Vb,
                        _mask_operand(mask, batch, n_q, n_k), scale,
                        _band(visibility, n_q, n_k, lengths), _isa(), lse, softcap,
                        *dropout)
    return out, weights


def _attention_grads(batch, dQ, dK, dV, dO, Q, K, V, mask, scale, visibility, compute,
                     lengths=None, softcap=0.0, dropout=(0.0, 0), out=None):
    """Runs the backward kernel: dQ, dK, dV (outputs, batch shape `batch`) from dO and Q, K, V;
    with `out` (an output of dO's shape), also the forward's output, from the weights the kernel
    builds anyway (a layer's weight gradient needs it: no second forward pass)."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    if n_q == 0 or n_k == 0 or not (dQ.size or dK.size or dV.size):
        for g in (dQ, dK, dV) + (() if out is None else (out,)):
            g[...] = 0            # no query or no key: nothing flows (and no empty operands)
        return
    Qb, Kb, Vb, dOb = (_operand(a, compute, batch) for a in (Q, K, V, dO))
    _core.attention_backward(dQ, dK, dV, dOb, Qb, Kb, Vb, _mask_operand(mask, batch, n_q, n_k),
                             scale, _band(visibility, n_q, n_k, lengths), _isa(), softcap,
                             *dropout, out)
