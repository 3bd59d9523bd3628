"""Multi-head attention and the gradients of the attention functions (policy around the C kernels).

The same steps and rules as selfattn/_api.py (whose helpers this module reuses): arguments read as
arrays, shapes checked with messages that name the function, the argument, the shapes and the
rule, NumPy's dtype promotion, batch dimensions broadcast, inputs never modified.

Gradients. Each gradient has the shape of its input: where an input was broadcast along a batch
axis (a weight shared by every sequence of a batch, or by every head), its gradient is summed over
that axis, as the chain rule says and as NumPy users expect. Every gradient is returned in the
dtype of the forward result (float32 for float32 inputs, float64 for float64 or integer inputs).

Multi-head layout. W_q, W_k, W_v are (d_model, num_heads * d_head); head h uses columns
[h * d_head, (h + 1) * d_head). Q = X @ W_q is (..., n, num_heads * d_head), and its view
(..., num_heads, n, d_head) (rows strided by num_heads * d_head, each head's row contiguous) is
exactly a batch of matrices in the kernels' sense: the heads run as one more batch axis, in
parallel and without copies, and write their outputs straight into the concatenated
(..., n, num_heads * d_v_head) layout that W_o multiplies.
"""
from __future__ import annotations

import operator

import numpy as np

from . import _core
from ._api import (
    _check_projections,
    _ISA_DEFAULT,
    _ISA_REFERENCE,
    _as_array,
    _batch_shape,
    _check_size,
    _dtypes,
    _finish,
    _flag,
    _mask,
    _mask_operand,
    _operand,
    _require_matrix,
    _scale,
    _attention_operands,
)

__all__ = [
    "multi_head_attention",
    "scaled_dot_product_attention_backward",
    "self_attention_layer_backward",
    "multi_head_attention_backward",
]


# ---- shared helpers ----------------------------------------------------------------------------

def _sum_to(grad, shape):
    """`grad` summed over the axes along which an input of `shape` was broadcast to grad.shape."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (s, g) in enumerate(zip(shape, grad.shape)) if s == 1 and g != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def _matmul(A, B, compute, batch):
    """A @ B on the matmul kernel, A and B broadcast to `batch`."""
    out = np.empty(batch + (A.shape[-2], B.shape[-1]), dtype=compute)
    if out.size:
        _core.matmul(out, _operand(A, compute, batch), _operand(B, compute, batch), _ISA_DEFAULT)
    return out


def _transpose(W):
    """The last two axes swapped, as a copy with contiguous rows (what the kernels read)."""
    return np.ascontiguousarray(np.swapaxes(W, -1, -2))


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
    A = np.transpose(np.broadcast_to(X, batch + X.shape[-2:]), perm).reshape(kshape + (-1, X.shape[-1]))
    Gf = np.transpose(G, perm).reshape(kshape + (-1, G.shape[-1]))
    out = _matmul(_transpose(A), Gf, compute, kshape)
    if A.shape[-2] == 0:
        out[...] = 0
    return out.reshape(pad + out.shape[-2:]).reshape(w_shape)


def _split_heads(A, heads):
    """(..., n, heads * d) -> the view (..., heads, n, d); None heads means single-head (A)."""
    if heads is None:
        return A
    view = A.reshape(A.shape[:-1] + (heads, A.shape[-1] // heads))
    assert np.may_share_memory(view, A) or A.size == 0  # a view, never a copy
    return np.swapaxes(view, -3, -2)


def _num_heads(func, num_heads):
    if isinstance(num_heads, (bool, np.bool_)):
        raise TypeError(f"{func}: num_heads must be an integer, got {num_heads!r}")
    try:
        heads = operator.index(num_heads)
    except TypeError:
        raise TypeError(f"{func}: num_heads must be an integer, got {num_heads!r}") from None
    if heads < 1:
        raise ValueError(f"{func}: num_heads must be at least 1, got num_heads={heads}")
    return heads


def _check_grad_shape(func, name, grad, expected, what):
    if grad.shape != tuple(expected):
        raise ValueError(
            f"{func}: {name} must have the shape of the forward {what}, {tuple(expected)}, got "
            f"{name}.shape={grad.shape}; {name} is the gradient of the loss with respect to that "
            f"{what}, one entry per entry of it"
        )


def _attention_grads(batch, dQ, dK, dV, dO, Q, K, V, mask, scale, causal, compute):
    """Runs the backward kernel: dQ, dK, dV (outputs, batch shape `batch`) from dO and Q, K, V."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    if n_q == 0 or n_k == 0 or not (dQ.size or dK.size or dV.size):
        for g in (dQ, dK, dV):    # no query or no key: nothing flows (and no empty operands)
            g[...] = 0
        return
    Qb, Kb, Vb, dOb = (_operand(a, compute, batch) for a in (Q, K, V, dO))
    # As in the forward: only the reference kernels guarantee that a key whose weight is 0 brings
    # nothing from an inf or NaN in its V row (or in dO) into the gradients.
    finite = np.isfinite(V).all() and np.isfinite(dO).all()
    _core.attention_backward(dQ, dK, dV, dOb, Qb, Kb, Vb, _mask_operand(mask, batch, n_q, n_k),
                             scale, causal, _ISA_DEFAULT if finite else _ISA_REFERENCE)


