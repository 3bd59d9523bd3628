"""The gradients of single-head attention: scaled_dot_product_attention_backward and
self_attention_layer_backward, and the gradient pieces multi_head_attention_backward reuses.

The same steps and rules as the forward functions (selfattn/_validate.py): arguments read as
arrays, shapes checked with messages that name the function, the argument, the shapes and the
rule, NumPy's dtype promotion, batch dimensions broadcast, inputs never modified.

Each gradient has the shape of its input: where an input was broadcast along a batch axis (a
weight shared by every sequence of a batch, or by every head), its gradient is summed over that
axis, as the chain rule says and as NumPy users expect. Every gradient is returned in the dtype of
the forward result (float32 for float32 inputs, float64 for float64 or integer inputs).
"""
from __future__ import annotations

import math

import numpy as np

from ._kernels import (
    _attention_grads,
    _empty_rows,
    _finish,
    _matmul,
    _one_tier,
    _split_heads,
)
from ._layer import _Layer
from ._validate import (
    _QKV,
    _as_matrices,
    _attention_operands,
    _check_grad_shape,
    _check_size,
    _dropout,
    _dtypes,
    _group_heads,
    _grouped_operands,
    _lengths,
    _public_call,
    _softcap,
    _ungrouped_batch,
)

__all__ = ["scaled_dot_product_attention_backward", "self_attention_layer_backward"]


# The NumPy steps of the gradients compute as the kernels do, with the IEEE rules and signalling
# nothing whatever np.seterr says: a sum that overflows is inf, inf - inf is NaN, a dO beyond
# the computation's dtype is inf in it (NumPy's bare "overflow encountered in reduce" or "in
# cast" pointed inside selfattn, and np.seterr(all="raise") made it a FloatingPointError).

def _sum(grad, axis, keepdims=False):
    with np.errstate(all="ignore"):
        return grad.sum(axis=axis, keepdims=keepdims)


def _in_dtype(grad, dtype):
    """dO (or dY) in the computation's dtype."""
    with np.errstate(all="ignore"):
        return grad.astype(dtype, copy=False)


