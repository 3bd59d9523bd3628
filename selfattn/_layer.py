"""The projection layer shared by self_attention_layer, multi_head_attention and their backwards.

One class checks a layer's arguments (X, the projections, W_o for multi-head, scale, mask,
is_causal) and works out its batch shapes once; its two forward pieces are the only projection
path (X @ [W_q | W_k | W_v] on _core.project, one product per W into its columns of one array)
and the attention of the projected Q, K, V.

Multi-head layout. W_q, W_k, W_v are (d_model, num_heads * d_head); head h uses columns
[h * d_head, (h + 1) * d_head). Q = X @ W_q is (..., n, num_heads * d_head), and its view
(..., num_heads, n, d_head) (rows strided by num_heads * d_head, each head's row contiguous) is
exactly a batch of matrices in the kernels' sense: the heads run as one more batch axis, in
parallel and without copies, and write their outputs straight into the concatenated
(..., n, num_heads * d_v_head) layout that W_o multiplies.

Grouped-query attention (num_kv_heads): K and V have num_kv_heads heads and the query heads are
split into (num_kv_heads, group) axes (_split_heads with a tuple), K and V into (num_kv_heads, 1):
the kernels see a batch in which each K/V head is broadcast (stride 0) over its group.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _attend, _head_axes, _project, _split_heads
from ._validate import (
    _as_array,
    _axes_fit,
    _bias,
    _batch_shape,
    _broadcast_shapes,
    _repeated_block,
    _check_projections,
    _check_size,
    _dtypes,
    _group_mask,
    _lengths,
    _mask,
    _require_matrix,
    _scale,
    _scale_fits,
    _ungroup_heads,
    _dropout,
    _softcap,
    _visibility,
)


class _Layer:
    """A validated projection + attention layer (heads is None for the single-head layer).

    Cross-attention (multi-head only): with `kv`, K and V are projected from kv instead of X, so
    n_k = kv.shape[-2] may differ from n = n_q. `biases` is (b_q, b_k, b_v, b_o), each None or
    (..., width); every projection's batch axes (X, kv, the W's, the biases) broadcast to one
    proj_batch, and the weights' and biases' to one w_batch."""

    def __init__(self, func, X, W_q, W_k, W_v, W_o, heads, scale, mask, is_causal, kv=None,
                 biases=(None, None, None, None), bias=None, window=None, kv_heads=None,
                 lengths=(None, None), softcap=None, dropout_p=0.0, seed=None, backward=False):
        self.func = func
        X = _as_array(func, "X", X)
        KV = None if kv is None else _as_array(func, "kv", kv)
        W_q, W_k, W_v = (_as_array(func, name, W)
                         for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)))
        _check_projections(func, X, W_q, W_k, W_v, heads, KV, kv_heads)
        h = heads or 1
        self.d_k, self.d_v = W_q.shape[-1] // h, W_v.shape[-1] // (kv_heads or h)
        # the query heads' layout and K/V's (_split_heads): equal unless K/V heads are shared
        self.groups = None if kv_heads in (None, heads) else (kv_heads, heads // kv_heads)
        self.kv_split = heads if self.groups is None else (kv_heads, 1)
        arrays = [X, W_q, W_k, W_v] + ([KV] if KV is not None else [])
        if heads is not None:     # multi-head layers always take W_o (None is not an array)
            W_o = _as_array(func, "W_o", W_o)
            _require_matrix(func, "W_o", W_o, "(num_heads * d_v_head, d_out)")
            width = heads * self.d_v
            if W_o.shape[-2] != width:
                hint = ""
                if W_o.shape[-1] == width:
                    hint = (" W_o looks transposed: selfattn computes heads @ W_o; transpose it "
                            "(W_o.T, or drop a .T you added)")
                raise ValueError(
                    f"{func}: the heads' concatenated output has width num_heads * d_v_head = "
                    f"{width} (W_v.shape={W_v.shape}) but W_o has {W_o.shape[-2]} rows "
                    f"(W_o.shape={W_o.shape}); W_o must be (num_heads * d_v_head, d_out).{hint}"
                )
            arrays.append(W_o)
        b_q, b_k, b_v, b_o = (_bias(func, name, b, W, W_name) for name, b, W, W_name in
                              zip(("b_q", "b_k", "b_v", "b_o"), biases, (W_q, W_k, W_v, W_o),
                                  ("W_q", "W_k", "W_v", "W_o")))
        self.biases = (b_q, b_k, b_v, b_o)
        arrays += [b for b in self.biases if b is not None]
        self.visibility = _visibility(func, is_causal, window)
        self.softcap = _softcap(func, softcap)
        self.dropout = _dropout(func, dropout_p, seed, backward)
        self.result, self.compute = _dtypes(*arrays)
        self.scale = _scale_fits(func, _scale(func, scale, self.d_k), self.compute)
        self.n = n = X.shape[-2]
        self.n_k = n_k = n if KV is None else KV.shape[-2]
        self.mask = _mask(func, mask, n, n_k, self.compute, bias)
        self.mask_name = {(True, False): "mask", (False, True): "bias"}.get(
            (mask is not None, bias is not None), "mask and bias")
        weights = [("W_q", W_q, 2), ("W_k", W_k, 2), ("W_v", W_v, 2)] + [
            (name, b, 1) for name, b in zip(("b_q", "b_k", "b_v"), self.biases) if b is not None]
        sources = [("X", X, 2)] + ([("kv", KV, 2)] if KV is not None else [])
        self.proj_batch = _batch_shape(func, sources + weights)
        self.w_batch = _batch_shape(func, weights)
        if heads is not None:
            ndim, name = max([(A.ndim, n) for n, A, _ in sources + weights]
                             + ([(self.mask.ndim, self.mask_name)] if self.mask is not None else []))
            # (with the batch axes the others add: the projections' results have them all)
            _axes_fit(func, name, max(ndim, len(self.proj_batch) + 2), 1 + (self.groups is not None),
                      "heads" if self.groups is None else "heads and their groups")
        if heads is None:
            self.att_batch = _batch_shape(
                func, sources + weights
                + ([("mask", self.mask, 2)] if self.mask is not None else []))
        else:
            self.att_batch = self._heads_batch(func, heads)
        self.heads = heads if self.groups is None else self.groups
        self.out_batch = self.att_batch[:len(self.att_batch) - len(_head_axes(self.heads))] \
            if heads is not None else self.att_batch
        # per-sequence lengths index the output's batch (never the head axes): every head of a
        # sequence shares them
        self.lengths = _lengths(func, *lengths, self.out_batch, n, n_k)
        if self.lengths is not None and heads is not None:
            per_item = int(np.prod(self.att_batch[len(self.out_batch):]))
            self.lengths = tuple(None if side is None else np.repeat(side, per_item)
                                 for side in self.lengths)
        self.X, self.KV, self.W_q, self.W_k, self.W_v, self.W_o = X, KV, W_q, W_k, W_v, W_o
        if heads is not None:
            # refused as too large here, where np.broadcast_to would say only that its iterator is
            _check_size(func, self.out_batch + (n, heads * self.d_v), self.compute)
            named_o = [("the heads' output", np.broadcast_to(
                np.zeros((), self.compute), self.out_batch + (n, heads * self.d_v)), 2),
                ("W_o", W_o, 2)] + ([("b_o", b_o, 1)] if b_o is not None else [])
            self.y_batch = _batch_shape(func, named_o)
            self.o_batch = _batch_shape(func, named_o[1:])

    def _heads_batch(self, func, heads):
        """The per-head scores' batch shape: (proj_batch..., heads) with the mask's batch axes
        (the mask being mask= and bias= merged)."""
        n, n_k, what = self.n, self.n_k, self.mask_name
        proj_heads = self.proj_batch + (heads,)
        if self.mask is None:
            return proj_heads if self.groups is None else self.proj_batch + self.groups
        if self.groups is not None:
            self.mask = _group_mask(func, what, self.mask, self.groups)
            proj_heads = self.proj_batch + self.groups
        try:
            att_batch = _broadcast_shapes([proj_heads, self.mask.shape[:-2]])
        except ValueError:
            # padding_mask makes a bool mask, which bias= refuses: offered for mask= alone
            padding = ", or padding_mask(..., head_axis=True)" if what != "bias" else ""
            raise ValueError(
                f"{func}: {what}.shape={self.mask.shape} does not broadcast against the "
                f"scores' shape (..., num_heads, n_q, n_k) = {proj_heads + (n, n_k)}; a {what} "
                f"shared by every head needs a head axis of 1: use {what.split()[0]}[:, None] for "
                f"a (batch, n_q, n_k) one{padding}"
            ) from None
        if self.groups is None and att_batch[-1] != heads:
            raise ValueError(
                f"{func}: {what}.shape={self.mask.shape} has {att_batch[-1]} along the head "
                f"axis (the scores are (..., num_heads, n_q, n_k) = {proj_heads + (n, n_k)}) but "
                f"num_heads={heads}; a {what}'s head axis must be num_heads or 1"
            )
        return att_batch

    def keep_inputs(self, arguments):
        """Copy the arrays a later backward reads (the inputs, weights, biases and mask) where
        they share memory with one of the caller's `arguments`, so that changing those in place
        afterwards changes no gradient. A broadcast view (stride 0) is copied as the block it
        repeats, not at its broadcast size."""
        # what the arguments read as: an ndarray, or a view of a buffer (a memoryview, a torch
        # tensor); a list is read into a new array, which nobody else holds
        theirs = [np.asarray(a) for a in arguments
                  if a is not None and not isinstance(a, (list, tuple, int, float))]

        def own(a):
            if a is None or not any(np.may_share_memory(a, t) for t in theirs):
                return a
            return np.broadcast_to(_repeated_block(a).copy(), a.shape)

        self.X, self.KV, self.W_q, self.W_k, self.W_v, self.W_o = map(
            own, (self.X, self.KV, self.W_q, self.W_k, self.W_v, self.W_o))
        self.biases = tuple(map(own, self.biases))
        self.mask = own(self.mask)

    def project(self):
        """Q, K, V (views of one or two (proj_batch, n, widths) arrays, heads split when
        multi-head): one _core.project call for self-attention, one for X and one for kv when
        cross-attending."""
        b_q, b_k, b_v, _ = self.biases
        if self.KV is None:
            views = _project(self.func, self.X, (self.W_q, self.W_k, self.W_v), self.compute,
                             self.proj_batch, self.w_batch, (b_q, b_k, b_v))
        else:
            Q, = _project(self.func, self.X, (self.W_q,), self.compute, self.proj_batch,
                          self.w_batch, (b_q,))
            K, V = _project(self.func, self.KV, (self.W_k, self.W_v), self.compute,
                            self.proj_batch, self.w_batch, (b_k, b_v))
            views = (Q, K, V)
        return tuple(_split_heads(A, split)
                     for A, split in zip(views, (self.heads, self.kv_split, self.kv_split)))

    def attend(self, Q, K, V, return_weights):
        """The heads' output, concatenated: (out_batch, n, num_heads * d_v), and the weights
        (..., num_heads, n, n_k)."""
        out, weights = _attend(self.func, self.att_batch, Q, K, V, self.mask, self.scale,
                               self.visibility, self.compute, return_weights, self.heads,
                               lengths=self.lengths, softcap=self.softcap, dropout=self.dropout)
        if self.groups is not None and weights is not None:
            weights = _ungroup_heads(weights)
        return out, weights

    def output(self, out):
        """Y = out @ W_o + b_o (multi-head), through the same projection path as Q, K, V."""
        Y, = _project(self.func, out, (self.W_o,), self.compute, self.y_batch, self.o_batch,
                      (self.biases[3],), padded=False)
        return Y
