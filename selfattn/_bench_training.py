"""Benchmark rows for multi-head attention and the backward pass (read by `python -m selfattn bench`).

CASES is a list of dicts:
    name    what is measured
    group   rows that belong together in the report
    flops   floating-point operations of one call (for GFLOP/s)
    setup   setup(rng) -> state: builds the inputs once (outside the timing)
    ours    ours(state): one call of selfattn
    peers   {peer name: peer(state), or None where the peer is not installed}
The runner times ours and the peers side by side, interleaved, and reports medians.

Fairness: every peer gets the same float32 inputs and, where it has threads (torch), the thread
count selfattn uses (set in setup). torch's backward is timed alone: its forward graph is built
once in setup and `backward(..., retain_graph=True)` replayed, so it is not charged for a forward.
multi_head_attention_backward recomputes the projections and the heads' output inside the backward
(nothing is saved between calls), and that recomputation is part of its time; the backward that
multi_head_attention_vjp returns, timed the same way as torch's (its forward run once in setup),
reuses what its forward kept.

flops: a forward counts its products (2 n^2 d for Q K^T, 2 n^2 d for P V, 2 n d_in d_out for each
projection); the attention backward counts the five n^2 d products it needs (S recomputed,
dP, dV, dQ, dK): 10 n^2 d. Ours does more (the forward's projections and attention recomputed
in the multi-head backward), torch no less, so the roofline column (the case's dtype: the rate of
the sgemm or dgemm measured in the run) and a peer's rate by the same count are comparable, and
a ratio target is out of reach where it would need more than the GEMM rate.
"""
from __future__ import annotations

import importlib.util

import numpy as np

import selfattn

_HAVE_TORCH = importlib.util.find_spec("torch") is not None

__all__ = ["CASES"]


def _torch():
    import torch

    torch.set_num_threads(selfattn.get_num_threads())
    return torch


# ---- multi-head forward: n=1024, d_model=512, 8 heads, float32 ---------------------------------

MH_N, MH_D, MH_H = 1024, 512, 8


def _mh_setup(rng):
    s = 1 / np.sqrt(MH_D)
    state = {"X": rng.standard_normal((MH_N, MH_D)).astype(np.float32)}
    for name in ("W_q", "W_k", "W_v", "W_o"):
        state[name] = (rng.standard_normal((MH_D, MH_D)) * s).astype(np.float32)
    if _HAVE_TORCH:
        torch = _torch()
        state["t"] = {k: torch.from_numpy(v) for k, v in state.items() if k != "t"}
    return state


def _mh_ours(st):
    return selfattn.multi_head_attention(st["X"], st["W_q"], st["W_k"], st["W_v"], st["W_o"],
                                         num_heads=MH_H)


def _mh_numpy(st):
    """The textbook NumPy version: project, then one head at a time."""
    X = st["X"]
    Q, K, V = X @ st["W_q"], X @ st["W_k"], X @ st["W_v"]
    dh = MH_D // MH_H
    heads = []
    for h in range(MH_H):
        cols = slice(h * dh, (h + 1) * dh)
        S = Q[:, cols] @ K[:, cols].T / np.float32(np.sqrt(dh))
        S = np.exp(S - S.max(axis=-1, keepdims=True))
        S /= S.sum(axis=-1, keepdims=True)
        heads.append(S @ V[:, cols])
    return np.concatenate(heads, axis=-1) @ st["W_o"]


def _mh_torch(st):
    import torch

    t = st["t"]
    with torch.no_grad():
        X = t["X"]
        dh = MH_D // MH_H

        def split(A):
            return A.view(1, MH_N, MH_H, dh).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            split(X @ t["W_q"]), split(X @ t["W_k"]), split(X @ t["W_v"]))
        return out.transpose(1, 2).reshape(MH_N, MH_D) @ t["W_o"]


# ---- attention backward: n=2048, d=64, float32; n=4096, d=128, float32; n=2048, d=64, float64 ----

BW_N, BW_D = 2048, 64
# each case's (n, d) as multiples of (BW_N, BW_D), so that shrinking those two shrinks every case
BW_SHAPES = ((1, 1, np.float32), (2, 2, np.float32), (1, 1, np.float64))


def _bw_size(shape):
    return BW_N * shape[0], BW_D * shape[1], shape[2]


def _bw_setup(rng, shape):
    n, d, dtype = _bw_size(shape)
    state = {k: rng.standard_normal((n, d)).astype(dtype) for k in ("Q", "K", "V", "dO")}
    if _HAVE_TORCH:
        torch = _torch()
        q, k, v = (torch.from_numpy(state[name][None, None].copy()).requires_grad_(True)
                   for name in ("Q", "K", "V"))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        state["t"] = {"q": q, "k": k, "v": v, "out": out,
                      "dO": torch.from_numpy(state["dO"][None, None].copy())}
    return state


def _bw_ours(st):
    return selfattn.scaled_dot_product_attention_backward(st["dO"], st["Q"], st["K"], st["V"])