def _sum_to(grad, shape):
    """`grad` summed over the axes along which an input of `shape` was broadcast to grad.shape."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = _sum(grad, tuple(range(extra)))
    axes = tuple(i for i, (s, g) in enumerate(zip(shape, grad.shape)) if s == 1 and g != 1)
    if axes:
        grad = _sum(grad, axes, keepdims=True)
    return grad


def _weight_grad(X, G, w_shape, compute):
    """The gradient of a weight W of shape w_shape used as X @ W: sum of X^T @ G over the batch
    axes W was broadcast along. X and G have the full batch shape; the batch axes W does not have
    are folded into the rows, so each is one matmul (its sum runs in one fixed order)."""
    batch = G.shape[:-2]
    nb = len(batch)
    pad = (1,) * (nb - (len(w_shape) - 2)) + tuple(w_shape[:-2])
    kept = [i for i in range(nb) if pad[i] != 1]
    folded = [i for i in range(nb) if pad[i] == 1]
    perm = kept + folded + [nb, nb + 1]
    kshape = tuple(batch[i] for i in kept)
    # the folded row count is spelled out: reshape cannot infer a -1 beside an axis of 0
    rows = math.prod(batch[i] for i in folded) * G.shape[-2]
    A = np.transpose(np.broadcast_to(X, batch + X.shape[-2:]), perm).reshape(kshape + (rows, X.shape[-1]))
    Gf = np.transpose(G, perm).reshape(kshape + (rows, G.shape[-1]))
    out = _matmul(A, Gf, compute, kshape, a_t=True)
    if rows == 0:
        out[...] = 0
    return out.reshape(pad + out.shape[-2:]).reshape(w_shape)


def _layer_input_grads(L, spent, w_o_grad=None):
    """The gradients of layer L's projections from spent = [dO, Q, K, V] (Q, K, V from
    L.project(); dO the gradient of the concatenated heads' output (out_batch, n, num_heads *
    d_v)): a dict with dX, dW_q, dW_k, dW_v, and dkv (cross-attention) and db_q, db_k, db_v for
    the inputs L has. The list is emptied: with the caller keeping no other reference, its arrays
    are freed once the attention's gradients are computed. `w_o_grad` (multi-head): None, or a
    function of the heads' output (L.attend's, of dO's shape) giving dW_o; the attention
    backward fills that output from the weights it builds anyway (no forward pass), and it is
    freed with the rest before the projections' products."""
    dO, Q, K, V = spent
    spent.clear()
    c, n, b = L.compute, L.n, L.out_batch
    wq, wk, wv = L.W_q.shape[-1], L.W_k.shape[-1], L.W_v.shape[-1]
    # One gradient array per projection call: [dQ | dK | dV] from X, or dQ from X and [dK | dV]
    # from kv; each is the matching QKV's layout, so dX = dP @ [W_q | W_k | W_v]^T and
    # [dW_q | dW_k | dW_v] = X^T @ dP.
    if L.KV is None:
        _check_size(L.func, b + (n, wq + wk + wv), c)
        dP = _empty_rows(b + (n, wq + wk + wv), c)
        dQ, dK, dV = dP[..., :wq], dP[..., wq: wq + wk], dP[..., wq + wk:]
        sources = [("dX", L.X, dP, ((L.W_q, 0, wq), (L.W_k, wq, wq + wk),
                                    (L.W_v, wq + wk, wq + wk + wv)))]
    else:
        _check_size(L.func, b + (n, wq), c)
        _check_size(L.func, b + (L.n_k, wk + wv), c)
        dQ = _empty_rows(b + (n, wq), c)
        d_kv = _empty_rows(b + (L.n_k, wk + wv), c)
        dK, dV = d_kv[..., :wk], d_kv[..., wk:]
        sources = [("dX", L.X, dQ, ((L.W_q, 0, wq),)),
                   ("dkv", L.KV, d_kv, ((L.W_k, 0, wk), (L.W_v, wk, wk + wv)))]
    dQh, dOh = _split_heads(dQ, L.heads), _split_heads(dO, L.heads)
    dKh, dVh = _split_heads(dK, L.kv_split), _split_heads(dV, L.kv_split)
    # A K/V head shared by a group of query heads (GQA) is broadcast over the group: the kernel
    # writes each query head's share into a full-batch array, summed into the shared head after.
    dK_all, dV_all = (A if A.shape[:-2] == L.att_batch else np.empty(L.att_batch + A.shape[-2:], c)
                      for A in (dKh, dVh))
    out = None if w_o_grad is None else _empty_rows(dO.shape, c)
    _attention_grads(L.att_batch, dQh, dK_all, dV_all, dOh, Q, K, V, L.mask, L.scale,
                     L.visibility, c, L.lengths, L.softcap, L.dropout,
                     None if out is None else _split_heads(out, L.heads))
    grads = {} if out is None else {"dW_o": w_o_grad(out)}
    # Q, K, V, dO and out are spent: with the callers holding no other reference, their memory
    # goes back to the allocator here and the products' operands and results below reuse it,
    # instead of fresh pages (1 page fault per 4 KiB, ~4500 a call at n = 1024, d_model = 512:
    # 3-8%)
    del Q, K, V, dO, dOh, out
    for A, A_all in ((dKh, dK_all), (dVh, dV_all)):
        if A_all is not A:
            A[...] = _sum_to(A_all, A.shape)
    weight_grads, bias_grads = [], []
    for name, src, dP, parts in sources:
        # dP @ [W_1 | ...]^T, one product per W, each adding to the last (the W's read where
        # they are, never transposed or put side by side)
        d_src = None
        for W, lo, hi in parts:
            d_src = _matmul(dP[..., lo:hi], W, c, b, b_t=True, add_to=d_src)
        grads[name] = _sum_to(d_src, src.shape)
        weight_grads += _packed_weight_grads(src, dP, parts, c)
        # a bias is added to every row: its gradient is dP summed over the rows
        row_sums = _sum(dP, -2) if any(b_ is not None for b_ in L.biases[:3]) else None
        bias_grads += [None if row_sums is None else row_sums[..., lo:hi] for _, lo, hi in parts]
    grads.update(zip(("dW_q", "dW_k", "dW_v"), weight_grads))
    for name, b_, db in zip(("db_q", "db_k", "db_v"), L.biases, bias_grads):
        if b_ is not None:
            grads[name] = _sum_to(db, b_.shape)
    # the packed gradients are column slices of one buffer: each is returned as its own
    # C-contiguous array, as np.matmul's results are (a slice kept the others' memory alive)
    return {name: _own(_finish(g, L.result, name)) for name, g in grads.items()}