# ---- projection layers (single- and multi-head): validation, forward pieces, gradients ----------

class _Layer:
    """A validated projection + attention layer (heads is None for the single-head layer)."""

    def __init__(self, func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal):
        self.func = func
        X = _as_array(func, "X", X)
        Ws = [_as_array(func, name, W) for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v))]
        W_q, W_k, W_v = Ws
        _check_projections(func, X, W_q, W_k, W_v, heads)
        h = heads or 1
        self.d_k, self.d_v = W_q.shape[-1] // h, W_v.shape[-1] // h
        arrays = [X, W_q, W_k, W_v]
        if heads is not None:     # multi-head layers always take W_o (None is not an array)
            W_o = _as_array(func, "W_o", W_o)
            _require_matrix(func, "W_o", W_o, "(num_heads * d_v_head, d_out)")
            if W_o.shape[-2] != W_v.shape[-1]:
                hint = ""
                if W_o.shape[-1] == W_v.shape[-1]:
                    hint = " W_o looks transposed: selfattn computes heads @ W_o; pass W_o.T"
                raise ValueError(
                    f"{func}: the heads' concatenated output has width num_heads * d_v_head = "
                    f"{W_v.shape[-1]} (W_v.shape={W_v.shape}) but W_o has {W_o.shape[-2]} rows "
                    f"(W_o.shape={W_o.shape}); W_o must be (num_heads * d_v_head, d_out).{hint}"
                )
            arrays.append(W_o)
        self.causal = _flag(func, "is_causal", is_causal)
        self.scale = _scale(func, scale, self.d_k)
        self.result, self.compute = _dtypes(*arrays)
        self.n = n = X.shape[-2]
        self.mask = _mask(func, mask, n, n, self.compute)
        named = [("X", X, 2), ("W_q", W_q, 2), ("W_k", W_k, 2), ("W_v", W_v, 2)]
        self.proj_batch = _batch_shape(func, named)
        self.w_batch = _batch_shape(func, named[1:])
        proj_heads = self.proj_batch + ((heads,) if heads is not None else ())
        if self.mask is None:
            self.att_batch = proj_heads
        else:
            try:
                self.att_batch = np.broadcast_shapes(proj_heads, self.mask.shape[:-2])
            except ValueError:
                rule = ("(..., num_heads, n, n) = " if heads is not None else "(..., n, n) = ")
                hint = ""
                if heads is not None:
                    hint = ("; a mask shared by every head needs a head axis of 1: use mask[:, None] "
                            "for a (batch, n, n) mask, or padding_mask(..., head_axis=True)")
                raise ValueError(
                    f"{func}: mask.shape={np.shape(mask)} does not broadcast against the scores' "
                    f"shape {rule}{proj_heads + (n, n)}{hint}"
                ) from None
        if heads is not None and self.att_batch[-1] != heads:
            raise ValueError(
                f"{func}: mask.shape={np.shape(mask)} has {self.att_batch[-1]} along the head axis "
                f"(the scores are (..., num_heads, n, n) = {proj_heads + (n, n)}) but "
                f"num_heads={heads}; a mask's head axis must be num_heads or 1"
            )
        self.out_batch = self.att_batch[:-1] if heads is not None else self.att_batch
        self.heads = heads
        self.X, self.W_q, self.W_k, self.W_v, self.W_o = X, W_q, W_k, W_v, W_o
        if heads is not None:
            self.y_batch = _batch_shape(func, [("the heads' output", np.broadcast_to(
                np.zeros((), self.compute), self.out_batch + (n, W_v.shape[-1])), 2), ("W_o", W_o, 2)])

    def project(self):
        """Q, K, V (as views of one (proj_batch, n, widths) array, heads split when multi-head)."""
        c = self.compute
        wq, wk = self.W_q.shape[-1], self.W_k.shape[-1]
        total = wq + wk + self.W_v.shape[-1]
        _check_size(self.func, self.proj_batch + (self.n, total), c)
        # One pass over X for all three projections: X @ [W_q | W_k | W_v].
        W_all = np.concatenate([np.broadcast_to(W.astype(c, copy=False), self.w_batch + W.shape[-2:])
                                for W in (self.W_q, self.W_k, self.W_v)], axis=-1)
        QKV = _matmul(self.X, W_all, c, self.proj_batch)
        self.W_all = W_all
        return tuple(_split_heads(A, self.heads)
                     for A in (QKV[..., :wq], QKV[..., wq: wq + wk], QKV[..., wq + wk:]))

    def attend(self, Q, K, V, return_weights):
        """The heads' output, concatenated: (out_batch, n, num_heads * d_v), and the weights."""
        c, n = self.compute, self.n
        width = self.W_v.shape[-1]
        _check_size(self.func, self.out_batch + (n, width), c)
        if return_weights:
            _check_size(self.func, self.att_batch + (n, n), c)
        out = np.empty(self.out_batch + (n, width), dtype=c)
        weights = np.empty(self.att_batch + (n, n), dtype=c) if return_weights else None
        out_heads = _split_heads(out, self.heads)
        if out.size or (weights is not None and weights.size):
            b = self.att_batch
            Qb, Kb, Vb = (_operand(a, c, b) for a in (Q, K, V))
            isa = _ISA_DEFAULT if np.isfinite(V).all() else _ISA_REFERENCE
            _core.attention(out_heads, weights, Qb, Kb, Vb, _mask_operand(self.mask, b, n, n),
                            self.scale, self.causal, isa)
        return out, weights

    def input_grads(self, dO, Q, K, V):
        """dX, dW_q, dW_k, dW_v from dO, the gradient of the concatenated heads' output
        (out_batch, n, num_heads * d_v)."""
        c, n, b = self.compute, self.n, self.out_batch
        wq, wk, wv = self.W_q.shape[-1], self.W_k.shape[-1], self.W_v.shape[-1]
        _check_size(self.func, b + (n, wq + wk + wv), c)
        dQKV = np.empty(b + (n, wq + wk + wv), dtype=c)
        dQ, dK, dV = (_split_heads(A, self.heads)
                      for A in (dQKV[..., :wq], dQKV[..., wq: wq + wk], dQKV[..., wq + wk:]))
        _attention_grads(self.att_batch, dQ, dK, dV, _split_heads(dO, self.heads), Q, K, V,
                         self.mask, self.scale, self.causal, c)
        # X @ [W_q | W_k | W_v] = QKV, so dX = dQKV @ [W_q | W_k | W_v]^T and dW = X^T @ dQKV.
        dX = _sum_to(_matmul(dQKV, _transpose(self.W_all), c, b), self.X.shape)
        grads = [_weight_grad(self.X, dQKV[..., lo:hi], W.shape, c)
                 for W, lo, hi in ((self.W_q, 0, wq), (self.W_k, wq, wq + wk),
                                   (self.W_v, wq + wk, wq + wk + wv))]
        return tuple(_finish(g, self.result) for g in [dX] + grads)