def _bw_forward(st):
    """Our fused forward on the same inputs: the yardstick of the 2.5x target."""
    return selfattn.scaled_dot_product_attention(st["Q"], st["K"], st["V"])


def _bw_torch(st):
    t = st["t"]
    for x in (t["q"], t["k"], t["v"]):
        x.grad = None
    t["out"].backward(t["dO"], retain_graph=True)
    return tuple(t[k].grad[0, 0] for k in ("q", "k", "v"))


def _bw_case(shape):
    n, d, dtype = _bw_size(shape)
    precision = {np.float32: "f32", np.float64: "f64"}[dtype]
    return {
        "name": f"scaled_dot_product_attention_backward {precision} n={n} d={d}",
        "group": "backward",
        "dtype": np.dtype(dtype).name,
        "flops": 10.0 * n * n * d,
        "setup": lambda rng: _bw_setup(rng, shape),
        "ours": _bw_ours,
        # its cell is, as every peer's, the peer's time over ours: the forward's time over the
        # backward's, so the target (backward <= 2.5x the forward) is a cell >= 0.4
        "peers": {"selfattn fused forward (forward / backward time; target >= 0.4: backward "
                  "<= 2.5x)": _bw_forward,
                  "torch autograd SDPA backward": _bw_torch if _HAVE_TORCH else None},
    }


# ---- multi-head backward: (n, d_model, 8 heads) in float32 and float64 ------------------------

MB_H = 8


def _mb_case(n, d_model, dtype, saved=False):
    """multi_head_attention_backward against torch autograd on the same graph (projections, SDPA,
    W_o), the forward built once in setup; with `saved`, the backward multi_head_attention_vjp
    returns, whose forward also runs once in setup (each side then reuses what its forward kept,
    where multi_head_attention_backward recomputes the projections and the heads' output)."""
    dh = d_model // MB_H

    def setup(rng):
        s = 1 / np.sqrt(d_model)
        state = {"X": rng.standard_normal((n, d_model)).astype(dtype),
                 "dY": rng.standard_normal((n, d_model)).astype(dtype)}
        for name in ("W_q", "W_k", "W_v", "W_o"):
            state[name] = (rng.standard_normal((d_model, d_model)) * s).astype(dtype)
        if _HAVE_TORCH:
            torch = _torch()
            t = {k: torch.from_numpy(v.copy()).requires_grad_(k != "dY") for k, v in state.items()}

            def split(A):
                return A.view(1, n, MB_H, dh).transpose(1, 2)

            X = t["X"]
            heads = torch.nn.functional.scaled_dot_product_attention(
                split(X @ t["W_q"]), split(X @ t["W_k"]), split(X @ t["W_v"]))
            t["Y"] = heads.transpose(1, 2).reshape(n, d_model) @ t["W_o"]
            state["t"] = t
        if saved:
            _, state["backward"] = selfattn.multi_head_attention_vjp(
                state["X"], state["W_q"], state["W_k"], state["W_v"], state["W_o"],
                num_heads=MB_H)
        return state

    def ours(st):
        if saved:
            return st["backward"](st["dY"])
        return selfattn.multi_head_attention_backward(st["dY"], st["X"], st["W_q"], st["W_k"],
                                                      st["W_v"], st["W_o"], num_heads=MB_H)

    def torch_backward(st):
        t = st["t"]
        for k in ("X", "W_q", "W_k", "W_v", "W_o"):
            t[k].grad = None
        t["Y"].backward(t["dY"], retain_graph=True)
        return tuple(t[k].grad for k in ("X", "W_q", "W_k", "W_v", "W_o"))   # as ours returns

    bits = 32 if dtype == np.float32 else 64
    return {
        "name": (f"{'multi_head_attention_vjp backward' if saved else 'multi_head_attention_backward'}"
                 f" f{bits} n={n} d_model={d_model} heads={MB_H}"),
        "group": "backward",
        "dtype": np.dtype(dtype).name,
        "flops": 2 * 4 * 2.0 * n * d_model * d_model + 10.0 * n * n * d_model,
        "setup": setup,
        "ours": ours,
        "peers": {"torch autograd backward": torch_backward if _HAVE_TORCH else None},
    }


CASES = [
    {
        "name": f"multi_head_attention f32 n={MH_N} d_model={MH_D} heads={MH_H}",
        "group": "multi-head",
        "dtype": "float32",
        "flops": 4 * 2.0 * MH_N * MH_D * MH_D + 4.0 * MH_N * MH_N * MH_D,
        "setup": _mh_setup,
        "ours": _mh_ours,
        "peers": {"numpy per-head loop": _mh_numpy,
                  "torch SDPA + projections": _mh_torch if _HAVE_TORCH else None},
    },
    *(_bw_case(shape) for shape in BW_SHAPES),
    _mb_case(512, 256, np.float32),
    _mb_case(1024, 512, np.float32),
    _mb_case(512, 256, np.float64),
    _mb_case(512, 256, np.float32, saved=True),
    _mb_case(1024, 512, np.float32, saved=True),
    _mb_case(512, 256, np.float64, saved=True),
]