def _own(grad):
    return grad if grad.flags.c_contiguous and grad.base is None else grad.copy()


def _packed_weight_grads(src, dP, parts, compute):
    """The gradients of the projections packed side by side in dP (parts: (W, lo, hi), W's
    columns being dP's [lo, hi)): one product src^T @ dP for all of them (src^T, the product's
    packed operand, is copied once), where the W's share their batch shape (the usual case); one
    product per W otherwise (each W summed over its own broadcast axes)."""
    shapes = {W.shape[:-1] for W, _, _ in parts}
    if len(shapes) > 1:
        return [_weight_grad(src, dP[..., lo:hi], W.shape, compute) for W, lo, hi in parts]
    dW_all = _weight_grad(src, dP, shapes.pop() + (dP.shape[-1],), compute)
    return [dW_all[..., lo:hi] for _, lo, hi in parts]


@_public_call
@_one_tier
def scaled_dot_product_attention_backward(dO, Q, K, V, *, scale=None, mask=None, bias=None,
                                          is_causal=False, window=None, enable_gqa=False,
                                          query_lengths=None, key_lengths=None, softcap=None,
                                          dropout_p=0.0, seed=None):
    """Gradients of :func:`scaled_dot_product_attention`: ``(dQ, dK, dV)`` given ``dO``.

    For ``O = softmax(S) @ V`` with ``S = Q @ K^T * scale + mask`` and ``P = softmax(S)`` (by rows),
    and ``dO = dLoss/dO``::

        dV = P^T @ dO
        dP = dO @ V^T;   D = (P * dP).sum(-1, keepdims=True)   # = (dO * O).sum(-1)
        dS = P * (dP - D)
        dQ = dS @ K * scale;   dK = dS^T @ Q * scale

    With ``softcap``, S holds the capped scores ``c * tanh(R / c)`` (R = Q @ K^T * scale) and
    dS is multiplied by their slope ``1 - tanh(R / c)**2`` before dQ and dK. With dropout
    (``Z`` = 0 for a dropped weight, ``1 / (1 - dropout_p)`` for a kept one, ``O = (P * Z) @ V``):
    ``dV = (P * Z)^T @ dO`` and ``dP = Z * (dO @ V^T)``.

    computed in C block by block (FlashAttention-2 style): the ``n_q x n_k`` weights are never
    stored. Each thread keeps one panel of 128 query rows by every key (64 in float64; fewer, down
    to 16, so that it stays under 8 MiB); where even that would not fit, the weights are recomputed block by block from each row's max and sum, so memory
    stays proportional to ``n * d``. The mask and the bias get no gradient (the bias's would be
    ``dS`` summed over its broadcast axes; selfattn treats both as constants).

    Parameters
    ----------
    dO : array_like, shape (..., n_q, d_v)
        Gradient of the loss with respect to the attention output; exactly the shape
        :func:`scaled_dot_product_attention` returns for these arguments.
    Q, K, V, scale, mask, bias, is_causal, window, enable_gqa, query_lengths, key_lengths, softcap
        As in :func:`scaled_dot_product_attention`. Keys outside the band get no gradient from a
        query, and a query that sees no key gets ``dQ = 0``; rows past their query length get
        ``dQ = 0`` and give nothing; keys past their key length get ``dK = dV = 0``.
    dropout_p, seed : optional
        As in the forward; with ``dropout_p > 0`` the seed is required (the forward's), so the
        backward drops the same weights.

    Returns
    -------
    dQ : ndarray, shape of Q
    dK : ndarray, shape of K
    dV : ndarray, shape of V
        Where an input was broadcast along a batch axis (e.g. one K shared by a batch of Q), its
        gradient is summed over that axis; with ``enable_gqa``, each K/V head's gradient is the
        sum over the query heads that share it. A query whose keys are all masked gets
        ``dQ = 0`` and gives nothing to ``dK``, ``dV``; a key with weight 0 gets nothing from
        that query, even if its V row or ``dO`` holds inf or NaN. Dtype: that of the forward
        output.

    Raises
    ------
    ValueError
        If ``dO`` does not have the forward output's shape, and for everything
        :func:`scaled_dot_product_attention` rejects.
    TypeError
        As in :func:`scaled_dot_product_attention`.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import scaled_dot_product_attention, scaled_dot_product_attention_backward
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 4, 2))
    >>> dO = np.ones((4, 2))                      # the gradient of loss = out.sum()
    >>> dQ, dK, dV = scaled_dot_product_attention_backward(dO, Q, K, V)
    >>> dV.sum(axis=0)                            # each query's weights sum to 1
    array([4., 4.])
    >>> eps = 1e-6; Q2 = Q.copy(); Q2[0, 0] += eps     # check one entry by finite differences
    >>> fd = (scaled_dot_product_attention(Q2, K, V).sum()
    ...       - scaled_dot_product_attention(Q, K, V).sum()) / eps
    >>> bool(abs(fd - dQ[0, 0]) < 1e-5)
    True
    """
    func = "scaled_dot_product_attention_backward"
    dO, Q, K, V = _as_matrices(func, ("dO", dO, "(n_q, d_v)"), *_QKV(Q, K, V))
    shapes = Q.shape, K.shape, V.shape
    groups, Q, K, V = _grouped_operands(func, Q, K, V, enable_gqa)
    batch, scale, visibility, mask, result, _ = _attention_operands(func, Q, K, V, mask, is_causal,
                                                                scale, bias=bias, window=window,
                                                                groups=groups)
    softcap = _softcap(func, softcap)
    dropout = _dropout(func, dropout_p, seed, backward=True)
    n_q, n_k, d_k, d_v = Q.shape[-2], K.shape[-2], Q.shape[-1], V.shape[-1]
    out_batch = _ungrouped_batch(batch, groups)
    _check_grad_shape(func, "dO", dO, out_batch + (n_q, d_v), "output")
    if groups is not None:
        dO = _group_heads(dO, *groups)
    compute = _dtypes(Q, K, V)[1]
    for shape in ((n_q, d_k), (n_k, d_k), (n_k, d_v)):
        _check_size(func, batch + shape, compute)
    dQ = np.empty(batch + (n_q, d_k), dtype=compute)
    dK = np.empty(batch + (n_k, d_k), dtype=compute)
    dV = np.empty(batch + (n_k, d_v), dtype=compute)
    dO_c = _in_dtype(dO, compute)
    lengths = _lengths(func, query_lengths, key_lengths, out_batch, n_q, n_k)
    _attention_grads(batch, dQ, dK, dV, dO_c, Q, K, V, mask, scale, visibility, compute, lengths,
                     softcap, dropout)
    # with groups, each summed gradient has its input's grouped shape: reshaping undoes that
    return tuple(_finish(_sum_to(g, x.shape).reshape(shape), result, name)
                 for g, x, shape, name in ((dQ, Q, shapes[0], "dQ"), (dK, K, shapes[1], "dK"),
                                           (dV, V, shapes[2], "dV")))


