"""Multi-head attention and its gradient: multi_head_attention, multi_head_attention_backward,
and multi_head_attention_vjp (the forward, keeping what the backward would otherwise recompute).

The heads are one more batch axis of the single-head machinery (selfattn/_layer.py describes the
layout, cross-attention's second projection and the biases); the output projection W_o (+ b_o)
and its gradient are the only multi-head additions.
"""
from __future__ import annotations

import collections
import copy
import functools

import numpy as np

from ._backward import _in_dtype, _layer_input_grads, _sum, _sum_to, _weight_grad
from ._kernels import _finish, _finish_attention, _matmul, _one_tier
from ._layer import _Layer
from ._validate import (
    _as_matrices,
    _check_grad_shape,
    _check_size,
    _flag,
    _integer,
    _kv_heads,
    _public_call,
)

__all__ = ["multi_head_attention", "multi_head_attention_backward", "multi_head_attention_vjp"]


@_public_call
@_one_tier
def multi_head_attention(X, W_q, W_k, W_v, W_o, *, num_heads, kv=None, b_q=None, b_k=None,
                         b_v=None, b_o=None, scale=None, mask=None, bias=None, is_causal=False,
                         return_weights=False, window=None, num_kv_heads=None,
                         query_lengths=None, key_lengths=None, softcap=None, dropout_p=0.0,
                         seed=None):
    """Multi-head attention: ``num_heads`` attention heads side by side, then ``W_o``.

    The step after the notebook's single head. To rounding (``kv`` defaults to ``X``,
    self-attention; a missing bias is 0)::

        Q, K, V = X @ W_q + b_q, kv @ W_k + b_k, kv @ W_v + b_v   # (..., n, num_heads * d_head)
        head_h  = scaled_dot_product_attention(Q[..., h*d_head:(h+1)*d_head],
                                               K[..., h*d_head:(h+1)*d_head],
                                               V[..., h*d_v:(h+1)*d_v], ...)
        output  = concatenate([head_0, ..., head_{H-1}], axis=-1) @ W_o + b_o

    computed with every head as one more batch axis of the fused attention kernel (the heads run
    in parallel, with no copies, and the weights are never stored unless ``return_weights``).
    Each bias is added once, in C, to the product it follows.

    Conventions against torch's ``nn.MultiheadAttention(embed_dim, num_heads, bias, kdim, vdim)``:
    selfattn multiplies on the right (``X @ W``), so ``W_q = q_proj_weight.T`` (or
    ``in_proj_weight[:E].T``), ``W_k = k_proj_weight.T`` (shape ``(kdim, E)``), ``W_v =
    v_proj_weight.T``, ``W_o = out_proj.weight.T``, ``b_q, b_k, b_v = in_proj_bias.split(E)``
    and ``b_o = out_proj.bias``. Keys and values come from one sequence ``kv``, so torch's
    ``kdim`` and ``vdim`` are both ``kv.shape[-1]`` here (torch's separate key and value inputs
    of different widths have no counterpart); unlike torch, ``d_v`` may differ from ``d_head``
    and ``d_out`` from ``d_model``.

    Parameters
    ----------
    X : array_like, shape (..., n, d_model)
        Token embeddings, one row per token: the queries' sequence (and keys' and values',
        without ``kv``).
    W_q : array_like, shape (..., d_model, num_heads * d_head)
        Query projection; head ``h`` uses columns ``[h*d_head, (h+1)*d_head)``.
    W_k : array_like, shape (..., kdim, num_heads * d_head)
        Key projection (``kdim = d_model`` without ``kv``).
    W_v : array_like, shape (..., kdim, num_heads * d_v)
        Value projection (usually ``d_v = d_head``).
    W_o : array_like, shape (..., num_heads * d_v, d_out)
        Output projection applied to the concatenated heads (usually ``d_out = d_model``).
    num_heads : int
        Number of heads, at least 1; it must divide the widths of W_q, W_k and W_v.
    kv : array_like, shape (..., n_k, kdim), optional
        Cross-attention: the sequence the keys and values are projected from (an encoder's
        output, say); its batch axes broadcast with X's. Default: X (self-attention, n_k = n).
    b_q, b_k, b_v, b_o : array_like, shape (..., width), optional
        Biases added to every row of ``X @ W_q``, ``kv @ W_k``, ``kv @ W_v`` and the output
        projection; ``width`` is that projection's (e.g. ``num_heads * d_head`` for ``b_q``).
        Leading axes, if any, broadcast with the weights' batch axes: one bias per sequence of a
        batch is ``(batch, width)``, not NumPy's ``(batch, 1, width)``, whose batch axes
        ``(batch, 1)`` pair every bias with every sequence.
    scale : float, optional
        Factor applied to each head's ``Q_h @ K_h^T``; default ``1/sqrt(d_head)``.
    mask : array_like of bool or float, optional
        Broadcastable to the per-head scores ``(..., num_heads, n, n_k)``: bool True = may attend,
        float = added to the scores. A mask shared by all heads has a head axis of 1, e.g.
        ``(batch, 1, n, n_k)`` or ``(batch, 1, 1, n_k)`` (:func:`padding_mask` with
        ``head_axis=True``); a 2-d ``(n, n_k)`` mask applies to every sequence and head.
    bias : array_like of float, optional
        Added to the per-head scaled scores where ``mask`` allows; broadcasts as a mask does,
        e.g. ``(num_heads, n, n_k)`` from :func:`alibi_bias` (one slope per head).
    is_causal : bool, "top_left", "bottom_right" or None, optional
        Token ``i`` attends only to tokens ``j <= i`` (True or ``"top_left"``, aligned top-left
        when ``n != n_k``) or ``j <= i + n_k - n`` (``"bottom_right"``), as in
        :func:`scaled_dot_product_attention`; combined with ``mask`` (both must allow).
    return_weights : bool, optional
        Also return every head's attention weights.
    window : (left, right), optional
        Token ``i`` attends only to keys ``i - left .. i + right`` (ints >= 0, None = unbounded;
        from ``i + n_k - n`` with ``is_causal="bottom_right"``), the same band for every head,
        together with ``is_causal`` and ``mask``.
    num_kv_heads : int, optional
        Grouped-query attention (multi-query with 1): the number of key/value heads, which must
        divide ``num_heads``. W_k is then ``(kdim, num_kv_heads * d_head)`` and W_v
        ``(kdim, num_kv_heads * d_v)`` (b_k, b_v likewise); query head ``h`` uses K/V head
        ``h // (num_heads / num_kv_heads)``, with no copies of K or V. W_o stays
        ``(num_heads * d_v, d_out)``. Default: ``num_heads`` (every head its own K and V).
    query_lengths, key_lengths : int or array_like of int, optional
        Per-sequence lengths of a padded batch: one per entry of X's first batch axis (the
        queries' lengths) and of ``kv``'s (the keys'), shared by every head (see
        :func:`scaled_dot_product_attention`). Query rows at or past their length give attention
        output 0 before ``W_o`` (so ``Y`` is ``b_o`` there); keys past theirs are invisible.
    softcap : float, optional
        Logit soft-capping in every head: each scaled score ``s`` becomes
        ``softcap * tanh(s / softcap)`` before the mask and bias (see
        :func:`scaled_dot_product_attention`); None (default) for none.
    dropout_p, seed : optional
        Dropout on every head's weights, as in :func:`scaled_dot_product_attention` (the heads
        are a batch axis, so each head drops its own weights).

    Returns
    -------
    output : ndarray, shape (..., n, d_out)
        Batch dimensions broadcast as in ``np.matmul``; same dtype rules as the other functions.
    weights : ndarray, shape (..., num_heads, n, n_k)
        Only with ``return_weights=True``; ``weights[..., h, :, :]`` is head ``h``'s.

    Raises
    ------
    ValueError
        If ``num_heads < 1`` or does not divide a projection's width, ``num_kv_heads`` does not
        divide ``num_heads`` or W_k, W_v are not ``num_kv_heads`` heads wide, W_q does not have
        ``d_model`` rows or W_k, W_v ``kdim`` rows, W_q and W_k differ in width, a bias is not as
        wide as its projection, W_o does not have ``num_heads * d_v``
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
    >>> enc = rng.normal(size=(7, 3))                        # cross-attention: 7 keys of kdim 3
    >>> W_k3, W_v3 = rng.normal(size=(2, 3, 8))
    >>> multi_head_attention(X, W_q, W_k3, W_v3, W_o, num_heads=2, kv=enc, b_q=np.ones(8),
    ...                      return_weights=True)[1].shape
    (2, 5, 7)
    """
    func = "multi_head_attention"
    heads = _integer(func, "num_heads", num_heads, 1)
    kv_heads = _kv_heads(func, num_kv_heads, heads)
    return_weights = _flag(func, "return_weights", return_weights)
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal, kv,
               (b_q, b_k, b_v, b_o), bias, window=window, kv_heads=kv_heads,
               lengths=(query_lengths, key_lengths), softcap=softcap, dropout_p=dropout_p,
               seed=seed)
    out, weights = L.attend(*L.project(), return_weights)
    return _finish_attention(L.output(out), weights, L.result)


