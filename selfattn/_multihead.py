"""Multi-head attention and its gradient: multi_head_attention, multi_head_attention_backward.

The heads are one more batch axis of the single-head machinery (selfattn/_layer.py describes the
layout); the output projection W_o and its gradient are the only multi-head additions.
"""
from __future__ import annotations

import numpy as np

from ._backward import _layer_input_grads, _sum_to, _weight_grad
from ._kernels import _finish, _finish_attention, _matmul, _transpose
from ._layer import _Layer
from ._validate import _as_matrices, _check_grad_shape, _check_size, _flag, _integer

__all__ = ["multi_head_attention", "multi_head_attention_backward"]


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
    heads = _integer(func, "num_heads", num_heads, 1)
    return_weights = _flag(func, "return_weights", return_weights)
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal)
    out, weights = L.attend(*L.project(), return_weights)
    _check_size(func, L.y_batch + (L.n, L.W_o.shape[-1]), L.compute)
    return _finish_attention(_matmul(out, L.W_o, L.compute, L.y_batch), weights, L.result)


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
    heads = _integer(func, "num_heads", num_heads, 1)
    dY, = _as_matrices(func, ("dY", dY, "(seq_len, d_out)"))
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
    return _layer_input_grads(L, d_out, Q, K, V) + (dW_o,)