@_public_call
@_one_tier
def self_attention_layer_backward(dY, X, W_q, W_k, W_v, *, scale=None, mask=None, bias=None,
                                  is_causal=False, window=None, query_lengths=None,
                                  key_lengths=None, softcap=None, dropout_p=0.0, seed=None):
    """Gradients of :func:`self_attention_layer`: ``(dX, dW_q, dW_k, dW_v)`` given ``dY``.

    With ``Q, K, V = X @ W_q, X @ W_k, X @ W_v`` and ``(dQ, dK, dV)`` from
    :func:`scaled_dot_product_attention_backward`::

        dX   = dQ @ W_q^T + dK @ W_k^T + dV @ W_v^T
        dW_q = X^T @ dQ   (summed over the batch)   and likewise dW_k, dW_v.

    Q, K and V are recomputed from X (nothing is saved between the calls) and the attention
    backward runs in C with O(n * d) memory.

    Parameters
    ----------
    dY : array_like, shape (..., n, d_v)
        Gradient of the loss with respect to the layer's output; exactly the shape
        :func:`self_attention_layer` returns for these arguments.
    X, W_q, W_k, W_v, scale, mask, bias, is_causal, window, query_lengths, key_lengths, softcap
        As in :func:`self_attention_layer` (the bias gets no gradient).
    dropout_p, seed : optional
        As in the forward; with ``dropout_p > 0`` the seed is required (the forward's), so the
        backward drops the same weights.

    Returns
    -------
    dX : ndarray, shape of X
    dW_q, dW_k, dW_v : ndarray, shapes of W_q, W_k, W_v
        A weight shared by a batch (no batch axes, or axes of 1) gets the sum of its gradients over
        the batch, so ``W -= lr * dW`` is the usual gradient step. Dtype: that of the forward output.

    Raises
    ------
    ValueError
        If ``dY`` does not have the forward output's shape, and for everything
        :func:`self_attention_layer` rejects.
    TypeError
        As in :func:`self_attention_layer`.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import self_attention_layer, self_attention_layer_backward
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(2, 5, 4))                   # 2 sequences of 5 tokens, d_model = 4
    >>> W_q, W_k, W_v = rng.normal(size=(3, 4, 4))       # shared by both sequences
    >>> dY = np.ones((2, 5, 4))                          # loss = output.sum()
    >>> dX, dW_q, dW_k, dW_v = self_attention_layer_backward(dY, X, W_q, W_k, W_v)
    >>> dX.shape, dW_q.shape
    ((2, 5, 4), (4, 4))
    >>> W2 = W_v.copy(); W2[1, 2] += 1e-6               # one entry by finite differences
    >>> fd = (self_attention_layer(X, W_q, W_k, W2).sum()
    ...       - self_attention_layer(X, W_q, W_k, W_v).sum()) / 1e-6
    >>> bool(abs(fd - dW_v[1, 2]) < 1e-4)
    True
    """
    func = "self_attention_layer_backward"
    dY, = _as_matrices(func, ("dY", dY, "(seq_len, d_v)"))
    L = _Layer(func, X, W_q, W_k, W_v, None, None, scale, mask, is_causal, bias=bias,
               window=window, lengths=(query_lengths, key_lengths), softcap=softcap,
               dropout_p=dropout_p, seed=seed, backward=True)
    _check_grad_shape(func, "dY", dY, L.out_batch + (L.n, L.d_v), "output")
    grads = _layer_input_grads(L, [_in_dtype(dY, L.compute), *L.project()])
    return tuple(grads[name] for name in ("dX", "dW_q", "dW_k", "dW_v"))