@_public_call
@_one_tier
def multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, *, num_heads, kv=None, b_q=None,
                                  b_k=None, b_v=None, b_o=None, scale=None, mask=None, bias=None,
                                  is_causal=False, window=None, num_kv_heads=None,
                                  query_lengths=None, key_lengths=None, softcap=None,
                                  dropout_p=0.0, seed=None):
    """Gradients of :func:`multi_head_attention`: ``(dX, dW_q, dW_k, dW_v, dW_o)`` given ``dY``,
    then ``dkv`` and ``db_q, db_k, db_v, db_o`` for those of ``kv`` and the biases given.

    With ``H`` the concatenated heads' output (so that ``Y = H @ W_o + b_o``)::

        dW_o = H^T @ dY,  db_o = dY summed over the rows  (both summed over the batch)
        dH = dY @ W_o^T
        (dQ_h, dK_h, dV_h) = scaled_dot_product_attention_backward(dH_h, Q_h, K_h, V_h) per head
        dX = dQ @ W_q^T + dK @ W_k^T + dV @ W_v^T;   dW_q = X^T @ dQ, ...;  db_q = dQ summed
        over the rows, ...

    and with ``kv``: ``dX = dQ @ W_q^T``, ``dkv = dK @ W_k^T + dV @ W_v^T``, ``dW_k = kv^T @
    dK``, ``dW_v = kv^T @ dV``.

    where ``dQ`` concatenates the heads' ``dQ_h`` as ``Q`` does. Everything is recomputed from
    the inputs: the projections, and ``H`` from the weights the attention backward builds anyway
    (no forward pass runs); the attention backward runs in C with the heads in parallel.

    Parameters
    ----------
    dY : array_like, shape (..., n, d_out)
        Gradient of the loss with respect to the output; exactly the shape
        :func:`multi_head_attention` returns for these arguments.
    X, W_q, W_k, W_v, W_o, num_heads, kv, b_q, b_k, b_v, b_o
        As in :func:`multi_head_attention`.
    scale, mask, bias, is_causal, window, num_kv_heads, query_lengths, key_lengths, softcap
        As in :func:`multi_head_attention`. With ``num_kv_heads``, ``dW_k``, ``dW_v``, ``db_k``
        and ``db_v`` sum the gradients of the query heads that share each K/V head.
    dropout_p, seed : optional
        As in the forward; with ``dropout_p > 0`` the seed is required (the forward's).

    Returns
    -------
    tuple of ndarray
        One gradient per array argument given, in the signature's order and each of its
        argument's shape: ``dX, dW_q, dW_k, dW_v, dW_o``, then ``dkv`` if ``kv`` was given, then
        ``db_q``, ``db_k``, ``db_v``, ``db_o`` for each bias given (e.g. ``kv`` and ``b_o``
        alone: ``(dX, dW_q, dW_k, dW_v, dW_o, dkv, db_o)``), also by name (``grads.dkv``,
        ``grads.db_o``: a named tuple, whose names do not move when arguments are added;
        the name of one not given is None). Summed
        over the batch axes along which each input was broadcast. The mask and the score ``bias``
        get no gradient. Dtype: that of the forward output.

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
    kv_heads = _kv_heads(func, num_kv_heads, heads)
    dY, = _as_matrices(func, ("dY", dY, "(seq_len, d_out)"))
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal, kv,
               (b_q, b_k, b_v, b_o), bias, window=window, kv_heads=kv_heads,
               lengths=(query_lengths, key_lengths), softcap=softcap, dropout_p=dropout_p,
               seed=seed, backward=True)
    _check_grad_shape(func, "dY", dY, L.y_batch + (L.n, L.W_o.shape[-1]), "output")
    return _grads(L, dY, list(L.project()))


def _grads(L, dY, qkv, out=None):
    """The gradients multi_head_attention_backward returns, for dY (checked), from layer L's
    projections qkv = [Q, K, V] (L.project(); the list is emptied, so that they are freed once
    spent where the caller holds no other reference) and, where the forward kept it, the heads'
    output `out`.

    Y = out @ W_o + b_o, out the heads' output side by side: d(out) = dY @ W_o^T (summed back to
    out's batch shape), dW_o = out^T @ dY, db_o = dY summed over the rows. Without `out` the
    attention backward gives it from the weights it builds anyway (no forward pass: one product
    instead of the forward's two and its exps); _layer_input_grads frees Q, K, V, d(out) and that
    out once spent."""
    Q, K, V = qkv
    qkv.clear()
    c = L.compute
    dY = _in_dtype(dY, c)
    out_shape = L.out_batch + (L.n, L.W_o.shape[-2])
    _check_size(L.func, out_shape, c)
    d_out = _sum_to(_matmul(dY, L.W_o, c, L.y_batch, padded=True, b_t=True), out_shape)
    spent = [d_out, Q, K, V]
    del d_out, Q, K, V

    def w_o_grad(heads_out):
        return _finish(_weight_grad(heads_out, dY, L.W_o.shape, c), L.result, "dW_o")

    if out is None:
        grads = _layer_input_grads(L, spent, w_o_grad)
    else:
        grads = {"dW_o": w_o_grad(out), **_layer_input_grads(L, spent)}
    if L.biases[3] is not None:
        grads["db_o"] = _finish(_sum_to(_sum(dY, -2), L.biases[3].shape), L.result, "db_o")
    names = tuple(name for name in _GRADIENT_NAMES if name in grads)
    return _gradients_type(names)(*(grads[name] for name in names))


# every gradient multi_head_attention_backward can return, in the signature's order
_GRADIENT_NAMES = ("dX", "dW_q", "dW_k", "dW_v", "dW_o", "dkv", "db_q", "db_k", "db_v", "db_o")


@functools.lru_cache(maxsize=None)
def _gradients_type(names):
    """The tuple multi_head_attention_backward returns for these gradients: its positions depend
    on the arguments given (kv=, the biases), its names (grads.db_o) do not, as jax.vjp's one
    cotangent per input; the name of an argument not given is None (grads.db_o is None without
    b_o, as torch's .grad of a tensor that got none). Pickled as a plain tuple: the class is made
    at run time."""
    base = collections.namedtuple("MultiHeadGradients", names)
    absent = {name: None for name in _GRADIENT_NAMES if name not in names}
    return type("MultiHeadGradients", (base,), {
        **absent, "__slots__": (), "__module__": __name__,
        "__reduce__": lambda self: (tuple, (tuple(self),)),
        "__copy__": lambda self: self,
        "__deepcopy__": lambda self, memo: type(self)(*copy.deepcopy(tuple(self), memo))})


@_public_call
@_one_tier
def multi_head_attention_vjp(X, W_q, W_k, W_v, W_o, *, num_heads, kv=None, b_q=None, b_k=None,
                             b_v=None, b_o=None, scale=None, mask=None, bias=None,
                             is_causal=False, window=None, num_kv_heads=None, query_lengths=None,
                             key_lengths=None, softcap=None, dropout_p=0.0, seed=None):
    """:func:`multi_head_attention` and its backward in one: ``(Y, backward)``, where ``Y`` is
    the layer's output and ``backward(dY)`` returns what :func:`multi_head_attention_backward`
    returns for ``dY`` and these arguments (as ``jax.vjp`` returns a vector-Jacobian product).

    For a training step, which needs both: ``backward`` reuses the forward's projections ``X @
    W_q``, ``X @ W_k``, ``X @ W_v`` and the heads' output instead of computing them again, as
    :func:`multi_head_attention_backward` (given only the inputs) must. It keeps them until it is
    freed: the size of the projections and the output, O(n d_model), never the
    ``(n, n_k)`` weights, and a copy of the arguments it reads that the caller could change in
    place (an optimizer's ``W_q -= lr * dW_q`` between the forward and ``backward``): it computes
    the gradients at the arrays as they were when the forward ran. It can be called any number
    of times, each time from scratch.

    Parameters
    ----------
    X, W_q, W_k, W_v, W_o, num_heads, kv, b_q, b_k, b_v, b_o
        As in :func:`multi_head_attention`.
    scale, mask, bias, is_causal, window, num_kv_heads, query_lengths, key_lengths, softcap
        As in :func:`multi_head_attention` (``return_weights`` is not taken).
    dropout_p, seed : optional
        As in :func:`multi_head_attention`; a seed drawn by the forward (``seed=None``) is kept
        for the backward, which then drops the same weights.

    Returns
    -------
    Y : ndarray, shape (..., n, d_out)
        The output, as :func:`multi_head_attention` returns it (the same bits).
    backward : function
        ``backward(dY)``, ``dY`` of ``Y``'s shape: the tuple of gradients
        :func:`multi_head_attention_backward` returns (``dX, dW_q, dW_k, dW_v, dW_o``, then
        ``dkv`` and the biases' for those given); equal to its results to rounding (``dW_o``
        is summed from the forward's heads' output, where the backward rebuilds it).

    Raises
    ------
    ValueError, TypeError
        As :func:`multi_head_attention`; ``backward`` raises ValueError if ``dY`` does not have
        ``Y``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> from selfattn import multi_head_attention_backward, multi_head_attention_vjp
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(6, 8))
    >>> W_q, W_k, W_v, W_o = rng.normal(size=(4, 8, 8)) / 3
    >>> Y, backward = multi_head_attention_vjp(X, W_q, W_k, W_v, W_o, num_heads=4)
    >>> dX, dW_q, dW_k, dW_v, dW_o = backward(2 * Y)           # loss = (Y ** 2).sum()
    >>> again = multi_head_attention_backward(2 * Y, X, W_q, W_k, W_v, W_o, num_heads=4)
    >>> max(float(np.abs(a - b).max()) for a, b in zip((dX, dW_q, dW_k, dW_v, dW_o), again)) < 1e-12
    True
    """
    func = "multi_head_attention_vjp"
    heads = _integer(func, "num_heads", num_heads, 1)
    kv_heads = _kv_heads(func, num_kv_heads, heads)
    L = _Layer(func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal, kv,
               (b_q, b_k, b_v, b_o), bias, window=window, kv_heads=kv_heads,
               lengths=(query_lengths, key_lengths), softcap=softcap, dropout_p=dropout_p,
               seed=seed)
    Q, K, V = L.project()
    out, _ = L.attend(Q, K, V, False)
    Y = _finish_attention(L.output(out), None, L.result)
    L.keep_inputs((X, kv, W_q, W_k, W_v, W_o, b_q, b_k, b_v, b_o, mask, bias))

    name = f"{func}'s backward"     # the call that raises, days after the forward's

    def backward(dY):
        dY, = _as_matrices(name, ("dY", dY, "(seq_len, d_out)"))
        _check_grad_shape(name, "dY", dY, Y.shape, "output")
        return _grads(L, dY, [Q, K, V], out)

    backward = _public_call(_one_tier(backward), name=name)
    backward.__doc__ = (f"The gradients of {func}'s output for dY (the gradient of the loss "
                        f"with respect to it, of shape {Y.shape}): the tuple "
                        f"multi_head_attention_backward returns.")
    return Y, backward