# ---- the public functions ---------------------------------------------------------------------

def multi_head_attention(X, W_q, W_k, W_v, W_o, *, num_heads, scale=None, mask=None,
                         is_causal=False, return_weights=False):
    """Multi-head self-attention: ``num_heads`` attention heads side by side, then ``W_o``.

    The step after the notebook's single head. Exactly::

        Q, K, V = X @ W_q, X @ W_k, X @ W_v             # (..., n, num_heads * d_head)
        head_h  = scaled_dot_product_attention(Q[..., h*d_head:(h+1)*d_head],
                                               K[..., h*d_head:(h+1)*d_head],
                                               V[..., h*d_v:(h+1)*d_v], ...)
        output  = concatenate([head_0, ..., head_{H-1}], axis=-1) @ W_o

    computed with every head as one more batch axis of the fused attention kernel (the heads run
    in parallel, with no copies, and the weights are never stored unless ``return_weights``).

    Parameters
    ----------
    X : array_like, shape (..., n, d_model)
        Token embeddings, one row per token.
    W_q, W_k : array_like, shape (..., d_model, num_heads * d_head)
        Query and key projections; head ``h`` uses columns ``[h*d_head, (h+1)*d_head)``.
    W_v : array_like, shape (..., d_model, num_heads * d_v)
        Value projection (usually ``d_v = d_head``).
    W_o : array_like, shape (..., num_heads * d_v, d_out)
        Output projection applied to the concatenated heads (usually ``d_out = d_model``).
    num_heads : int
        Number of heads, at least 1; it must divide the widths of W_q, W_k and W_v.
    scale : float, optional
        Factor applied to each head's ``Q_h @ K_h^T``; default ``1/sqrt(d_head)``.
    mask : array_like of bool or float, optional
        Broadcastable to the per-head scores ``(..., num_heads, n, n)``: bool True = may attend,
        float = added to the scores. A mask shared by all heads has a head axis of 1, e.g.
        ``(batch, 1, n, n)`` or ``(batch, 1, 1, n)`` (:func:`padding_mask` with
        ``head_axis=True``); a 2-d ``(n, n)`` mask applies to every sequence and head.
    is_causal : bool, optional
        Token ``i`` attends only to tokens ``j <= i``; combined with ``mask`` (both must allow).
    return_weights : bool, optional
        Also return every head's attention weights.

    Returns
    -------
    output : ndarray, shape (..., n, d_out)
        Batch dimensions broadcast as in ``np.matmul``; same dtype rules as the other functions.
    weights : ndarray, shape (..., num_heads, n, n)
        Only with ``return_weights=True``; ``weights[..., h, :, :]`` is head ``h``'s.

    Raises
    ------
    ValueError
        If ``num_heads < 1`` or does not divide a projection's width, a projection does not have
        ``d_model`` rows, W_q and W_k differ in width, W_o does not have ``num_heads * d_v``
        rows, batch dimensions or the mask do not broadcast, or a result is too large.
    TypeError
        If ``num_heads`` is not an integer; for complex, object, string or integer-mask inputs,
        or non-bool flags.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import multi_head_attention, scaled_dot_product_attention
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(5, 8))                          # 5 tokens, d_model = 8
    >>> W_q, W_k, W_v, W_o = rng.normal(size=(4, 8, 8))      # 2 heads of d_head = 4
    >>> out, w = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=2, return_weights=True)
    >>> out.shape, w.shape
    ((5, 8), (2, 5, 5))
    >>> Q, K, V = X @ W_q, X @ W_k, X @ W_v                  # the same, one head at a time
    >>> heads = [scaled_dot_product_attention(Q[:, h*4:(h+1)*4], K[:, h*4:(h+1)*4],
    ...                                       V[:, h*4:(h+1)*4]) for h in range(2)]
    >>> np.allclose(out, np.concatenate(heads, axis=-1) @ W_o)
    True
    """
    func = "multi_head_attention"
    heads = _num_heads(func, num_heads)
    return_weights = _flag(func, "return_weights", return_weights)
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal)
    out, weights = L.attend(*L.project(), return_weights)
    _check_size(func, L.y_batch + (L.n, L.W_o.shape[-1]), L.compute)
    Y = _finish(_matmul(out, L.W_o, L.compute, L.y_batch), L.result)
    if return_weights:
        return Y, _finish(weights, L.result)
    return Y


