"""The projection layer shared by self_attention_layer, multi_head_attention and their backwards.

One class checks a layer's arguments (X, the projections, W_o for multi-head, scale, mask,
is_causal) and works out its batch shapes once; its two forward pieces are the only projection
path (X @ [W_q | W_k | W_v] on _core.project) and the attention of the projected Q, K, V.

Multi-head layout. W_q, W_k, W_v are (d_model, num_heads * d_head); head h uses columns
[h * d_head, (h + 1) * d_head). Q = X @ W_q is (..., n, num_heads * d_head), and its view
(..., num_heads, n, d_head) (rows strided by num_heads * d_head, each head's row contiguous) is
exactly a batch of matrices in the kernels' sense: the heads run as one more batch axis, in
parallel and without copies, and write their outputs straight into the concatenated
(..., n, num_heads * d_v_head) layout that W_o multiplies.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _attend, _project, _split_heads
from ._validate import (
    _as_array,
    _batch_shape,
    _check_projections,
    _dtypes,
    _mask,
    _require_matrix,
    _scale,
    _visibility,
)


class _Layer:
    """A validated projection + attention layer (heads is None for the single-head layer)."""

    def __init__(self, func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal):
        self.func = func
        X = _as_array(func, "X", X)
        W_q, W_k, W_v = (_as_array(func, name, W)
                         for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)))
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
        self.visibility = _visibility(func, is_causal)
        self.scale = _scale(func, scale, self.d_k)
        self.result, self.compute = _dtypes(*arrays)
        self.n = n = X.shape[-2]
        self.mask = _mask(func, mask, n, n, self.compute)
        named = [("X", X, 2), ("W_q", W_q, 2), ("W_k", W_k, 2), ("W_v", W_v, 2)]
        self.proj_batch = _batch_shape(func, named)
        self.w_batch = _batch_shape(func, named[1:])
        if heads is None:
            self.att_batch = _batch_shape(
                func, named + ([("mask", self.mask, 2)] if self.mask is not None else []))
        else:
            self.att_batch = self._heads_batch(func, mask, heads)
        self.out_batch = self.att_batch[:-1] if heads is not None else self.att_batch
        self.heads = heads
        self.X, self.W_q, self.W_k, self.W_v, self.W_o = X, W_q, W_k, W_v, W_o
        self.W_all = None
        if heads is not None:
            self.y_batch = _batch_shape(func, [("the heads' output", np.broadcast_to(
                np.zeros((), self.compute), self.out_batch + (n, W_v.shape[-1])), 2), ("W_o", W_o, 2)])

    def _heads_batch(self, func, mask, heads):
        """The per-head scores' batch shape: (proj_batch..., heads) with the mask's batch axes."""
        n = self.n
        proj_heads = self.proj_batch + (heads,)
        if self.mask is None:
            return proj_heads
        try:
            att_batch = np.broadcast_shapes(proj_heads, self.mask.shape[:-2])
        except ValueError:
            raise ValueError(
                f"{func}: mask.shape={np.shape(mask)} does not broadcast against the scores' "
                f"shape (..., num_heads, n, n) = {proj_heads + (n, n)}; a mask shared by every "
                f"head needs a head axis of 1: use mask[:, None] for a (batch, n, n) mask, or "
                f"padding_mask(..., head_axis=True)"
            ) from None
        if att_batch[-1] != heads:
            raise ValueError(
                f"{func}: mask.shape={np.shape(mask)} has {att_batch[-1]} along the head axis "
                f"(the scores are (..., num_heads, n, n) = {proj_heads + (n, n)}) but "
                f"num_heads={heads}; a mask's head axis must be num_heads or 1"
            )
        return att_batch

    def project(self):
        """Q, K, V (views of one (proj_batch, n, widths) array, heads split when multi-head)."""
        views, self.W_all = _project(self.func, self.X, (self.W_q, self.W_k, self.W_v),
                                     self.compute, self.proj_batch, self.w_batch)
        return tuple(_split_heads(A, self.heads) for A in views)

    def attend(self, Q, K, V, return_weights):
        """The heads' output, concatenated: (out_batch, n, num_heads * d_v), and the weights."""
        return _attend(self.func, self.att_batch, Q, K, V, self.mask, self.scale, self.visibility,
                       self.compute, return_weights, self.heads)