def scaled_dot_product_attention_backward(dO, Q, K, V, *, scale=None, mask=None,
                                          is_causal=False):
    """Gradients of :func:`scaled_dot_product_attention`: ``(dQ, dK, dV)`` given ``dO``.

    For ``O = softmax(S) @ V`` with ``S = Q @ K^T * scale + mask`` and ``P = softmax(S)`` (by rows),
    and ``dO = dLoss/dO``::

        dV = P^T @ dO
        dP = dO @ V^T;   D = (P * dP).sum(-1, keepdims=True)   # = (dO * O).sum(-1)
        dS = P * (dP - D)
        dQ = dS @ K * scale;   dK = dS^T @ Q * scale

    computed in C block by block (FlashAttention-2 style): the ``n_q x n_k`` weights are never
    stored. Each thread keeps at most one panel of 64 query rows (up to 8 MiB); where that would
    not fit, the weights are recomputed block by block from each row's log-sum-exp, so memory
    stays proportional to ``n * d``. The mask gets no gradient (it is not a parameter).

    Parameters
    ----------
    dO : array_like, shape (..., n_q, d_v)
        Gradient of the loss with respect to the attention output; exactly the shape
        :func:`scaled_dot_product_attention` returns for these arguments.
    Q, K, V, scale, mask, is_causal
        As in :func:`scaled_dot_product_attention`.

    Returns
    -------
    dQ : ndarray, shape of Q
    dK : ndarray, shape of K
    dV : ndarray, shape of V
        Where an input was broadcast along a batch axis (e.g. one K shared by a batch of Q), its
        gradient is summed over that axis. A query whose keys are all masked gets ``dQ = 0`` and
        gives nothing to ``dK``, ``dV``; a key with weight 0 gets nothing from that query, even if
        its V row or ``dO`` holds inf or NaN. Dtype: that of the forward output.

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
    dO = _as_array(func, "dO", dO)
    Q = _as_array(func, "Q", Q)
    K = _as_array(func, "K", K)
    V = _as_array(func, "V", V)
    _require_matrix(func, "dO", dO, "(n_q, d_v)")
    _require_matrix(func, "Q", Q, "(n_q, d_k)")
    _require_matrix(func, "K", K, "(n_k, d_k)")
    _require_matrix(func, "V", V, "(n_k, d_v)")
    batch, scale, causal, mask, result, _ = _attention_operands(func, Q, K, V, mask, is_causal,
                                                                scale)
    n_q, n_k, d_k, d_v = Q.shape[-2], K.shape[-2], Q.shape[-1], V.shape[-1]
    _check_grad_shape(func, "dO", dO, batch + (n_q, d_v), "output")
    compute = _dtypes(Q, K, V)[1]
    for shape in ((n_q, d_k), (n_k, d_k), (n_k, d_v)):
        _check_size(func, batch + shape, compute)
    dQ = np.empty(batch + (n_q, d_k), dtype=compute)
    dK = np.empty(batch + (n_k, d_k), dtype=compute)
    dV = np.empty(batch + (n_k, d_v), dtype=compute)
    dO_c = dO.astype(compute, copy=False)
    _attention_grads(batch, dQ, dK, dV, dO_c, Q, K, V, mask, scale, causal, compute)
    return tuple(_finish(_sum_to(g, x.shape), result) for g, x in ((dQ, Q), (dK, K), (dV, V)))


def self_attention_layer_backward(dY, X, W_q, W_k, W_v, *, scale=None, mask=None,
                                  is_causal=False):
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
    X, W_q, W_k, W_v, scale, mask, is_causal
        As in :func:`self_attention_layer`.

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
    dY = _as_array(func, "dY", dY)
    _require_matrix(func, "dY", dY, "(seq_len, d_v)")
    L = _Layer(func, X, W_q, W_k, W_v, None, None, scale, mask, is_causal)
    _check_grad_shape(func, "dY", dY, L.out_batch + (L.n, L.d_v), "output")
    Q, K, V = L.project()
    return L.input_grads(dY.astype(L.compute, copy=False), Q, K, V)


def multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, *, num_heads, scale=None,
                                  mask=None, is_causal=False):
    """Gradients of :func:`multi_head_attention`: ``(dX, dW_q, dW_k, dW_v, dW_o)`` given ``dY``.

    With ``H`` the concatenated heads' output (so that ``Y = H @ W_o``)::

        dW_o = H^T @ dY  (summed over the batch);   dH = dY @ W_o^T
        (dQ_h, dK_h, dV_h) = scaled_dot_product_attention_backward(dH_h, Q_h, K_h, V_h) per head
        dX = dQ @ W_q^T + dK @ W_k^T + dV @ W_v^T;   dW_q = X^T @ dQ, ...

    where ``dQ`` concatenates the heads' ``dQ_h`` as ``Q`` does. Everything is recomputed from
    the inputs; the attention backward runs in C with the heads in parallel.

    Parameters
    ----------
    dY : array_like, shape (..., n, d_out)
        Gradient of the loss with respect to the output; exactly the shape
        :func:`multi_head_attention` returns for these arguments.
    X, W_q, W_k, W_v, W_o, num_heads, scale, mask, is_causal
        As in :func:`multi_head_attention`.

    Returns
    -------
    dX : ndarray, shape of X
    dW_q, dW_k, dW_v, dW_o : ndarray, shapes of W_q, W_k, W_v, W_o
        Summed over the batch axes along which each input was broadcast. Dtype: that of the
        forward output.

    Raises
    ------
    ValueError
        If ``dY`` does not have the forward output's shape, and for everything
        :func:`multi_head_attention` rejects.
    TypeError
        As in :func:`multi_head_attention`.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import multi_head_attention, multi_head_attention_backward
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(6, 8))
    >>> W_q, W_k, W_v, W_o = rng.normal(size=(4, 8, 8)) / 3
    >>> Y = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=4)
    >>> dX, dW_q, dW_k, dW_v, dW_o = multi_head_attention_backward(
    ...     2 * Y, X, W_q, W_k, W_v, W_o, num_heads=4)          # loss = (Y ** 2).sum()
    >>> W2 = W_q.copy(); W2[0, 5] += 1e-6
    >>> fd = ((multi_head_attention(X, W2, W_k, W_v, W_o, num_heads=4) ** 2).sum()
    ...       - (Y ** 2).sum()) / 1e-6
    >>> bool(abs(fd - dW_q[0, 5]) < 1e-4 * max(1.0, abs(fd)))
    True
    """
    func = "multi_head_attention_backward"
    heads = _num_heads(func, num_heads)
    dY = _as_array(func, "dY", dY)
    _require_matrix(func, "dY", dY, "(seq_len, d_out)")
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal)
    c = L.compute
    _check_grad_shape(func, "dY", dY, L.y_batch + (L.n, L.W_o.shape[-1]), "output")
    dY = dY.astype(c, copy=False)
    Q, K, V = L.project()
    out, _ = L.attend(Q, K, V, False)
    # Y = out @ W_o: dW_o = out^T @ dY, d(out) = dY @ W_o^T (summed back to out's batch shape).
    dW_o = _finish(_weight_grad(out, dY, L.W_o.shape, c), L.result)
    d_out = _sum_to(_matmul(dY, _transpose(L.W_o), c, L.y_batch), out.shape)
    d_out = np.ascontiguousarray(d_out)
    return L.input_grads(d_out, Q, K, V) + (dW_o,)
